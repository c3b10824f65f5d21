"""CPU, memory and GPU resources of a worker pod: defaults per kind of worker, merged with the
spec's `resources` fields key by key.

Called by `builders.job_manifest`. Pure. The defaults are documented in the spec's field
descriptions (`models[].resources`, `judge.resources`, `workers.resources`) and the README;
tests/unit/test_builders.py holds them to that.
"""

from __future__ import annotations

from typing import Any

from synthpref.spec import (
    GenerationBackend,
    PreferenceRunSpec,
    ResourceList,
    Resources,
    quantity_value,
)
from synthpref_operator.names import Stage
from synthpref_operator.planner import uses_gpu

_KEYS = ("cpu", "memory")

# prepare, mix, parse: one Python process streaming rows (memory does not grow with the data).
CPU_STAGE = Resources(
    requests=ResourceList(cpu="1", memory="2Gi"), limits=ResourceList(cpu="2", memory="4Gi")
)
# Generation through an OpenAI-compatible endpoint: an asyncio client, mostly waiting.
OPENAI_GENERATION = Resources(
    requests=ResourceList(cpu="500m", memory="1Gi"), limits=ResourceList(cpu="2", memory="2Gi")
)
# vLLM on CPU (gpus: 0; development and CI with tiny models).
VLLM_CPU = Resources(
    requests=ResourceList(cpu="2", memory="8Gi"), limits=ResourceList(cpu="4", memory="16Gi")
)
# vLLM per GPU: the engine core, one worker process per GPU and the tokenizer need host cores;
# weights stream through host memory while the model loads. The memory limit equals the request,
# so the pod never uses more than it reserved and is not the first one evicted under pressure.
VLLM_CPU_PER_GPU = 4
VLLM_CPU_LIMIT_PER_GPU = 8
VLLM_MEMORY_GI_PER_GPU = 32


def vllm_gpu_defaults(gpus: int) -> Resources:
    """Defaults of a vLLM pod on `gpus` GPUs (host memory scaled with the GPUs)."""
    memory = f"{VLLM_MEMORY_GI_PER_GPU * gpus}Gi"
    return Resources(
        requests=ResourceList(cpu=str(VLLM_CPU_PER_GPU * gpus), memory=memory),
        limits=ResourceList(cpu=str(VLLM_CPU_LIMIT_PER_GPU * gpus), memory=memory),
    )


def default_resources(spec: PreferenceRunSpec, stage: Stage, model: str | None) -> Resources:
    """The operator's defaults for a stage's pods (a generation stage: for `model`)."""
    gpus = uses_gpu(spec, stage, model)
    if gpus:
        return vllm_gpu_defaults(gpus)
    if stage is Stage.GENERATE and model is not None:
        if spec.model(model).backend is GenerationBackend.OPENAI:
            return OPENAI_GENERATION
        return VLLM_CPU
    if stage is Stage.JUDGE:
        return VLLM_CPU
    return CPU_STAGE


def requested_resources(
    spec: PreferenceRunSpec, stage: Stage, model: str | None
) -> Resources | None:
    """What the spec sets for a stage's pods (None: defaults only)."""
    if stage is Stage.GENERATE and model is not None:
        return spec.model(model).resources
    if stage is Stage.JUDGE:
        return spec.judge.resources
    stages = spec.workers.resources
    return {Stage.PREPARE: stages.prepare, Stage.MIX: stages.mix, Stage.PARSE: stages.parse}.get(
        stage
    )


def merge_resources(default: Resources, override: Resources | None) -> Resources:
    """`override` on top of `default`, key by key.

    Request and limit stay consistent, as Kubernetes requires: a request set above the default
    limit raises that limit to it, and a limit set below the default request lowers that
    request to it (the spec refuses a limit below a request when it sets both).
    """
    if override is None:
        return default
    requests: dict[str, str | None] = {}
    limits: dict[str, str | None] = {}
    for key in _KEYS:
        request = getattr(override.requests, key)
        limit = getattr(override.limits, key)
        merged_request = request or getattr(default.requests, key)
        merged_limit = limit or getattr(default.limits, key)
        if merged_request and merged_limit:
            below = quantity_value(merged_limit) < quantity_value(merged_request)
            if below and limit is None:
                merged_limit = merged_request
            elif below:
                merged_request = merged_limit
        requests[key], limits[key] = merged_request, merged_limit
    return Resources(requests=ResourceList(**requests), limits=ResourceList(**limits))


def container_resources(
    spec: PreferenceRunSpec, stage: Stage, model: str | None, gpu_resource: str
) -> dict[str, Any]:
    """The worker container's `resources`: CPU and memory, plus its GPUs (requests = limits)."""
    merged = merge_resources(
        default_resources(spec, stage, model), requested_resources(spec, stage, model)
    )
    result: dict[str, dict[str, str]] = {
        "requests": merged.requests.model_dump(exclude_none=True),
        "limits": merged.limits.model_dump(exclude_none=True),
    }
    gpus = uses_gpu(spec, stage, model)
    if gpus:
        result["requests"][gpu_resource] = result["limits"][gpu_resource] = str(gpus)
    return result
