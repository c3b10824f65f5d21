"""Pydantic models of the PreferenceRun spec: the one source of truth for a run.

Read by every stage (through `load_run`), by the local runner and by the operator; the CRD's
OpenAPI schema is generated from these models. Field names are camelCase in YAML, as in every
Kubernetes resource, and snake_case in Python. Secrets are never fields: only references to them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from synthpref.errors import SynthprefError
from synthpref.pricing import Price, price_for
from synthpref.templates import structured_reply_max_tokens

API_GROUP = "synthpref.dev"
API_VERSION = "v1alpha1"
KIND = "PreferenceRun"

DEFAULT_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
# DNS-1123 label: model names end up in Job names, labels and storage paths.
_MODEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A run's name: a DNS-1123 subdomain short enough to be a label value (Jobs carry it).
_RUN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_RUN_NAME = 63
# s3://bucket[/prefix] with a valid bucket name.
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
# "scheme:" before the first "/": a URI, not a local path (s3:/x, gs://b, file:/x).
_SCHEME_LIKE = re.compile(r"^[^/]*:")
MAX_URI = 2048
# CEL twin of `check_uri` for the CRD, so `kubectl apply` refuses the same values.
_URI_CEL_RULE: dict[str, JsonValue] = {
    "rule": "self.startsWith('s3://') ? self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')"
    " : !self.matches('^[^/]*:')",
    "message": "must be s3://bucket/prefix (a valid bucket name) or a local path "
    "(no other URI scheme)",
}
# A Kubernetes resource quantity (cpu: 4, 500m; memory: 32Gi, 512Mi).
_QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{f"{s}i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}


def quantity_value(quantity: str) -> Decimal:
    """The number a resource quantity stands for (`500m` -> 0.5, `2Gi` -> 2147483648), so that
    quantities in different units compare. Takes what the spec's quantity pattern accepts."""
    match = re.fullmatch(_QUANTITY, quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a resource quantity (e.g. 4, 500m, 32Gi)")
    return Decimal(match.group(1)) * _QUANTITY_SUFFIX[match.group(3) or ""]


def check_uri(value: str) -> str:
    """A storage or prompt URI: s3://bucket/prefix or a local path; anything else is refused
    before any work (a typo such as `s3:/x` would otherwise become a local folder)."""
    if value.startswith("s3://"):
        if not _S3_URI.match(value):
            bucket = value.removeprefix("s3://").partition("/")[0]
            raise ValueError(
                f"{value!r}: {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, "
                "digits, '.' and '-'); use s3://bucket/prefix"
            )
        return value
    if _SCHEME_LIKE.match(value):
        scheme = value.partition(":")[0]
        hint = " (did you mean s3://...?)" if scheme.lower() == "s3" else ""
        raise ValueError(
            f"{value!r}: unsupported URI scheme {scheme + ':'!r}{hint}; use s3://bucket/prefix "
            "or a local path"
        )
    return value


def check_run_name(value: str) -> str:
    """metadata.name: what Kubernetes accepts for a PreferenceRun and for its Jobs' labels."""
    if len(value) > MAX_RUN_NAME or not _RUN_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid run name: at most {MAX_RUN_NAME} lowercase letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return value


class SpecModel(BaseModel):
    """Base for all spec models: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(SpecModel):
    """A reference to one key of a Kubernetes Secret (never the value itself)."""

    name: str = Field(min_length=1, description="Name of the Secret in the run's namespace.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class MalformedPolicy(StrEnum):
    FAIL = "fail"
    SKIP = "skip"


class PromptSource(SpecModel):
    """Where the prompts come from: JSONL files of {"text": ..., **metadata}."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec.prompts cannot change once the run exists "
                    "(shards are cut from it); create a new PreferenceRun instead",
                }
            ]
        }
    )

    uri: str = Field(
        min_length=1,
        max_length=MAX_URI,
        description=(
            "A JSONL file, a directory of *.jsonl files, or a glob; a local path or "
            "s3://bucket/prefix."
        ),
        json_schema_extra={"x-kubernetes-validations": [_URI_CEL_RULE]},
    )
    shard_size: int = Field(
        default=500, ge=1, le=1_000_000, description="Prompts per shard (the unit of work)."
    )
    on_malformed: MalformedPolicy = Field(
        default=MalformedPolicy.FAIL,
        description="What to do with a malformed line: fail the stage, or skip it and report it.",
    )

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, value: str) -> str:
        return check_uri(value)


