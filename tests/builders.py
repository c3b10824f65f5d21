"""Small builders for specs and manifests used across test tiers (instead of YAML walls)."""

from __future__ import annotations

from typing import Any

from synthpref.spec import PreferenceRunSpec
from synthpref_operator.builders import job_manifest
from synthpref_operator.names import Stage, job_name
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import OperatorSettings


def spec_dict(
    prompts_uri: str = "prompts/",
    storage_uri: str = "store/",
    models: int = 4,
    **sections: Any,
) -> dict[str, Any]:
    """A valid spec as a plain dict (camelCase, as in YAML); `sections` replace top-level keys."""
    spec: dict[str, Any] = {
        "prompts": {"uri": prompts_uri, "shardSize": 2},
        "storage": {"uri": storage_uri},
        "models": [{"name": f"m{i}", "path": f"/models/m{i}"} for i in range(models)],
    }
    spec.update(sections)
    return spec


def manifest_dict(spec: dict[str, Any] | None = None, name: str = "test-run") -> dict[str, Any]:
    return {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "PreferenceRun",
        "metadata": {"name": name},
        "spec": spec if spec is not None else spec_dict(),
    }


def make_spec(**kwargs: Any) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(spec_dict(**kwargs))


# Every kind of worker Job the operator makes, as (label, stage, model) over `worker_jobs_spec`:
# the CPU stages, generation with vLLM on 0, 1 and 4 GPUs and with the openai backend, and a
# vLLM judge on 2 GPUs.
WORKER_JOBS: list[tuple[str, str, str | None]] = [
    ("prepare", "prepare", None),
    ("mix", "mix", None),
    ("parse", "parse", None),
    ("generate-vllm-cpu", "generate", "vllm-cpu"),
    ("generate-vllm-1gpu", "generate", "vllm-1gpu"),
    ("generate-vllm-4gpu", "generate", "vllm-4gpu"),
    ("generate-openai", "generate", "openai"),
    ("judge-vllm-2gpu", "judge", None),
]


def worker_jobs_spec(**sections: Any) -> dict[str, Any]:
    """A spec dict with one model of each generation kind and a vLLM judge on 2 GPUs
    (`sections` replace top-level keys, `models` included)."""
    models: list[dict[str, Any]] = [
        {"name": "vllm-cpu", "path": "/models/a", "gpus": 0},
        {"name": "vllm-1gpu", "path": "/models/b"},
        {"name": "vllm-4gpu", "path": "/models/c", "gpus": 4},
        {
            "name": "openai",
            "backend": "openai",
            "path": "gpt",
            "openai": {
                "baseUrl": "http://answers/v1",
                "apiKeySecret": {"name": "openai", "key": "token"},
            },
        },
    ]
    sections.setdefault("judge", {"backend": "vllm", "model": "/models/judge", "gpus": 2})
    sections.setdefault("models", models)
    document = spec_dict(models=0)
    document.update(sections)
    return document


def worker_job(
    label: str,
    settings: OperatorSettings,
    *,
    run: str = "run",
    namespace: str = "ns",
    **sections: Any,
) -> dict[str, Any]:
    """The Job manifest of the kind `label` of `WORKER_JOBS` over `worker_jobs_spec(**sections)`."""
    stage_name, model = next((s, m) for lbl, s, m in WORKER_JOBS if lbl == label)
    spec = PreferenceRunSpec.model_validate(worker_jobs_spec(**sections))
    stage = Stage(stage_name)
    request = CreateJob(job_name(run, stage, model), stage, 1, model)
    return job_manifest(run, namespace, spec, request, settings)


class UnreadReply:
    """What a kubernetes client call returns with `_preload_content=False` (urllib3's
    response), for stand-ins of the API: the operator only drains it back to the pool."""

    def drain_conn(self) -> None:
        pass
