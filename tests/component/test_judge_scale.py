"""The OpenAI judge at scale, against the test server through the official `openai` client.

What keeps the judge's cost flat in the number and size of its request files: every batch in
flight is polled with one paged `batches.list` per step (no retrieve per file), an upload is
found again on any page of the file listing, downloads are streamed in chunks to the result
file (on S3, a multipart upload), and a download cut off midway commits nothing, so the next
step fetches the file again. The request files are written directly (committed, as `mix`
commits them), so each test takes seconds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from synthpref import layout
from synthpref.annotate import client as client_module
from synthpref.annotate import state as judge_state
from synthpref.annotate.client import BatchClient
from synthpref.annotate.engine import Annotator
from synthpref.annotate.ledger import Phase
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import LocalStorage, S3Storage, Storage
from tests.support.openai_server import (
    DEFAULT_API_KEY,
    BatchScript,
    OpenAIServer,
    ReplyText,
    RequestInfo,
)
from tests.support.s3 import FAKE_CREDENTIALS, new_bucket, s3_server

pytestmark = pytest.mark.timeout(180)

KEY_ENV = "SYNTHPREF_TEST_JUDGE_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def judge_spec(storage_uri: str, base_url: str) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": "/unused"},
            "storage": {"uri": storage_uri},
            "models": [{"name": f"m{i}", "path": f"m{i}"} for i in range(4)],
            "judge": {
                "model": "judge-1",
                "pollIntervalSeconds": 0.01,
                "openai": {"baseUrl": base_url, "apiKeyEnv": KEY_ENV},
            },
        }
    )


def write_request_files(storage: Storage, files: int, requests: int) -> list[str]:
    """One committed request file per mix shard, `requests` judge requests each."""
    keys = []
    for shard in range(files):
        key = layout.request_file(shard, 0)
        with storage.open_writer(key) as stream:
            for index in range(requests):
                answers = "".join(
                    f'<answer number="{n}">Answer {n} of {shard}/{index}</answer>\n'
                    for n in range(1, 5)
                )
                body = {
                    "model": "judge-1",
                    "messages": [{"role": "user", "content": f"Rate these.\n{answers}"}],
                }
                line = {
                    "custom_id": f"s{shard}-r{index}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
                stream.write(json.dumps(line) + "\n")
        storage.commit(key, {"rows": requests})
        storage.commit(layout.mix_shard(shard), {"request_files": [{"key": key}]})
        storage.commit(layout.prompt_shard(shard), {"rows": requests // 4})
        keys.append(key)
    storage.write_json(layout.PROMPTS_MANIFEST, {"shards": files, "prompts": files})
    return keys


class CountingStorage(LocalStorage):
    """Local storage that records the keys it was asked about or read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []
        self.writes: list[str] = []

    def exists(self, key: str) -> bool:
        self.reads.append(key)
        return super().exists(key)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        self.reads.append(key)
        return super().read_chunks(key)

    def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        self.reads.append(prefix)
        return super().list(prefix, limit)

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self.writes.append(key)
        super().write_bytes(key, data, content_type)


def judge(storage: Storage, server: OpenAIServer, files: int | None = None) -> Annotator:
    """An Annotator of the first `files` shards, or (None) of the whole run, as the operator
    and `synthpref annotate` build it."""
    spec = judge_spec(storage.uri, server.base_url)
    client = BatchClient(spec.judge.openai, sleep=lambda s: None, backoff_base_s=0.001)
    shards = range(files) if files is not None else None
    return Annotator(spec, storage, "scale", client, shards=shards, sleep=lambda s: None)


def result_ids(storage: Storage, keys: list[str]) -> list[str]:
    ids = []
    for key in keys:
        result = layout.result_for_request(key)
        assert storage.committed(result) is not None
        ids += [json.loads(line)["custom_id"] for line in storage.read_lines(result)]
    return ids


def test_files_in_flight_are_polled_with_one_listing_per_step_not_a_retrieve_each(
    tmp_path: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "BATCH_PAGE", 2)  # 5 batches: 3 pages per poll
    server.batch_script = lambda info: BatchScript(in_progress_s=20)
    storage = LocalStorage(tmp_path)
    keys = write_request_files(storage, files=5, requests=3)
    engine = judge(storage, server, files=5)
    polls = []
    while not all(r.phase is Phase.SUBMITTED for r in engine.ledgers()):
        engine.step()  # upload, then create
    while all(r.phase is Phase.SUBMITTED for r in engine.ledgers()):
        before = server.route_counts()
        engine.step()
        after = server.route_counts()
        polls.append({k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)})

    assert len(polls) > 1
    assert all(poll == {"GET /v1/batches": 3} for poll in polls), polls
    assert server.route_counts().get("GET /v1/batches/{id}", 0) == 0
    summary = engine.run_until_done()
    assert summary.done == summary.requests == 15
    assert sorted(result_ids(storage, keys)) == sorted(
        f"s{s}-r{i}" for s in range(5) for i in range(3)
    )


def test_an_upload_beyond_the_first_page_of_files_is_found(tmp_path: Path) -> None:
    with OpenAIServer(files_page_limit=2) as server:
        spec = judge_spec(str(tmp_path), server.base_url)
        client = BatchClient(spec.judge.openai)
        names = [f"upload-{n}.jsonl" for n in range(5)]
        for name in names:  # the first one ends up on the last page (newest first)
            client.upload(name, io.BytesIO(b'{"n": "' + name.encode() + b'"}\n'))

        found = client.find_file(names[0], len(b'{"n": "') + len(names[0]) + 3)

        assert found is not None and found.filename == names[0]
        assert len(server.calls_to("GET", "/v1/files")) == 3  # every page, two at a time
        assert client.find_file("never-uploaded.jsonl", 10) is None
        client.close()