class S3Credentials(SpecModel):
    """Secret references for S3 credentials; without them the default AWS chain is used."""

    access_key_id: SecretKeyRef = Field(description="Secret key holding AWS_ACCESS_KEY_ID.")
    secret_access_key: SecretKeyRef = Field(description="Secret key holding AWS_SECRET_ACCESS_KEY.")


class StorageSpec(SpecModel):
    """Where every artifact of the run lands."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec.storage cannot change once the run exists "
                    "(its artifacts live there); create a new PreferenceRun instead",
                }
            ]
        }
    )

    uri: str = Field(
        min_length=1,
        max_length=MAX_URI,
        description="A local directory or s3://bucket/prefix for all artifacts.",
        json_schema_extra={"x-kubernetes-validations": [_URI_CEL_RULE]},
    )
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint URL for S3-compatible stores (MinIO, Ceph...); default: "
        "$AWS_ENDPOINT_URL_S3, else AWS.",
    )
    region: str | None = Field(default=None, description="S3 region.")
    credentials: S3Credentials | None = Field(
        default=None, description="Secret references for S3 credentials."
    )

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, value: str) -> str:
        return check_uri(value)


class ResourceList(SpecModel):
    """CPU and memory quantities, as in a Kubernetes container's resources."""

    # The pattern goes into the CRD; the validator words the same rule for people.
    cpu: str | None = Field(
        default=None,
        description="CPU cores, e.g. 4 or 500m.",
        json_schema_extra={"pattern": _QUANTITY},
    )
    memory: str | None = Field(
        default=None,
        description="Memory, e.g. 32Gi or 512Mi.",
        json_schema_extra={"pattern": _QUANTITY},
    )

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_QUANTITY, value):
            raise ValueError(
                f"{value!r} is not a Kubernetes quantity (a number with an optional suffix "
                "such as m, Ki, Mi, Gi: 500m, 4, 512Mi, 32Gi)"
            )
        return value


class Resources(SpecModel):
    """CPU and memory of a worker pod. A key left out takes the default; a request above the
    default limit raises that limit to it, and a limit below the default request lowers that
    request to it."""

    requests: ResourceList = Field(
        default_factory=ResourceList, description="What the scheduler reserves."
    )
    limits: ResourceList = Field(
        default_factory=ResourceList,
        description="The most the pod may use (a memory limit is where it is OOM-killed).",
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for key in ("cpu", "memory"):
            request, limit = getattr(self.requests, key), getattr(self.limits, key)
            if request and limit and quantity_value(limit) < quantity_value(request):
                raise ValueError(f"limits.{key} {limit} is less than requests.{key} {request}")
        return self


class SamplingParams(SpecModel):
    """Sampling settings for answering prompts."""

    temperature: float = Field(default=0.8, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=512, ge=1, le=131_072, description="Max new tokens.")
    seed: int = Field(
        default=0, ge=0, description="Base seed; each prompt's seed derives from it and its id."
    )


class OpenAIEndpoint(SpecModel):
    """An OpenAI-compatible HTTP endpoint (api.openai.com, a vLLM server, a gateway)."""

    base_url: str | None = Field(
        default=None,
        description="Base URL, e.g. http://vllm:8000/v1; default: $OPENAI_BASE_URL, else OpenAI's.",
    )
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="Secret holding the API key (in a cluster)."
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Environment variable holding the API key (set from apiKeySecret in a Job).",
    )
    concurrency: int = Field(default=8, ge=1, le=1024, description="Requests in flight at once.")
    max_retries: int = Field(
        default=6, ge=0, le=100, description="Retries with backoff on 429/5xx/connection errors."
    )
    timeout_seconds: float = Field(default=120.0, gt=0, description="Per-request timeout.")


class GenerationBackend(StrEnum):
    VLLM = "vllm"
    OPENAI = "openai"


