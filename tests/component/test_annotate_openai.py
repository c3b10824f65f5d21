"""The OpenAI Batch judge (synthpref.annotate) against the OpenAI-compatible test server.

Each test builds a real run up to `mix` (prompts → answers from four "models" served by the
test server through the `openai` generation backend → mix request files), then drives the judge
through scripted service behaviour and checks the outcome against a reference: the same
request files judged by the same deterministic ratings, written directly as result files and
parsed. Failure modes: partial expiry, error lines, garbled replies, token budget and
token_limit_exceeded, creation rate, 429/500 bursts, cancel, bad key, unknown model, a process
killed between create and record or in the middle of polling, API error answers on every kind of
call (repaired, or the file failed), and an unreachable endpoint (reported, tracked, given up on
after the deadline, resumed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from synthpref import layout
from synthpref.annotate import ledger as ledgers
from synthpref.annotate.client import BatchClient
from synthpref.annotate.engine import Annotator, FatalAnnotateError, JudgeUnavailableError
from synthpref.annotate.estimate import file_tokens
from synthpref.jsonl import read_rows
from synthpref.rows import BatchResultLine, PreferenceRow
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.generate import run_generate
from synthpref.stages.judge import committed_request_files
from synthpref.stages.mix import run_mix
from synthpref.stages.parse import run_parse
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage, Storage
from tests.builders import spec_dict
from tests.support.openai_server import (
    DEFAULT_API_KEY,
    BatchInfo,
    BatchScript,
    Call,
    ErrorLine,
    Garbled,
    Judgement,
    OpenAIServer,
    RequestInfo,
    closed_base_url,
    default_rating,
    judgement_json,
    judgement_text,
    prompt_tokens,
    request_answers,
)

pytestmark = pytest.mark.timeout(180)

KEY_ENV = "SYNTHPREF_TEST_JUDGE_KEY"
RUN = "test-run"
PROMPTS = 12
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def build_spec(
    tmp_path: Path,
    server: OpenAIServer,
    *,
    structured: bool = True,
    prompts: int = PROMPTS,
    **judge: Any,
) -> PreferenceRunSpec:
    prompt_file = tmp_path / "in" / "prompts.jsonl"
    prompt_file.parent.mkdir(exist_ok=True)
    prompt_file.write_text(
        "".join(
            json.dumps({"text": f"Question {i}: why is the sky blue?"}) + "\n"
            for i in range(prompts)
        )
    )
    endpoint = {"baseUrl": server.base_url, "apiKeyEnv": KEY_ENV, "concurrency": 4}
    document = spec_dict(
        prompts_uri=str(prompt_file),
        storage_uri=str(tmp_path / "store"),
        mix={"responsesPerPrompt": 4, "seed": 3, "maxRequestsPerFile": 10},
        judge={
            "backend": "openai",
            "model": "judge-1",
            "structuredOutput": structured,
            "maxAttempts": 3,
            "pollIntervalSeconds": 0.01,
            "openai": {**endpoint, "maxRetries": 6},
            **judge,
        },
        binarization={"strategy": "best-vs-worst"},
    )
    document["prompts"]["shardSize"] = 4
    document["models"] = [
        {"name": f"m{i}", "backend": "openai", "path": f"model-{i}", "openai": endpoint}
        for i in range(4)
    ]
    return PreferenceRunSpec.model_validate(document)


def run_until_mix(spec: PreferenceRunSpec, storage: Storage) -> None:
    run_prepare(spec, storage)
    for model in spec.models:
        run_generate(spec, storage, model.name)
    run_mix(spec, storage)


@pytest.fixture
def mixed(tmp_path: Path, server: OpenAIServer) -> tuple[PreferenceRunSpec, LocalStorage]:
    spec = build_spec(tmp_path, server)
    storage = LocalStorage(tmp_path / "store")
    run_until_mix(spec, storage)
    server.calls.clear()
    return spec, storage


def annotator(spec: PreferenceRunSpec, storage: Storage, **kwargs: Any) -> Annotator:
    client = BatchClient(spec.judge.openai, backoff_base_s=0.01, backoff_max_s=0.05, seed=1)
    return Annotator(spec, storage, RUN, client, **kwargs)


def request_files(storage: Storage) -> list[str]:
    shards = storage.read_json(layout.PROMPTS_MANIFEST)["shards"]
    return [key for shard in range(shards) for key in committed_request_files(storage, shard)]


def request_lines(storage: Storage) -> list[dict[str, Any]]:
    return [json.loads(t) for key in request_files(storage) for t in storage.read_lines(key)]


def expected_reply(body: dict[str, Any]) -> str:
    """What the server's default judge answers to a request body."""
    answers = request_answers(body)
    judgement = Judgement(
        {n: default_rating(t) for n, t in answers.items()},
        "Default judgement (a hash of the answer text).",
    )
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return judgement_json(judgement, response_format)
    return judgement_text(judgement)


