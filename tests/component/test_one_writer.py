"""One writer per run, through the real `synthpref` command: two `run --local` on the same
storage (a local folder, and S3) at once: the second is refused with one Error line naming the
holder, and the OpenAI-compatible test server counts exactly one batch per request file; the
same for `synthpref annotate run` while a run holds the lease. After the first run ends, a
rerun pays for nothing again."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from synthpref.storage import LocalStorage, S3Storage, Storage, s3_client
from tests.component.test_failure_modes import PROMPTS, World
from tests.support.cli import SYNTHPREF, one_error, synthpref
from tests.support.openai_server import BatchScript, OpenAIServer
from tests.support.s3 import new_bucket

# Scripted seconds a batch stays in progress (each request moves the server's clock a second)
# until the test moves time on; within the Batch API's 24 h window, so it completes then.
HELD = 50_000.0


def wait_for_batches(server: OpenAIServer, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180
    while not server.calls_to("POST", "/v1/batches"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the first run made no batch: {process.communicate()}")
        time.sleep(0.2)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_writer_is_refused_and_nothing_is_paid_twice(
    where: str, tmp_path: Path, s3_endpoint: str
) -> None:
    with OpenAIServer(batch_script=lambda info: BatchScript(in_progress_s=HELD)) as server:
        world = World(tmp_path, server, s3_endpoint)
        world.prompts(*PROMPTS)
        spec: dict[str, Any] = world.spec()
        store: Storage = world.store
        if where == "s3":
            uri = f"s3://{new_bucket(s3_endpoint)}/run"
            spec["storage"] = {"uri": uri, "endpointUrl": s3_endpoint, "region": "us-east-1"}
            store = S3Storage(uri, s3_client(s3_endpoint, "us-east-1"))
        run_file = world.run_file(spec)
        command = [str(SYNTHPREF), "run", run_file, "--local", "--no-progress"]
        first = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **world.env},
        )
        try:
            wait_for_batches(server, first)
            second = synthpref("run", run_file, "--local", "--no-progress", env=world.env)
            judge = synthpref("annotate", "run", run_file, env=world.env)
            server.clock.advance(HELD + 1_000)  # the first run's batches complete
            _, err = first.communicate(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 0, err
        for refused in (second, judge):
            assert refused.returncode == 1, refused.stderr
            message = one_error(refused)
            assert "another writer holds this run" in message
            assert "(synthpref run --local)" in message and "its lease ends at" in message
        files = [k for k in store.list("requests/") if k.endswith(".jsonl.commit")]
        assert files and len(server.batches) == len(files)
        # The lease is given up at the end: a rerun resumes and pays for nothing again.
        again = synthpref("run", run_file, "--local", "--no-progress", env=world.env)
        assert again.returncode == 0, again.stderr
        assert len(server.batches) == len(files)
        assert not store.exists("lease.json")
    assert isinstance(world.store, LocalStorage)