class ModelSpec(SpecModel):
    """One answering model."""

    name: str = Field(
        min_length=1,
        max_length=40,
        description="Short DNS-style label for the model (used in Job names and paths).",
    )
    backend: GenerationBackend = Field(
        default=GenerationBackend.VLLM,
        description="vllm (offline batch on GPUs) or openai (any OpenAI-compatible endpoint).",
    )
    path: str = Field(
        min_length=1,
        description="Model to load: a Hugging Face id or a local path (vllm); model name (openai).",
    )
    revision: str | None = Field(default=None, description="Model revision (vllm).")
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs per replica (tensor parallel); unset: 1 for backend vllm, 0 for "
        "backend openai (which loads no model).",
    )
    replicas: int = Field(
        default=1, ge=1, le=1024, description="Parallel workers; each takes every n-th shard."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length; longer prompts become per-row errors."
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template overriding the tokenizer's."
    )
    system_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=20_000,
        description="A system message sent before every prompt (one model path can so play "
        "several models); without it the chat template's default system message, if any.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM engine arguments (e.g. dtype, quantization)."
    )
    sampling: SamplingParams = Field(
        default_factory=SamplingParams, description="Sampling parameters."
    )
    openai: OpenAIEndpoint | None = Field(
        default=None, description="Endpoint settings for the openai backend."
    )
    error_budget: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Most per-row errors (prompt longer than the context, content filtered, "
        "empty answer) a shard may commit, as a fraction of its rows; above it the shard fails "
        "like an endpoint outage: nothing is committed and the retry redoes it.",
    )
    resources: Resources | None = Field(
        default=None,
        description="CPU and memory of each worker pod, merged key by key with the defaults: "
        "vLLM on GPUs requests 4 CPUs and 32Gi of host memory per GPU (limits: 8 CPUs per GPU, "
        "memory = request); vLLM on CPU (gpus: 0) requests 2 CPUs and 8Gi (limits 4 CPUs, 16Gi); "
        "the openai backend requests 500m and 1Gi (limits 2 CPUs, 2Gi).",
    )

    @property
    def gpu_count(self) -> int:
        """GPUs per replica: `gpus`, or when unset 1 for a vLLM model, 0 for an openai one."""
        if self.gpus is not None:
            return self.gpus
        return 1 if self.backend is GenerationBackend.VLLM else 0

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _MODEL_NAME.match(value):
            raise ValueError(
                "must be lowercase letters, digits and '-', starting and ending with a letter "
                f"or digit (got {value!r})"
            )
        return value


class MixSpec(SpecModel):
    """How answers are sampled per prompt and turned into judge requests."""

    responses_per_prompt: int = Field(
        default=4, ge=2, le=16, description="Answers from distinct models per prompt (k)."
    )
    on_policy_model: str | None = Field(
        default=None,
        max_length=40,
        description="A model name that is always one side (on-policy pairs: k is then 2).",
    )
    seed: int = Field(default=0, ge=0, description="Seed for sampling models and answer order.")
    aspects: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ASPECTS),
        min_length=1,
        description="Judge aspects, one request each (helpfulness, honesty, "
        "instruction_following, truthfulness).",
    )
    template: Literal["ultrafeedback"] = Field(
        default="ultrafeedback", description="Judge prompt template family."
    )
    shuffle_answers: bool = Field(
        default=False, description="Shuffle answer order per aspect (permutation recorded)."
    )
    max_requests_per_file: int = Field(
        default=50_000, ge=1, le=50_000, description="Requests per batch request file."
    )
    max_bytes_per_file: int = Field(
        default=200_000_000,
        ge=1024,
        le=200_000_000,
        description="Bytes per batch request file.",
    )

    @field_validator("aspects")
    @classmethod
    def _known_aspects(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in DEFAULT_ASPECTS]
        if unknown:
            raise ValueError(f"unknown aspect(s) {unknown}; choose from {list(DEFAULT_ASPECTS)}")
        if len(set(value)) != len(value):
            raise ValueError("aspects must not repeat")
        return value


class JudgeBackend(StrEnum):
    OPENAI = "openai"
    VLLM = "vllm"


class JudgePricing(SpecModel):
    """The judge model's prices, overriding synthpref's price table (`synthpref.pricing`)."""

    input_per_million_usd: float = Field(
        ge=0, description="List price in US dollars per million input (prompt) tokens."
    )
    output_per_million_usd: float = Field(
        ge=0, description="List price in US dollars per million output (completion) tokens."
    )
    batch_discount: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fraction the Batch API takes off both prices (0.5: half price).",
    )

    def price(self) -> Price:
        return Price(
            self.input_per_million_usd,
            self.output_per_million_usd,
            self.batch_discount,
            source="spec.judge.pricing",
        )


