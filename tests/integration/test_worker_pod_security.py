"""Worker pods in a namespace that enforces the Pod Security Standard `restricted`, judged by
the real PodSecurity admission of the local kube-apiserver: every kind of pod the builders
make is admitted (GPU ones too, by a server-side dry run: they cannot run here), a
non-compliant one is refused, and a whole run through the operator reaches Succeeded with
every Job's pods admitted (no FailedCreate)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from synthpref_operator.handlers import OperatorConfig, OperatorThread
from synthpref_operator.settings import OperatorSettings
from tests.builders import WORKER_JOBS, worker_job
from tests.integration import test_operator_run as base

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

env = base.env  # the fixture, shared with test_operator_run.py

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# Secrets a run may use are opted in with this label (README "Security").
ALLOW_RUNS_LABEL = {"synthpref.dev/allow-runs": "true"}


def enforce_restricted(api: Any, namespace: str) -> None:
    client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})


def pod_from_template(job: dict[str, Any], name: str) -> dict[str, Any]:
    """A Pod made from a Job's pod template, as the Job controller would make it."""
    template = copy.deepcopy(job["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def dry_run_create(core: Any, namespace: str, pod: dict[str, Any]) -> str | None:
    """None when the API server admits `pod` (server-side dry run), else its refusal."""
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    except client.ApiException as e:
        return f"{e.status} {e.body}"
    return None


Contexts = tuple[dict[str, Any], dict[str, Any]]  # the pod's and the container's


def _without(context: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in context.items() if k != key}


# (what is broken, how (pod, container securityContext -> new ones), a control the refusal
# must name)
NON_COMPLIANT: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], Contexts], str]] = [
    ("no security contexts", lambda pod, ctr: ({}, {}), "runAsNonRoot"),
    (
        "privilege escalation",
        lambda pod, ctr: (pod, {**ctr, "allowPrivilegeEscalation": True}),
        "allowPrivilegeEscalation != false",
    ),
    (
        "capabilities kept",
        lambda pod, ctr: (pod, _without(ctr, "capabilities")),
        "unrestricted capabilities",
    ),
    (
        "no seccomp profile",
        lambda pod, ctr: (_without(pod, "seccompProfile"), ctr),
        "seccompProfile",
    ),
    ("root", lambda pod, ctr: ({**pod, "runAsUser": 0}, ctr), "runAsUser=0"),
]


def test_restricted_namespace_admits_every_worker_pod(k8s_api_client: Any, namespace: str) -> None:
    enforce_restricted(k8s_api_client, namespace)
    core = client.CoreV1Api(k8s_api_client)
    settings = OperatorSettings()
    refused = {}
    for label, _, _ in WORKER_JOBS:
        job = worker_job(label, settings, namespace=namespace)
        problem = dry_run_create(core, namespace, pod_from_template(job, label))
        if problem is not None:
            refused[label] = problem
    assert refused == {}, refused
    # The check can fail: the same pod, broken one way at a time, is refused by name.
    pod = pod_from_template(worker_job("generate-vllm-4gpu", settings), "broken")
    container = pod["spec"]["containers"][0]
    for what, breaks, control in NON_COMPLIANT:
        broken = copy.deepcopy(pod)
        contexts = breaks(pod["spec"]["securityContext"], container["securityContext"])
        broken["spec"]["securityContext"], broken["spec"]["containers"][0]["securityContext"] = (
            contexts
        )
        problem = dry_run_create(core, namespace, broken)
        assert problem is not None, f"{what}: admitted"
        assert "violates PodSecurity" in problem and control in problem, (what, problem)


def test_run_succeeds_in_a_restricted_namespace(env: base.Env) -> None:
    enforce_restricted(env.api, env.namespace)
    core = client.CoreV1Api(env.api)
    for secret in ("openai", "s3"):
        core.patch_namespaced_secret(
            secret, env.namespace, {"metadata": {"labels": ALLOW_RUNS_LABEL}}
        )
    settings = OperatorSettings(
        image="local", cpu_image="local", allowed_endpoints=[env.server.base_url, env.s3_endpoint]
    )
    config = OperatorConfig(
        namespaces=[env.namespace], kubeconfig=str(env.kubeconfig), settings=settings, interval=1.0
    )
    operator = OperatorThread(config).start()
    try:
        env.apply(env.manifest("hardened"))
        run = wait_done_or_refused(env, "hardened", timeout=240)
    finally:
        operator.stop()
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert failed_creates(env) == []
    jobs = env.jobs()
    assert sorted(jobs) == sorted(
        ["hardened-prepare", "hardened-mix", "hardened-parse"]
        + [f"hardened-generate-{m}" for m in base.MODELS]
    )
    # Every index of every Job ran a pod the admission let in.
    runs = env.kubelet.runs_in(env.namespace)
    for name, job in jobs.items():
        indexes = {
            r.completion_index
            for r in runs
            if r.labels.get("batch.kubernetes.io/job-name") == name and r.exit_code == 0
        }
        assert indexes == set(range(job.spec.completions)), name


def failed_creates(env: base.Env) -> list[str]:
    events = client.CoreV1Api(env.api).list_namespaced_event(
        env.namespace, field_selector="reason=FailedCreate"
    )
    return [f"{e.involved_object.name}: {e.message}" for e in events.items]


def wait_done_or_refused(env: base.Env, name: str, timeout: float) -> dict[str, Any]:
    """The run once it is Succeeded or Failed; fails at once when a pod is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refused = failed_creates(env)
        assert refused == [], refused
        run = env.run(name)
        if (run.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"{name}: not finished after {timeout}s: {env.run(name).get('status')}")
