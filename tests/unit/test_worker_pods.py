"""Worker pods a hardened cluster admits: for every kind of Job the operator makes, the pod
passes the Pod Security Standard `restricted` with a read-only root filesystem (security
contexts, writable emptyDirs, cache variables pointing into them) and has CPU and memory
requests and limits (defaults, and the spec's fields merged key by key).

The real PodSecurity admission checks the same pods in
tests/integration/test_worker_pod_security.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from synthpref.spec import (
    JudgeSpec,
    ModelSpec,
    StageResources,
    quantity_value,
    validation_problems,
)
from synthpref_operator.pod_security import HOME_DIR, TMP_DIR, WRITABLE_ENV
from synthpref_operator.resources import (
    CPU_STAGE,
    OPENAI_GENERATION,
    VLLM_CPU,
    VLLM_CPU_LIMIT_PER_GPU,
    VLLM_CPU_PER_GPU,
    VLLM_MEMORY_GI_PER_GPU,
)
from synthpref_operator.settings import OperatorSettings
from tests.builders import WORKER_JOBS, worker_job, worker_jobs_spec

SETTINGS = OperatorSettings(image="gpu:1", cpu_image="cpu:1")
LABELS = [label for label, _, _ in WORKER_JOBS]
GPUS = {"generate-vllm-1gpu": 1, "generate-vllm-4gpu": 4, "judge-vllm-2gpu": 2}


def pod_of(label: str, *, settings: OperatorSettings = SETTINGS, **sections: Any) -> dict[str, Any]:
    """The pod template of the Job of kind `label` (see `tests.builders.WORKER_JOBS`)."""
    job = worker_job(label, settings, **sections)
    return dict(job["spec"]["template"]["spec"])


def container_of(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return dict(container)


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"a variable is set twice: {names}"
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# ----------------------------------------------------------------- Pod Security `restricted`
@pytest.mark.parametrize("label", LABELS)
def test_every_worker_pod_is_restricted_with_a_read_only_root(label: str) -> None:
    pod = pod_of(label)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = container_of(pod)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # Only emptyDirs, each mounted.
    assert all(set(v) == {"name", "emptyDir"} for v in volumes.values())
    assert sorted(mounts.values()) == sorted(volumes)
    assert mounts[TMP_DIR] == "tmp" and mounts[HOME_DIR] == "home"
    assert volumes["tmp"]["emptyDir"] == volumes["home"]["emptyDir"] == {}
    # Tensor parallel: a memory-backed /dev/shm (a container's own is 64 MiB).
    if GPUS.get(label, 0) > 1:
        assert mounts["/dev/shm"] == "dshm"
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    else:
        assert "/dev/shm" not in mounts


@pytest.mark.parametrize("label", LABELS)
def test_every_cache_directory_lies_in_a_writable_volume(label: str) -> None:
    container = container_of(pod_of(label))
    env = plain_env(container)
    assert {k: env[k] for k in WRITABLE_ENV} == WRITABLE_ENV
    # The kubelet mounts the termination-message file writable too.
    writable = [m["mountPath"] for m in container["volumeMounts"]]
    writable.append(container["terminationMessagePath"])
    paths = {k: v for k, v in env.items() if v.startswith("/")}
    for key in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "VLLM_CACHE_ROOT"):
        assert key in paths
    for key, path in paths.items():
        assert any(path == d or path.startswith(d + "/") for d in writable), (key, path)
    assert env["TMPDIR"] == TMP_DIR and env["HOME"] == HOME_DIR
    assert env["VLLM_NO_USAGE_STATS"] == "1"


@pytest.mark.parametrize("label", LABELS)
def test_worker_error_line_becomes_the_termination_message(label: str) -> None:
    container = container_of(pod_of(label))
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert plain_env(container)["SYNTHPREF_TERMINATION_LOG"] == container["terminationMessagePath"]


def test_settings_choose_the_uid_and_may_move_a_cache() -> None:
    settings = OperatorSettings(worker_user_id=4242, extra_env={"HF_HOME": "/models/hf", "X": "1"})
    pod = pod_of("generate-vllm-1gpu", settings=settings)
    context = pod["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == 4242
    env = plain_env(container_of(pod))
    assert env["HF_HOME"] == "/models/hf" and env["X"] == "1"  # extraEnv wins, set once


# ----------------------------------------------------------------- resources
def gi(n: int) -> str:
    return f"{n}Gi"


def vllm_gpu(gpus: int) -> tuple[dict[str, str], dict[str, str]]:
    gpu = {"nvidia.com/gpu": str(gpus)}
    memory = gi(VLLM_MEMORY_GI_PER_GPU * gpus)
    return (
        {"cpu": str(VLLM_CPU_PER_GPU * gpus), "memory": memory, **gpu},
        {"cpu": str(VLLM_CPU_LIMIT_PER_GPU * gpus), "memory": memory, **gpu},
    )


CPU_STAGE_DEFAULT = ({"cpu": "1", "memory": "2Gi"}, {"cpu": "2", "memory": "4Gi"})
DEFAULTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "prepare": CPU_STAGE_DEFAULT,
    "mix": CPU_STAGE_DEFAULT,
    "parse": CPU_STAGE_DEFAULT,
    "generate-vllm-cpu": ({"cpu": "2", "memory": "8Gi"}, {"cpu": "4", "memory": "16Gi"}),
    "generate-vllm-1gpu": (
        {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
        {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
    ),
    "generate-vllm-4gpu": (
        {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"},
        {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "4"},
    ),
    "generate-openai": ({"cpu": "500m", "memory": "1Gi"}, {"cpu": "2", "memory": "2Gi"}),
    "judge-vllm-2gpu": vllm_gpu(2),
}


@pytest.mark.parametrize("label", LABELS)
def test_default_requests_and_limits(label: str) -> None:
    requests, limits = DEFAULTS[label]
    assert container_of(pod_of(label))["resources"] == {"requests": requests, "limits": limits}


def test_a_vllm_judge_on_cpu_gets_the_vllm_cpu_defaults() -> None:
    pod = pod_of("judge-vllm-2gpu", judge={"backend": "vllm", "model": "/j", "gpus": 0})
    requests, limits = DEFAULTS["generate-vllm-cpu"]
    assert container_of(pod)["resources"] == {"requests": requests, "limits": limits}


def with_model_resources(label: str, resources: dict[str, Any]) -> dict[str, Any]:
    """Spec sections that set `resources` on the thing `label` runs."""
    document = worker_jobs_spec()
    if label.startswith("generate-"):
        model = next(m for lbl, _, m in WORKER_JOBS if lbl == label)
        for entry in document["models"]:
            if entry["name"] == model:
                entry["resources"] = resources
        return {"models": document["models"]}
    if label.startswith("judge-"):
        return {"judge": {**document["judge"], "resources": resources}}
    return {"workers": {"resources": {label: resources}}}


OVERRIDES: list[tuple[str, str, dict[str, Any], dict[str, str], dict[str, str]]] = [
    # (case, kind, spec resources, expected requests, expected limits) -- GPUs left out.
    (
        "a key left out keeps its default",
        "generate-vllm-1gpu",
        {"requests": {"cpu": "6"}},
        {"cpu": "6", "memory": "32Gi"},
        {"cpu": "8", "memory": "32Gi"},
    ),
    (
        "a request above the default limit raises the limit",
        "generate-vllm-1gpu",
        {"requests": {"memory": "64Gi"}},
        {"cpu": "4", "memory": "64Gi"},
        {"cpu": "8", "memory": "64Gi"},
    ),
    (
        "compared as quantities, not as text",
        "generate-vllm-4gpu",
        {"requests": {"memory": "140000Mi", "cpu": "32500m"}},
        {"cpu": "32500m", "memory": "140000Mi"},
        {"cpu": "32500m", "memory": "140000Mi"},
    ),
    (
        "a limit below the default request lowers the request",
        "prepare",
        {"limits": {"cpu": "500m", "memory": "1Gi"}},
        {"cpu": "500m", "memory": "1Gi"},
        {"cpu": "500m", "memory": "1Gi"},
    ),
    (
        "everything set",
        "generate-openai",
        {"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"cpu": "1", "memory": "3Gi"}},
        {"cpu": "1", "memory": "3Gi"},
        {"cpu": "1", "memory": "3Gi"},
    ),
    (
        "the vLLM judge",
        "judge-vllm-2gpu",
        {"limits": {"memory": "200Gi"}},
        {"cpu": "8", "memory": "64Gi"},
        {"cpu": "16", "memory": "200Gi"},
    ),
    (
        "one CPU stage",
        "mix",
        {"requests": {"memory": "3Gi"}},
        {"cpu": "1", "memory": "3Gi"},
        {"cpu": "2", "memory": "4Gi"},
    ),
    (
        "vLLM on CPU",
        "generate-vllm-cpu",
        {"requests": {"cpu": "8"}},
        {"cpu": "8", "memory": "8Gi"},
        {"cpu": "8", "memory": "16Gi"},
    ),
]


@pytest.mark.parametrize(
    ("label", "resources", "requests", "limits"),
    [case[1:] for case in OVERRIDES],
    ids=[case[0] for case in OVERRIDES],
)
def test_spec_resources_merge_key_by_key(
    label: str, resources: dict[str, Any], requests: dict[str, str], limits: dict[str, str]
) -> None:
    pod = pod_of(label, **with_model_resources(label, resources))
    got = container_of(pod)["resources"]
    gpus = GPUS.get(label)
    gpu = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    assert got == {"requests": {**requests, **gpu}, "limits": {**limits, **gpu}}
    assert quantity_value(got["limits"]["memory"]) >= quantity_value(got["requests"]["memory"])


def test_one_stage_override_leaves_the_others_alone() -> None:
    sections: dict[str, Any] = {"workers": {"resources": {"mix": {"requests": {"cpu": "3"}}}}}
    assert container_of(pod_of("mix", **sections))["resources"]["requests"]["cpu"] == "3"
    for label in ("prepare", "parse", "generate-openai"):
        assert container_of(pod_of(label, **sections))["resources"] == {
            "requests": DEFAULTS[label][0],
            "limits": DEFAULTS[label][1],
        }


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}},
        {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}},
    ],
)
def test_spec_refuses_a_limit_below_its_request(resources: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        pod_of("generate-vllm-1gpu", **with_model_resources("generate-vllm-1gpu", resources))
    (key,) = resources["limits"]
    (problem,) = validation_problems(caught.value)
    assert problem == (
        f"models.1.resources: limits.{key} {resources['limits'][key]} is less than "
        f"requests.{key} {resources['requests'][key]}"
    )


@pytest.mark.parametrize("value", ["1.5Gb", "-1", "1e3", "Gi", ""])
def test_spec_refuses_what_is_not_a_quantity(value: str) -> None:
    with pytest.raises(ValidationError, match="resources"):
        pod_of("prepare", **with_model_resources("prepare", {"requests": {"memory": value}}))


@pytest.mark.parametrize(
    ("quantity", "value"),
    [
        ("4", Decimal(4)),
        ("500m", Decimal("0.5")),
        ("0.5", Decimal("0.5")),
        (".5", Decimal("0.5")),
        ("2k", Decimal(2000)),
        ("1Ki", Decimal(1024)),
        ("32Gi", Decimal(32 * 2**30)),
        ("1.5G", Decimal(1_500_000_000)),
        ("1Ei", Decimal(2**60)),
    ],
)
def test_quantity_value(quantity: str, value: Decimal) -> None:
    assert quantity_value(quantity) == value


def test_field_descriptions_state_the_defaults() -> None:
    def description(model: Any, field: str) -> str:
        return str(model.model_fields[field].description)

    model = description(ModelSpec, "resources")
    per_gpu = vllm_gpu(1)
    assert (
        f"requests {per_gpu[0]['cpu']} CPUs and {per_gpu[0]['memory']} of host memory per GPU "
        f"(limits: {per_gpu[1]['cpu']} CPUs per GPU, memory = request)"
    ) in model
    cpu, openai = VLLM_CPU, OPENAI_GENERATION
    assert (
        f"vLLM on CPU (gpus: 0) requests {cpu.requests.cpu} CPUs and {cpu.requests.memory} "
        f"(limits {cpu.limits.cpu} CPUs, {cpu.limits.memory})"
    ) in model
    assert (
        f"the openai backend requests {openai.requests.cpu} and {openai.requests.memory} "
        f"(limits {openai.limits.cpu} CPUs, {openai.limits.memory})"
    ) in model
    assert "judge.gpus" in description(JudgeSpec, "resources")
    for stage in ("prepare", "mix", "parse"):
        assert (
            f"requests {CPU_STAGE.requests.cpu} CPU and {CPU_STAGE.requests.memory}, limits "
            f"{CPU_STAGE.limits.cpu} CPUs and {CPU_STAGE.limits.memory}"
        ) in description(StageResources, stage)
