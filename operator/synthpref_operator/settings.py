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
    deletion_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long deleting a run keeps trying to cancel its judge batches before "
        "it lets the run go anyway (the batch ids left running are logged and in an Event).",
    )

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
