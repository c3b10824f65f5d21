"""mix → judge results (written here in the OpenAI Batch output format) → parse, on local disk.

The fake judge reads the real request files, finds each answer's model from its text, and rates
model m<i> with 5 - i in every aspect; so the right chosen/rejected models are known, and a
mistake in custom ids, answer order or joining shows up as a wrong pair. Chosen failures are
injected (missing result, error line, HTTP 500, unparseable reply, N/A, a retried request) and
every one must appear in the parse summary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from synthpref import layout
from synthpref.errors import InputsNotReadyError, SynthprefError
from synthpref.jsonl import read_rows, write_rows
from synthpref.judge_requests import decode_custom_id, encode_line
from synthpref.rows import (
    BatchError,
    BatchRequestLine,
    BatchResponse,
    BatchResultLine,
    GenerationRow,
    MixRow,
    PreferenceRow,
    PromptRow,
)
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.mix import run_mix
from synthpref.stages.parse import run_parse
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage, Storage
from tests.builders import make_spec

MODELS = 5
PROMPTS = 7
ANSWER = re.compile(r'<answer number="(\d+)">\nanswer of (m\d) to (\S+)\n</answer>')


def model_score(model: str) -> int:
    return 5 - int(model[1:])


def build(
    tmp_path: Path, *, structured: bool, **sections: Any
) -> tuple[PreferenceRunSpec, Storage]:
    prompt_file = tmp_path / "in" / "prompts.jsonl"
    prompt_file.parent.mkdir()
    prompt_file.write_text(
        "".join(json.dumps({"text": f"prompt number {i}", "n": i}) + "\n" for i in range(PROMPTS))
    )
    store = tmp_path / "store"
    defaults: dict[str, Any] = {
        "prompts": {"uri": str(prompt_file), "shardSize": 3},
        "mix": {
            "responsesPerPrompt": 4,
            "shuffleAnswers": True,
            "seed": 11,
            "maxRequestsPerFile": 5,
        },
        "judge": {"structuredOutput": structured, "model": "judge-1"},
        "binarization": {"strategy": "best-vs-worst"},
    }
    defaults.update(sections)
    spec = make_spec(storage_uri=str(store), models=MODELS, **defaults)
    storage = LocalStorage(store)
    run_prepare(spec, storage)
    return spec, storage


def write_generations(storage: Storage, failing: dict[int, set[str]]) -> None:
    """Every model answers every prompt, except model names in failing[prompt n] (errors)."""
    shards = storage.read_json(layout.PROMPTS_MANIFEST)["shards"]
    for shard in range(shards):
        prompts = list(read_rows(storage, layout.prompt_shard(shard), PromptRow))
        for m in range(MODELS):
            model = f"m{m}"
            rows = [
                GenerationRow(prompt_id=p.id, model=model, error="too long")
                if model in failing.get(int(p.metadata["n"]), set())
                else GenerationRow(prompt_id=p.id, model=model, text=f"answer of {model} to {p.id}")
                for p in reversed(prompts)  # rows need not be in prompt order
            ]
            write_rows(storage, layout.generation_shard(model, shard), rows)


def rated_reply(request: BatchRequestLine, rate: Callable[[str], str | int]) -> str:
    """A judge reply rating each shown answer by `rate(model)`, in the request's format."""
    user = request.body["messages"][1]["content"]
    shown = ANSWER.findall(user)
    assert [int(n) for n, _, _ in shown] == list(range(1, len(shown) + 1))
    if "response_format" in request.body:
        return json.dumps({n: {"rationale": "ok", "rating": rate(model)} for n, model, _ in shown})
    return "\n\n".join(
        f"**Answer {n}**\nRating: {rate(model)}\nRationale: because." for n, model, _ in shown
    )


def best_shown(request: BatchRequestLine) -> str:
    """The best-rated model among the answers shown in a request."""
    user: str = request.body["messages"][1]["content"]
    models: list[str] = [m for _, m, _ in ANSWER.findall(user)]
    return min(models, key=lambda m: int(m[1:]))


def ok(custom_id: str, content: str) -> BatchResultLine:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    return BatchResultLine(
        id="batch_req_1",
        custom_id=custom_id,
        response=BatchResponse(status_code=200, request_id="r", body=body),
    )


def judge_all(
    storage: Storage,
    shards: int,
    special: Callable[[str, BatchRequestLine], list[BatchResultLine] | None],
) -> None:
    """Answer every committed request file; `special` may replace a request's result lines."""
    for shard in range(shards):
        for key in storage.list(layout.request_prefix(shard)):
            if not key.endswith(".jsonl"):
                continue
            assert storage.committed(key) is not None
            out: list[BatchResultLine] = []
            for request in read_rows(storage, key, BatchRequestLine):
                replaced = special(request.custom_id, request)
                if replaced is None:
                    out.append(ok(request.custom_id, rated_reply(request, model_score)))
                else:
                    out.extend(replaced)
            out.reverse()  # the Batch API does not keep input order
            write_rows(storage, layout.result_for_request(key), out)