class JudgeBudget(SpecModel):
    """A cap on what the OpenAI judge may spend; a spec edit may raise it at any time."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.maxUsd) || has(self.maxTokens)",
                    "message": "judge.budget: give maxUsd, maxTokens or both",
                }
            ]
        }
    )

    max_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most US dollars the judge may spend (Batch API prices of judge.pricing or "
        "the price table): actual usage of fetched results plus an upper-bound estimate of the "
        "batches in flight (their estimated input tokens and maxTokens per request).",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens (input + output) the judge may use, counted the same way.",
    )

    @model_validator(mode="after")
    def _some_cap(self) -> JudgeBudget:
        if self.max_usd is None and self.max_tokens is None:
            raise ValueError("give maxUsd, maxTokens or both")
        return self


class JudgeSpec(SpecModel):
    """The judge that rates answers."""

    backend: JudgeBackend = Field(
        default=JudgeBackend.OPENAI, description="openai (Batch API) or vllm (offline on GPUs)."
    )
    model: str = Field(
        default="gpt-4o-2024-08-06",
        min_length=1,
        description="Judge model: OpenAI model name, or a Hugging Face id / local path (vllm).",
    )
    structured_output: bool = Field(
        default=True, description="Constrain replies to a JSON schema of ratings and rationales."
    )
    rationale_max_chars: int | None = Field(
        default=None,
        ge=1,
        description="vLLM judge only: cap each rationale's length in the structured-output "
        "schema (maxLength), so a weak judge cannot ramble past maxTokens; maxTokens must then "
        "cover the longest reply (counted as one token per character of its compact JSON).",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Judge temperature.")
    max_tokens: int = Field(default=1024, ge=16, le=65_536, description="Judge max reply tokens.")
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs for a vllm judge; unset: 1 for backend vllm, 0 for backend openai.",
    )
    max_model_len: int | None = Field(default=None, ge=16, description="vllm judge context.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM engine arguments for a vllm judge."
    )
    openai: OpenAIEndpoint = Field(
        default_factory=OpenAIEndpoint, description="Endpoint settings for the openai judge."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Submissions per request before it is reported failed."
    )
    queued_token_budget: int | None = Field(
        default=None, ge=1, description="Max estimated tokens queued in batches at once."
    )
    pricing: JudgePricing | None = Field(
        default=None,
        description="The judge model's prices for estimates and judge.budget; default: "
        "synthpref's table of known OpenAI models (see `synthpref estimate`).",
    )
    budget: JudgeBudget | None = Field(
        default=None,
        description="openai judge: a cap on spending; no batch is submitted that could take the "
        "run over it, and at the cap the run holds (BudgetExhausted) until the cap is raised.",
    )
    poll_interval_seconds: float = Field(
        default=60.0, gt=0, description="Seconds between batch status polls."
    )
    give_up_after_seconds: float = Field(
        default=600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="How long the judge endpoint may keep failing (unreachable, 5xx, 429 after "
        "every retry) before the judge stops with an error; results fetched so far are kept and "
        "a rerun resumes.",
    )
    resources: Resources | None = Field(
        default=None,
        description="CPU and memory of a vLLM judge's pod, merged key by key with the defaults "
        "of a vLLM model with judge.gpus GPUs.",
    )

    @property
    def gpu_count(self) -> int:
        """GPUs of the judge: `gpus`, or when unset 1 for a vLLM judge, 0 for an openai one."""
        if self.gpus is not None:
            return self.gpus
        return 1 if self.backend is JudgeBackend.VLLM else 0

    def price(self) -> Price | None:
        """judge.pricing, else the price table's entry for judge.model (None: unknown)."""
        return price_for(self.model, self.pricing.price() if self.pricing else None)

    @model_validator(mode="after")
    def _budget_is_priced(self) -> JudgeSpec:
        budget = self.budget
        if budget is None:
            return self
        if self.backend is not JudgeBackend.OPENAI:
            raise ValueError("budget: applies to the openai judge only (a vLLM judge is unbilled)")
        if budget.max_usd is not None and self.price() is None:
            raise ValueError(
                f"budget.maxUsd: no price known for judge model {self.model!r}; give "
                "judge.pricing (inputPerMillionUsd, outputPerMillionUsd) or use budget.maxTokens"
            )
        return self


