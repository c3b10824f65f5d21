"""The local control plane: CRD validation, the Job controller and GC with the test kubelet,
kubectl/helm, GPU slots and the kubelet's fault injection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from synthpref_operator.devcluster.controlplane import ControlPlane
from synthpref_operator.devcluster.kubelet import TestKubelet, in_namespace, job_index
from synthpref_operator.names import run_selector
from synthpref_operator.observe import JOB_NAME_LABEL, unscheduled_pods
from tests.support.polling import wait_for

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def job_condition(batch: Any, ns: str, name: str) -> tuple[str, str] | None:
    """(type, reason) of the Job's Complete/Failed condition, if it has one."""
    job = batch.read_namespaced_job_status(name, ns)
    for cond in (job.status and job.status.conditions) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return cond.type, cond.reason or ""
    return None


def indexed_job(
    name: str,
    script: str,
    *,
    completions: int,
    backoff_limit_per_index: int | None = None,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An Indexed Job running ``python -c script`` with INDEX from the completion annotation."""
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": completions,
        "parallelism": completions,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "local/python",
                        "command": ["python", "-c", script],
                        "env": [
                            {
                                "name": "INDEX",
                                "valueFrom": {"fieldRef": {"fieldPath": INDEX_ANNOTATION}},
                            },
                            {
                                "name": "POD_NAME",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            },
                        ],
                    }
                ],
            }
        },
    }
    if backoff_limit_per_index is None:
        spec["backoffLimit"] = 0
    else:
        spec["backoffLimitPerIndex"] = backoff_limit_per_index
        spec["backoffLimit"] = 1000
    meta: dict[str, Any] = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def create_job(batch: Any, ns: str, body: dict[str, Any]) -> None:
    batch.create_namespaced_job(ns, body)


def write_index_script(out: Path) -> str:
    """Python that appends '<INDEX> <JOB_COMPLETION_INDEX> <pod>' to out/<INDEX>."""
    return (
        "import os\n"
        f"out = {str(out)!r}\n"
        "i = os.environ['INDEX']\n"
        "with open(os.path.join(out, i), 'a') as f:\n"
        "    f.write(f\"{i} {os.environ['JOB_COMPLETION_INDEX']} {os.environ['POD_NAME']}\\n\")\n"
    )


# ---------------------------------------------------------------------------- CRD
CRD_GROUP = "test.synthpref.dev"


def widget_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 1},
                                        "mode": {"type": "string", "enum": ["fast", "slow"]},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_schema_enforced(k8s_api_client: Any, kubectl: Kubectl, namespace: str) -> None:
    crds: Any = client.ApiextensionsV1Api(k8s_api_client)
    name = f"widgets.{CRD_GROUP}"
    kubectl("apply", "-f", "-", input=json.dumps(widget_crd()))
    try:

        def established() -> bool:
            crd = crds.read_custom_resource_definition(name)
            conds = (crd.status and crd.status.conditions) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_for(established, 30, "CRD Established")
        objs: Any = client.CustomObjectsApi(k8s_api_client)

        def widget(obj_name: str, spec: dict[str, Any]) -> dict[str, Any]:
            return {
                "apiVersion": f"{CRD_GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": obj_name},
                "spec": spec,
            }

        # The CRD may be Established a moment before its REST endpoint answers.
        def create_good() -> bool:
            try:
                objs.create_namespaced_custom_object(
                    CRD_GROUP,
                    "v1",
                    namespace,
                    "widgets",
                    widget("good", {"replicas": 2, "mode": "fast"}),
                )
            except client.ApiException as e:
                if e.status == 404:
                    return False
                raise
            return True

        wait_for(create_good, 30, "custom object endpoint")
        got = objs.get_namespaced_custom_object(CRD_GROUP, "v1", namespace, "widgets", "good")
        assert got["spec"] == {"replicas": 2, "mode": "fast"}

        for bad_spec, field_name in (
            ({"replicas": 0}, "spec.replicas"),
            ({"replicas": 1, "mode": "sideways"}, "spec.mode"),
            ({"mode": "fast"}, "spec.replicas"),
        ):
            with pytest.raises(client.ApiException) as err:
                objs.create_namespaced_custom_object(
                    CRD_GROUP, "v1", namespace, "widgets", widget("bad", bad_spec)
                )
            assert err.value.status == 422, err.value.body
            assert field_name in str(err.value.body), err.value.body
    finally:
        kubectl("delete", "crd", name, "--wait=false", check=False)


# ---------------------------------------------------------------------------- Jobs
def test_indexed_job_completes(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str, tmp_path: Path
) -> None:
    batch: Any = client.BatchV1Api(k8s_api_client)
    create_job(batch, namespace, indexed_job("idx", write_index_script(tmp_path), completions=3))
    cond = wait_for(lambda: job_condition(batch, namespace, "idx"), 60, "Job idx to finish")
    assert cond[0] == "Complete", cond
    for i in range(3):
        lines = (tmp_path / str(i)).read_text().splitlines()
        assert len(lines) == 1, lines
        index, job_completion_index, pod = lines[0].split()
        assert index == job_completion_index == str(i)
        assert pod.startswith(f"idx-{i}-")
    runs = test_kubelet.runs_in(namespace)
    assert sorted(-1 if r.completion_index is None else r.completion_index for r in runs) == [
        0,
        1,
        2,
    ]
    assert all(r.exit_code == 0 and r.reason == "Completed" for r in runs)
    job = batch.read_namespaced_job_status("idx", namespace)
    assert job.status.succeeded == 3
    assert job.status.completed_indexes == "0-2"


def test_failed_index_retried_and_backoff_limit_per_index(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str, tmp_path: Path
) -> None:
    batch: Any = client.BatchV1Api(k8s_api_client)
    retry_out = tmp_path / "retry"
    limit_out = tmp_path / "limit"
    retry_out.mkdir()
    limit_out.mkdir()
    mine = in_namespace(namespace)
    # Index 1 of "retry" runs its command, then its container fails (once).
    test_kubelet.fail(lambda p: mine(p) and job_index(1, "retry")(p), exit_code=3, run_command=True)
    # Index 0 of "limit" always fails; with backoffLimitPerIndex=0 it is not retried.
    test_kubelet.fail(lambda p: mine(p) and job_index(0, "limit")(p), exit_code=2, count=None)
    create_job(
        batch,
        namespace,
        indexed_job(
            "retry", write_index_script(retry_out), completions=3, backoff_limit_per_index=1
        ),
    )
    create_job(
        batch,
        namespace,
        indexed_job(
            "limit", write_index_script(limit_out), completions=2, backoff_limit_per_index=0
        ),
    )
    limit = wait_for(lambda: job_condition(batch, namespace, "limit"), 60, "Job limit to finish")
    assert limit == ("Failed", "FailedIndexes"), limit
    limit_job = batch.read_namespaced_job_status("limit", namespace)
    assert limit_job.status.failed_indexes == "0"
    assert limit_job.status.completed_indexes == "1"

    retry = wait_for(lambda: job_condition(batch, namespace, "retry"), 90, "Job retry to finish")
    assert retry[0] == "Complete", retry
    assert len((retry_out / "1").read_text().splitlines()) == 2  # ran twice
    assert len((retry_out / "0").read_text().splitlines()) == 1
    assert len((retry_out / "2").read_text().splitlines()) == 1
    index1 = [r for r in test_kubelet.runs_in(namespace) if r.name.startswith("retry-1-")]
    assert [(r.exit_code, r.fault) for r in index1] == [(3, "fail"), (0, None)]
    assert index1[0].name != index1[1].name


def test_owner_deletion_garbage_collects_jobs_and_pods(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str
) -> None:
    core: Any = client.CoreV1Api(k8s_api_client)
    batch: Any = client.BatchV1Api(k8s_api_client)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    create_job(
        batch,
        namespace,
        indexed_job("owned", "import time; time.sleep(600)", completions=1, owner=ref),
    )
    run = wait_for(
        lambda: [r for r in test_kubelet.runs_in(namespace) if r.name.startswith("owned-")],
        30,
        "the owned Job's pod to start",
    )[0]
    assert run.exit_code is None
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Foreground")

    def all_gone() -> bool:
        cms = core.list_namespaced_config_map(namespace, field_selector="metadata.name=owner")
        jobs = batch.list_namespaced_job(namespace)
        pods = core.list_namespaced_pod(namespace)
        return not cms.items and not jobs.items and not pods.items

    wait_for(all_gone, 60, "owner, Job and pod to be deleted")
    assert run.exit_code == 143 and run.reason == "Error"  # stopped by SIGTERM (128 + 15)


# ---------------------------------------------------------------------------- CLIs
def test_kubectl_and_helm(
    kube_bin_dir: Path, kubeconfig: Path, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    namespaces = kubectl("get", "ns", "-o", "name").stdout.split()
    assert f"namespace/{namespace}" in namespaces
    assert "namespace/kube-system" in namespaces
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == "v1.36.3"
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"
    nodes = kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.capacity.nvidia\\.com/gpu}")
    assert nodes.stdout.strip()

    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    helm = str(kube_bin_dir / "helm")
    out = subprocess.run(
        [helm, "version", "--short"], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.startswith("v3.21.4"), out.stdout
    listed = subprocess.run(
        [helm, "list", "-n", namespace, "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(listed.stdout) == []


# ---------------------------------------------------------------------------- kubelet
def python_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod that runs ``python -c script`` once; ``spec`` adds pod spec fields."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "local/python", "command": ["python", "-c", script]}
            ],
            **spec,
        },
    }


def gpu_pod(name: str, gpus: int, script: str) -> dict[str, Any]:
    pod = python_pod(name, script)
    pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return pod


def pod_phase(core: Any, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod_status(name, ns).status.phase)


def pod_has_phase(core: Any, ns: str, name: str, phase: str) -> bool:
    return pod_phase(core, ns, name) == phase


def test_gpu_slots_serialize_pods(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str
) -> None:
    core: Any = client.CoreV1Api(k8s_api_client)
    old_gpus = test_kubelet.gpus
    test_kubelet.set_gpus(1)
    try:
        script = "import time; time.sleep(1.5)"
        for name in ("gpu-a", "gpu-b"):
            core.create_namespaced_pod(namespace, gpu_pod(name, 1, script))
        big = gpu_pod("gpu-big", 2, script)
        big["metadata"]["labels"] = {
            **(big["metadata"].get("labels") or {}),
            **dict(part.split("=") for part in run_selector("r1").split(",")),
            JOB_NAME_LABEL: "r1-big",
        }
        core.create_namespaced_pod(namespace, big)

        def unschedulable(name: str) -> bool:
            pod = core.read_namespaced_pod_status(name, namespace)
            return any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in pod.status.conditions or []
            )

        wait_for(
            lambda: unschedulable("gpu-a") or unschedulable("gpu-b"), 20, "one waits for a GPU"
        )
        for name in ("gpu-a", "gpu-b"):
            wait_for(partial(pod_has_phase, core, namespace, name, "Succeeded"), 30, name)
        runs = sorted(
            (r for r in test_kubelet.runs_in(namespace) if r.name in ("gpu-a", "gpu-b")),
            key=lambda r: r.started_at,
        )
        assert len(runs) == 2
        assert runs[0].finished_at is not None
        assert runs[0].finished_at <= runs[1].started_at, "two 1-GPU pods overlapped on 1 slot"
        assert unschedulable("gpu-big")
        assert core.read_namespaced_pod("gpu-big", namespace).spec.node_name is None
        # The operator's view: the run's pending pods, filtered by phase on the API server.
        waiting = unscheduled_pods(core, namespace, "r1")
        assert list(waiting) == ["r1-big"] and "gpu-big" in waiting["r1-big"]
        node = core.read_node(test_kubelet.node_name)
        assert node.status.allocatable["nvidia.com/gpu"] == "1"
    finally:
        test_kubelet.set_gpus(old_gpus)


def test_pod_env_and_faults(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str, tmp_path: Path
) -> None:
    core: Any = client.CoreV1Api(k8s_api_client)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="creds"), string_data={"token": "s3cr3t"}
        ),
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="cfg"), data={"MODE": "fast", "n": "3"}
        ),
    )
    script = (
        "import json, os, sys\n"
        "keys = ['TOKEN', 'N', 'MODE', 'LABEL', 'NS', 'GREETING', 'CFG_n']\n"
        f"out = open({str(tmp_path / 'env.json')!r}, 'w')\n"
        "json.dump({k: os.environ.get(k) for k in keys}, out)\n"
        "print('hello from the pod'); print('to stderr', file=sys.stderr)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "env", "labels": {"team": "synth"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "local/python",
                    "command": ["python", "-c", script],
                    "envFrom": [
                        {"configMapRef": {"name": "cfg"}},
                        {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                    ],
                    "env": [
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                        },
                        {
                            "name": "N",
                            "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "n"}},
                        },
                        {
                            "name": "LABEL",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}},
                        },
                        {
                            "name": "NS",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                        {"name": "GREETING", "value": "hi-$(LABEL)"},
                    ],
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: pod_phase(core, namespace, "env") == "Succeeded", 30, "pod env")
    env = json.loads((tmp_path / "env.json").read_text())
    assert env == {
        "TOKEN": "s3cr3t",
        "N": "3",
        "MODE": "fast",
        "LABEL": "synth",
        "NS": namespace,
        "GREETING": "hi-synth",
        "CFG_n": "3",
    }
    log = test_kubelet.pod_log(namespace, "env")
    assert "hello from the pod" in log and "to stderr" in log
    status = core.read_namespaced_pod_status("env", namespace).status
    term = status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (0, "Completed")

    # Faults: OOM kill, kill mid-run, delayed start.
    mine = in_namespace(namespace)
    test_kubelet.oom(lambda p: mine(p) and p["metadata"]["name"] == "oom")
    test_kubelet.kill(lambda p: mine(p) and p["metadata"]["name"] == "killed", after=1.0)
    test_kubelet.delay(lambda p: mine(p) and p["metadata"]["name"] == "late", 2.0)
    long_pod = {**pod, "metadata": {"name": "x"}}
    for name, script_ in (
        ("oom", "print('never runs')"),
        ("killed", "import time; print('started', flush=True); time.sleep(60)"),
        ("late", "print('late start')"),
    ):
        body = json.loads(json.dumps(long_pod))
        body["metadata"]["name"] = name
        body["spec"]["containers"][0]["command"] = ["python", "-c", script_]
        del body["spec"]["containers"][0]["env"]
        del body["spec"]["containers"][0]["envFrom"]
        core.create_namespaced_pod(namespace, body)
    t0 = time.time()
    for name, phase in (("oom", "Failed"), ("killed", "Failed"), ("late", "Succeeded")):
        wait_for(partial(pod_has_phase, core, namespace, name, phase), 30, name)
    oom = core.read_namespaced_pod_status("oom", namespace).status.container_statuses[0]
    assert (oom.state.terminated.exit_code, oom.state.terminated.reason) == (137, "OOMKilled")
    killed = core.read_namespaced_pod_status("killed", namespace).status.container_statuses[0]
    assert (killed.state.terminated.exit_code, killed.state.terminated.reason) == (137, "Error")
    assert "started" in test_kubelet.pod_log(namespace, "killed")
    late = next(r for r in test_kubelet.runs_in(namespace) if r.name == "late")
    assert late.started_at - t0 >= 1.5
    assert test_kubelet.pod_log(namespace, "late").strip() == "late start"


def test_kubectl_logs_and_termination_messages(
    k8s_api_client: Any, kubectl: Kubectl, test_kubelet: TestKubelet, namespace: str
) -> None:
    core: Any = client.CoreV1Api(k8s_api_client)
    writes = (
        "import os, sys, time\n"
        "for i in range(3): print('line', i, flush=True); time.sleep(0.5)\n"
        "open(os.environ['MSG'], 'w').write('Error: the cause')\n"
        "print('Error: in the log', file=sys.stderr); sys.exit(2)\n"
    )
    silent = "import sys; print('first'); print('Error: from the log', file=sys.stderr); exit(1)"
    for name, script, policy in (
        ("writes", writes, "File"),
        ("silent", silent, "FallbackToLogsOnError"),
    ):
        container = {
            "name": "main",
            "image": "local/python",
            "command": ["python", "-c", script],
            "terminationMessagePolicy": policy,
            "env": [{"name": "MSG", "value": "/dev/termination-log"}],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        }
        core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: pod_phase(core, namespace, "writes") == "Running", 30, "pod writes running")
    # Follows the log as it grows, through the API server's proxy to the kubelet endpoint.
    followed = kubectl("logs", "-f", "writes", "-n", namespace)
    assert followed.stdout.splitlines() == ["line 0", "line 1", "line 2", "Error: in the log"]
    for name in ("writes", "silent"):
        wait_for(partial(pod_has_phase, core, namespace, name, "Failed"), 30, name)
    assert kubectl("logs", "silent", "-n", namespace).stdout == "first\nError: from the log\n"
    assert kubectl("logs", "writes", "-n", namespace, "--tail=1").stdout == "Error: in the log\n"

    def message(name: str) -> str:
        status = core.read_namespaced_pod_status(name, namespace).status
        return str(status.container_statuses[0].state.terminated.message)

    assert message("writes") == "Error: the cause"  # the file, not the log
    assert message("silent") == "first\nError: from the log\n"  # the log's tail


def test_empty_dir_volumes_become_pod_directories(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str, tmp_path: Path
) -> None:
    """Each emptyDir is a directory of the pod's own; env values and args under its mountPath
    point there (the process has no mount namespace), other values are left alone."""
    core: Any = client.CoreV1Api(k8s_api_client)
    script = (
        "import json, os, sys\n"
        "for path in (os.environ['NESTED'] + '/f', sys.argv[1], os.environ['SUB'] + '/g'):\n"
        "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "    open(path, 'w').write('x')\n"
        "keys = ['SCRATCH', 'NESTED', 'SIMILAR', 'EXPANDED', 'SUB']\n"
        "out = {k: os.environ[k] for k in keys}\n"
        "out['argv'] = sys.argv[1:]; out['cwd'] = os.getcwd()\n"
        f"json.dump(out, open({str(tmp_path / 'paths.json')!r}, 'w'))\n"
    )
    pod = python_pod(
        "volumes",
        script,
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            {"name": "cfg", "configMap": {"name": "absent"}},
        ],
    )
    container = pod["spec"]["containers"][0]
    container["args"] = ["/scratch/arg/file", "/scratchy/arg"]
    container["workingDir"] = "/scratch/work"
    container["volumeMounts"] = [
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "shm", "mountPath": "/scratch/shm/", "subPath": "deep"},
        {"name": "cfg", "mountPath": "/etc/cfg"},
    ]
    container["env"] = [
        {"name": "SCRATCH", "value": "/scratch"},
        {"name": "NESTED", "value": "/scratch/a/b"},
        {"name": "SIMILAR", "value": "/scratchy"},
        {"name": "EXPANDED", "value": "$(SCRATCH)/c"},
        {"name": "SUB", "value": "/scratch/shm/x"},
    ]
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: pod_phase(core, namespace, "volumes") == "Succeeded", 30, "pod volumes")
    (run,) = [r for r in test_kubelet.runs_in(namespace) if r.name == "volumes"]
    volumes = run.log_path.parent / "volumes"
    scratch, deep = str(volumes / "scratch"), str(volumes / "shm" / "deep")
    seen = json.loads((tmp_path / "paths.json").read_text())
    # Paths reach the process through a short link to the pod's volumes (Unix socket paths).
    assert len(seen["SCRATCH"]) < len(scratch)
    for key in ("SCRATCH", "NESTED", "EXPANDED", "SUB", "cwd"):
        seen[key] = str(Path(seen[key]).resolve())
    seen["argv"][0] = str(Path(seen["argv"][0]).resolve())
    assert seen == {
        "SCRATCH": scratch,
        "NESTED": f"{scratch}/a/b",
        "SIMILAR": "/scratchy",
        "EXPANDED": f"{scratch}/c",
        "SUB": f"{deep}/x",
        "argv": [f"{scratch}/arg/file", "/scratchy/arg"],
        "cwd": f"{scratch}/work",
    }
    for written in (f"{scratch}/a/b/f", f"{scratch}/arg/file", f"{deep}/x/g"):
        assert Path(written).read_text() == "x"
    assert not (volumes / "cfg").exists()


def test_controlplane_basics(control_plane: ControlPlane, tmp_path: Path) -> None:
    assert control_plane.running
    assert control_plane.startup_seconds is not None
    assert "kube-apiserver" in control_plane.log_tail(5) or control_plane.log_tail(5) == ""
    version = control_plane.request("GET", "/version")
    assert version["gitVersion"] == "v1.36.3"
    # Events last a day (the API server's default is one hour), as `dev cluster up` runs it.
    apiserver = control_plane.pids()["kube-apiserver"]
    args = Path(f"/proc/{apiserver}/cmdline").read_bytes().decode().split("\0")
    assert "--event-ttl=24h" in args, args
    # An extra user without RBAC bindings is authenticated but forbidden.
    cfg = control_plane.write_kubeconfig(tmp_path / "alice.kubeconfig", user="alice", groups=())
    from kubernetes import config

    load: Any = config.new_client_from_config
    alice: Any = client.CoreV1Api(load(config_file=str(cfg)))
    with pytest.raises(client.ApiException) as err:
        alice.list_namespace()
    assert err.value.status == 403
    assert "alice" in str(err.value.body)


def test_dev_cluster_cli(
    kube_bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from synthpref_operator.devcluster.cli import dev_group, state_file

    monkeypatch.setenv("SYNTHPREF_DEVCLUSTER_DIR", str(tmp_path / "dev"))
    monkeypatch.setenv("SYNTHPREF_KUBE_BIN_DIR", str(kube_bin_dir))
    up = subprocess.Popen(
        [sys.executable, "-m", "synthpref_operator.devcluster.cli", "cluster", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(120, up.kill)
    watchdog.start()
    try:
        assert up.stdout is not None
        output = []
        for line in up.stdout:
            output.append(line)
            if line.startswith("export PATH="):
                break
        exports = [line for line in output if line.startswith("export KUBECONFIG=")]
        assert exports, "".join(output)

        runner = CliRunner()
        env_result = runner.invoke(dev_group, ["cluster", "env"])
        assert env_result.exit_code == 0, env_result.output
        assert exports[0].strip() in env_result.output
        # Where the pods' output is, as comments (`eval` ignores them).
        assert "# pod output (also through kubectl logs): " in env_result.output
        kubeconfig = json.loads(state_file().read_text())["kubeconfig"]
        nodes = subprocess.run(
            [
                str(kube_bin_dir / "kubectl"),
                f"--kubeconfig={kubeconfig}",
                "get",
                "nodes",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert nodes.stdout.strip() == "node/synthpref-node"

        down = runner.invoke(dev_group, ["cluster", "down"])
        assert down.exit_code == 0, down.output
        assert up.wait(30) == 0
        assert not state_file().exists()
        again = runner.invoke(dev_group, ["cluster", "env"])
        assert again.exit_code != 0
    finally:
        watchdog.cancel()
        if up.poll() is None:
            up.kill()
            up.wait()


def test_pods_act_as_their_service_account(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str, tmp_path: Path
) -> None:
    """A pod reaches the API server as system:serviceaccount:NS:SA (TokenRequest kubeconfig),
    RBAC applies to it, and `automountServiceAccountToken: false` gives it no credentials."""
    core: Any = client.CoreV1Api(k8s_api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="robot"))
    )
    out = tmp_path / "whoami.json"
    script = (
        "import json, os\n"
        "from kubernetes import client, config\n"
        "config.load_kube_config()\n"
        "review = client.AuthenticationV1Api().create_self_subject_review(\n"
        "    {'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'})\n"
        "try:\n"
        "    client.CoreV1Api().list_namespaced_secret(os.environ['NS'])\n"
        "    secrets = 'allowed'\n"
        "except client.ApiException as e:\n"
        "    secrets = e.status\n"
        f"json.dump({{'user': review.status.user_info.username, 'secrets': secrets}}, "
        f"open({str(out)!r}, 'w'))\n"
    )
    pod = python_pod("whoami", script, serviceAccountName="robot")
    pod["spec"]["containers"][0]["env"] = [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    core.create_namespaced_pod(namespace, pod)
    wait_for(out.exists, 60, "the pod's report")
    assert json.loads(out.read_text()) == {
        "user": f"system:serviceaccount:{namespace}:robot",
        "secrets": 403,  # no RoleBinding grants the ServiceAccount anything
    }

    no_token = tmp_path / "no-token.txt"
    script = f"import os; open({str(no_token)!r}, 'w').write(os.environ.get('KUBECONFIG', '-'))"
    core.create_namespaced_pod(
        namespace, python_pod("no-token", script, automountServiceAccountToken=False)
    )
    wait_for(no_token.exists, 60, "the second pod's report")
    assert no_token.read_text() == os.environ.get("KUBECONFIG", "-")


def test_deleted_pod_gets_sigterm_first(
    k8s_api_client: Any, test_kubelet: TestKubelet, namespace: str, tmp_path: Path
) -> None:
    """Deleting a running pod sends SIGTERM, so a process can shut down cleanly."""
    core: Any = client.CoreV1Api(k8s_api_client)
    started, stopped = tmp_path / "started", tmp_path / "stopped"
    script = (
        "import signal, sys, time\n"
        f"def stop(*_): open({str(stopped)!r}, 'w').write('SIGTERM'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"open({str(started)!r}, 'w').write('up')\n"
        "time.sleep(120)\n"
    )
    core.create_namespaced_pod(namespace, python_pod("graceful", script))
    wait_for(started.exists, 60, "the pod to start")
    core.delete_namespaced_pod("graceful", namespace)
    wait_for(stopped.exists, 30, "the pod's SIGTERM handler")
    assert stopped.read_text() == "SIGTERM"