def prompt_ids(storage: Storage) -> dict[int, str]:
    ids = {}
    for shard in range(storage.read_json(layout.PROMPTS_MANIFEST)["shards"]):
        for p in read_rows(storage, layout.prompt_shard(shard), PromptRow):
            ids[int(p.metadata["n"])] = p.id
    return ids


@pytest.mark.parametrize("structured", [True, False])
def test_mix_then_parse_accounts_for_everything(tmp_path: Path, structured: bool) -> None:
    spec, storage = build(tmp_path, structured=structured)
    # prompt 0: only 3 usable answers (k = 4) -> too_few_answers
    write_generations(storage, {0: {"m3", "m4"}, 2: {"m0"}})
    ticks: list[int] = []
    mix = run_mix(spec, storage, on_shard=ticks.append)
    assert ticks == [0, 1, 2]
    assert (mix.shards_done, mix.shards_skipped) == (3, 0)
    assert (mix.prompts, mix.prompts_mixed) == (PROMPTS, PROMPTS - 1)
    assert mix.prompts_lacking == {"too_few_answers": 1}
    assert mix.unusable_answers == 3
    assert mix.requests == (PROMPTS - 1) * 4

    # Request files: split under 5 requests each, every custom id unique and decodable.
    seen: set[str] = set()
    for shard in range(3):
        keys = [k for k in storage.list(layout.request_prefix(shard)) if k.endswith(".jsonl")]
        for key in keys:
            lines = list(read_rows(storage, key, BatchRequestLine))
            assert 1 <= len(lines) <= 5
            assert storage.committed(key) == {
                "rows": len(lines),
                "bytes": sum(len(encode_line(x)) for x in lines),
            }
            for line in lines:
                assert decode_custom_id(line.custom_id).shard == shard
                assert line.body["model"] == "judge-1"
                assert ("response_format" in line.body) is structured
                seen.add(line.custom_id)
    assert len(seen) == mix.requests

    ids = prompt_ids(storage)
    aspects = spec.mix.aspects

    def cid(n: int, aspect: str) -> str:
        shard = n // 3
        return f"sp:{shard}:{aspect}:{ids[n]}"

    failures: dict[str, Callable[[BatchRequestLine], list[BatchResultLine]]] = {
        cid(1, "honesty"): lambda r: [],  # no result line
        cid(1, "helpfulness"): lambda r: [
            BatchResultLine(
                custom_id=r.custom_id, error=BatchError(code="batch_expired", message="x")
            )
        ],
        cid(1, "truthfulness"): lambda r: [
            BatchResultLine(custom_id=r.custom_id, response=BatchResponse(status_code=500, body={}))
        ],
        cid(3, "honesty"): lambda r: [ok(r.custom_id, "I'd rather not rate these.")],
        # prompt 3, truthfulness: N/A for the best answer shown
        cid(3, "truthfulness"): lambda r: [
            ok(
                r.custom_id,
                rated_reply(r, lambda m: "N/A" if m == best_shown(r) else model_score(m)),
            )
        ],
        # prompt 5: every aspect unparseable -> too_few_rated
        **{cid(5, a): (lambda r: [ok(r.custom_id, "no idea")]) for a in aspects},
        # prompt 6: everything rated 3 -> all_tied
        **{cid(6, a): (lambda r: [ok(r.custom_id, rated_reply(r, lambda m: 3))]) for a in aspects},
        # prompt 4, helpfulness: a failed attempt plus a good one; the good one wins
        cid(4, "helpfulness"): lambda r: [
            ok(r.custom_id, rated_reply(r, model_score)),
            BatchResultLine(custom_id=r.custom_id, error=BatchError(code="server_error")),
        ],
    }
    judge_all(
        storage, 3, lambda custom_id, r: failures[custom_id](r) if custom_id in failures else None
    )

    ticks.clear()
    parse = run_parse(spec, storage, on_shard=ticks.append)
    assert ticks == [0, 1, 2]
    assert parse.prompts == PROMPTS - 1
    assert parse.requests == (PROMPTS - 1) * 4
    assert parse.request_failures == {"error": 1, "http_error": 1, "no_result": 1}
    assert parse.replies == parse.requests - 3
    assert parse.rating_failures == {"not_applicable": 1, "unparseable": 4 + 4 * 4}
    assert parse.valid_ratings + 1 + 20 == parse.replies * 4
    assert parse.unrated_answers == 4
    assert parse.prompts_dropped == {"all_tied": 1, "too_few_rated": 1}
    assert parse.prompts_with_pairs == PROMPTS - 3
    assert parse.pairs == PROMPTS - 3
    assert parse.unknown_results == 0

    rows: list[PreferenceRow] = []
    for shard in range(3):
        rows.extend(read_rows(storage, layout.dataset_shard(shard), PreferenceRow))
    assert sorted(int(r.metadata["n"]) for r in rows) == [1, 2, 3, 4]
    for row in rows:
        mixed = {
            m.prompt_id: m
            for s in range(3)
            for m in read_rows(storage, layout.mix_shard(s), MixRow)
        }[row.prompt_id]
        models = sorted(c.model for c in mixed.candidates)
        assert row.chosen_model == models[0]  # best-vs-worst with m<i> rated 5 - i
        assert row.rejected_model == models[-1]
        assert row.chosen_rating == model_score(models[0])
        assert row.rejected_rating == model_score(models[-1])
        assert row.chosen[0].content == row.prompt == f"prompt number {row.metadata['n']}"
        assert row.chosen[1].content == f"answer of {row.chosen_model} to {row.prompt_id}"
        assert row.rejected[1].content == f"answer of {row.rejected_model} to {row.prompt_id}"
        assert set(row.chosen_aspect_ratings) <= set(aspects)
    by_n = {int(r.metadata["n"]): r for r in rows}
    assert set(by_n[1].chosen_aspect_ratings) == {"instruction_following"}
    # N/A is left out of the chosen answer's mean (not -1): its rating is still its model's.
    assert by_n[3].chosen_aspect_ratings == dict.fromkeys(
        ["helpfulness", "instruction_following"], float(model_score(by_n[3].chosen_model))
    )
    assert set(by_n[3].rejected_aspect_ratings) == {
        "helpfulness",
        "instruction_following",
        "truthfulness",
    }

    summary = storage.read_json(layout.SUMMARY)
    assert summary["pairs"] == parse.pairs
    assert summary["prompts_dropped"] == parse.prompts_dropped
    assert summary["mix"]["prompts_lacking"] == {"too_few_answers": 1}
    assert summary["shards"] == 3
    # Every loss by cause, and the verdict of the default acceptance thresholds.
    assert summary["losses"] == {
        "failed_answers": 3,
        "prompts_lacking_answers": 1,
        "requests_failed": 3,
        "unparseable_ratings": 20,
        "not_applicable_ratings": 1,
        "prompts_without_pair": 2,
    }
    assert summary["outcome"]["accepted"] is False
    assert summary["outcome"]["problems"] == [
        "3 of 24 judge requests (12.5%) failed after all attempts, above "
        "acceptance.maxFailedRequestFraction 0.1"
    ]