def reference_dataset(
    spec: PreferenceRunSpec, storage: LocalStorage, tmp_path: Path, replies: dict[str, str]
) -> list[dict[str, Any]]:
    """The dataset `parse` makes from a copy of the mixed run whose judge results are
    `replies` (custom_id → reply text) written directly, without any batch."""
    copy_root = tmp_path / "reference"
    shutil.copytree(
        storage.root, copy_root, ignore=shutil.ignore_patterns("results", "judge", "dataset")
    )
    reference = LocalStorage(copy_root)
    for key in request_files(reference):
        lines = []
        for text in reference.read_lines(key):
            custom_id = json.loads(text)["custom_id"]
            if custom_id in replies:
                body = {"choices": [{"message": {"content": replies[custom_id]}}]}
                response = {"status_code": 200, "body": body}
                lines.append(
                    json.dumps({"custom_id": custom_id, "response": response, "error": None})
                )
        result = layout.result_for_request(key, 1)
        with reference.open_writer(result) as stream:
            stream.write("".join(line + "\n" for line in lines))
        reference.commit(result, {"rows": len(lines)})
    run_parse(spec, reference)
    return dataset(reference)


def dataset(storage: Storage) -> list[dict[str, Any]]:
    keys = [k for k in storage.list("dataset/part-") if k.endswith(".jsonl")]
    return [row.model_dump() for key in keys for row in read_rows(storage, key, PreferenceRow)]


def expected_dataset(
    spec: PreferenceRunSpec, storage: LocalStorage, tmp_path: Path
) -> list[dict[str, Any]]:
    """The dataset the server's default reply to every request makes (`reference_dataset`)."""
    replies = {r["custom_id"]: expected_reply(r["body"]) for r in request_lines(storage)}
    return reference_dataset(spec, storage, tmp_path, replies)


def assert_parse_gives_the_reference(
    spec: PreferenceRunSpec, storage: LocalStorage, tmp_path: Path
) -> None:
    """Every request has exactly one result line, and parse makes the reference dataset."""
    assert_each_request_once(storage)
    run_parse(spec, storage)
    assert dataset(storage) == expected_dataset(spec, storage, tmp_path)


def result_lines(storage: Storage) -> list[BatchResultLine]:
    keys = [k for k in storage.list("results/") if k.endswith(".jsonl")]
    assert all(storage.committed(k) is not None for k in keys)
    return [line for key in keys for line in read_rows(storage, key, BatchResultLine)]


def assert_each_request_once(storage: Storage) -> list[BatchResultLine]:
    """Every custom_id of the request files has exactly one line over all result files."""
    lines = result_lines(storage)
    counts = Counter(line.custom_id for line in lines)
    assert sorted(counts) == sorted(line["custom_id"] for line in request_lines(storage))
    assert set(counts.values()) == {1}
    return lines


def ok(line: BatchResultLine) -> bool:
    return line.error is None and line.response is not None and line.response.status_code == 200


# --------------------------------------------------------------------------------------- tests


