"""Conformance of the OpenAI-compatible test server, driven by the official `openai` client.

The judge's tests trust this server to behave like the real Files and Batch API; these tests pin
down that behaviour (objects, pagination, status progression, output/error lines, validation).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, Final

import openai
import pytest

from tests.support.openai_server import (
    DEFAULT_API_KEY,
    BatchInfo,
    BatchScript,
    ErrorLine,
    Garbled,
    OpenAIServer,
    RequestInfo,
    default_rating,
    prompt_tokens,
)

ENDPOINT: Final = "/v1/chat/completions"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(models={"judge", "other"}) as running:
        yield running


@pytest.fixture
def client(server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=DEFAULT_API_KEY, max_retries=0)


def request_line(custom_id: str, answers: list[str], model: str = "judge") -> dict[str, Any]:
    text = "Rate each answer.\n" + "".join(f"<text {n}> {a}\n" for n, a in enumerate(answers, 1))
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def upload(client: openai.OpenAI, lines: list[Any], name: str = "requests.jsonl") -> str:
    raw = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return client.files.create(file=(name, io.BytesIO(raw.encode())), purpose="batch").id


def create(client: openai.OpenAI, file_id: str, **metadata: str) -> Any:
    return client.batches.create(
        input_file_id=file_id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata=metadata or None,
    )


def wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...], polls: int = 50) -> Any:
    return wait_seen(client, batch_id, until, polls)[0]


def wait_seen(
    client: openai.OpenAI, batch_id: str, until: tuple[str, ...], polls: int = 50
) -> tuple[Any, list[str]]:
    """Poll until the batch reaches a status in `until`: (batch, distinct statuses seen)."""
    seen: list[str] = []
    for _ in range(polls):
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in until:
            return batch, seen
    raise AssertionError(f"batch {batch_id} never reached {until}; statuses seen: {seen}")


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_files_upload_list_retrieve_content_delete(client: openai.OpenAI) -> None:
    first = upload(client, [request_line("a", ["x"])], "one.jsonl")
    second = upload(client, [request_line("b", ["y"])], "two.jsonl")

    listed = [f.id for f in client.files.list(purpose="batch")]
    assert set(listed) == {first, second}
    info = client.files.retrieve(first)
    assert info.filename == "one.jsonl" and info.purpose == "batch" and info.bytes > 0
    assert json.loads(client.files.content(first).text)["custom_id"] == "a"

    deleted = client.files.delete(first)
    assert deleted.deleted and deleted.id == first
    assert [f.id for f in client.files.list()] == [second]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(first)


def test_batch_moves_through_statuses_and_writes_joinable_output(
    client: openai.OpenAI,
) -> None:
    answers = {f"req-{i}": [f"answer {i} one", f"answer {i} two"] for i in range(6)}
    file_id = upload(client, [request_line(cid, texts) for cid, texts in answers.items()])
    batch = create(client, file_id, run="r1", file="part-000")
    assert batch.status == "validating" and batch.metadata == {"run": "r1", "file": "part-000"}
    assert batch.expires_at == batch.created_at + 24 * 3600

    done, seen = wait_seen(client, batch.id, ("completed",))
    assert seen == ["in_progress", "finalizing", "completed"]  # one scripted second per call
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (6, 6)
    times = [done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at]
    assert all(t is not None for t in times) and times == sorted(times)
    assert done.error_file_id is None

    output = lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(answers)
    assert [line["custom_id"] for line in output] != list(answers)  # not in input order
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["object"] == "chat.completion"
        assert body["usage"]["total_tokens"] == (
            body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )
        text = body["choices"][0]["message"]["content"]
        expected = [default_rating(a) for a in answers[line["custom_id"]]]
        assert [int(r) for r in _ratings(text)] == expected


def _ratings(text: str) -> list[str]:
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Rating:")]


def test_batch_list_paginates_newest_first_with_after(client: openai.OpenAI) -> None:
    file_id = upload(client, [request_line("a", ["x"])])
    created = [create(client, file_id, n=str(i)).id for i in range(5)]

    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2]
    assert page.has_more is True
    after = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in after.data] == created[::-1][2:4]
    last = client.batches.list(limit=2, after=after.data[-1].id)
    assert [b.id for b in last.data] == created[:1] and last.has_more is False
    assert [b.id for b in client.batches.list(limit=2)] == created[::-1]  # auto-pagination


def test_cancel_keeps_finished_results(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.batch_script = lambda info: BatchScript(in_progress_s=20, cancelling_s=2)
    file_id = upload(client, [request_line(f"c{i}", ["x", "y"]) for i in range(10)])
    batch = create(client, file_id)
    wait(client, batch.id, ("in_progress",))
    server.clock.advance(8)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = wait(client, batch.id, ("cancelled",))
    finished = lines_of(client, cancelled.output_file_id)
    assert 0 < len(finished) < 10
    assert cancelled.request_counts is not None
    assert cancelled.request_counts.completed == len(finished)
    completed = create_completed(client, server)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(completed)


def create_completed(client: openai.OpenAI, server: OpenAIServer) -> str:
    server.batch_script = lambda info: BatchScript()
    batch = create(client, upload(client, [request_line("z", ["x"])]))
    return str(wait(client, batch.id, ("completed",)).id)


@pytest.mark.parametrize(
    ("lines", "code", "line_number"),
    [
        ([request_line("a", ["x"]), "{not json"], "invalid_json_line", 2),
        ([request_line("a", ["x"]), request_line("a", ["y"])], "duplicate_custom_id", 2),
        (
            [request_line("a", ["x"]), request_line("b", ["y"], model="other")],
            "mismatched_model",
            2,
        ),
        ([{**request_line("a", ["x"]), "url": "/v1/embeddings"}], "invalid_url", 1),
        ([request_line("a", ["x"], model="gpt-unknown")], "model_not_found", None),
        ([request_line(f"r{i}", ["x"]) for i in range(4)], "too_many_requests", None),
    ],
)
def test_invalid_input_files_fail_the_batch_with_errors(
    server: OpenAIServer,
    client: openai.OpenAI,
    lines: list[Any],
    code: str,
    line_number: int | None,
) -> None:
    server.max_requests_per_file = 3
    batch = create(client, upload(client, lines))
    failed = wait(client, batch.id, ("failed", "completed"))

    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data
    assert [(e.code, e.line) for e in failed.errors.data] == [(code, line_number)]
    assert failed.output_file_id is None


def test_file_too_large_fails_the_batch(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.max_file_bytes = 100
    batch = create(client, upload(client, [request_line("a", ["x" * 200])]))
    failed = wait(client, batch.id, ("failed", "completed"))
    assert failed.errors is not None
    assert [e.code for e in failed.errors.data or []] == ["file_too_large"]


def test_bad_create_parameters_are_api_errors(client: openai.OpenAI) -> None:
    file_id = upload(client, [request_line("a", ["x"])])
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(
            input_file_id=file_id,
            endpoint=ENDPOINT,
            completion_window="1h",  # type: ignore[arg-type]
        )
    assert window.value.param == "completion_window"
    with pytest.raises(openai.BadRequestError) as metadata:
        create(client, file_id, **{f"k{i}": "v" for i in range(17)})
    assert metadata.value.param == "metadata"
    with pytest.raises(openai.BadRequestError):
        create(client, file_id, **{"k" * 65: "v"})
    with pytest.raises(openai.BadRequestError):
        create(client, "file-missing")


def test_expired_batch_keeps_partial_output_and_reports_the_rest(
    server: OpenAIServer, client: openai.OpenAI
) -> None:
    server.batch_script = lambda info: BatchScript(outcome="expired", expire_done=2)
    batch = create(client, upload(client, [request_line(f"e{i}", ["x"]) for i in range(5)]))
    expired = wait(client, batch.id, ("expired",))

    assert expired.expired_at is not None
    assert expired.request_counts is not None
    assert (expired.request_counts.completed, expired.request_counts.failed) == (2, 3)
    assert {line["custom_id"] for line in lines_of(client, expired.output_file_id)} == {"e0", "e1"}
    errors = lines_of(client, expired.error_file_id)
    assert {line["custom_id"] for line in errors} == {"e2", "e3", "e4"}
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)


def test_scripted_request_outcomes(server: OpenAIServer, client: openai.OpenAI) -> None:
    def script(info: RequestInfo) -> ErrorLine | Garbled | None:
        if info.custom_id == "timeout":
            return ErrorLine("request_timeout", "The request timed out.")
        if info.custom_id == "boom":
            return ErrorLine("server_error", "Internal error.", status_code=500)
        if info.custom_id == "garbled":
            return Garbled()
        return None

    server.request_script = script
    ids = ["ok", "timeout", "boom", "garbled"]
    batch = create(client, upload(client, [request_line(cid, ["x"]) for cid in ids]))
    done = wait(client, batch.id, ("completed",))

    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    output = {line["custom_id"]: line for line in lines_of(client, done.output_file_id)}
    assert set(output) == {"ok", "garbled"}
    assert (
        "Rating:" not in output["garbled"]["response"]["body"]["choices"][0]["message"]["content"]
    )
    errors = {line["custom_id"]: line for line in lines_of(client, done.error_file_id)}
    assert errors["timeout"]["response"] is None
    assert errors["timeout"]["error"]["code"] == "request_timeout"
    assert errors["boom"]["response"]["status_code"] == 500
    assert errors["boom"]["response"]["body"]["error"]["code"] == "server_error"


def test_token_limit_fails_batches_over_the_queue_cap(
    server: OpenAIServer, client: openai.OpenAI
) -> None:
    lines = [request_line(f"t{i}", ["some answer text"]) for i in range(3)]
    tokens = sum(prompt_tokens(line["body"]) for line in lines)
    server.token_limits = {"judge": tokens + 5}
    server.batch_script = lambda info: BatchScript(in_progress_s=30)

    first = create(client, upload(client, lines))
    second = create(
        client, upload(client, [{**line, "custom_id": "2" + line["custom_id"]} for line in lines])
    )
    failed = wait(client, second.id, ("failed", "in_progress"))
    assert failed.status == "failed" and failed.errors is not None
    assert [e.code for e in failed.errors.data or []] == ["token_limit_exceeded"]
    assert client.batches.retrieve(first.id).status == "in_progress"
    assert server.max_queued_tokens["judge"] == tokens
    assert server.queued_tokens("judge") == tokens

    server.clock.advance(60)  # the first batch finishes; its tokens leave the queue
    wait(client, first.id, ("completed",))
    assert server.queued_tokens("judge") == 0


def test_faults_and_auth(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.fail_next("GET", "/v1/batches", 429, count=1, retry_after=2)
    with pytest.raises(openai.RateLimitError) as limited:
        client.batches.list()
    assert limited.value.response.headers["retry-after"] == "2"
    client.batches.list()  # the fault is used up

    wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-bad-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.files.list()
    assert denied.value.code == "invalid_api_key"
    statuses = [(c.method, c.path, c.status) for c in server.calls]
    assert statuses == [
        ("GET", "/v1/batches", 429),
        ("GET", "/v1/batches", 200),
        ("GET", "/v1/files", 401),
    ]


def test_batch_script_sees_metadata_and_order(server: OpenAIServer, client: openai.OpenAI) -> None:
    seen: list[BatchInfo] = []

    def script(info: BatchInfo) -> BatchScript:
        seen.append(info)
        return BatchScript()

    server.batch_script = script
    file_id = upload(client, [request_line("a", ["x"]), request_line("b", ["y"])], "mine.jsonl")
    create(client, file_id, run="r")
    assert [(i.ordinal, i.filename, i.metadata, i.request_count) for i in seen] == [
        (0, "mine.jsonl", {"run": "r"}, 2)
    ]
