"""The Helm chart end to end, with the real helm and kubectl against the local control plane.

`helm install` puts the operator's Deployment in a namespace; the test kubelet runs its pod as a
local process that talks to the API server as the chart's ServiceAccount (so the chart's RBAC
and default allow-lists are what it gets). With the example's Secrets created and opted in as
its comment says, `kubectl apply -f examples/gateway-run.yaml` then runs to Succeeded: the
models answer through the OpenAI-compatible test server, the operator steps the Batch judge,
parse writes the dataset to S3 (moto). `kubectl get prun -o wide` and `kubectl describe prun`
show the columns, conditions and events; /metrics, /healthz and /readyz answer on the pod's
port; every log line is JSON; `helm uninstall` leaves none of the release's objects behind.
With two replicas only the Lease holder acts, and the standby takes over when the leader's pod
is deleted.

Set SYNTHPREF_TEST_ARTIFACTS to a directory to keep the captured kubectl output there.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from synthpref.jsonl import read_rows
from synthpref.rows import PreferenceRow
from synthpref.spec import load_run
from synthpref.storage import S3Storage, s3_client
from synthpref_operator.devcluster.controlplane import free_port
from synthpref_operator.devcluster.kubelet import TestKubelet
from synthpref_operator.names import LABEL_ALLOW_RUNS
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer
from tests.support.polling import wait_for
from tests.support.s3 import FAKE_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(480)]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
Helm = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "synthpref"
EXAMPLE = ROOT / "examples" / "gateway-run.yaml"
PROMPTS = ROOT / "examples" / "prompts" / "quickstart.jsonl"
BUCKET = "synthpref-demo"
RUN = "gateway-run"


@dataclass
class Cluster:
    """One namespace with the example's Secrets, prompts in S3 and the answering server."""

    namespace: str
    kubectl: Kubectl
    helm_run: Helm
    api: Any
    kubelet: TestKubelet
    server: OpenAIServer
    s3_endpoint: str

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.helm_run(*args, check=False, timeout=180)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result

    def install(self, release: str, *values: str) -> None:
        env = {
            "OPENAI_BASE_URL": self.server.base_url,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            self.namespace,
            "--set",
            "operator.reconcileIntervalSeconds=1",
            "--set",
            "operator.logFormat=json",
            "--set-json",
            f"workers.env={json.dumps(env)}",
            "--set-json",
            "operator.env=" + json.dumps([{"name": k, "value": v} for k, v in env.items()]),
            *values,
            "--wait",
            "--timeout",
            "90s",
        )

    def phase(self) -> str:
        result = self.kubectl(
            "get", "prun", RUN, "-n", self.namespace, "-o", "jsonpath={.status.phase}", check=False
        )
        return result.stdout.strip()

    def wait_succeeded(self, timeout: float = 180) -> None:
        def done() -> bool:
            phase = self.phase()
            assert phase != "Failed", self.kubectl("describe", "prun", RUN, "-n", self.namespace)
            return phase == "Succeeded"

        wait_for(done, timeout, f"{RUN} to succeed")

    def operator_pods(self, release: str) -> list[str]:
        pods: Any = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/instance={release}"
        )
        return sorted(p.metadata.name for p in pods.items if not p.metadata.deletion_timestamp)

    def log(self, pod: str) -> str:
        return self.kubelet.pod_log(self.namespace, pod)

    def dataset(self) -> list[PreferenceRow]:
        storage = S3Storage(f"s3://{BUCKET}/runs/{RUN}", s3_client(self.s3_endpoint, "us-east-1"))
        rows: list[PreferenceRow] = []
        for key in storage.list("dataset/"):
            if key.endswith(".jsonl"):
                rows += read_rows(storage, key, PreferenceRow)
        return rows