def test_happy_path_end_to_end_into_parse(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    spec, storage = mixed
    files = request_files(storage)
    requests = request_lines(storage)
    assert len(files) >= 3 and len(requests) == PROMPTS * 4

    summary = annotator(spec, storage).run_until_done()

    assert (summary.files, summary.files_done, summary.requests) == (
        len(files),
        len(files),
        len(requests),
    )
    assert (summary.done, summary.failed, summary.resubmitted) == (len(requests), 0, 0)
    assert summary.batches == len(files) == len(server.batches)
    assert all(ok(line) for line in assert_each_request_once(storage))

    parsed = run_parse(spec, storage)
    assert parsed.request_failures == {} and parsed.rating_failures == {}
    expected = expected_dataset(spec, storage, tmp_path)
    assert expected and dataset(storage) == expected


def test_expired_batches_keep_partial_output_and_resubmit_only_the_rest(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    spec, storage = mixed

    def script(info: BatchInfo) -> BatchScript:
        if info.metadata.get("synthpref_attempt") == "1":
            return BatchScript(outcome="expired", expire_done=3)
        return BatchScript()

    server.batch_script = script
    requests = request_lines(storage)
    files = request_files(storage)
    summary = annotator(spec, storage).run_until_done()

    assert summary.done == len(requests) and summary.failed == 0
    assert summary.resubmitted == len(requests) - 3 * len(files)
    assert summary.batches == 2 * len(files)
    for key in files:
        first = {
            line.custom_id
            for line in read_rows(storage, layout.result_for_request(key, 1), BatchResultLine)
        }
        resubmitted = layout.judge_resubmit(key, 2)
        again = {json.loads(t)["custom_id"] for t in storage.read_lines(resubmitted)}
        everything = {json.loads(t)["custom_id"] for t in storage.read_lines(key)}
        assert len(first) == 3 and again == everything - first
    assert set(server.processed.values()) == {1}  # no request ran twice
    assert_parse_gives_the_reference(spec, storage, tmp_path)


def test_error_lines_are_resubmitted_then_reported(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    ids = sorted(r["custom_id"] for r in request_lines(storage))
    flaky, doomed = set(ids[:5]), ids[5]

    def script(info: RequestInfo) -> ErrorLine | None:
        if info.custom_id == doomed:
            return ErrorLine("server_error", "Internal error.", status_code=500)
        if info.custom_id in flaky and info.seen_before == 0:
            return ErrorLine("request_timeout", "The request timed out.")
        return None

    server.request_script = script
    summary = annotator(spec, storage).run_until_done()

    assert summary.failed_by_reason == {"http_500_server_error": 1}
    assert summary.done == len(ids) - 1
    assert summary.resubmitted == len(flaky) + 2  # the doomed one went twice more
    assert server.processed[doomed] == spec.judge.max_attempts
    lines = {line.custom_id: line for line in assert_each_request_once(storage)}
    assert not ok(lines[doomed]) and all(ok(lines[c]) for c in flaky)
    parsed = run_parse(spec, storage)
    assert parsed.request_failures == {"http_error": 1}


def test_garbled_replies_are_results_that_parse_counts(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    garbled = {r["custom_id"] for r in request_lines(storage)[::7]}
    server.request_script = lambda info: Garbled() if info.custom_id in garbled else None

    summary = annotator(spec, storage).run_until_done()

    assert summary.failed == 0 and summary.resubmitted == 0
    parsed = run_parse(spec, storage)
    assert parsed.replies == len(request_lines(storage))
    assert sum(parsed.rating_failures.values()) == 4 * len(garbled)


def test_queued_token_budget_is_never_exceeded(tmp_path: Path, server: OpenAIServer) -> None:
    probe = build_spec(tmp_path, server)
    storage = LocalStorage(tmp_path / "store")
    run_until_mix(probe, storage)
    sizes = [
        file_tokens(json.loads(t)["body"] for t in storage.read_lines(k))
        for k in request_files(storage)
    ]
    budget = max(sizes) + min(sizes)  # room for about two files at once
    spec = build_spec(tmp_path, server, queuedTokenBudget=budget)
    server.batch_script = lambda info: BatchScript(in_progress_s=6)

    summary = annotator(spec, storage).run_until_done()

    assert summary.done == summary.requests and summary.failed == 0
    peak = server.max_queued_tokens["judge-1"]
    assert 0 < peak <= budget
    assert peak > max(sizes) * 0.4  # the server saw real queued tokens, not zero
    for batch in server.batches.values():  # the estimate never under-counts the server's view
        assert batch.tokens <= sizes[request_files(storage).index(batch.metadata["synthpref_file"])]  # type: ignore[index]


def test_token_limit_exceeded_is_retried_later_not_failed(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    sizes = [
        sum(prompt_tokens(json.loads(t)["body"]) for t in storage.read_lines(k))
        for k in request_files(storage)
    ]
    server.token_limits = {"judge-1": max(sizes) + 1}  # one batch at a time fits
    server.batch_script = lambda info: BatchScript(in_progress_s=4)

    summary = annotator(spec, storage).run_until_done()

    assert summary.done == summary.requests and summary.failed == 0 and summary.resubmitted == 0
    assert summary.token_limit_retries >= 1
    failed = [b for b in server.batches.values() if b.status == "failed"]
    assert failed and all(b.errors[0]["code"] == "token_limit_exceeded" for b in failed)
    assert server.max_queued_tokens["judge-1"] <= max(sizes) + 1
    assert_each_request_once(storage)


def test_batch_creations_per_hour_are_limited(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += 600  # each idle wait is ten (fake) minutes

    engine = annotator(spec, storage, clock=lambda: now[0], sleep=sleep, max_creations_per_hour=2)
    files = len(request_files(storage))
    assert files > 2
    for _ in range(4):
        report = engine.step()
    assert len(server.batches) == 2
    assert any("creation rate limit" in w for w in report.waiting)
    summary = engine.run_until_done()
    assert summary.batches == files and summary.done == summary.requests
    created = sorted(
        s.created_at for r in engine.ledgers() for s in r.submissions() if s.created_at
    )
    for index in range(len(created) - 2):  # never three creations within an hour
        assert created[index + 2] - created[index] >= 3600


def test_rate_limit_and_server_error_bursts_are_survived(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    spec, storage = mixed
    server.fail_next("POST", "/v1/files", 429, count=3, retry_after=0.01)
    server.fail_next("POST", "/v1/batches", 500, count=2)
    server.fail_next("GET", "/v1/batches", 429, count=4)  # polls: listings
    server.fail_next("GET", "/v1/files/", 502, count=2)

    summary = annotator(spec, storage).run_until_done()

    assert summary.done == summary.requests and summary.batches == len(request_files(storage))
    assert len(server.batches) == summary.batches
    statuses = Counter((c.method, c.path.split("/")[2], c.status) for c in server.calls)
    assert statuses[("POST", "files", 429)] == 3
    assert statuses[("POST", "batches", 500)] == 2
    assert statuses[("GET", "batches", 429)] == 4
    assert statuses[("GET", "files", 502)] == 2
    assert_each_request_once(storage)


def test_cancel_keeps_finished_results_and_reports_the_rest(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    server.batch_script = lambda info: BatchScript(in_progress_s=40, cancelling_s=3)
    engine = annotator(spec, storage)
    for _ in range(3):
        engine.step()
    assert {r.phase for r in engine.ledgers()} == {ledgers.Phase.SUBMITTED}
    server.clock.advance(10)

    summary = engine.cancel(wait=True, delete_files=True)

    assert summary.cancelled and {r.phase for r in engine.ledgers()} == {ledgers.Phase.CANCELLED}
    assert 0 < summary.done < summary.requests
    assert summary.failed_by_reason == {"cancelled": summary.requests - summary.done}
    assert {b.status for b in server.batches.values()} == {"cancelled"}
    lines = assert_each_request_once(storage)
    assert sum(ok(line) for line in lines) == summary.done
    assert not [f for f in server.files.values() if f.purpose == "batch" and not f.deleted]
    assert annotator(spec, storage).step().done  # a cancelled run submits nothing again
    assert len(server.batches) == len(request_files(storage))


def test_bad_key_stops_with_a_clear_error_without_the_key(
    mixed: tuple[PreferenceRunSpec, LocalStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, storage = mixed
    wrong = "sk-judge-wrong-key-987654321"
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(FatalAnnotateError) as caught:
        annotator(spec, storage).step()
    message = str(caught.value)
    assert KEY_ENV in message and "401" in message
    assert wrong not in message and wrong[-6:] not in message
    for key in storage.list("judge/"):
        assert wrong[-6:] not in storage.read_bytes(key).decode()


def test_unknown_judge_model_stops_naming_it_and_keeps_fetched_results(
    tmp_path: Path, server: OpenAIServer
) -> None:
    spec = build_spec(tmp_path, server, queuedTokenBudget=1)  # one file in flight at a time
    storage = LocalStorage(tmp_path / "store")
    run_until_mix(spec, storage)
    engine = annotator(spec, storage)
    while not any(r.phase is ledgers.Phase.DONE for r in engine.ledgers()):
        engine.step()
    done = [r.request_key for r in engine.ledgers() if r.phase is ledgers.Phase.DONE]
    kept = {k: storage.read_bytes(k) for k in storage.list("results/")}
    assert kept

    server.models = {"some-other-model"}  # the judge model is withdrawn
    with pytest.raises(FatalAnnotateError, match="judge-1"):
        engine.run_until_done()

    after = annotator(spec, storage).ledgers()
    failed = [r for r in after if r.phase is ledgers.Phase.FAILED]
    assert failed and "does not exist" in str(failed[0].error)
    assert [r.request_key for r in after if r.phase is ledgers.Phase.DONE] == done
    assert {k: storage.read_bytes(k) for k in kept} == kept


def test_larger_run_with_every_fault_at_once_matches_the_reference(
    tmp_path: Path, server: OpenAIServer
) -> None:
    spec = build_spec(tmp_path, server, prompts=60)
    storage = LocalStorage(tmp_path / "store")
    run_until_mix(spec, storage)
    files = request_files(storage)
    requests = request_lines(storage)
    sizes = [
        sum(prompt_tokens(json.loads(t)["body"]) for t in storage.read_lines(k)) for k in files
    ]
    cap = 3 * max(sizes)
    server.token_limits = {"judge-1": cap}
    server.clock.tick = 0.25  # batches outlive a step, so the queue fills up

    def batch_script(info: BatchInfo) -> BatchScript:
        if info.ordinal % 3 == 0 and info.metadata.get("synthpref_attempt") == "1":
            return BatchScript(outcome="expired", expire_done=info.request_count // 2)
        return BatchScript(in_progress_s=3)

    def request_script(info: RequestInfo) -> ErrorLine | None:
        first_time = info.seen_before == 0
        if first_time and zlib.crc32(str(info.custom_id).encode()) % 10 == 0:
            return ErrorLine("request_timeout", "The request timed out.")
        return None

    server.batch_script = batch_script
    server.request_script = request_script
    server.fail_next("GET", "/v1/batches", 429, count=5, retry_after=0.01)
    server.fail_next("POST", "/v1/batches", 503, count=3)

    summary = annotator(spec, storage).run_until_done()

    assert summary.done == summary.requests == len(requests) == 240 and summary.failed == 0
    assert summary.resubmitted > 0 and summary.batches > len(files)
    assert server.max_queued_tokens["judge-1"] <= cap
    assert summary.token_limit_retries > 0
    assert set(server.processed.values()) <= {1, 2}  # done at most once after a timeout
    assert_parse_gives_the_reference(spec, storage, tmp_path)
    print(  # the figures for the closing note (pytest -s)
        f"\nrequests={summary.requests} files={summary.files} batches={summary.batches} "
        f"resubmitted={summary.resubmitted} token_limit_retries={summary.token_limit_retries} "
        f"dataset_rows={len(dataset(storage))}"
    )


# ------------------------------------------------------------------ killed processes, resumed

CHILD = textwrap.dedent(
    """
    import sys
    from synthpref.spec import PreferenceRunSpec
    from synthpref.storage import LocalStorage
    from synthpref.annotate.local import annotate_until_done

    spec = PreferenceRunSpec.model_validate_json(open(sys.argv[1]).read())
    annotate_until_done(spec, LocalStorage(sys.argv[2]), run_name=sys.argv[3])
    """
)


def run_child_until_killed(
    spec: PreferenceRunSpec,
    storage: LocalStorage,
    server: OpenAIServer,
    tmp_path: Path,
    method: str,
    path: str,
    nth: int,
) -> None:
    """Run the judge in a child process and SIGKILL it when the server has answered (but not
    yet sent) the `nth` call matching `method path`."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json(by_alias=True))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # ROOT for `tests`, before any PYTHONPATH the run has (a worktree's own sources).
    paths = (str(ROOT), os.environ.get("PYTHONPATH", ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(spec_file), str(storage.root), RUN], env=env
    )
    seen = [0]

    def kill(call: Call) -> None:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)

    server.hook(method, path, kill, when="after", times=None)
    assert child.wait(timeout=120) == -signal.SIGKILL
    server.hooks.clear()


def test_crash_between_create_and_record_makes_no_second_batch(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    spec, storage = mixed
    run_child_until_killed(spec, storage, server, tmp_path, "POST", "/v1/batches", 1)
    assert len(server.batches) == 1
    unrecorded = [
        r for r in annotator(spec, storage).ledgers() if r.phase is ledgers.Phase.UPLOADED
    ]
    assert unrecorded and unrecorded[0].current is not None
    assert unrecorded[0].current.batch_id is None  # created, never recorded

    summary = annotator(spec, storage).run_until_done()

    files = request_files(storage)
    assert len(server.batches) == len(files) == summary.batches
    assert summary.done == summary.requests
    assert set(server.processed.values()) == {1}
    assert_each_request_once(storage)


@pytest.mark.parametrize("failure", ["connection lost", "HTTP 502"])
def test_lost_answer_to_batch_create_makes_no_second_batch(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, failure: str
) -> None:
    """The service made the batch but its answer never arrived: a blind re-send would make a
    second batch; the engine must look the batch up instead."""
    spec, storage = mixed

    def lose_answer(call: Call) -> None:
        raise ConnectionAbortedError("the test server drops the connection")

    if failure == "connection lost":
        server.hook("POST", "/v1/batches", lose_answer, when="after", times=2)
    else:
        server.fail_after_next("POST", "/v1/batches", 502, count=2)

    summary = annotator(spec, storage).run_until_done()

    files = request_files(storage)
    assert len(server.batches) == len(files) == summary.batches
    assert summary.done == summary.requests
    assert_each_request_once(storage)


def test_resumed_run_after_kill_mid_poll_fetches_everything_once(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    spec, storage = mixed
    server.batch_script = lambda info: BatchScript(in_progress_s=8)
    files = request_files(storage)
    # Listings: one before each creation (the crash lookup), then one per poll step.
    run_child_until_killed(spec, storage, server, tmp_path, "GET", "/v1/batches", len(files) + 2)
    polled = [r for r in annotator(spec, storage).ledgers() if r.phase is ledgers.Phase.SUBMITTED]
    assert polled

    summary = annotator(spec, storage).run_until_done()

    assert len(server.batches) == len(files) == summary.batches
    assert summary.done == summary.requests and summary.failed == 0
    assert set(server.processed.values()) == {1}
    assert_each_request_once(storage)
    downloads = Counter(c.path for c in server.calls_to("GET", "/v1/files/") if c.status == 200)
    outputs = {b.output_file_id for b in server.batches.values()}
    assert {f"/v1/files/{o}/content" for o in outputs} == set(downloads)
    assert set(downloads.values()) == {1}


def test_local_run_with_the_openai_judge_produces_the_scripted_dataset(
    tmp_path: Path, server: OpenAIServer
) -> None:
    from synthpref.local_run import run_local
    from synthpref.spec import PreferenceRunManifest

    spec = build_spec(tmp_path, server, structured=False)
    manifest = PreferenceRunManifest.model_validate(
        {
            "apiVersion": "synthpref.dev/v1alpha1",
            "kind": "PreferenceRun",
            "metadata": {"name": RUN},
            "spec": spec.model_dump(by_alias=True),
        }
    )
    storage = LocalStorage(tmp_path / "store")
    result = run_local(manifest, storage, progress=False)

    requests = request_lines(storage)
    assert result.summary["judge"]["done"] == len(requests) == PROMPTS * 4
    expected = expected_dataset(spec, storage, tmp_path)
    assert result.pairs == len(expected) > 0
    assert dataset(storage) == expected


def test_cli_submit_poll_fetch_status(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from synthpref.cli import main

    spec, storage = mixed
    run_file = tmp_path / "run.yaml"
    manifest = {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "PreferenceRun",
        "metadata": {"name": RUN},
        "spec": json.loads(spec.model_dump_json(by_alias=True)),
    }
    run_file.write_text(json.dumps(manifest))  # JSON is YAML
    runner = CliRunner()

    def call(*args: str) -> dict[str, Any]:
        result = runner.invoke(main, ["annotate", *args, str(run_file)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.output)
        return document

    files = len(request_files(storage))
    submitted = call("submit")
    assert len(server.batches) == files
    assert submitted["files_by_phase"].keys() == {"submitted"}
    for _ in range(30):
        call("poll")
        call("fetch")
        if call("status")["files_done"] == files:
            break
    final = call("status")
    assert final["done"] == final["requests"] == len(request_lines(storage))
    assert [c.status for c in server.calls if c.path == "/v1/batches" and c.method == "POST"] == [
        200
    ] * files
    assert_each_request_once(storage)


# ------------------------------------------------------------------ API errors and outages


def creating_for(server: OpenAIServer, request_key: str) -> Callable[[Call], bool]:
    """Matches the batch creations for (any upload of) one request file."""
    stem = request_key.removeprefix("requests/").removesuffix(".jsonl")

    def match(call: Call) -> bool:
        stored = server.files.get(str((call.body or {}).get("input_file_id")))
        return stored is not None and f"-{stem}-attempt-" in stored.filename

    return match


def test_input_file_deleted_before_batch_create_is_uploaded_again(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer, tmp_path: Path
) -> None:
    spec, storage = mixed

    def delete_input(call: Call) -> None:
        assert call.body is not None
        server.files[call.body["input_file_id"]].deleted = True

    server.hook("POST", "/v1/batches", delete_input, when="before")
    engine = annotator(spec, storage)
    summary = engine.run_until_done()

    assert summary.done == summary.requests and summary.failed == 0
    (repaired,) = [r for r in engine.ledgers() if r.api_errors]
    (error,) = repaired.api_errors
    assert error.call.startswith("create a batch for file-") and error.status == 400
    assert "no such file" in error.message
    assert error.outcome == "uploading again and creating a new batch (repair 1 of 3)"
    assert len(server.batches) == len(request_files(storage))
    uploads = [f.filename for f in server.files.values() if f.purpose == "batch"]
    assert len(uploads) == len(request_files(storage)) + 1
    assert sum(name.endswith("-attempt-01-s02.jsonl") for name in uploads) == 1
    assert_parse_gives_the_reference(spec, storage, tmp_path)


@pytest.mark.parametrize(
    ("method", "path", "status", "outcome"),
    [
        ("POST", "/v1/files", 400, "uploading again (repair 1 of 3)"),
        ("POST", "/v1/batches", 404, "uploading again and creating a new batch (repair 1 of 3)"),
        ("GET", "/v1/files/", 404, "uploading again and creating a new batch (repair 1 of 3)"),
    ],
    ids=["upload", "create", "download"],
)
def test_an_api_error_on_any_call_is_recorded_and_repaired(
    mixed: tuple[PreferenceRunSpec, LocalStorage],
    server: OpenAIServer,
    method: str,
    path: str,
    status: int,
    outcome: str,
) -> None:
    spec, storage = mixed
    server.fail_next(method, path, status, message="Scripted API error.")

    engine = annotator(spec, storage)
    summary = engine.run_until_done()

    assert summary.done == summary.requests and summary.failed == 0
    (error,) = [e for r in engine.ledgers() for e in r.api_errors]
    assert (error.status, error.message, error.outcome) == (status, "Scripted API error.", outcome)
    assert error.attempt == 1 and error.at > 0
    assert_each_request_once(storage)


def test_a_batch_gone_from_the_listing_is_retrieved_and_repaired(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    gone: list[str] = []

    def vanish(call: Call) -> None:  # the service forgets the batch it just created
        assert call.response is not None
        gone.append(str(call.response["id"]))
        del server.batches[gone[-1]]

    server.hook("POST", "/v1/batches", vanish, when="after", times=1)

    engine = annotator(spec, storage)
    summary = engine.run_until_done()

    assert summary.done == summary.requests and summary.failed == 0
    (error,) = [e for r in engine.ledgers() for e in r.api_errors]
    assert error.call == f"retrieve batch {gone[0]}" and error.status == 404
    assert error.outcome == "uploading again and creating a new batch (repair 1 of 3)"
    assert [c.status for c in server.calls_to("GET", f"/v1/batches/{gone[0]}")] == [404]
    assert_each_request_once(storage)


def test_a_persistent_api_error_fails_that_file_only_and_parse_counts_it(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    target = request_files(storage)[0]
    message = "Invalid 'input_file_id': the file was rejected (scripted)."
    server.fail_next(
        "POST", "/v1/batches", 400, count=100, message=message, match=creating_for(server, target)
    )

    engine = annotator(spec, storage)
    summary = engine.run_until_done()  # no API error escapes

    by_key = {r.request_key: r for r in engine.ledgers()}
    failed = by_key.pop(target)
    assert failed.phase is ledgers.Phase.FAILED and message in str(failed.error)
    assert [e.outcome for e in failed.api_errors] == [
        *(f"uploading again and creating a new batch (repair {n} of 3)" for n in (1, 2, 3)),
        "file failed",
    ]
    assert {(e.status, e.message) for e in failed.api_errors} == {(400, message)}
    assert {r.phase for r in by_key.values()} == {ledgers.Phase.DONE}
    assert summary.failed_by_reason == {"api_error_http_400": failed.requests}
    assert summary.done == summary.requests - failed.requests
    lines = assert_each_request_once(storage)
    assert sum(not ok(line) for line in lines) == failed.requests
    assert run_parse(spec, storage).request_failures == {"error": failed.requests}


def with_judge_url(
    spec: PreferenceRunSpec, url: str, max_retries: int = 6, **judge: Any
) -> PreferenceRunSpec:
    endpoint = spec.judge.openai.model_copy(update={"base_url": url, "max_retries": max_retries})
    return spec.model_copy(
        update={"judge": spec.judge.model_copy(update={"openai": endpoint, **judge})}
    )


def test_unreachable_judge_is_warned_about_at_once_and_tracked_until_the_deadline(
    mixed: tuple[PreferenceRunSpec, LocalStorage], caplog: pytest.LogCaptureFixture
) -> None:
    url = closed_base_url()
    spec = with_judge_url(mixed[0], url)
    now = [1000.0]
    client = BatchClient(spec.judge.openai, backoff_base_s=0.01, backoff_max_s=0.05, max_retries=2)
    engine = Annotator(spec, mixed[1], RUN, client, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)

    report = engine.step()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0].startswith(f"judge endpoint {url} unreachable (1st try, next in ")
    assert warnings[0].endswith("): ConnectError: [Errno 111] Connection refused")
    assert (report.endpoint, report.reached, report.failing_since) == (url, False, 1000.0)
    assert report.last_error is not None and "Connection refused" in report.last_error
    assert len(report.transient_errors) == 1  # the step stopped at the first file
    assert DEFAULT_API_KEY not in caplog.text

    now[0] += 120
    assert engine.step().failing_since == 1000.0 and engine.unavailable_error() is None
    now[0] += spec.judge.give_up_after_seconds
    error = engine.unavailable_error()
    assert error is not None and str(error).startswith(
        f"judge endpoint {url} unreachable for 720 s (last error: "
    )


def test_giving_up_happens_at_the_deadline_not_after_the_retries_and_sleeps(
    mixed: tuple[PreferenceRunSpec, LocalStorage],
) -> None:
    # Long backoffs (50-60 s), six retries a call and a 60 s poll interval against a 30 s
    # deadline: no sleep may carry the run past it (it once gave up at 683 s of 600).
    spec = with_judge_url(mixed[0], closed_base_url(), poll_interval_seconds=60.0)
    spec = spec.model_copy(
        update={"judge": spec.judge.model_copy(update={"give_up_after_seconds": 30.0})}
    )
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    client = BatchClient(
        spec.judge.openai, backoff_base_s=50, backoff_max_s=60, sleep=sleep, seed=1
    )
    engine = Annotator(spec, mixed[1], RUN, client, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(JudgeUnavailableError, match="unreachable for 30 s"):
        engine.run_until_done()
    assert now[0] == 1030.0 and slept and max(slept) <= 30


def test_a_small_retry_count_makes_a_failing_step_return_after_one_call(
    mixed: tuple[PreferenceRunSpec, LocalStorage], server: OpenAIServer
) -> None:
    spec, storage = mixed
    server.fail_next("POST", "/v1/files", 503, count=1000)
    client = BatchClient(spec.judge.openai, max_retries=0)
    # As the operator does: a fresh Annotator per pass, told when the outage began.
    engine = Annotator(spec, storage, RUN, client, clock=lambda: 5000.0, failing_since=4000.0)

    report = engine.step()

    assert len(server.calls) == 1 and not report.reached
    assert report.failing_since == 4000.0 and "HTTP 503" in str(report.last_error)
    server.faults.clear()
    report = engine.step()
    assert report.reached and report.failing_since is None and report.last_error is None


def test_an_outage_past_the_deadline_gives_up_keeping_results_and_a_rerun_completes(
    tmp_path: Path, server: OpenAIServer
) -> None:
    spec = build_spec(tmp_path, server, queuedTokenBudget=1, giveUpAfterSeconds=30)
    storage = LocalStorage(tmp_path / "store")
    run_until_mix(spec, storage)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 10  # each idle wait is ten (fake) seconds

    engine = annotator(spec, storage, clock=lambda: now[0], sleep=sleep)
    while not any(r.phase is ledgers.Phase.DONE for r in engine.ledgers()):
        engine.step()
    kept = {k: storage.read_bytes(k) for k in storage.list("results/")}
    server.go_down()

    with pytest.raises(JudgeUnavailableError) as caught:
        engine.run_until_done()

    message = str(caught.value)
    assert message.startswith(f"judge endpoint {server.base_url} unreachable for ")
    assert "(last error: " in message and "Connection refused" in message
    assert message.endswith(f"results fetched so far are kept in {storage.uri}; rerun to resume")
    assert {k: storage.read_bytes(k) for k in kept} == kept
    assert all(storage.committed(k) is not None for k in kept if k.endswith(".jsonl"))

    server.come_back()
    summary = annotator(spec, storage).run_until_done()

    requests = request_lines(storage)
    assert summary.done == summary.requests == len(requests) and summary.failed == 0
    assert_parse_gives_the_reference(spec, storage, tmp_path)


def test_cli_annotate_run_gives_up_on_an_unreachable_judge_with_one_error_line(
    mixed: tuple[PreferenceRunSpec, LocalStorage], tmp_path: Path
) -> None:
    spec, storage = mixed
    url = closed_base_url()
    spec = with_judge_url(
        spec, url, max_retries=0, give_up_after_seconds=1.0, poll_interval_seconds=0.2
    )
    run_file = tmp_path / "run.yaml"
    manifest = {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "PreferenceRun",
        "metadata": {"name": RUN},
        "spec": json.loads(spec.model_dump_json(by_alias=True)),
    }
    run_file.write_text(json.dumps(manifest))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "pipeline"), str(ROOT)])}

    done = subprocess.run(
        [sys.executable, "-m", "synthpref", "annotate", "run", str(run_file)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert errors[0].startswith(f"Error: judge endpoint {url} unreachable for ")
    assert errors[0].endswith(f"kept in {storage.uri}; rerun to resume")
    assert f"judge endpoint {url} unreachable (1st try, tried again on the next step)" in (
        done.stderr
    )