class BinarizationStrategy(StrEnum):
    BEST_VS_RANDOM = "best-vs-random"
    BEST_VS_WORST = "best-vs-worst"
    ALL_PAIRS = "all-pairs"


class TiesPolicy(StrEnum):
    DROP = "drop"
    KEEP = "keep"


class BinarizationSpec(SpecModel):
    """How rated answers become (chosen, rejected) pairs."""

    strategy: BinarizationStrategy = Field(
        default=BinarizationStrategy.BEST_VS_RANDOM,
        description="best-vs-random (best vs a random lower-rated answer), best-vs-worst, "
        "or all-pairs (every pair whose margin is at least minMargin).",
    )
    ties: TiesPolicy = Field(
        default=TiesPolicy.DROP,
        description="drop: no pair when ratings tie; keep: a tie may form a pair.",
    )
    min_margin: float = Field(
        default=0.0, ge=0.0, le=4.0, description="Minimum chosen-minus-rejected mean rating."
    )
    seed: int = Field(default=0, ge=0, description="Seed for picking the random rejected answer.")


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(SpecModel):
    """A Kubernetes toleration for the run's worker pods (e.g. of GPU node taints)."""

    key: str | None = Field(default=None, description="Taint key; empty with Exists: any key.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL, description="Equal (key and value) or Exists (key)."
    )
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: TaintEffect | None = Field(default=None, description="Taint effect; empty: any.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="NoExecute only: seconds the pod stays once tainted."
    )


class SecretEnvVar(SpecModel):
    """An environment variable of every worker pod, filled from a Secret (e.g. HF_TOKEN)."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable name.",
    )
    secret: SecretKeyRef = Field(description="The Secret key that holds its value.")


class StageResources(SpecModel):
    """CPU and memory of the CPU stages' pods."""

    prepare: Resources | None = Field(
        default=None,
        description="prepare (default: requests 1 CPU and 2Gi, limits 2 CPUs and 4Gi).",
    )
    mix: Resources | None = Field(
        default=None, description="mix (default: requests 1 CPU and 2Gi, limits 2 CPUs and 4Gi)."
    )
    parse: Resources | None = Field(
        default=None, description="parse (default: requests 1 CPU and 2Gi, limits 2 CPUs and 4Gi)."
    )


class WorkerSpec(SpecModel):
    """Pod settings of the run's Jobs; unset fields take the operator's defaults."""

    image: str | None = Field(
        default=None, description="Worker image for GPU stages (default: the operator's)."
    )
    cpu_image: str | None = Field(
        default=None,
        description="Worker image for CPU stages (prepare, mix, parse; default: the operator's).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node selector for GPU Jobs (generation, vllm judge)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for GPU Jobs."
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of every worker pod."
    )
    service_account_name: str | None = Field(
        default=None, description="ServiceAccount of every worker pod (e.g. for IRSA S3 access)."
    )
    backoff_limit_per_index: int = Field(
        default=2, ge=0, le=20, description="Pod retries per index of an Indexed Job."
    )
    secret_env: list[SecretEnvVar] = Field(
        default_factory=list,
        max_length=32,
        description="Environment variables of every worker pod from Secrets, as secretKeyRef "
        "(e.g. HF_TOKEN for gated models).",
    )
    resources: StageResources = Field(
        default_factory=StageResources,
        description="CPU and memory of the CPU stages (generation and the vLLM judge: "
        "models[].resources, judge.resources).",
    )


class DeletionPolicy(StrEnum):
    CANCEL = "cancel"
    LEAVE = "leave"


class OutputFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"


class OutputSpec(SpecModel):
    """The dataset's file format."""

    format: OutputFormat = Field(default=OutputFormat.JSONL, description="jsonl or parquet.")


class AcceptanceSpec(SpecModel):
    """When a finished run counts as Succeeded: thresholds on what was lost on the way."""

    min_pair_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Fraction of the prepared prompts that must yield at least one pair; 0 "
        "accepts a run with no pairs at all.",
    )
    max_failed_request_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Most judge requests that may fail after all attempts, as a fraction of "
        "all judge requests.",
    )


