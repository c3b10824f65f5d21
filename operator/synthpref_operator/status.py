"""Pydantic models of a PreferenceRun's status: what the operator writes and `kubectl` shows.

The planner (`planner.plan`) returns a `RunStatus`; the handlers write it through the status
subresource; `crd.py` generates the CRD's status schema from these models, next to the spec's.
Phases, condition types and reasons are closed enums. Nothing here ever holds a secret.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from synthpref.spec import ModelSpec


class StatusModel(BaseModel):
    """Base for the status models: camelCase on the wire, unknown fields ignored on read."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Phase(StrEnum):
    PENDING = "Pending"
    PREPARING = "Preparing"
    GENERATING = "Generating"
    MIXING = "Mixing"
    ANNOTATING = "Annotating"
    PARSING = "Parsing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    PREPARED = "Prepared"
    GENERATED = "Generated"
    MIXED = "Mixed"
    ANNOTATED = "Annotated"
    PARSED = "Parsed"
    SUSPENDED = "Suspended"
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"
    DATA_LOSS = "DataLoss"
    FAILED = "Failed"
    SUCCEEDED = "Succeeded"
    # The judge's spending cap (spec.judge.budget) holds back request files.
    BUDGET_EXHAUSTED = "BudgetExhausted"
    # Whether the run may use what it names (endpoints, images, ServiceAccount, Secrets).
    ADMITTED = "Admitted"
    # Whether something outside the run keeps it from going on (see `blocked.py`).
    BLOCKED = "Blocked"
    # Whether the finished run's report warns about its data (a judge's position bias, failed
    # requests, ...): report/warnings.json, written with the report.
    REPORT_WARNINGS = "ReportWarnings"


class Reason(StrEnum):
    WAITING = "Waiting"
    IN_PROGRESS = "InProgress"
    DONE = "Done"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    NOT_SUSPENDED = "NotSuspended"
    JOB_FAILED = "JobFailed"
    STAGE_INCOMPLETE = "StageIncomplete"
    JUDGE_FAILED = "JudgeFailed"
    SPEC_INVALID = "SpecInvalid"
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"
    SPEC_CHANGE_REVERTED = "SpecChangeReverted"
    NO_FAILURE = "NoFailure"
    SUCCEEDED = "Succeeded"
    NOT_FINISHED = "NotFinished"
    DATA_LOST = "DataLost"
    NO_DATA_LOSS = "NoDataLoss"
    ACCEPTANCE_FAILED = "AcceptanceFailed"
    JUDGE_UNREACHABLE = "JudgeUnreachable"
    BUDGET_EXHAUSTED = "BudgetExhausted"
    WITHIN_BUDGET = "WithinBudget"
    ADMITTED = "Admitted"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
    SECRET_NOT_ALLOWED = "SecretNotAllowed"
    SECRET_NOT_FOUND = "SecretNotFound"
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    SERVICE_ACCOUNT_NOT_ALLOWED = "ServiceAccountNotAllowed"
    PATH_NOT_ALLOWED = "PathNotAllowed"
    CREDENTIAL_NOT_ALLOWED = "CredentialNotAllowed"
    PLACEMENT_NOT_ALLOWED = "PlacementNotAllowed"
    ENV_NOT_ALLOWED = "EnvNotAllowed"
    LIMIT_EXCEEDED = "LimitExceeded"
    STORAGE_OBJECT_TOO_LARGE = "StorageObjectTooLarge"
    RUN_LEASE_HELD = "RunLeaseHeld"
    CATALOG_NOT_FOUND = "CatalogNotFound"
    CATALOG_INVALID = "CatalogInvalid"
    NOT_BLOCKED = "NotBlocked"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    UNSCHEDULABLE = "Unschedulable"
    QUEUED = "Queued"
    JOB_REFUSED = "JobRefused"
    RETRIED = "Retried"
    RETRY_IGNORED = "RetryIgnored"
    REPORT_WARNINGS = "ReportWarnings"
    NO_REPORT_WARNINGS = "NoReportWarnings"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """One condition, as metav1.Condition: the time moves only when `status` changes."""

    type: ConditionType = Field(description="Condition type (one per type).")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Reason = Field(description="Machine-readable CamelCase reason.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339, seconds, UTC)."
    )
    observed_generation: int = Field(
        default=0, ge=0, description="metadata.generation the condition was computed from."
    )