def long_replies(info: RequestInfo) -> ReplyText:
    return ReplyText(f"{info.custom_id}: " + "a fairly long judgement " * 40)


def test_a_download_larger_than_a_chunk_is_committed_intact(
    tmp_path: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "DOWNLOAD_CHUNK_BYTES", 4096)
    server.request_script = long_replies
    storage = LocalStorage(tmp_path)
    keys = write_request_files(storage, files=1, requests=200)

    judge(storage, server, files=1).run_until_done()

    (output,) = [f for f in server.files.values() if f.filename.endswith("_output.jsonl")]
    assert len(output.data) > 50 * 4096
    expected = {json.loads(line)["custom_id"]: line for line in output.data.decode().splitlines()}
    written = list(storage.read_lines(layout.result_for_request(keys[0])))
    assert {json.loads(line)["custom_id"]: line for line in written} == expected
    assert len(written) == 200


def test_a_download_cut_off_midway_commits_nothing_and_the_next_step_completes(
    tmp_path: Path, server: OpenAIServer
) -> None:
    storage = LocalStorage(tmp_path)
    keys = write_request_files(storage, files=1, requests=20)
    result = layout.result_for_request(keys[0])
    engine = judge(storage, server, files=1)
    engine.client.max_retries = 0
    while engine.ledgers()[0].phase is not Phase.ENDED:
        engine.step()
    server.cut_next("GET", "/v1/files/", count=1)

    report = engine.step()

    assert report.transient_errors and "download file" in report.transient_errors[0]
    assert engine.ledgers()[0].phase is Phase.ENDED
    assert storage.committed(result) is None and not storage.exists(result)
    summary = engine.run_until_done()
    assert summary.done == summary.requests == 20
    assert sorted(result_ids(storage, keys)) == sorted(f"s0-r{i}" for i in range(20))


def test_results_on_s3_larger_than_a_part_go_up_as_a_multipart_upload(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(S3Storage, "MULTIPART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    monkeypatch.setattr(S3Storage, "SPOOL_BYTES", 1024 * 1024)
    server.request_script = long_replies
    with s3_server() as endpoint:
        bucket = new_bucket(endpoint)
        s3: Any = boto3.client("s3", endpoint_url=endpoint)
        storage = S3Storage(f"s3://{bucket}/run", s3)
        keys = write_request_files(storage, files=1, requests=6000)

        judge(storage, server, files=1).run_until_done()

        result = layout.result_for_request(keys[0])
        head = s3.head_object(Bucket=bucket, Key=f"run/{result}")
        assert head["ContentLength"] > 5 * 1024 * 1024
        assert head["ETag"].strip('"').endswith("-2")  # two parts
        assert len(result_ids(storage, keys)) == len(set(result_ids(storage, keys))) == 6000


def test_a_pass_reads_the_judge_state_once_whatever_the_number_of_files(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.batch_script = lambda info: BatchScript(in_progress_s=30)
    storage = CountingStorage(tmp_path)
    write_request_files(storage, files=6, requests=60)  # progress every (scripted) second
    while not all(r.phase is Phase.SUBMITTED for r in judge(storage, server).ledgers()):
        judge(storage, server).step()
    state = judge_state.load(storage)
    assert state is not None and state.clean and len(state.ledgers) == 6

    for _ in range(3):  # as the operator does: a fresh Annotator per pass, for status and step
        storage.reads.clear()
        storage.writes.clear()
        status = Annotator(judge_spec(storage.uri, server.base_url), storage, "scale", None)
        status.summary()
        judge(storage, server).step()
        assert not [k for k in storage.reads if k.startswith(("judge/ledger/", "requests/"))]
        assert len(storage.reads) <= 8, storage.reads  # the document and the cancel marker
    # Batch progress alone is one write of the document, not a ledger write per file.
    assert storage.writes == [layout.JUDGE_STATE]


def test_the_state_document_is_rebuilt_when_missing_or_left_open(
    tmp_path: Path, server: OpenAIServer
) -> None:
    storage = LocalStorage(tmp_path)
    write_request_files(storage, files=3, requests=2)
    engine = judge(storage, server)
    engine.step()  # uploads: every ledger saved, the document written clean
    truth = [r.model_dump() for r in judge(storage, server, files=3).ledgers()]  # from ledgers
    state = judge_state.load(storage)
    assert state is not None and state.clean
    assert [r.model_dump() for r in state.ledgers] == truth

    storage.delete(layout.JUDGE_STATE)
    judge(storage, server).step()  # rebuilt from the ledgers at the step's end
    state = judge_state.load(storage)
    assert state is not None and state.clean and len(state.ledgers) == 3

    # A process that died mid-step leaves the document open: it is not trusted.
    stale = state.model_copy(update={"clean": False})
    stale.ledgers[0].phase = Phase.DONE
    judge_state.save(storage, stale)
    fresh = judge(storage, server)
    assert all(r.phase is not Phase.DONE for r in fresh.ledgers())
    summary = fresh.run_until_done()
    assert summary.done == summary.requests == 6
    state = judge_state.load(storage)
    assert state is not None and state.clean
    assert all(r.phase is Phase.DONE for r in state.ledgers)


def test_an_annotator_of_some_shards_drops_the_state_document_when_it_saves(
    tmp_path: Path, server: OpenAIServer
) -> None:
    storage = LocalStorage(tmp_path)
    write_request_files(storage, files=2, requests=2)
    judge(storage, server).step()
    assert judge_state.load(storage) is not None

    judge(storage, server, files=1).step()  # a worker of shard 0 only: the document goes

    assert judge_state.load(storage) is None
    assert judge(storage, server).run_until_done().done == 4