# A DNS-1123 subdomain: the name of a ModelCatalog.
_OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class ModelCatalogRef(SpecModel):
    """Answering models taken from a ModelCatalog in the run's namespace. The operator resolves
    them once, when it admits the run, and keeps the result in status.catalog: later edits of
    the catalog never change a started run. Locally: `--catalog FILE`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec.modelCatalog cannot change once the run exists (answers "
                    "are keyed by model); create a new PreferenceRun instead",
                }
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=_OBJECT_NAME,
        description="Name of the ModelCatalog (in the run's namespace).",
    )
    include: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Catalog entries to use, by name; empty: every entry.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Catalog entries to leave out, by name.",
    )


_SPEC_RULES: list[JsonValue] = [
    {
        "rule": "has(self.modelCatalog) || size(self.models) >= 1",
        "message": "spec.models: give at least one model, or take them from spec.modelCatalog",
    },
    {
        "rule": "!has(self.mix.onPolicyModel) || has(self.modelCatalog) || "
        "self.models.exists(m, m.name == self.mix.onPolicyModel)",
        "message": "spec.mix.onPolicyModel must be the name of one of spec.models",
    },
    {
        "rule": "self.models.all(m, self.models.exists_one(n, n.name == m.name))",
        "message": "spec.models: names must be unique",
    },
    {
        "rule": "has(self.mix.onPolicyModel) || has(self.modelCatalog) || "
        "size(self.models) >= self.mix.responsesPerPrompt",
        "message": "spec.mix.responsesPerPrompt: needs that many distinct models in spec.models",
    },
    {
        "rule": "self.models == oldSelf.models",
        "message": "spec.models cannot change once the run exists (answers are keyed by "
        "model); create a new PreferenceRun instead",
    },
    {
        "rule": "has(self.modelCatalog) == has(oldSelf.modelCatalog)",
        "message": "spec.modelCatalog cannot be added or removed once the run exists; create a "
        "new PreferenceRun instead",
    },
]


class PreferenceRunSpec(SpecModel):
    """The whole run: prompts in, preference dataset out."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    prompts: PromptSource = Field(description="Prompt source.")
    storage: StorageSpec = Field(description="Where artifacts and the dataset land.")
    models: list[ModelSpec] = Field(
        default_factory=list,
        max_length=64,
        description="Answering models; with modelCatalog, added to the catalog's.",
    )
    model_catalog: ModelCatalogRef | None = Field(
        default=None,
        description="Take answering models from a ModelCatalog (resolved once, when the run is "
        "admitted; see status.catalog).",
    )
    mix: MixSpec = Field(default_factory=MixSpec, description="Answer sampling and judge requests.")
    judge: JudgeSpec = Field(default_factory=JudgeSpec, description="The judge.")
    binarization: BinarizationSpec = Field(
        default_factory=BinarizationSpec, description="Pair selection."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Dataset format.")
    acceptance: AcceptanceSpec = Field(
        default_factory=AcceptanceSpec,
        description="Thresholds that decide Succeeded vs Failed once the dataset is written.",
    )
    suspend: bool = Field(
        default=False,
        description="true suspends the run's Jobs and stops new judge batches; false resumes "
        "where it left off.",
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        description="Kueue LocalQueue for the run's Jobs (the kueue.x-k8s.io/queue-name label).",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.CANCEL,
        description="Deleting the run: cancel its in-flight judge batches, or leave them running.",
    )
    workers: WorkerSpec = Field(
        default_factory=WorkerSpec, description="Pod settings of the run's Jobs."
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> PreferenceRunSpec:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: names must be unique, repeated: {duplicates}")
        if self.model_catalog is not None:
            return self  # the rest is checked on the resolved models (synthpref.catalog)
        if not names:
            raise ValueError("models: give at least one model, or take them from modelCatalog")
        on_policy = self.mix.on_policy_model
        if on_policy is not None and on_policy not in names:
            raise ValueError(f"mix.onPolicyModel: {on_policy!r} is not one of models {names}")
        needed = 2 if on_policy is not None else self.mix.responses_per_prompt
        if len(names) < needed:
            raise ValueError(
                f"mix.responsesPerPrompt: needs {needed} distinct models, spec has {len(names)}"
            )
        self._judge_replies_fit(needed)
        return self

    def _judge_replies_fit(self, answers: int) -> None:
        """A vLLM judge's structured reply with bounded rationales must fit judge.maxTokens:
        one cut off is invalid JSON, a lost rating."""
        judge = self.judge
        if (
            judge.backend is not JudgeBackend.VLLM
            or not judge.structured_output
            or judge.rationale_max_chars is None
        ):
            return
        longest = max(
            structured_reply_max_tokens(answers, aspect, judge.rationale_max_chars)
            for aspect in self.mix.aspects
        )
        if judge.max_tokens < longest:
            raise ValueError(
                f"judge.maxTokens: {judge.max_tokens} may cut off a structured reply: with "
                f"{answers} answers per request and rationaleMaxChars {judge.rationale_max_chars} "
                f"a reply can take {longest} tokens (about one per character); raise maxTokens "
                "to at least that or lower rationaleMaxChars"
            )

    def model(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"no model named {name!r} in spec (have {[m.name for m in self.models]})")


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata a run needs."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_run_name(value)


class PreferenceRunManifest(BaseModel):
    """A PreferenceRun manifest, as a user would `kubectl apply` it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: Literal["PreferenceRun"]
    metadata: ObjectMeta
    spec: PreferenceRunSpec
    status: dict[str, Any] | None = None

    @field_validator("api_version")
    @classmethod
    def _known_version(cls, value: str) -> str:
        expected = f"{API_GROUP}/{API_VERSION}"
        if value != expected:
            raise ValueError(f"must be {expected!r} (got {value!r})")
        return value


class SpecError(SynthprefError, ValueError):
    """A run spec that cannot be used; the message names the file and each bad field."""


def validation_problems(error: ValidationError) -> list[str]:
    """Pydantic errors as `field.path: message` (camelCase paths, as the input spells them)."""
    return [
        f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: "
        f"{item['msg'].removeprefix('Value error, ')}"
        for item in error.errors()
    ]


def format_validation_error(source: str, error: ValidationError) -> str:
    """Render pydantic errors as `source: field.path: message` lines with camelCase paths."""
    lines = [f"{source}: invalid PreferenceRun ({error.error_count()} problem(s))"]
    lines += [f"  {problem}" for problem in validation_problems(error)]
    return "\n".join(lines)


def parse_manifest(document: Any, source: str = "<manifest>") -> PreferenceRunManifest:
    """Validate one parsed YAML/JSON document as a PreferenceRun manifest."""
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a mapping (a PreferenceRun manifest)")
    try:
        return PreferenceRunManifest.model_validate(document)
    except ValidationError as error:
        raise SpecError(format_validation_error(source, error)) from None


def describe_documents(documents: list[Any]) -> str:
    """The kinds and names of a YAML file's documents, for messages: "ModelCatalog 'tulu3'"."""
    described = []
    for document in documents:
        if isinstance(document, dict):
            name = (document.get("metadata") or {}).get("name")
            kind = str(document.get("kind") or "a document without kind")
            described.append(f"{kind} {name!r}" if name else kind)
        else:
            described.append(type(document).__name__)
    return ", ".join(described) or "no documents"


def load_run(path: str | Path) -> PreferenceRunManifest:
    """Read the one PreferenceRun manifest of a YAML file (other kinds, e.g. a Secret, are
    ignored; several PreferenceRuns are an error)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"{source}: cannot read: {error.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError(f"{source}: not valid YAML: {error}") from None
    runs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if not runs:
        found = describe_documents(documents)
        hint = ""
        if any(isinstance(d, dict) and d.get("kind") == "ModelCatalog" for d in documents):
            hint = (
                "; a ModelCatalog file goes to --catalog FILE, after the run's own file: "
                "RUN.yaml --catalog CATALOG.yaml"
            )
        raise SpecError(f"{source}: no document with kind: {KIND} (the file has: {found}){hint}")
    if len(runs) > 1:
        names = [str((d.get("metadata") or {}).get("name", "?")) for d in runs]
        raise SpecError(
            f"{source}: {len(runs)} {KIND} documents ({', '.join(names)}); a stage or a local "
            "run takes one: put each run in its own file"
        )
    return parse_manifest(runs[0], source)