class ModelProgress(StatusModel):
    """Generation progress of one answering model."""

    name: str = Field(description="Model name (spec.models[].name).")
    shards_done: int = Field(default=0, ge=0, description="Committed answer shards.")
    shards_total: int = Field(default=0, ge=0, description="Prompt shards.")


class JudgeProgress(StatusModel):
    """Annotation progress: judge request files, batches and requests."""

    files: int = Field(default=0, ge=0, description="Judge request files.")
    files_done: int = Field(default=0, ge=0, description="Request files with final results.")
    requests: int = Field(default=0, ge=0, description="Judge requests.")
    requests_done: int = Field(default=0, ge=0, description="Requests answered.")
    requests_failed: int = Field(default=0, ge=0, description="Requests failed for good.")
    requests_resubmitted: int = Field(default=0, ge=0, description="Requests resubmitted.")
    batches: int = Field(default=0, ge=0, description="Batches created (openai judge).")
    batches_by_status: dict[str, int] = Field(
        default_factory=dict, description="Request files by ledger phase (openai judge)."
    )
    input_tokens: int = Field(
        default=0, ge=0, description="Estimated prompt tokens of the request files."
    )
    tokens_used: int = Field(
        default=0, ge=0, description="Tokens used (usage.total_tokens of fetched results)."
    )
    input_tokens_used: int = Field(
        default=0, ge=0, description="Input tokens used (usage.prompt_tokens of fetched results)."
    )
    output_tokens_used: int = Field(
        default=0,
        ge=0,
        description="Output tokens used (usage.completion_tokens of fetched results).",
    )
    cost_usd: float | None = Field(
        default=None,
        ge=0,
        description="US dollars of the tokens used, at Batch API prices (unset without a price).",
    )
    endpoint_failing_since: str | None = Field(
        default=None,
        description="Since when (RFC 3339) every call to the judge endpoint has failed; unset "
        "while it answers. After judge.giveUpAfterSeconds the run fails.",
    )
    last_error: str | None = Field(
        default=None, description="The judge endpoint's last error while it fails."
    )


class CostEstimate(StatusModel):
    """What the judge is expected to cost (`synthpref estimate`), computed when the run is
    admitted (from its prompts) and again once the request files exist (from them)."""

    basis: str = Field(
        description="prompts (rendered from the prompts and answer lengths) or requests (the "
        "request files)."
    )
    requests: int = Field(default=0, ge=0, description="Judge requests.")
    input_tokens: int = Field(default=0, ge=0, description="Estimated judge input tokens.")
    output_tokens: int = Field(
        default=0, ge=0, description="Most judge output tokens (judge.maxTokens per request)."
    )
    cost_usd: float | None = Field(
        default=None,
        ge=0,
        description="Most US dollars at Batch API prices (unset without a price).",
    )
    price: str | None = Field(default=None, description="The price it used, and its source.")
    error: str | None = Field(
        default=None, description="Why there is no estimate from the prompts (unreadable)."
    )


class Progress(StatusModel):
    """Per-stage progress in shards (the unit of work)."""

    shards: int = Field(default=0, ge=0, description="Prompt shards (0 until prepare is done).")
    prompts: int = Field(default=0, ge=0, description="Prompts after deduplication.")
    models: list[ModelProgress] = Field(
        default_factory=list, description="Generation progress per model."
    )
    mix_shards_done: int = Field(default=0, ge=0, description="Committed mix shards.")
    judge_shards_done: int = Field(default=0, ge=0, description="Shards with all judge results.")
    parse_shards_done: int = Field(default=0, ge=0, description="Committed dataset parts.")
    judge: JudgeProgress | None = Field(default=None, description="Judge details.")


