"""The operator against the real control plane: a PreferenceRun applied with kubectl runs to
Succeeded (answers from the OpenAI-compatible test server through the `openai` generation
backend, the OpenAI Batch judge stepped by the controller itself), with the dataset in S3 and
the printer columns in `kubectl get prun`; then lifecycle: a pod failure retried, retries
exhausted (Failed naming model and shard), suspend/resume, and an operator restart."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import PreferenceRow
from synthpref.storage import S3Storage, s3_client
from synthpref_operator.crd import CRD_PATH
from synthpref_operator.devcluster.kubelet import TestKubelet, job_index
from synthpref_operator.handlers import OperatorConfig, OperatorThread
from synthpref_operator.names import LABEL_ALLOW_RUNS
from synthpref_operator.settings import OperatorSettings
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer
from tests.support.s3 import FAKE_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[2]
MODELS = ("alpha", "beta", "gamma", "delta")
PROMPTS = 10


@dataclass
class Env:
    namespace: str
    kubectl: Kubectl
    api: Any
    kubeconfig: Path
    server: OpenAIServer
    s3_endpoint: str
    s3_uri: str
    kubelet: TestKubelet

    def storage(self) -> S3Storage:
        return S3Storage(self.s3_uri, s3_client(self.s3_endpoint, "us-east-1"))

    def settings(self, **overrides: Any) -> OperatorSettings:
        """The test's operator settings: the test server is the one allowed endpoint."""
        defaults: dict[str, Any] = {
            "image": "local",
            "cpu_image": "local",
            "allowed_endpoints": [self.server.base_url, self.s3_endpoint],
        }
        return OperatorSettings(**(defaults | overrides))

    def operator(self, **settings: Any) -> OperatorThread:
        config = OperatorConfig(
            namespaces=[self.namespace],
            kubeconfig=str(self.kubeconfig),
            settings=self.settings(**settings),
            interval=1.0,
        )
        return OperatorThread(config).start()

    def run(self, name: str) -> dict[str, Any]:
        obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "synthpref.dev", "v1alpha1", self.namespace, "preferenceruns", name
        )
        return cast(dict[str, Any], obj)

    def phase(self, name: str) -> str:
        return str((self.run(name).get("status") or {}).get("phase", ""))

    def wait_phase(self, name: str, phases: set[str], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(name)
            if (run.get("status") or {}).get("phase") in phases:
                return run
            time.sleep(0.3)
        raise AssertionError(
            f"{name}: not {phases} after {timeout}s: {self.run(name).get('status')}"
        )

    def jobs(self) -> dict[str, Any]:
        items = client.BatchV1Api(self.api).list_namespaced_job(self.namespace).items
        return {str(j.metadata.name if j.metadata else ""): j for j in items}

    def manifest(self, name: str, **spec: Any) -> dict[str, Any]:
        endpoint = {
            "baseUrl": self.server.base_url,
            "apiKeyEnv": "ANSWER_KEY",
            "apiKeySecret": {"name": "openai", "key": "token"},
        }
        document: dict[str, Any] = {
            "prompts": {"uri": f"{self.s3_uri}-in/prompts/", "shardSize": 4},
            "storage": {
                "uri": self.s3_uri,
                "endpointUrl": self.s3_endpoint,
                "region": "us-east-1",
                "credentials": {
                    "accessKeyId": {"name": "s3", "key": "id"},
                    "secretAccessKey": {"name": "s3", "key": "secret"},
                },
            },
            "models": [
                {
                    "name": m,
                    "backend": "openai",
                    "path": m,
                    "replicas": 2,
                    "sampling": {"maxTokens": 16, "seed": i},
                    "openai": endpoint,
                }
                for i, m in enumerate(MODELS)
            ],
            "mix": {"responsesPerPrompt": 4, "seed": 1, "maxRequestsPerFile": 20},
            "judge": {
                "backend": "openai",
                "model": "judge-1",
                "pollIntervalSeconds": 0.01,
                "openai": {**endpoint, "apiKeyEnv": "JUDGE_KEY"},
            },
            "binarization": {"strategy": "best-vs-worst"},
            "workers": {"backoffLimitPerIndex": 1},
        }
        document.update(spec)
        return {
            "apiVersion": "synthpref.dev/v1alpha1",
            "kind": "PreferenceRun",
            "metadata": {"name": name},
            "spec": document,
        }

    def apply(self, document: dict[str, Any]) -> None:
        result = self.kubectl(
            "apply", "-n", self.namespace, "-f", "-", input=json.dumps(document), check=False
        )
        assert result.returncode == 0, result.stderr


@pytest.fixture
def env(
    kubectl: Kubectl,
    k8s_api_client: Any,
    kubeconfig: Path,
    namespace: str,
    test_kubelet: TestKubelet,
    s3_endpoint: str,
    s3_uri: str,
) -> Iterator[Env]:
    result = kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CRD_PATH), check=False
    )
    assert result.returncode == 0, result.stderr
    kubectl(
        "wait", "--for=condition=Established", "--timeout=300s", "crd/preferenceruns.synthpref.dev"
    )
    core = client.CoreV1Api(k8s_api_client)
    for name, data in [
        ("openai", {"token": DEFAULT_API_KEY}),
        (
            "s3",
            {
                "id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            },
        ),
    ]:
        # Opted in for runs (README "Security").
        meta = client.V1ObjectMeta(name=name, labels={LABEL_ALLOW_RUNS: "true"})
        core.create_namespaced_secret(namespace, client.V1Secret(metadata=meta, string_data=data))
    with OpenAIServer(models={*MODELS, "judge-1"}) as server:
        inputs = S3Storage(s3_uri + "-in", s3_client(s3_endpoint, "us-east-1"))
        inputs.write_bytes(
            "prompts/a.jsonl",
            b"".join(b'{"text": "Question %d: why?"}\n' % i for i in range(PROMPTS)),
        )
        yield Env(
            namespace,
            kubectl,
            k8s_api_client,
            kubeconfig,
            server,
            s3_endpoint,
            s3_uri,
            test_kubelet,
        )


def stage_hops(jobs: dict[str, Any]) -> list[float]:
    """Seconds from the last Job of a stage finishing to the next stage's Job being created."""

    def stage(j: Any) -> str:
        return str(j.metadata.labels["synthpref.dev/stage"])

    order = ["prepare", "generate", "mix", "judge", "parse"]
    by_stage: dict[str, list[Any]] = {}
    for j in jobs.values():
        by_stage.setdefault(stage(j), []).append(j)
    present = [s for s in order if s in by_stage]
    hops = []
    for before, after in itertools.pairwise(present):
        done = max(j.status.completion_time for j in by_stage[before])
        created = min(j.metadata.creation_timestamp for j in by_stage[after])
        hops.append((created - done).total_seconds())
    return hops


def test_run_to_succeeded_with_dataset_in_s3(env: Env) -> None:
    operator = env.operator()
    started = time.monotonic()
    try:
        env.apply(env.manifest("demo"))
        run = env.wait_phase("demo", {"Succeeded", "Failed"})
    finally:
        operator.stop()
    wall = time.monotonic() - started
    status = run["status"]
    assert status["phase"] == "Succeeded", status
    storage = env.storage()
    summary = storage.read_json(layout.SUMMARY)
    rows = [r for s in range(3) for r in read_rows(storage, layout.dataset_shard(s), PreferenceRow)]
    assert status["result"]["pairs"] == summary["pairs"] == len(rows) > 0
    assert status["result"]["datasetUri"] == f"{env.s3_uri}/dataset/"
    # The parse Job's last worker wrote the report before the summary that ends the run.
    assert status["result"]["reportUri"] == f"{env.s3_uri}/report/index.html"
    assert "reportError" not in status["result"]
    for key in (layout.REPORT_HTML, layout.REPORT_JSON, layout.PROVENANCE, layout.DATASET_CARD):
        assert storage.exists(key), key
    assert status["progress"] == "22/22"  # 1 + 3 shards x (4 models + mix + judge + parse)
    assert status["stages"]["judge"]["requestsDone"] == PROMPTS * 4
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    # One Job per stage and model, no judge Job (the controller ran the batches).
    assert sorted(env.jobs()) == sorted(
        ["demo-prepare", "demo-mix", "demo-parse"] + [f"demo-generate-{m}" for m in MODELS]
    )
    assert env.jobs()["demo-generate-alpha"].spec.completions == 2
    # One batch per request file (a file per shard here): no duplicate submission.
    assert len(env.server.batches) == status["stages"]["judge"]["files"] == 3
    table = env.kubectl("get", "prun", "-n", env.namespace).stdout
    header, line = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "PAIRS", "AGE"]
    assert line.split()[:4] == ["demo", "Succeeded", "22/22", str(summary["pairs"])]
    wide = env.kubectl("get", "prun", "-n", env.namespace, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[-4:] == ["JUDGE", "COST", "BLOCKED", "MESSAGE"]
    assert "openai" in wide.splitlines()[1]
    events = env.kubectl(
        "get", "events", "-n", env.namespace, "--field-selector", "involvedObject.name=demo"
    ).stdout
    for reason in ("Preparing", "Generating", "Mixing", "Annotating", "Parsing", "Succeeded"):
        assert reason in events, events
    # The report's warnings (its small warnings.json) are on the run: a condition, and one
    # Warning Event each.
    warnings = storage.read_json(layout.REPORT_WARNINGS)["warnings"]
    warned = {c["type"]: c for c in status["conditions"]}["ReportWarnings"]
    assert warned["status"] == ("True" if warnings else "False")
    assert all(w["message"] in warned["message"] for w in warnings)
    assert events.count("ReportWarning") == len(warnings), events
    assert DEFAULT_API_KEY not in json.dumps(run)
    hops = stage_hops(env.jobs())
    print(f"\nend-to-end wall time {wall:.1f}s; stage hops (s): {hops}")


def test_pod_failure_retried_then_exhausted(env: Env) -> None:
    # beta's index 1 fails once (retried by the Job), gamma's index 0 fails every time.
    env.kubelet.fail(job_index(1, "flaky-generate-beta"), count=1)
    env.kubelet.fail(job_index(0, "flaky-generate-gamma"), count=None)
    operator = env.operator()
    try:
        env.apply(env.manifest("flaky"))
        run = env.wait_phase("flaky", {"Failed", "Succeeded"})
    finally:
        operator.stop()
    status = run["status"]
    assert status["phase"] == "Failed"
    # gamma index 0 of 2 workers over 3 shards takes shards 0 and 2.
    assert (
        "model gamma: shard(s) 0, 2 failed: Job flaky-generate-gamma index(es) 0"
        in (status["message"])
    )
    # How the pods ended, read from the pods themselves.
    assert "pods: index 0: Error (exit 1)" in status["message"]
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "JobFailed"

    def beta_runs() -> list[Any]:
        return [
            r
            for r in env.kubelet.runs_in(env.namespace)
            if r.labels.get("synthpref.dev/model") == "beta"
            and r.completion_index == 1
            and r.finished
        ]

    env.kubelet.wait_until(lambda: len(beta_runs()) == 2, timeout=60)  # failed once, retried
    assert [r.exit_code for r in beta_runs()] == [1, 0]
    assert env.storage().committed(layout.generation_shard("beta", 1)) is not None
    assert "mix" not in " ".join(env.jobs())
    events = env.kubectl("get", "events", "-n", env.namespace).stdout
    assert "Warning" in events and "gamma" in events


def test_suspend_then_resume(env: Env) -> None:
    env.kubelet.delay(lambda pod: "paused-generate-" in pod["metadata"]["name"], 6, count=None)
    operator = env.operator()
    try:
        env.apply(env.manifest("paused"))
        env.wait_phase("paused", {"Generating"}, timeout=60)
        env.apply(env.manifest("paused", suspend=True))
        run = env.wait_phase("paused", {"Suspended"}, timeout=30)
        # Every generation Job suspended, polled (a loaded machine) rather than after a sleep.
        deadline = time.monotonic() + 120
        while True:
            jobs = env.jobs()
            generation = [j for n, j in jobs.items() if "-generate-" in n]
            if len(generation) == len(MODELS) and all(j.spec.suspend for j in generation):
                break
            assert time.monotonic() < deadline, {n: j.spec.suspend for n, j in jobs.items()}
            time.sleep(0.3)
        assert "mix" not in " ".join(jobs)
        suspended = {c["type"]: c for c in run["status"]["conditions"]}["Suspended"]
        assert suspended["status"] == "True"
        env.kubelet.clear_faults()
        env.apply(env.manifest("paused", suspend=False))
        run = env.wait_phase("paused", {"Succeeded", "Failed"})
    finally:
        operator.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    resumed = {c["type"]: c for c in run["status"]["conditions"]}["Suspended"]
    assert resumed["status"] == "False" and resumed["reason"] == "Resumed"


def test_operator_restart_creates_no_duplicates(env: Env) -> None:
    env.kubelet.delay(lambda pod: "again-generate-" in pod["metadata"]["name"], 3, count=None)
    first = env.operator()
    env.apply(env.manifest("again"))
    env.wait_phase("again", {"Generating"}, timeout=60)
    first.stop()  # after which none of its creations is in flight
    created_first = list(first.reconciler.applier.jobs_created)
    second = env.operator()
    try:
        run = env.wait_phase("again", {"Succeeded", "Failed"})
    finally:
        second.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    created_second = list(second.reconciler.applier.jobs_created)
    assert not set(created_first) & set(created_second)
    assert sorted(created_first + created_second) == sorted(
        f"{env.namespace}/{name}" for name in env.jobs()
    )
    # Every generation index ran once: the restart redid no work.
    runs = [r for r in env.kubelet.runs_in(env.namespace) if "-generate-" in r.name]
    assert len(runs) == len(MODELS) * 2


def test_a_job_the_api_server_refuses_blocks_the_run_until_it_is_allowed(env: Env) -> None:
    """A ResourceQuota lets only two Jobs in: prepare and one model's generation Job. The
    run says why the others are missing (Blocked JobRefused, with the API server's words, and
    a Warning Event), and goes on to Succeeded by itself once the quota is raised."""
    core = client.CoreV1Api(env.api)
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="jobs"),
        spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "2"}),
    )
    core.create_namespaced_resource_quota(env.namespace, quota)

    def blocked() -> dict[str, Any]:
        conditions = (env.run("capped").get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Blocked"), {})

    operator = env.operator()
    try:
        env.apply(env.manifest("capped"))
        deadline = time.monotonic() + 180
        while not (
            blocked().get("reason") == "JobRefused" and "-generate-" in blocked()["message"]
        ):
            assert time.monotonic() < deadline, env.run("capped").get("status")
            time.sleep(0.5)
        condition = blocked()
        assert condition["status"] == "True"
        assert "capped-generate-" in condition["message"] and "quota" in condition["message"]
        assert env.run("capped")["status"]["message"] == condition["message"]
        core.patch_namespaced_resource_quota(
            "jobs", env.namespace, {"spec": {"hard": {"count/jobs.batch": "20"}}}
        )
        run = env.wait_phase("capped", {"Succeeded", "Failed"})
    finally:
        operator.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert blocked()["status"] == "False"
    events = env.kubectl(
        "get", "events", "-n", env.namespace, "--field-selector", "involvedObject.name=capped"
    ).stdout
    assert "JobRefused" in events, events
