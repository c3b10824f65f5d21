"""Pure builders of a run's Job manifests (plain dicts, as the API server takes them).

The apply layer (`apply.py`) calls `job_manifest` for each `planner.CreateJob`, adds the owner
reference and creates it. Every Job is Indexed (each index takes every n-th shard, see
`synthpref.layout.shards_for_worker`), retries per index (`backoffLimitPerIndex`) and runs
`synthpref <stage>` with the run manifest in $SYNTHPREF_RUN_MANIFEST. Secrets reach the pods
only as `secretKeyRef` environment variables, never as values. Every pod passes the Pod
Security Standard `restricted` with a read-only root filesystem (`pod_security`) and has CPU
and memory requests and limits (`resources`).
"""

from __future__ import annotations

import json
from typing import Any

from synthpref.errors import DEFAULT_TERMINATION_LOG, TERMINATION_LOG_ENV
from synthpref.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    GenerationBackend,
    PreferenceRunSpec,
    SecretKeyRef,
)
from synthpref_operator.names import (
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_QUEUE,
    LABEL_RUN,
    LABEL_STAGE,
    MANAGED_BY,
    MANIFEST_ENV,
    Stage,
)
from synthpref_operator.planner import CreateJob, uses_gpu
from synthpref_operator.pod_security import (
    WRITABLE_ENV,
    container_security_context,
    pod_security_context,
    writable_volumes,
)
from synthpref_operator.resources import container_resources
from synthpref_operator.settings import OperatorSettings

CONTAINER = "worker"


def run_manifest(name: str, namespace: str, spec: PreferenceRunSpec) -> str:
    """The manifest a worker reads from $SYNTHPREF_RUN_MANIFEST (the spec, defaults applied)."""
    return json.dumps(
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def worker_env(
    spec: PreferenceRunSpec, request: CreateJob, manifest: str, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Environment of a stage's worker: where it may write (the operator's `extraEnv` may
    override it), plain settings, the manifest, then secret references."""
    plain = {**WRITABLE_ENV, **settings.extra_env}
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in plain.items()]
    env.append({"name": MANIFEST_ENV, "value": manifest})
    env.append({"name": TERMINATION_LOG_ENV, "value": DEFAULT_TERMINATION_LOG})
    credentials = spec.storage.credentials
    if credentials is not None:
        env.append(_secret_env("AWS_ACCESS_KEY_ID", credentials.access_key_id))
        env.append(_secret_env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key))
    for variable in spec.workers.secret_env:
        env.append(_secret_env(variable.name, variable.secret))
    if request.stage is Stage.GENERATE and request.model is not None:
        model = spec.model(request.model)
        endpoint = model.openai
        if model.backend is GenerationBackend.OPENAI and endpoint and endpoint.api_key_secret:
            env.append(_secret_env(endpoint.api_key_env, endpoint.api_key_secret))
    return env


def worker_args(request: CreateJob) -> list[str]:
    args = [request.stage.value]
    if request.model is not None:
        args += ["--model", request.model]
    if request.stage is not Stage.PREPARE:
        args += ["--workers", str(request.completions)]
    return args


def labels(run: str, request: CreateJob, spec: PreferenceRunSpec) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "synthpref",
        "app.kubernetes.io/component": request.stage.value,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: run,
        LABEL_STAGE: request.stage.value,
    }
    if request.model is not None:
        result[LABEL_MODEL] = request.model
    if spec.queue_name:
        result[LABEL_QUEUE] = spec.queue_name
    return result


def job_manifest(
    run: str,
    namespace: str,
    spec: PreferenceRunSpec,
    request: CreateJob,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The Job for one `CreateJob` action (without owner references)."""
    gpus = uses_gpu(spec, request.stage, request.model)
    workers = spec.workers
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": (workers.image or settings.image)
        if gpus
        else (workers.cpu_image or settings.cpu_image),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["synthpref"],
        "args": worker_args(request),
        "env": worker_env(spec, request, run_manifest(run, namespace, spec), settings),
        # The worker writes its `Error: ...` line there; without it, the log's tail.
        "terminationMessagePath": DEFAULT_TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    container["resources"] = container_resources(
        spec, request.stage, request.model, settings.gpu_resource
    )
    container["securityContext"] = container_security_context()
    volumes, container["volumeMounts"] = writable_volumes(shared_memory=gpus > 1)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Workers read and write storage only; they never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(settings.worker_user_id),
        "containers": [container],
        "volumes": volumes,
    }
    if gpus:
        selector = workers.node_selector or settings.gpu_node_selector
        tolerations = workers.tolerations or settings.gpu_tolerations
        if selector:
            pod_spec["nodeSelector"] = dict(selector)
        if tolerations:
            pod_spec["tolerations"] = [
                t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tolerations
            ]
    if workers.priority_class_name:
        pod_spec["priorityClassName"] = workers.priority_class_name
    if workers.service_account_name:
        pod_spec["serviceAccountName"] = workers.service_account_name
    job_labels = labels(run, request, spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": request.name, "namespace": namespace, "labels": job_labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": request.completions,
            "parallelism": request.completions,
            "backoffLimitPerIndex": workers.backoff_limit_per_index,
            # One index over its retries fails the Job at once: the run is Failed anyway.
            "maxFailedIndexes": 0,
            # With a Kueue queue the Job starts suspended and Kueue admits it.
            "suspend": bool(spec.queue_name),
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }


def owner_reference(run: str, uid: str) -> dict[str, Any]:
    """The owner reference that makes the garbage collector delete a run's Jobs with it."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": run,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
