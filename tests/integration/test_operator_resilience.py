"""The operator's harder lifecycle cases against the real control plane (fixtures and helpers
from `test_operator_run.py`): deleting a run mid-annotation (the finalizer cancels or leaves
its judge batches per `deletionPolicy`; owner references garbage-collect its Jobs) and the
operator killed (SIGKILL, a real process) between a batch create and its ledger write and again
during parse: the run still ends with the dataset of an uninterrupted run, no second batch or
Job for the same work; an on-policy run (with the judge's tokens used in status); a spec change
to a section whose stage started, rejected (SpecChangeRejected) until reverted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import PreferenceRow
from synthpref.storage import S3Storage, Storage, s3_client
from tests.integration import test_operator_run as base
from tests.support.openai_server import ACTIVE_STATUSES, BatchScript, Call
from tests.support.polling import wait_for
from tests.support.s3 import FAKE_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

env = base.env  # the fixture, shared with test_operator_run.py
Env = base.Env


def batch_statuses(env: Env) -> dict[str, str]:
    """Every batch the test server holds, by id, with its status now."""
    server = env.server
    with server._lock:
        return {i: server.get_batch(i).status for i in list(server.batches)}


def cancel_calls(env: Env) -> list[str]:
    return [
        c.path for c in env.server.calls_to("POST", "/v1/batches/") if c.path.endswith("/cancel")
    ]


@pytest.mark.parametrize("policy", ["cancel", "leave"])
def test_delete_mid_annotation(env: Env, policy: str) -> None:
    # Batches stay in progress (the server's clock moves a second per request).
    env.server.batch_script = lambda info: BatchScript(in_progress_s=1e9)
    name = f"gone-{policy}"
    operator = env.operator()
    try:
        env.apply(env.manifest(name, deletionPolicy=policy))
        env.wait_phase(name, {"Annotating"}, timeout=120)
        wait_for(
            lambda: (
                len(batch_statuses(env)) == 3
                and set(batch_statuses(env).values()) <= set(ACTIVE_STATUSES)
            ),
            60,
            "3 batches in progress",
        )
        assert env.jobs()
        result = env.kubectl(
            "delete",
            "prun",
            name,
            "-n",
            env.namespace,
            "--wait=true",
            "--timeout=60s",
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        operator.stop()
    statuses = batch_statuses(env)
    assert len(statuses) == 3
    if policy == "cancel":
        assert len(cancel_calls(env)) == 3
        assert set(statuses.values()) <= {"cancelling", "cancelled"}, statuses
    else:
        assert cancel_calls(env) == []
        # Left running: each still where it was (a batch the server has not yet moved on from
        # `validating`, whose clock advances per request, is left alone just the same).
        assert set(statuses.values()) <= {"validating", "in_progress"}, statuses
    # Owner references: the garbage collector removes the run's Jobs.
    wait_for(lambda: not env.jobs(), 45, "Jobs garbage-collected")


def dataset(storage: Storage) -> list[dict[str, Any]]:
    summary = storage.read_json(layout.SUMMARY)
    assert summary["pairs"] > 0
    return [
        row.model_dump()
        for shard in range(3)
        for row in read_rows(storage, layout.dataset_shard(shard), PreferenceRow)
    ]


def reference_run(env: Env, tmp_path: Path) -> list[dict[str, Any]]:
    """The dataset of the same spec run uninterrupted (`synthpref run --local`) elsewhere."""
    manifest = env.manifest("reference")
    manifest["spec"]["storage"] = {
        "uri": f"{env.s3_uri}-reference",
        "endpointUrl": env.s3_endpoint,
        "region": "us-east-1",
    }
    run_file = tmp_path / "reference.yaml"
    run_file.write_text(yaml.safe_dump(manifest))
    keys = {"ANSWER_KEY": env.server.api_key, "JUDGE_KEY": env.server.api_key}
    result = subprocess.run(
        [sys.executable, "-m", "synthpref", "run", str(run_file), "--local", "--no-progress"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **FAKE_CREDENTIALS, **keys},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dataset(S3Storage(f"{env.s3_uri}-reference", s3_client(env.s3_endpoint, "us-east-1")))


def operator_process(env: Env, log: Path) -> subprocess.Popen[bytes]:
    """`synthpref operator run` as its own process, so that a test can SIGKILL it."""
    command = [sys.executable, "-m", "synthpref", "operator", "run", "-n", env.namespace]
    command += ["--kubeconfig", str(env.kubeconfig), "--image", "local", "--cpu-image", "local"]
    command += ["--interval", "1"]
    command += [
        "--settings-json",
        json.dumps({"allowedEndpoints": [env.server.base_url, env.s3_endpoint]}),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def test_operator_killed_at_batch_create_and_during_parse(env: Env, tmp_path: Path) -> None:
    reference = reference_run(env, tmp_path)
    reference_batches = set(env.server.batches)
    creates_before = len(env.server.calls_to("POST", "/v1/batches"))
    env.kubelet.delay(lambda pod: "crash-parse" in pod["metadata"]["name"], 4, count=None)
    log = tmp_path / "operator.log"
    first = operator_process(env, log)
    killed = threading.Event()

    def kill_first(call: Call) -> None:
        # After the server created the batch, before the operator hears of it (or saves it).
        if call.path == "/v1/batches" and call.status == 200 and not killed.is_set():
            first.send_signal(signal.SIGKILL)
            killed.set()

    env.server.hook("POST", "/v1/batches", kill_first, when="after", times=None)
    second: subprocess.Popen[bytes] | None = None
    third = None
    try:
        env.apply(env.manifest("crash"))
        assert killed.wait(120), log.read_text()[-3000:]
        first.wait(10)
        assert len(set(env.server.batches) - reference_batches) == 1
        second = operator_process(env, log)
        env.wait_phase("crash", {"Parsing"}, timeout=90)
        second.send_signal(signal.SIGKILL)
        second.wait(10)
        third = env.operator()
        run = env.wait_phase("crash", {"Succeeded", "Failed"}, timeout=90)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
        if third is not None:
            third.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert dataset(env.storage()) == reference
    # One batch per request file: the batch created at the kill was found, not made again.
    batches = set(env.server.batches) - reference_batches
    assert len(batches) == run["status"]["stages"]["judge"]["files"] == 3
    assert len(env.server.calls_to("POST", "/v1/batches")) - creates_before == 3
    assert sorted(env.jobs()) == sorted(
        ["crash-prepare", "crash-mix", "crash-parse"] + [f"crash-generate-{m}" for m in base.MODELS]
    )
    parse_runs = [r for r in env.kubelet.runs_in(env.namespace) if "crash-parse" in r.name]
    assert len(parse_runs) == 1  # the restart during parse started no second parse


def test_on_policy_run_to_succeeded(env: Env) -> None:
    operator = env.operator()
    try:
        mix = {"responsesPerPrompt": 2, "onPolicyModel": "delta", "seed": 1}
        env.apply(env.manifest("onpolicy", mix={**mix, "maxRequestsPerFile": 20}))
        run = env.wait_phase("onpolicy", {"Succeeded", "Failed"}, timeout=120)
    finally:
        operator.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    rows = dataset(env.storage())
    assert run["status"]["result"]["pairs"] == len(rows) > 0
    for row in rows:
        assert "delta" in (row["chosen_model"], row["rejected_model"]), row
        assert row["chosen_model"] != row["rejected_model"]
    others = {m for r in rows for m in (r["chosen_model"], r["rejected_model"])} - {"delta"}
    assert len(others) >= 2  # the other side is drawn from the rest, not fixed
    # Both orders occur: the on-policy answer wins some pairs and loses others.
    assert {r["chosen_model"] == "delta" for r in rows} == {True, False}
    # Tokens used: what the server reported in the batches' result files.
    assert run["status"]["stages"]["judge"]["tokensUsed"] == billed_tokens(env) > 0


def billed_tokens(env: Env) -> int:
    total = 0
    for batch in env.server.batches.values():
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is None:
                continue
            for text in env.server.files[file_id].data.decode().splitlines():
                response = json.loads(text).get("response") or {}
                total += ((response.get("body") or {}).get("usage") or {}).get("total_tokens", 0)
    return total


def test_spec_change_after_mixing_rejected_until_reverted(env: Env) -> None:
    # Batches advance only as the operator polls (the server's clock moves per request).
    env.server.batch_script = lambda info: BatchScript(in_progress_s=20)
    manifest = env.manifest("locked")
    operator = env.operator()
    try:
        env.apply(manifest)
        env.wait_phase("locked", {"Annotating"}, timeout=120)
        changed = env.manifest("locked")
        changed["spec"]["mix"]["seed"] = 2
        env.apply(changed)

        def rejected() -> dict[str, Any] | None:
            conditions = env.run("locked")["status"].get("conditions", [])
            found = {c["type"]: c for c in conditions}.get("SpecChangeRejected")
            return found if found and found["status"] == "True" else None

        wait_for(lambda: rejected() is not None, 30, "SpecChangeRejected")
        condition = rejected()
        assert condition is not None
        assert "spec.mix cannot change once mixing has started" in condition["message"]
        run = env.run("locked")
        assert run["status"]["phase"] == "Annotating"
        assert run["status"]["message"] == condition["message"]
        # The run holds: no judge calls while the change stands.
        time.sleep(0.5)
        calls = len(env.server.calls)
        time.sleep(3)
        assert len(env.server.calls) == calls
        events = env.kubectl(
            "get", "events", "-n", env.namespace, "--field-selector", "involvedObject.name=locked"
        ).stdout
        assert "SpecChangeRejected" in events
        env.apply(manifest)  # reverted
        run = env.wait_phase("locked", {"Succeeded", "Failed"}, timeout=90)
    finally:
        operator.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    final = {c["type"]: c for c in run["status"]["conditions"]}["SpecChangeRejected"]
    assert final["status"] == "False" and final["reason"] == "SpecChangeReverted"
    assert set(run["status"]["lockedSpec"]) == {"mix", "judge", "binarization"}
