"""S3 faults are ridden out, not fatal: the pipeline and the CLI against moto's S3 server behind
a fault-injecting proxy (`tests/support/s3_fault_proxy.py`).

- a whole run (prompts and storage on S3, the `openai` generation backend and the OpenAI Batch
  judge against the test server) under 20% SlowDown and a 30 s outage in its middle makes
  exactly the dataset of an undisturbed run;
- a stream broken mid-read is fetched again from where it stopped (and not spliced onto an
  object that changed meanwhile);
- an outage longer than the retry deadline fails the CLI with one `Error:` line naming the
  storage, and a rerun after recovery finishes with the same result;
- causes that waiting cannot fix (no such bucket, refused credentials) fail at once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.local_run import run_local
from synthpref.rows import PreferenceRow, PromptRow
from synthpref.spec import parse_manifest
from synthpref.storage import (
    RetryPolicy,
    S3Storage,
    Storage,
    StorageError,
    StorageUnavailableError,
    s3_client,
)
from synthpref.storage_retry import RETRY_SECONDS_ENV
from synthpref.timing import TIMING_KEY
from tests.builders import manifest_dict, spec_dict
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer
from tests.support.polling import wait_for
from tests.support.s3 import new_bucket
from tests.support.s3_fault_proxy import Outage, S3FaultProxy

pytestmark = pytest.mark.timeout(600)

KEY_ENV = "SYNTHPREF_TEST_OPENAI_KEY"
SYNTHPREF = Path(sys.executable).parent / "synthpref"  # the console script, as users run it
FAST = RetryPolicy(deadline_s=60, base_delay_s=0.1, max_delay_s=1)


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3_endpoint, seed=7) as running:
        yield running


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)
    with OpenAIServer() as running:
        yield running


def write_prompts(storage: Storage, count: int) -> None:
    lines = (json.dumps({"text": f"Question {i}: why is the sky blue?"}) for i in range(count))
    storage.write_bytes("prompts/a.jsonl", "".join(line + "\n" for line in lines).encode())


def run_manifest(
    prompts_uri: str, storage_uri: str, endpoint: str, server: OpenAIServer | None, name: str
) -> dict[str, Any]:
    """A run over S3 at `endpoint`; answers and judge from `server` (when given)."""
    openai = {"baseUrl": server.base_url if server else "", "apiKeyEnv": KEY_ENV}
    spec = spec_dict(
        prompts_uri=prompts_uri,
        storage_uri=storage_uri,
        mix={"responsesPerPrompt": 4, "seed": 3, "maxRequestsPerFile": 10},
        judge={
            "backend": "openai",
            "model": "judge-1",
            "pollIntervalSeconds": 0.01,
            "openai": openai,
        },
        binarization={"strategy": "best-vs-worst"},
    )
    spec["storage"].update({"endpointUrl": endpoint, "region": "us-east-1"})
    spec["prompts"]["shardSize"] = 4
    spec["models"] = [
        {"name": f"m{i}", "backend": "openai", "path": f"model-{i}", "openai": openai}
        for i in range(4)
    ]
    return manifest_dict(spec, name=name)


def dataset(storage: Storage) -> list[dict[str, Any]]:
    keys = [k for k in storage.list("dataset/part-") if k.endswith(".jsonl")]
    return [row.model_dump() for key in keys for row in read_rows(storage, key, PreferenceRow)]


def test_run_rides_out_slowdowns_and_an_outage(
    s3_endpoint: str,
    proxy: S3FaultProxy,
    server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = new_bucket(s3_endpoint)
    direct = s3_client(s3_endpoint, "us-east-1")
    write_prompts(S3Storage(f"s3://{bucket}/in", direct), 8)
    prompts = f"s3://{bucket}/in/prompts/"

    # The undisturbed run, through the proxy with no faults: the reference, and how many
    # requests a run makes (the outage starts half-way through that).
    calm = parse_manifest(run_manifest(prompts, f"s3://{bucket}/calm", proxy.endpoint, server, "a"))
    calm_storage = S3Storage(calm.spec.storage.uri, s3_client(proxy.endpoint, "us-east-1"))
    assert run_local(calm, calm_storage, progress=False).pairs == 8
    requests = proxy.requests

    proxy.slowdown_fraction = 0.2
    proxy.schedule_outage(requests // 2, Outage.RESET, seconds=30)
    stormy = parse_manifest(
        run_manifest(prompts, f"s3://{bucket}/storm", proxy.endpoint, server, "b")
    )
    storm_storage = S3Storage(stormy.spec.storage.uri, s3_client(proxy.endpoint, "us-east-1"))
    with caplog.at_level(logging.WARNING, logger="synthpref.storage_retry"):
        result = run_local(stormy, storm_storage, progress=False)

    assert proxy.failed_in_outage > 0 and proxy.slowdowns > 0
    retries = [r.getMessage() for r in caplog.records if r.name == "synthpref.storage_retry"]
    assert any(f"storage s3://{bucket}/storm unreachable (" in m for m in retries)
    assert any("try, next in" in m for m in retries)
    assert result.pairs == 8
    assert dataset(storm_storage) == dataset(calm_storage) != []
    summaries = [s.read_json(layout.SUMMARY) for s in (storm_storage, calm_storage)]
    assert [{**s, "dataset": None} for s in summaries] == [{**summaries[1], "dataset": None}] * 2


def test_stream_broken_mid_read_is_fetched_again_from_where_it_stopped(
    s3_uri: str, proxy: S3FaultProxy
) -> None:
    storage = S3Storage(s3_uri, s3_client(proxy.endpoint, "us-east-1"), FAST)
    lines = [json.dumps({"n": i, "text": "é" * (i % 50)}) for i in range(60_000)]  # ~3.5 MB
    storage.write_bytes("big.jsonl", "".join(line + "\n" for line in lines).encode())

    proxy.cut_gets(after_bytes=1_000_003, count=2)  # mid-line, mid-character; twice
    assert list(storage.read_lines("big.jsonl")) == lines
    assert proxy.cuts == 2
    proxy.cut_gets(after_bytes=777_777, count=1)
    assert storage.read_bytes("big.jsonl") == "".join(line + "\n" for line in lines).encode()
    assert proxy.cuts == 3


def test_object_replaced_during_a_broken_read_is_not_spliced(
    s3_uri: str, proxy: S3FaultProxy
) -> None:
    storage = S3Storage(s3_uri, s3_client(proxy.endpoint, "us-east-1"), FAST)
    storage.write_bytes("big.jsonl", b"".join(b"%08d\n" % i for i in range(400_000)))  # 3.6 MB
    proxy.cut_gets(after_bytes=2_500_000)
    reader = storage.read_lines("big.jsonl")
    assert next(reader) == "00000000"  # the first chunk has arrived
    storage.write_bytes("big.jsonl", b"replaced\n" * 400_000)
    with pytest.raises(StorageError, match=r"changed while being read"):
        list(reader)


def test_outage_past_the_deadline_fails_with_one_line_and_rerun_resumes(
    s3_endpoint: str, proxy: S3FaultProxy, tmp_path: Path
) -> None:
    bucket = new_bucket(s3_endpoint)
    write_prompts(S3Storage(f"s3://{bucket}/in", s3_client(s3_endpoint, "us-east-1")), 40)
    prompts = f"s3://{bucket}/in/prompts/"

    def prepare(name: str, endpoint: str) -> subprocess.CompletedProcess[str]:
        run_file = tmp_path / f"{name}.yaml"
        document = run_manifest(prompts, f"s3://{bucket}/{name}", endpoint, None, name)
        run_file.write_text(yaml.safe_dump(document))
        return subprocess.run(
            [str(SYNTHPREF), "prepare", str(run_file)],
            check=False,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, RETRY_SECONDS_ENV: "4"},
        )

    calm = prepare("calm", s3_endpoint)
    assert calm.returncode == 0, calm.stderr

    # The outage starts after a few shards were committed (10 shards of 4 prompts) and lasts
    # until recover(): longer than the 4 s deadline.
    proxy.schedule_outage(12, Outage.REFUSE, seconds=600)
    failed = prepare("storm", proxy.endpoint)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert errors[0].startswith(f"Error: storage s3://{bucket}/storm unavailable for ")
    assert "rerun to resume" in errors[0]
    assert "unreachable (1st try, next in" in failed.stderr  # retries were logged

    direct = s3_client(s3_endpoint, "us-east-1")
    storm, reference = (
        S3Storage(f"s3://{bucket}/storm", direct),
        S3Storage(f"s3://{bucket}/calm", direct),
    )
    assert 0 < len([k for k in storm.list("prompts/") if k.endswith(".commit")]) < 10
    assert not storm.exists(layout.PROMPTS_MANIFEST)

    proxy.recover()
    wait_for(lambda: not proxy.in_outage, 60, "the proxy to recover")
    rerun = prepare("storm", proxy.endpoint)
    assert rerun.returncode == 0, rerun.stderr
    assert without_timing(json.loads(rerun.stdout)) == without_timing(json.loads(calm.stdout))
    for shard in range(10):
        key = layout.prompt_shard(shard)
        assert storm.committed(key) == reference.committed(key)
        assert list(read_rows(storm, key, PromptRow)) == list(read_rows(reference, key, PromptRow))


def without_timing(summary: dict[str, object]) -> dict[str, object]:
    """A stage summary less when it ran, which differs between any two runs."""
    return {key: value for key, value in summary.items() if key != TIMING_KEY}


def test_causes_that_waiting_cannot_fix_fail_at_once(
    s3_endpoint: str, proxy: S3FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = S3Storage("s3://no-such-bucket-here/run", s3_client(proxy.endpoint, "us-east-1"))
    with pytest.raises(
        StorageError,
        match=r"s3://no-such-bucket-here/run: bucket 'no-such-bucket-here' does not exist",
    ):
        missing.check_writable()
    assert proxy.requests == 1  # not retried

    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found
    anonymous = S3Storage("s3://some-bucket/run", s3_client(proxy.endpoint, "us-east-1"))
    with pytest.raises(StorageError, match=r"s3://some-bucket/run: no S3 credentials found"):
        anonymous.exists("x")


def test_unavailable_error_names_the_storage_and_the_last_cause(
    s3_uri: str, proxy: S3FaultProxy
) -> None:
    storage = S3Storage(s3_uri, s3_client(proxy.endpoint, "us-east-1"), RetryPolicy(2, 0.1, 0.5))
    proxy.outage(Outage.UNAVAILABLE)
    with pytest.raises(StorageUnavailableError) as caught:
        storage.write_bytes("a.json", b"{}")
    message = str(caught.value)
    assert message.startswith(f"storage {s3_uri} unavailable for ")
    assert "(last error: write a.json: ServiceUnavailable: " in message
    assert message.endswith("committed work is kept, rerun to resume")
    proxy.recover()
    storage.write_bytes("a.json", b"{}")
    assert storage.read_bytes("a.json") == b"{}"