class RunResult(StatusModel):
    """The dataset, once the run has succeeded."""

    dataset_uri: str = Field(description="Where the dataset parts are.")
    pairs: int = Field(default=0, ge=0, description="Preference pairs written.")
    prompts: int = Field(default=0, ge=0, description="Prompts parsed.")
    prompts_with_pairs: int = Field(default=0, ge=0, description="Prompts that gave a pair.")
    drops: dict[str, int] = Field(
        default_factory=dict, description="Prompts dropped, by kind (ties, too few ratings...)."
    )
    request_failures: dict[str, int] = Field(
        default_factory=dict, description="Judge requests without a usable reply, by kind."
    )
    accepted: bool = Field(
        default=True, description="Whether the run met spec.acceptance (false: Failed)."
    )
    report_uri: str | None = Field(
        default=None,
        description="The run report (report/index.html: plots of the data and the judge's "
        "biases), once the last parse worker wrote it. `synthpref report open RUN.yaml` (or "
        "`synthpref report open NAME -n NAMESPACE`) downloads it to a local folder; with --url "
        "it prints a presigned HTTPS link to it instead.",
    )
    report_error: str | None = Field(
        default=None,
        description="Why the run report could not be written (the dataset is not affected). "
        "After `synthpref report RUN.yaml` wrote it, a new synthpref.dev/retry value makes the "
        "operator read the report again and clear this.",
    )


class CatalogStatus(StatusModel):
    """The models the run took from its ModelCatalog (spec.modelCatalog), frozen when the run
    was admitted: every stage uses these, whatever the catalog says later."""

    name: str = Field(description="The ModelCatalog (spec.modelCatalog.name).")
    generation: int = Field(
        default=0, ge=0, description="The catalog's metadata.generation the models came from."
    )
    seen_generation: int = Field(
        default=0,
        ge=0,
        description="The catalog's newest generation seen; an edit after the models were taken "
        "moves it, with an Event, and changes nothing else.",
    )
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="The run's whole model list: the catalog's picked entries, then the inline "
        "spec.models.",
    )

    def names(self) -> list[str]:
        return [m.name for m in self.models]


class RunStatus(StatusModel):
    """The observed state of a PreferenceRun."""

    phase: Phase = Field(default=Phase.PENDING, description="Summary phase of the run.")
    message: str = Field(default="", description="What the run is doing or why it failed.")
    progress: str = Field(
        default="",
        description="Work units done/total: 1 for prepare, then per prompt shard one for each "
        "answering model, one for mix, one for the judge and one for parse; so total = 1 + "
        "shards x (models + 3), e.g. 22/22 for 3 shards and 4 models.",
    )
    observed_generation: int = Field(
        default=0, ge=0, description="metadata.generation this status was computed from."
    )
    start_time: str | None = Field(default=None, description="When the run first started.")
    completion_time: str | None = Field(
        default=None, description="When the run succeeded or failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions, one per type (metav1.Condition style)."
    )
    stages: Progress = Field(default_factory=Progress, description="Per-stage progress.")
    result: RunResult | None = Field(
        default=None,
        description="The dataset (when Succeeded, or Failed its acceptance check).",
    )
    losses: dict[str, int] = Field(
        default_factory=dict,
        description="Items lost so far, by cause (model shards failed, judge requests failed "
        "after all attempts, unparseable ratings, prompts without enough answers...).",
    )
    estimate: CostEstimate | None = Field(
        default=None, description="The judge's expected cost (see `synthpref estimate`)."
    )
    cost: str = Field(
        default="",
        description="The judge's cost for the COST column: ~$N (estimated) until the judge is "
        "done, then $N (actual, from the results' usage).",
    )
    retry_token: str | None = Field(
        default=None,
        description="The value of the run's synthpref.dev/retry annotation last acted on: a "
        "new value on a Failed run makes it go on from where it stopped.",
    )
    locked_spec: dict[str, str] = Field(
        default_factory=dict,
        description="Fingerprints of the spec sections (mix, judge, binarization) that cannot "
        "change any more because a stage using them has started.",
    )
    catalog: CatalogStatus | None = Field(
        default=None, description="The models taken from spec.modelCatalog (frozen)."
    )

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type is kind), None)

    def to_body(self) -> dict[str, object]:
        """The status as the API server stores it (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