def test_reruns_skip_done_shards_and_redo_uncommitted_ones(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    write_generations(storage, {})
    first = run_mix(spec, storage)
    judge_all(storage, 3, lambda custom_id, r: None)
    parsed = run_parse(spec, storage)
    dataset = [storage.read_bytes(layout.dataset_shard(s)) for s in range(3)]
    requests = {k: storage.read_bytes(k) for k in storage.list("requests/")}

    again = run_mix(spec, storage)
    assert (again.shards_done, again.shards_skipped) == (0, 3)
    assert again.requests == first.requests and again.prompts_mixed == first.prompts_mixed
    reparsed = run_parse(spec, storage)
    assert (reparsed.shards_done, reparsed.shards_skipped, reparsed.pairs) == (0, 3, parsed.pairs)

    # A shard whose commit marker is gone is redone, with byte-identical output (seeded).
    storage.uncommit(layout.mix_shard(1))
    storage.uncommit(layout.dataset_shard(1))
    storage.write_bytes(layout.request_file(1, 7), b"stale\n")
    redo = run_mix(spec, storage)
    assert (redo.shards_done, redo.shards_skipped) == (1, 2)
    assert {k: storage.read_bytes(k) for k in storage.list("requests/")} == requests
    run_parse(spec, storage)
    assert [storage.read_bytes(layout.dataset_shard(s)) for s in range(3)] == dataset


def test_stages_refuse_missing_inputs(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    with pytest.raises(
        InputsNotReadyError,
        match=r"generations/: not committed: model m0 shard\(s\) 0, 1, 2; model m1 .*"
        r"run generate for those models first",
    ):
        run_mix(spec, storage)
    with pytest.raises(InputsNotReadyError, match=r"mix shard\(s\) 0, 1, 2 not committed"):
        run_parse(spec, storage)
    assert storage.list("mix/") == storage.list("dataset/") == []


def test_parse_before_the_judge_finished_commits_nothing(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    write_generations(storage, {})
    run_mix(spec, storage)
    judge_all(storage, 3, lambda custom_id, r: None)
    late = [k for k in storage.list("results/") if k.endswith(".jsonl")][-1]
    storage.uncommit(late)  # the judge has not finished this file yet
    with pytest.raises(InputsNotReadyError, match=r"the judge has not finished requests/shard-"):
        run_parse(spec, storage)
    assert storage.list("dataset/") == []
    # Once the judge is done, parse runs as if nothing had happened.
    judge_all(storage, 3, lambda custom_id, r: None)
    assert run_parse(spec, storage).pairs == PROMPTS


def test_readers_refuse_an_uncommitted_shard(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    write_generations(storage, {})
    storage.uncommit(layout.generation_shard("m2", 1))
    with pytest.raises(InputsNotReadyError, match=r"model m2 shard\(s\) 1\b"):
        run_mix(spec, storage)
    with pytest.raises(InputsNotReadyError, match=r"generations/m2/shard-00001\.jsonl: not commit"):
        list(read_rows(storage, layout.generation_shard("m2", 1), GenerationRow))


def test_prepare_repairs_a_shard_without_its_marker(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    original = storage.read_bytes(layout.prompt_shard(1))
    storage.uncommit(layout.prompt_shard(1))
    storage.write_bytes(layout.prompt_shard(1), b"half a line")
    with pytest.raises(InputsNotReadyError, match=r"prompt shard\(s\) 1 of 3 have no commit"):
        run_mix(spec, storage)
    assert run_prepare(spec, storage).shards == 3
    assert storage.read_bytes(layout.prompt_shard(1)) == original
    assert storage.committed(layout.prompt_shard(1)) == {"rows": 3}


def test_prepare_refuses_to_repair_from_changed_prompt_files(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    storage.uncommit(layout.prompt_shard(2))
    with (tmp_path / "in" / "prompts.jsonl").open("a") as extra:
        extra.write(json.dumps({"text": "a late prompt", "n": 99}) + "\n")
    with pytest.raises(SynthprefError, match=r"prompt files changed since prepare first ran"):
        run_prepare(spec, storage)
    assert not storage.exists(layout.PROMPTS_MANIFEST)


def test_on_policy_mix_pairs_the_named_model(tmp_path: Path) -> None:
    spec, storage = build(
        tmp_path,
        structured=False,
        mix={"onPolicyModel": "m3", "responsesPerPrompt": 2, "seed": 1},
        binarization={"strategy": "best-vs-random"},
    )
    write_generations(storage, {4: {"m3"}})
    mix = run_mix(spec, storage)
    assert mix.prompts_lacking == {"on_policy_missing": 1}
    judge_all(storage, 3, lambda custom_id, r: None)
    run_parse(spec, storage)
    rows = [r for s in range(3) for r in read_rows(storage, layout.dataset_shard(s), PreferenceRow)]
    assert len(rows) == PROMPTS - 1
    assert all("m3" in (r.chosen_model, r.rejected_model) for r in rows)
    assert all(r.chosen_rating > r.rejected_rating for r in rows)


def test_parquet_output(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    spec, storage = build(tmp_path, structured=True, output={"format": "parquet"})
    write_generations(storage, {})
    run_mix(spec, storage)
    judge_all(storage, 3, lambda custom_id, r: None)
    parsed = run_parse(spec, storage)
    tables = [
        pq.read_table(tmp_path / "store" / layout.dataset_shard(s, "parquet")) for s in range(3)
    ]
    records = [record for table in tables for record in table.to_pylist()]
    assert len(records) == parsed.pairs == PROMPTS
    first = records[0]
    assert first["chosen"][0] == {"role": "user", "content": first["prompt"]}
    assert json.loads(first["metadata"])["n"] in range(PROMPTS)
    assert dict(first["chosen_aspect_ratings"]).keys() == set(spec.mix.aspects)
    assert storage.read_json(layout.SUMMARY)["format"] == "parquet"


def test_the_last_worker_runs_the_report_step_just_before_the_summary(tmp_path: Path) -> None:
    spec, storage = build(tmp_path, structured=True)
    write_generations(storage, {})
    run_mix(spec, storage)
    judge_all(storage, 3, lambda custom_id, r: None)
    seen: list[tuple[bool, dict[str, Any]]] = []

    def before(document: dict[str, Any]) -> None:
        seen.append((storage.exists(layout.SUMMARY), document))

    # Two workers: the first leaves a shard undone, so only the second writes the summary.
    run_parse(spec, storage, worker=0, workers=2, before_summary=before)
    assert seen == [] and not storage.exists(layout.SUMMARY)
    run_parse(spec, storage, worker=1, workers=2, before_summary=before)
    assert len(seen) == 1
    existed, document = seen[0]
    assert not existed  # what the step writes exists before the summary that ends the run
    assert storage.read_json(layout.SUMMARY) == document
    # Each shard's commit marker says when it was parsed (the report's time per stage).
    info = storage.committed(layout.dataset_shard(0))
    assert info is not None and info["timing"]["seconds"] >= 0
