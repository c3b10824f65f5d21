"""Operator-wide settings: defaults for worker pods (images, GPU resource name, GPU node
placement) and what runs may use (allow-lists, see `admission.py`).

Built by the CLI (`synthpref operator run`) from `--settings-json` / $SYNTHPREF_OPERATOR_SETTINGS
(camelCase keys, as the Helm chart's `workers`, `security`, `rbac.secretNames` and
`operator.deletionTimeoutSeconds` values render them) and handed to the builders and the
reconcile pass; a run's `spec.workers` overrides the worker defaults field by field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from synthpref.spec import Toleration, validation_problems
from synthpref.storage_errors import StorageLimits
from synthpref_operator.admission import ANY, parse_endpoint

SETTINGS_ENV = "SYNTHPREF_OPERATOR_SETTINGS"
# Threads for reconcile passes, and API-server connections (`synthpref operator run --workers`):
# enough for a pass of each of ~50 busy runs at once; a pass mostly waits on the API server
# and storage.
DEFAULT_WORKERS = 64
# Job creations in flight at once over all runs (`--job-creations`). Fifty runs of twenty
# models starting generation together create 1,000 Jobs; on 2 cores (scripts/bench_operator.py
# --scenario concurrent, one run each) the hop to generation took p95 16.7 s with 8 at once
# (33 passes longer than the interval), 8.7 s with 32 (19), 7.0 s with 64 (none), 4.2 s with
# 128 (none). A default API server queues what exceeds the seats of service accounts' priority
# level (workload-low) rather than refusing it.
DEFAULT_JOB_CREATIONS = 64


class OperatorSettings(BaseModel):
    """Defaults for the Jobs the operator creates."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    image: str = Field(default="ghcr.io/synthpref/worker:0.1.0", description="GPU worker image.")
    cpu_image: str = Field(
        default="ghcr.io/synthpref/worker-cpu:0.1.0", description="CPU worker image."
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="Worker pull policy.")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="GPU extended resource.")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector of GPU Jobs unless the run sets one."
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of GPU Jobs unless the run sets some."
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict, description="Plain environment variables for every worker."
    )
    worker_user_id: int = Field(
        default=10001, ge=1, description="uid (and gid) worker containers run as (the images')."
    )
    # What a run author may make the operator do on their behalf (see README "Security").
    allowed_endpoints: list[str] = Field(
        default_factory=lambda: ["https://api.openai.com/v1"],
        description="Base URLs a run may send an API key to (judge.openai.baseUrl, "
        "models[].openai.baseUrl), matched by scheme, host, port and path prefix; '*' allows "
        "any. An unset baseUrl (the operator's and workers' own OPENAI_BASE_URL) is always "
        "allowed.",
    )
    allowed_image_prefixes: list[str] = Field(
        default_factory=list,
        description="Image prefixes a run's workers.image / workers.cpuImage may use, besides "
        "the operator's own worker images; a prefix matches up to a '/', ':' or '@'; '*' "
        "allows any.",
    )
    secret_names: list[str] = Field(
        default_factory=list,
        description="Secrets runs may use (the chart's rbac.secretNames); empty: Secrets "
        "labelled synthpref.dev/allow-runs=true.",
    )
    allowed_service_accounts: list[str] = Field(
        default_factory=list,
        description="ServiceAccounts a run's workers.serviceAccountName may name besides "
        "'default' (what an unset one means); '*' allows any.",
    )
    operator_api_key_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces whose runs may have the operator's own OpenAI API key "
        "(its OPENAI_API_KEY) sent to the operator's own endpoint (its OPENAI_BASE_URL): a run "
        "there with no judge.openai.apiKeySecret and no judge.openai.baseUrl; '*' any "
        "namespace. Empty: every OpenAI judge must name its own key Secret.",
    )
    operator_storage: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Namespace -> s3:// URI prefixes under which a run with no "
        "storage.credentials may have the operator open its storage (and prompts) with the "
        "operator's own S3 identity; the key '*' applies to every namespace. Empty: every run "
        "brings its own storage credentials.",
    )
    allow_local_paths: bool = Field(
        default=False,
        description="Let prompts.uri and storage.uri be local paths (only where the operator "
        "and its worker pods share a filesystem on purpose, e.g. the dev cluster); else both "
        "must be s3://.",
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=list,
        description="PriorityClasses a run's workers.priorityClassName may name; '*' any.",
    )
    allowed_tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Tolerations a run's workers.tolerations may list besides gpuTolerations "
        "(each must equal one of them).",
    )
    allowed_node_labels: list[str] = Field(
        default_factory=list,
        description="key=value node labels a run's workers.nodeSelector may name besides "
        "gpuNodeSelector's ('key=*': any value of the key; '*': any label).",
    )
    max_models: int = Field(default=64, ge=1, description="Most models a run may name.")
    max_replicas: int = Field(
        default=64, ge=1, description="Most replicas (worker pods) of one model of a run."
    )
    max_shards: int = Field(
        default=50_000,
        ge=1,
        description="Most prompt shards a run may cut (checked once prepare counted them; "
        "a larger prompts.shardSize cuts fewer).",
    )
    max_storage_object_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest object the operator itself reads from a run's storage (the "
        "prompt manifest, judge ledgers, the summary); a larger one holds the run.",
    )
    max_listed_keys: int = Field(
        default=500_000,
        ge=1000,
        description="Most keys one listing of a run's storage may return to the operator; "
        "more holds the run.",
    )
    deletion_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long deleting a run keeps trying to cancel its judge batches before "
        "it lets the run go anyway (the batch ids left running are logged and in an Event).",
    )

    def storage_limits(self) -> StorageLimits:
        """What the operator itself may read of a run's storage in one call."""
        return StorageLimits(
            max_object_bytes=self.max_storage_object_bytes, max_listed_keys=self.max_listed_keys
        )

    @field_validator("operator_storage")
    @classmethod
    def _s3_prefixes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        bad = [p for prefixes in value.values() for p in prefixes if not p.startswith("s3://")]
        if bad:
            raise ValueError(f"not s3:// URI prefixes: {bad}")
        return value

    @field_validator("allowed_node_labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v != ANY and "=" not in v]
        if bad:
            raise ValueError(f"not key=value node labels: {bad}; or '*' for any")
        return value

    @field_validator("allowed_endpoints")
    @classmethod
    def _plain_base_urls(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v != ANY and parse_endpoint(v) is None]
        if bad:
            raise ValueError(
                f"not plain http(s) base URLs (no user info, query or fragment): {bad}; "
                "or '*' for any"
            )
        return value


class SettingsError(ValueError):
    """The settings JSON is not valid; the message names the source and the field."""


def parse_settings(text: str, source: str = SETTINGS_ENV) -> OperatorSettings:
    """Settings from a JSON object with camelCase keys (unset keys keep their defaults)."""
    try:
        return OperatorSettings.model_validate_json(text or "{}")
    except ValidationError as error:
        problems = "; ".join(validation_problems(error))
        raise SettingsError(f"{source}: invalid operator settings: {problems}") from None
