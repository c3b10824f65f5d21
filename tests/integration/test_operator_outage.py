"""Endpoint outages on the cluster: lost work never looks finished, and nothing is lost.

A run on the real control plane (openai-backend models and the OpenAI Batch judge, both on the
test server) meets two outages of the same endpoint: one in the middle of generation (worker
pods fail, commit nothing, and the Jobs' retries redo their shards once the endpoint is back)
and one while the controller steps the judge (the run's message and a Warning event say so
while it retries). It still reaches Succeeded with exactly the dataset an undisturbed local
run of the same spec makes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.local_run import run_local
from synthpref.rows import PreferenceRow
from synthpref.spec import PreferenceRunManifest
from synthpref.storage import LocalStorage, Storage
from synthpref_operator.devcluster.kubelet import PodRun
from tests.integration import test_operator_run as base
from tests.support.openai_server import DEFAULT_API_KEY

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

env = base.env  # the fixture, shared with test_operator_run.py
CHAT = "/v1/chat/completions"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"not seen within {timeout}s: {what}")


def dataset(storage: Storage, shards: int) -> list[PreferenceRow]:
    return [
        r for s in range(shards) for r in read_rows(storage, layout.dataset_shard(s), PreferenceRow)
    ]


def warnings(env: base.Env, name: str) -> list[tuple[str, str]]:
    events = client.CoreV1Api(env.api).list_namespaced_event(
        env.namespace, field_selector=f"involvedObject.name={name},type=Warning"
    )
    return [(str(e.reason), str(e.message)) for e in events.items]


def test_outages_mid_generation_and_mid_judging_lose_nothing(
    env: base.Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = env.manifest("outage")
    for model in document["spec"]["models"]:
        # Give up on the endpoint fast (one retry), so the pod fails and the Job retries it.
        model["openai"] = {**model["openai"], "maxRetries": 1, "timeoutSeconds": 10}
    document["spec"]["workers"] = {"backoffLimitPerIndex": 4}

    # The reference: the same spec, undisturbed, as a local run on local storage.
    monkeypatch.setenv("ANSWER_KEY", DEFAULT_API_KEY)
    monkeypatch.setenv("JUDGE_KEY", DEFAULT_API_KEY)
    reference = copy.deepcopy(document)
    reference["spec"]["storage"] = {
        **document["spec"]["storage"],
        "uri": str(tmp_path / "reference"),
        "credentials": None,
    }
    manifest = PreferenceRunManifest.model_validate(reference)
    local = LocalStorage(tmp_path / "reference")
    run_local(manifest, local, progress=False)
    expected = dataset(local, 3)
    assert expected

    server = env.server
    server.calls.clear()
    server.go_down_after("POST", CHAT, 6)  # generation has begun, most answers are to come
    operator = env.operator()
    try:
        env.apply(document)

        def failed_generation_pod() -> list[PodRun]:
            return [
                r
                for r in env.kubelet.runs_in(env.namespace)
                if r.labels.get("synthpref.dev/stage") == "generate"
                and r.exit_code not in (None, 0)
            ]

        failed = wait_for("a generation pod failing on the outage", failed_generation_pod)
        log = failed[0].log_path.read_text()
        errors = [line for line in log.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "Traceback" not in log, log
        assert "unreachable" in errors[0] and server.base_url in errors[0], errors[0]
        assert env.phase("outage") == "Generating"  # a failed pod is not a finished shard
        server.come_back()

        # The judge's endpoint goes down right after its first batch is created.
        server.go_down_after("POST", "/v1/batches", 1)
        held = wait_for(
            "the run's message naming the judge outage",
            lambda: (
                "unreachable since" in str((env.run("outage").get("status") or {}).get("message"))
            ),
        )
        assert held
        status = env.run("outage")["status"]
        assert status["phase"] == "Annotating", status
        assert status["stages"]["judge"]["endpointFailingSince"]
        assert f"judge endpoint {server.base_url} unreachable" in status["message"]
        wait_for(
            "a JudgeUnreachable Warning event",
            lambda: any(r == "JudgeUnreachable" for r, _ in warnings(env, "outage")),
        )
        server.come_back()
        run = env.wait_phase("outage", {"Succeeded", "Failed"}, timeout=300)
    finally:
        operator.stop()
        server.come_back()

    status = run["status"]
    assert status["phase"] == "Succeeded", status
    assert "endpointFailingSince" not in status["stages"]["judge"]
    got = dataset(env.storage(), 3)
    assert [r.model_dump() for r in got] == [r.model_dump() for r in expected]
    assert status["losses"] == local.read_json(layout.SUMMARY)["losses"]
    # Every generation shard was committed once the endpoint was back, none by a failed pod.
    assert any(r.exit_code == 0 for r in env.kubelet.runs_in(env.namespace))
