"""Pure Job builders: Indexed Jobs per stage, GPUs, labels, placement, env with secret refs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from synthpref.spec import PreferenceRunSpec, parse_manifest
from synthpref_operator.builders import job_manifest, owner_reference
from synthpref_operator.names import MANIFEST_ENV, Stage, job_name
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import OperatorSettings
from tests.builders import spec_dict

SETTINGS = OperatorSettings(image="gpu:1", cpu_image="cpu:1", extra_env={"LOG": "debug"})


def make_spec(**extra: Any) -> PreferenceRunSpec:
    document = spec_dict(
        storage={
            "uri": "s3://bucket/p",
            "credentials": {
                "accessKeyId": {"name": "s3-creds", "key": "id"},
                "secretAccessKey": {"name": "s3-creds", "key": "secret"},
            },
        },
        **extra,
    )
    document["models"][0].update(gpus=4, replicas=3)
    document["models"][1].update(
        backend="openai",
        path="gpt",
        openai={
            "baseUrl": "http://x/v1",
            "apiKeyEnv": "ANSWER_KEY",
            "apiKeySecret": {"name": "openai", "key": "token"},
        },
    )
    return PreferenceRunSpec.model_validate(document)


def build(
    spec: PreferenceRunSpec, stage: Stage, model: str | None = None, completions: int = 1
) -> dict[str, Any]:
    request = CreateJob(job_name("run", stage, model), stage, completions, model)
    return job_manifest("run", "ns", spec, request, SETTINGS)


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_generation_job_is_indexed_with_gpus_and_labels() -> None:
    spec = make_spec(
        workers={
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "priorityClassName": "batch",
            "backoffLimitPerIndex": 4,
        },
        queueName="team-a",
    )
    job = build(spec, Stage.GENERATE, "m0", completions=3)
    assert job["metadata"]["name"] == "run-generate-m0"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["backoffLimitPerIndex"] == 4
    assert job["spec"]["suspend"] is True  # Kueue admits it
    labels = job["metadata"]["labels"]
    assert labels["synthpref.dev/run"] == "run" and labels["synthpref.dev/model"] == "m0"
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    container = pod["containers"][0]
    assert container["image"] == "gpu:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"] == ["synthpref"]
    assert container["args"] == ["generate", "--model", "m0", "--workers", "3"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["priorityClassName"] == "batch" and pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False  # workers never call the API
    # Tensor parallel over 4 GPUs: a memory-backed /dev/shm instead of the 64 MiB default.
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_cpu_stages_get_the_cpu_image_and_no_gpu_placement() -> None:
    spec = make_spec(workers={"nodeSelector": {"gpu": "h100"}})
    for stage in (Stage.PREPARE, Stage.MIX, Stage.PARSE):
        job = build(spec, stage)
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "cpu:1"
        assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])
        assert "nodeSelector" not in pod and "dshm" not in str(pod["volumes"])
        assert job["spec"]["suspend"] is False
    # An openai-backend model needs no GPU.
    container = build(spec, Stage.GENERATE, "m1")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(container["resources"])


def test_env_carries_the_manifest_and_only_secret_references() -> None:
    job = build(make_spec(), Stage.GENERATE, "m1")
    env = env_of(job)
    assert env["LOG"] == "debug"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}
    assert env["ANSWER_KEY"] == {"secretKeyRef": {"name": "openai", "key": "token"}}
    manifest = parse_manifest(json.loads(env[MANIFEST_ENV]))
    assert manifest.metadata.name == "run" and manifest.spec == make_spec()
    # The model's own secret is not given to other stages.
    assert "ANSWER_KEY" not in env_of(build(make_spec(), Stage.MIX))


def test_gpu_judge_job_and_owner_reference() -> None:
    spec = make_spec(judge={"backend": "vllm", "model": "/m", "gpus": 2})
    container = build(spec, Stage.JUDGE)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["args"] == ["judge", "--workers", "1"]
    owner = owner_reference("run", "uid-1")
    assert owner["controller"] is True and owner["kind"] == "PreferenceRun"


def test_long_names_are_shortened_deterministically() -> None:
    name = job_name("a" * 60, Stage.GENERATE, "model-with-a-long-name")
    assert len(name) <= 63 and name == job_name("a" * 60, Stage.GENERATE, "model-with-a-long-name")
    assert name != job_name("a" * 60, Stage.GENERATE, "model-with-a-long-nam2")


def test_secret_env_reaches_every_worker_as_references() -> None:
    spec = make_spec(
        workers={"secretEnv": [{"name": "HF_TOKEN", "secret": {"name": "hf", "key": "token"}}]}
    )
    for stage, model in ((Stage.PREPARE, None), (Stage.GENERATE, "m0"), (Stage.PARSE, None)):
        env = env_of(build(spec, stage, model))
        assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


@pytest.mark.parametrize("name", ["", "1ABC", "HF-TOKEN", "A B"])
def test_secret_env_names_must_be_variable_names(name: str) -> None:
    with pytest.raises(ValidationError, match="secretEnv"):
        make_spec(workers={"secretEnv": [{"name": name, "secret": {"name": "s", "key": "k"}}]})
