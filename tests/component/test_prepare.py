"""The prepare stage against local files and a real S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import PromptRow
from synthpref.stages.prepare import PromptFileError, prompt_id, run_prepare
from synthpref.storage import LocalStorage, S3Storage, Storage, s3_client
from tests.builders import make_spec


def write_prompts(folder: Path, name: str, lines: list[object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    (folder / name).write_text(text)


def test_ids_dedup_shards_and_metadata(tmp_path: Path, storage: Storage) -> None:
    prompts = tmp_path / "prompts"
    write_prompts(prompts, "a.jsonl", [{"text": "one", "src": "x"}, {"text": "two"}])
    write_prompts(prompts, "b.jsonl", [{"text": "one"}, {"text": "three"}, "", {"text": "four"}])
    spec = make_spec(prompts_uri=str(prompts))

    summary = run_prepare(spec, storage)

    assert (summary.prompts, summary.duplicates, summary.shards) == (4, 1, 2)
    shard0 = list(read_rows(storage, layout.prompt_shard(0), PromptRow))
    shard1 = list(read_rows(storage, layout.prompt_shard(1), PromptRow))
    assert [r.text for r in shard0 + shard1] == ["one", "two", "three", "four"]
    assert shard0[0].id == prompt_id("one") and len(shard0[0].id) == 16
    assert shard0[0].metadata == {"src": "x"}
    assert shard0[0].source.endswith("a.jsonl:1")
    assert storage.committed(layout.prompt_shard(1)) == {"rows": 2}
    assert storage.read_json(layout.PROMPTS_MANIFEST)["shards"] == 2


def test_malformed_line_fails_with_file_and_line(tmp_path: Path) -> None:
    write_prompts(tmp_path / "p", "a.jsonl", [{"text": "ok"}, "{not json", {"text": "x"}])
    spec = make_spec(prompts_uri=str(tmp_path / "p"))
    with pytest.raises(PromptFileError, match=r"a\.jsonl:2: not valid JSON"):
        run_prepare(spec, LocalStorage(tmp_path / "store"))


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"prompt": "no text"}', "missing string field 'text'"),
        ('{"text": "   "}', "field 'text' is empty"),
        ('["text"]', "expected a JSON object"),
        ('{"text": 5}', "missing string field 'text'"),
    ],
)
def test_skip_policy_counts_and_reports(tmp_path: Path, line: str, problem: str) -> None:
    write_prompts(tmp_path / "p", "a.jsonl", [{"text": "ok"}, line])
    spec = make_spec(
        prompts_uri=str(tmp_path / "p"),
        prompts={"uri": str(tmp_path / "p"), "shardSize": 2, "onMalformed": "skip"},
    )
    summary = run_prepare(spec, LocalStorage(tmp_path / "store"))
    assert (summary.prompts, summary.malformed) == (1, 1)
    assert "a.jsonl:2: " + problem in summary.malformed_examples[0]


def test_rerun_skips_committed_and_redoes_half_written(tmp_path: Path) -> None:
    write_prompts(tmp_path / "p", "a.jsonl", [{"text": f"t{i}"} for i in range(5)])
    spec = make_spec(prompts_uri=str(tmp_path / "p"))
    storage = LocalStorage(tmp_path / "store")
    run_prepare(spec, storage)
    first = storage.read_bytes(layout.prompt_shard(1))
    # Crash simulation: shard 1 half-written without marker, no manifest.
    storage.delete(layout.PROMPTS_MANIFEST)
    storage.uncommit(layout.prompt_shard(1))
    storage.write_bytes(layout.prompt_shard(1), b'{"id": "garbage"')
    marker0 = (tmp_path / "store" / (layout.prompt_shard(0) + ".commit")).stat().st_mtime_ns

    summary = run_prepare(spec, storage)

    assert summary.shards == 3
    assert storage.read_bytes(layout.prompt_shard(1)) == first
    marker0_after = (tmp_path / "store" / (layout.prompt_shard(0) + ".commit")).stat().st_mtime_ns
    assert marker0_after == marker0  # committed shard 0 was not rewritten


def test_prompts_read_from_s3(s3_uri: str, s3_endpoint: str, tmp_path: Path) -> None:
    source = S3Storage(s3_uri + "-prompts", s3_client(s3_endpoint, "us-east-1"))
    source.write_bytes("in/a.jsonl", b'{"text": "alpha"}\n{"text": "beta"}\n')
    source.write_bytes("in/b.jsonl", b'{"text": "gamma"}\n')
    source.write_bytes("in/readme.txt", b"not prompts")
    spec = make_spec(
        prompts_uri=source.url("in"),
        storage={"uri": s3_uri, "endpointUrl": s3_endpoint},
    )
    storage = S3Storage(s3_uri, s3_client(s3_endpoint, "us-east-1"))
    summary = run_prepare(spec, storage)
    assert summary.prompts == 3
    assert summary.files == [source.url("in/a.jsonl"), source.url("in/b.jsonl")]


def test_no_prompt_files_is_a_clear_error(tmp_path: Path) -> None:
    spec = make_spec(prompts_uri=str(tmp_path / "empty"))
    with pytest.raises(PromptFileError, match="no prompt files"):
        run_prepare(spec, LocalStorage(tmp_path / "store"))