@pytest.fixture
def cluster(
    kubectl: Kubectl,
    helm: Helm,
    k8s_api_client: Any,
    namespace: str,
    test_kubelet: TestKubelet,
    s3_endpoint: str,
) -> Iterator[Cluster]:
    s3 = s3_client(s3_endpoint, "us-east-1")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    # Each test starts from an empty bucket: the example's storage URI is fixed.
    listed = s3.list_objects_v2(Bucket=BUCKET)
    for item in listed.get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.put_object(Bucket=BUCKET, Key="prompts/quickstart.jsonl", Body=PROMPTS.read_bytes())
    for name, pairs in (
        ("openai-api-key", {"api-key": DEFAULT_API_KEY}),
        (
            "s3-credentials",
            {
                "access-key-id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret-access-key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            },
        ),
    ):
        literals = [f"--from-literal={k}={v}" for k, v in pairs.items()]
        kubectl("create", "secret", "generic", name, "-n", namespace, *literals)
    # Opted in for runs, as the example's comment says.
    label = f"{LABEL_ALLOW_RUNS}=true"
    kubectl("label", "secret", "openai-api-key", "s3-credentials", "-n", namespace, label)
    spec = load_run(EXAMPLE).spec
    models = {m.path for m in spec.models} | {spec.judge.model}
    with OpenAIServer(models=models) as server:
        yield Cluster(
            namespace,
            kubectl,
            helm,
            k8s_api_client,
            test_kubelet,
            server,
            s3_endpoint,
        )


def keep(name: str, text: str) -> None:
    directory = os.environ.get("SYNTHPREF_TEST_ARTIFACTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / name).write_text(text)


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_helm_install_runs_the_example_to_succeeded(cluster: Cluster) -> None:
    release = f"sp-{uuid.uuid4().hex[:5]}"
    port = free_port()
    cluster.install(release, "--set", f"metrics.port={port}")
    [pod] = cluster.operator_pods(release)
    wait_for(lambda: scrape(port, "/readyz")[0] == 200, 60, "the operator to be ready")

    started = time.monotonic()
    applied = cluster.kubectl("apply", "-n", cluster.namespace, "-f", str(EXAMPLE))
    assert f"preferencerun.synthpref.dev/{RUN} created" in applied.stdout
    cluster.wait_succeeded()
    elapsed = time.monotonic() - started

    wide = cluster.kubectl("get", "prun", "-n", cluster.namespace, "-o", "wide").stdout
    describe = cluster.kubectl("describe", "prun", RUN, "-n", cluster.namespace).stdout
    keep("get-prun-wide.txt", wide)
    keep("describe-prun.txt", describe)
    keep("timing.txt", f"apply -> Succeeded: {elapsed:.1f} s\n")
    header, row = wide.splitlines()[:2]
    heads = ["NAME", "PHASE", "PROGRESS", "PAIRS", "AGE", "JUDGE", "COST", "BLOCKED", "MESSAGE"]
    assert header.split() == heads
    assert row.split()[:2] == [RUN, "Succeeded"]
    assert "NotBlocked" in row.split()[6:8]  # COST is empty when the judge has no price
    pairs = cluster.dataset()
    assert len(pairs) >= 20  # 24 prompts; a prompt whose answers all tie is dropped
    assert str(len(pairs)) in row.split()
    words = " ".join(describe.split())
    for expected in ("Phase: Succeeded", "Conditions:", "Type: Succeeded", "Events:"):
        assert expected in words, expected
    events = describe.split("Events:")[1]
    for reason in ("Preparing", "Generating", "Mixing", "Annotating", "Parsing", "Succeeded"):
        assert reason in events, reason
    assert DEFAULT_API_KEY not in describe

    # Every Job ran as the chart's operator; the workers got no API credentials.
    jobs: list[Any] = client.BatchV1Api(cluster.api).list_namespaced_job(cluster.namespace).items
    stages = sorted({j.metadata.labels["synthpref.dev/stage"] for j in jobs})
    assert stages == ["generate", "mix", "parse", "prepare"]
    assert all(j.spec.template.spec.automount_service_account_token is False for j in jobs)

    code, metrics = scrape(port, "/metrics")
    assert code == 200
    assert samples(metrics, "synthpref_runs")[(("phase", "Succeeded"),)] == 1
    created = samples(metrics, "synthpref_jobs_created_total")
    assert sum(created.values()) == len(jobs)
    assert scrape(port, "/healthz")[0] == 200

    lines = [line for line in cluster.log(pod).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all("namespace" in r and "run" in r for r in records)
    created_lines = [r for r in records if "created Job" in r["message"]]
    assert len(created_lines) == len(jobs)
    assert {(r["namespace"], r["run"]) for r in created_lines} == {(cluster.namespace, RUN)}
    keep("operator-log-sample.jsonl", "\n".join([*lines[:5], json.dumps(created_lines[0])]))

    cluster.kubectl("delete", "prun", RUN, "-n", cluster.namespace, "--timeout=60s")
    cluster.helm("uninstall", release, "--namespace", cluster.namespace, "--wait")
    kinds = "deployment,replicaset,pod,service,serviceaccount,role,rolebinding,lease"
    selector = f"app.kubernetes.io/instance={release}"

    def left() -> str:
        namespaced = cluster.kubectl(
            "get", kinds, "-n", cluster.namespace, "-l", selector, "-o", "name"
        )
        wide = cluster.kubectl(
            "get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name"
        )
        return (namespaced.stdout + wide.stdout).strip()

    # The pod stops on SIGTERM and the garbage collector removes the ReplicaSet: wait for both.
    wait_for(lambda: left() == "", 60, "the release's objects to go")


def lease_holder(cluster: Cluster, release: str) -> str | None:
    """The holder of the release's Lease (named after the release), if any."""
    leases: Any = client.CoordinationV1Api(cluster.api).list_namespaced_lease(cluster.namespace)
    for lease in leases.items:
        if lease.metadata.name.startswith(release) and lease.spec:
            return str(lease.spec.holder_identity) if lease.spec.holder_identity else None
    return None


def test_second_replica_stands_by_and_takes_over(cluster: Cluster) -> None:
    release = f"sp-{uuid.uuid4().hex[:5]}"
    # Both replicas share the host's ports under the test kubelet: no metrics server here.
    cluster.install(release, "--set", "replicaCount=2", "--set", "metrics.enabled=false")
    pods = cluster.operator_pods(release)
    assert len(pods) == 2
    leader = wait_for(lambda: lease_holder(cluster, release), 60, "a Lease holder")
    [standby] = [p for p in pods if p != leader]
    wait_for(lambda: "waiting to lead" in cluster.log(standby), 30, "the standby to wait")

    cluster.kubectl("apply", "-n", cluster.namespace, "-f", str(EXAMPLE))
    wait_for(lambda: cluster.phase() in {"Generating", "Mixing"}, 120, "generation to start")
    # The leader's pod goes away mid-run: SIGTERM, it releases the Lease, the standby leads.
    client.CoreV1Api(cluster.api).delete_namespaced_pod(leader, cluster.namespace)
    wait_for(lambda: lease_holder(cluster, release) == standby, 45, "the standby to lead")
    cluster.wait_succeeded()
    assert "created Job" not in cluster.log(standby).split("leading:")[0]
    assert len(cluster.dataset()) >= 20
    cluster.kubectl("delete", "prun", RUN, "-n", cluster.namespace, "--timeout=60s")
    cluster.helm("uninstall", release, "--namespace", cluster.namespace, "--wait")
