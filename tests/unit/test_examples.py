"""Every manifest in examples/ is a valid PreferenceRun, and each says what it claims.

All examples load with `synthpref.spec.load_run` (the loader of every stage) and their vLLM
engine settings pass the backend's own checks. The GPU-cluster example is checked further: the
Jobs the operator would make for it (GPU counts, placement, Secret references), and the
`kubectl create secret` commands in its header create exactly the Secrets it references.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from synthpref.backends.vllm_offline import engine_kwargs
from synthpref.spec import (
    GenerationBackend,
    JudgeBackend,
    OutputFormat,
    PreferenceRunManifest,
    PreferenceRunSpec,
    SecretKeyRef,
    load_run,
)
from synthpref_operator.builders import job_manifest
from synthpref_operator.names import Stage, job_name
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GPU_CLUSTER = ROOT / "examples" / "gpu-cluster.yaml"
SETTINGS = OperatorSettings()


def test_examples_are_found() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"quickstart.yaml", "gpu-cluster.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_run(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert len(documents) == 1, "one PreferenceRun per example file"
    run = load_run(path)
    assert run.metadata.name == documents[0]["metadata"]["name"]
    for model in run.spec.models:
        if model.backend is GenerationBackend.VLLM:
            # Raises when engineArgs contradicts the spec (e.g. tensor_parallel_size vs gpus).
            engine_kwargs(
                tensor_parallel_size=max(model.gpu_count, 1),
                max_model_len=model.max_model_len,
                revision=model.revision,
                seed=model.sampling.seed,
                engine_args=model.engine_args,
            )


def secret_refs(spec: PreferenceRunSpec) -> set[tuple[str, str]]:
    refs: list[SecretKeyRef | None] = [spec.judge.openai.api_key_secret]
    if spec.storage.credentials is not None:
        refs += [spec.storage.credentials.access_key_id, spec.storage.credentials.secret_access_key]
    refs += [m.openai.api_key_secret for m in spec.models if m.openai is not None]
    return {(ref.name, ref.key) for ref in refs if ref is not None}


def header_secrets(text: str) -> set[tuple[str, str]]:
    """(secret, key) pairs the header's `kubectl create secret generic` commands create."""
    comment = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    created: set[tuple[str, str]] = set()
    for line in comment.replace("\\\n", " ").splitlines():
        command = line.partition("kubectl create secret generic ")[2]
        if command:
            name = command.split()[0]
            created |= {(name, key) for key in re.findall(r"--from-literal=([\w.-]+)=", command)}
    return created


@pytest.fixture(scope="module")
def gpu_run() -> PreferenceRunManifest:
    return load_run(GPU_CLUSTER)


def test_gpu_cluster_header_creates_exactly_the_referenced_secrets(
    gpu_run: PreferenceRunManifest,
) -> None:
    referenced = secret_refs(gpu_run.spec)
    assert {name for name, _ in referenced} == {"s3-credentials", "openai-api-key"}
    assert header_secrets(GPU_CLUSTER.read_text(encoding="utf-8")) == referenced


def test_gpu_cluster_shows_a_real_cluster_run(gpu_run: PreferenceRunManifest) -> None:
    spec = gpu_run.spec
    assert spec.prompts.uri.startswith("s3://") and spec.storage.uri.startswith("s3://")
    assert spec.storage.credentials is not None
    vllm_models = [m for m in spec.models if m.backend is GenerationBackend.VLLM]
    assert len({m.gpu_count for m in vllm_models}) >= 3, "models of different GPU counts"
    assert all(m.gpu_count >= 1 for m in vllm_models)
    assert any(m.engine_args.get("tensor_parallel_size", 1) > 1 for m in vllm_models)
    assert spec.mix.on_policy_model in {m.name for m in vllm_models}
    assert spec.judge.backend is JudgeBackend.OPENAI
    assert spec.judge.openai.api_key_secret is not None
    assert spec.output.format is OutputFormat.PARQUET
    assert spec.workers.node_selector and spec.workers.tolerations
    assert spec.queue_name is None, "queueName stays commented out: Kueue is optional"


def test_gpu_cluster_jobs(gpu_run: PreferenceRunManifest) -> None:
    """The generation Jobs ask for each model's GPUs on the GPU nodes, in the right image."""
    spec, run = gpu_run.spec, gpu_run.metadata.name
    for model in spec.models:
        request = CreateJob(
            job_name(run, Stage.GENERATE, model.name), Stage.GENERATE, model.replicas, model.name
        )
        job = job_manifest(run, "ml-data", spec, request, SETTINGS)
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert job["spec"]["completions"] == model.replicas
        assert job["spec"]["backoffLimitPerIndex"] == spec.workers.backoff_limit_per_index
        secret_env = {
            (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container["env"]
            if "valueFrom" in e
        }
        assert secret_env <= secret_refs(spec)
        assert all("value" in e for e in container["env"] if "valueFrom" not in e)
        if model.backend is GenerationBackend.VLLM:
            assert container["image"] == SETTINGS.image
            assert container["resources"]["limits"][SETTINGS.gpu_resource] == str(model.gpu_count)
            assert pod["nodeSelector"] == spec.workers.node_selector
            assert len(pod["tolerations"]) == len(spec.workers.tolerations)
        else:
            assert container["image"] == SETTINGS.cpu_image
            assert SETTINGS.gpu_resource not in container["resources"]["limits"]
            assert "nodeSelector" not in pod
            assert ("openai-api-key", "api-key") in secret_env


def test_the_examples_are_admitted_where_the_chart_allows_what_they_name(
    gpu_run: PreferenceRunManifest,
) -> None:
    from synthpref_operator.admission import SecretFacts, admission_problems
    from synthpref_operator.names import LABEL_ALLOW_RUNS

    opted_in = SecretFacts(found=True, labels={LABEL_ALLOW_RUNS: "true"})
    secrets = {"s3-credentials": opted_in, "openai-api-key": opted_in}
    spec = gpu_run.spec
    held = admission_problems(spec, OperatorSettings(), "ml-data", secrets)
    # What its comments say: its own node selector and toleration need the allow-lists.
    assert {p.reason.value for p in held} == {"PlacementNotAllowed"}
    allowing = OperatorSettings(
        allowed_node_labels=["nvidia.com/gpu.product=*"],
        allowed_tolerations=spec.workers.tolerations,
    )
    assert admission_problems(spec, allowing, "ml-data", secrets) == []
