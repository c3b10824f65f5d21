"""Admission: what a run may make the operator do on its author's behalf; pure.

Whoever may create a PreferenceRun could otherwise make the operator read any Secret of the
namespace and send it to a URL of their choice, or start any image with any Secret. So, as
cert-manager and external-secrets do, a run may use only what an operator admin allowed
(`OperatorSettings`, rendered from the chart's values; see README "Security"):

- an endpoint that receives credentials (`judge.openai.baseUrl`, `models[].openai.baseUrl` of
  openai-backend models: an API key; `storage.endpointUrl`: requests signed with S3
  credentials) must match `allowed_endpoints` by scheme, host, port and path prefix on a
  segment boundary; an unset URL (the operator's / workers' own configuration) is always
  allowed;
- a worker image (`workers.image`, `workers.cpuImage`) must be one of the operator's own worker
  images or start with one of `allowed_image_prefixes`;
- `workers.serviceAccountName` must be in `allowed_service_accounts`;
- every Secret the operator reads for the run, or exposes to its workers (`secret_uses`), must
  be opted in: labelled `synthpref.dev/allow-runs: "true"` or, when `secret_names` is set (the
  chart's `rbac.secretNames`, which also limits the operator's RBAC), named in that list;
- the operator's own credentials serve a run only where the chart grants them
  (`credential_problems`): its API key only at its own endpoint for `operator_api_key_namespaces`,
  its S3 identity only under `operator_storage` prefixes; prompts and storage are `s3://`
  unless `allow_local_paths`;
- worker variables a run names may not override what the operator sets (`env_problems`);
  placement a run steers is allow-listed (`placement_problems`); models and replicas are
  bounded (`limit_problems`; shards once prepare counted them: `shard_limit_problem`).

The reconcile pass (`reconcile.Reconciler`) calls `admission_problems` at the top of every pass,
after observing only the metadata of the Secrets `secrets_to_observe` names, and before it
reads any Secret value, opens storage with credentials, calls the judge or creates a Job; a run
with problems is held (`admission_status`). The delete handler uses the same problems to never
call a disallowed endpoint while cancelling batches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from synthpref.errors import TERMINATION_LOG_ENV
from synthpref.spec import (
    GenerationBackend,
    JudgeBackend,
    PreferenceRunSpec,
    SecretKeyRef,
    Toleration,
)
from synthpref_operator.names import LABEL_ALLOW_RUNS, MANIFEST_ENV
from synthpref_operator.planner import Event, set_condition
from synthpref_operator.pod_security import WRITABLE_ENV
from synthpref_operator.status import ConditionStatus, ConditionType, Reason, RunStatus

if TYPE_CHECKING:
    from synthpref_operator.settings import OperatorSettings

ANY = "*"  # an allow-list entry that allows everything
DEFAULT_SERVICE_ACCOUNT = "default"  # what a pod gets anyway when it names none
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = re.compile(r"[\s\\\x00-\x1f\x7f]")
_IMAGE_SEPARATORS = ("/", ":", "@")

# ------------------------------------------------------------------ endpoints


@dataclass(frozen=True)
class Endpoint:
    """A base URL as the allow-list compares it."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]


def parse_endpoint(url: str) -> Endpoint | None:
    """The parts of a plain http(s) base URL; None for anything else (user info, a query or
    fragment, '.' or '..' path segments, whitespace or backslashes, a bad port): such a URL
    is never allowed, whatever a client library would make of it."""
    if _UNSAFE.search(url) or "?" in url or "#" in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(unquote(s) in (".", "..") for s in segments):
        return None
    return Endpoint(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], segments)


def endpoint_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether `url` matches an entry of `allowed`: same scheme, host and port, and the entry's
    path is a prefix of the URL's path on a segment boundary (`*` allows any URL)."""
    if ANY in allowed:
        return True
    candidate = parse_endpoint(url)
    if candidate is None:
        return False
    for entry in allowed:
        permitted = parse_endpoint(entry)
        if (
            permitted is not None
            and (candidate.scheme, candidate.host, candidate.port)
            == (permitted.scheme, permitted.host, permitted.port)
            and candidate.segments[: len(permitted.segments)] == permitted.segments
        ):
            return True
    return False


def credential_endpoints(spec: PreferenceRunSpec) -> list[tuple[str, str, str]]:
    """(field path, URL, what it would receive) of every endpoint the run sets that would
    receive credentials: an API key, or requests signed with S3 credentials (the Secrets the
    spec names, or the operator's and workers' own)."""
    found: list[tuple[str, str, str]] = []
    if spec.judge.backend is JudgeBackend.OPENAI and spec.judge.openai.base_url is not None:
        found.append(("spec.judge.openai.baseUrl", spec.judge.openai.base_url, "an API key"))
    for index, model in enumerate(spec.models):
        endpoint = model.openai
        if model.backend is GenerationBackend.OPENAI and endpoint and endpoint.base_url:
            path = f"spec.models[{index}].openai.baseUrl"
            found.append((path, endpoint.base_url, "an API key"))
    # Always: S3 prompts are read through it too, whatever storage.uri says.
    if spec.storage.endpoint_url is not None:
        found.append(("spec.storage.endpointUrl", spec.storage.endpoint_url, "S3 credentials"))
    return found


# ------------------------------------------------------------------ images, ServiceAccounts


def image_allowed(image: str, settings: OperatorSettings) -> bool:
    """The operator's own worker images, or one under an allowed prefix. A prefix matches up to
    a '/', ':' or '@' (or the end): `ghcr.io/team` allows `ghcr.io/team/worker:1`, not
    `ghcr.io/team-evil/worker`."""
    if image in (settings.image, settings.cpu_image):
        return True
    for prefix in settings.allowed_image_prefixes:
        if prefix == ANY:
            return True
        if not prefix or not image.startswith(prefix):
            continue
        rest = image[len(prefix) :]
        if prefix.endswith(_IMAGE_SEPARATORS) or not rest or rest.startswith(_IMAGE_SEPARATORS):
            return True
    return False


def service_account_allowed(name: str, settings: OperatorSettings) -> bool:
    allowed = settings.allowed_service_accounts
    return name == DEFAULT_SERVICE_ACCOUNT or name in allowed or ANY in allowed


# ------------------------------------------------------------------ Secrets


class SecretNotOptedInError(LookupError):
    """A Secret the run names lost its opt-in between admission and the read of its value."""


@dataclass(frozen=True)
class SecretUse:
    """One Secret reference of a run: where it is, and who gets the value."""

    path: str  # e.g. spec.judge.openai.apiKeySecret
    name: str
    key: str
    operator_reads: bool  # the operator itself reads it (else: only exposed to workers)


@dataclass(frozen=True)
class SecretFacts:
    """What the operator saw of one Secret: its metadata only, never its data."""

    found: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None  # why it could not be read (e.g. "HTTP 403"), if it could not
    resource_version: str = ""  # changes whenever the Secret does (values cached by it)


def secret_uses(spec: PreferenceRunSpec) -> list[SecretUse]:
    """Every Secret reference the run makes the operator read or exposes to its workers."""

    def use(path: str, ref: SecretKeyRef, operator_reads: bool) -> SecretUse:
        return SecretUse(path, ref.name, ref.key, operator_reads)

    uses: list[SecretUse] = []
    credentials = spec.storage.credentials
    if credentials is not None:  # the operator reads storage; every worker gets them
        uses.append(use("spec.storage.credentials.accessKeyId", credentials.access_key_id, True))
        uses.append(
            use("spec.storage.credentials.secretAccessKey", credentials.secret_access_key, True)
        )
    judge_key = spec.judge.openai.api_key_secret
    if spec.judge.backend is JudgeBackend.OPENAI and judge_key is not None:
        uses.append(use("spec.judge.openai.apiKeySecret", judge_key, True))
    for index, model in enumerate(spec.models):
        endpoint = model.openai
        if model.backend is GenerationBackend.OPENAI and endpoint and endpoint.api_key_secret:
            path = f"spec.models[{index}].openai.apiKeySecret"
            uses.append(use(path, endpoint.api_key_secret, False))
    for index, variable in enumerate(spec.workers.secret_env):
        uses.append(use(f"spec.workers.secretEnv[{index}].secret", variable.secret, False))
    return uses


def secrets_to_observe(spec: PreferenceRunSpec, settings: OperatorSettings) -> list[str]:
    """Names of the Secrets whose metadata the pass must read to judge them (with
    `secret_names` set, only those in the list: the operator may not read the others)."""
    names = sorted({u.name for u in secret_uses(spec)})
    if settings.secret_names:
        return [n for n in names if n in settings.secret_names]
    return names


# ------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Problem:
    """One thing a run names that it may not use."""

    reason: Reason
    path: str  # the offending field
    message: str  # names the field, the value and how an admin allows it


def _listing(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def spec_problems(spec: PreferenceRunSpec, settings: OperatorSettings) -> list[Problem]:
    """Endpoints, images and the ServiceAccount the run names that are not allowed."""
    problems: list[Problem] = []
    for path, url, what in credential_endpoints(spec):
        if not endpoint_allowed(url, settings.allowed_endpoints):
            problems.append(
                Problem(
                    Reason.ENDPOINT_NOT_ALLOWED,
                    path,
                    f"{path} {url!r} would receive {what} but is not an allowed endpoint "
                    f"(allowed: {_listing(settings.allowed_endpoints)}); leave it unset for "
                    "the operator's own endpoint, or an admin adds it to the chart value "
                    "security.allowedEndpoints",
                )
            )
    workers = spec.workers
    for path, image in (
        ("spec.workers.image", workers.image),
        ("spec.workers.cpuImage", workers.cpu_image),
    ):
        if image is not None and not image_allowed(image, settings):
            own = _listing(sorted({settings.image, settings.cpu_image}))
            prefixes = _listing(settings.allowed_image_prefixes)
            problems.append(
                Problem(
                    Reason.IMAGE_NOT_ALLOWED,
                    path,
                    f"{path} {image!r} is not an allowed worker image (the operator's own: "
                    f"{own}; allowed prefixes: {prefixes}); leave it unset, or an admin adds "
                    "its prefix to the chart value security.allowedImagePrefixes",
                )
            )
    account = workers.service_account_name
    if account is not None and not service_account_allowed(account, settings):
        path = "spec.workers.serviceAccountName"
        problems.append(
            Problem(
                Reason.SERVICE_ACCOUNT_NOT_ALLOWED,
                path,
                f"{path} {account!r} is not an allowed ServiceAccount (allowed: "
                f"{_listing(settings.allowed_service_accounts)}); leave it unset, or an admin "
                "adds it to the chart value security.allowedServiceAccounts",
            )
        )
    return problems


def _under(uri: str, prefix: str) -> bool:
    """Whether s3:// `uri` is `prefix` or under it on a '/' boundary."""
    uri, prefix = uri.rstrip("/"), prefix.rstrip("/")
    return uri == prefix or uri.startswith(prefix + "/")


def operator_storage_allowed(uri: str, namespace: str, settings: OperatorSettings) -> bool:
    """Whether a run of `namespace` may have the operator open `uri` with its own S3 identity."""
    grants = settings.operator_storage
    prefixes = [*grants.get(namespace, []), *grants.get(ANY, [])]
    return uri.startswith("s3://") and any(_under(uri, p) for p in prefixes)


def operator_key_allowed(
    spec: PreferenceRunSpec, namespace: str, settings: OperatorSettings
) -> bool:
    """Whether the operator's own API key may judge this run: only at the operator's own
    endpoint (no judge.openai.baseUrl), for a namespace the chart grants it to."""
    granted = settings.operator_api_key_namespaces
    return spec.judge.openai.base_url is None and (namespace in granted or ANY in granted)


def credential_problems(
    spec: PreferenceRunSpec, settings: OperatorSettings, namespace: str
) -> list[Problem]:
    """Runs that would make the operator use its own credentials where it may not: local
    paths (the operator's own filesystem), its S3 identity, its API key."""
    problems: list[Problem] = []
    if not settings.allow_local_paths:
        for path, uri in (
            ("spec.prompts.uri", spec.prompts.uri),
            ("spec.storage.uri", spec.storage.uri),
        ):
            if not uri.startswith("s3://"):
                problems.append(
                    Problem(
                        Reason.PATH_NOT_ALLOWED,
                        path,
                        f"{path} {uri!r} is not an s3:// URI: on a cluster, prompts and storage "
                        "are in S3 (local paths are for synthpref run --local; an admin allows "
                        "them where the operator and its pods share a filesystem with the chart "
                        "value security.allowLocalPaths)",
                    )
                )
    storage = spec.storage
    if (
        storage.credentials is None
        and storage.uri.startswith("s3://")
        and not operator_storage_allowed(storage.uri, namespace, settings)
    ):
        path = "spec.storage.credentials"
        problems.append(
            Problem(
                Reason.CREDENTIAL_NOT_ALLOWED,
                path,
                f"{path} is unset, so the operator would open {storage.uri!r} with its own S3 "
                f"identity, which namespace {namespace} may not use there; name a Secret with "
                "the run's own S3 keys, or an admin grants the prefix with the chart value "
                "security.operatorStorage",
            )
        )
    judge = spec.judge
    if (
        judge.backend is JudgeBackend.OPENAI
        and judge.openai.api_key_secret is None
        and not operator_key_allowed(spec, namespace, settings)
    ):
        path = "spec.judge.openai.apiKeySecret"
        where = (
            "the run sets spec.judge.openai.baseUrl, and the operator's own key goes only to "
            "its own endpoint"
            if judge.openai.base_url is not None
            else f"namespace {namespace} is not granted the operator's own key (an admin "
            "grants it with the chart value security.operatorApiKeyNamespaces)"
        )
        problems.append(
            Problem(
                Reason.CREDENTIAL_NOT_ALLOWED,
                path,
                f"{path} is unset, so the judge would use the operator's own API key, but "
                f"{where}; name a Secret with the run's own key",
            )
        )
    return problems


# Worker variables a run may not set or name as an API key: the operator sets them (or they
# steer where the worker sends its credentials and signed requests).
RESERVED_ENV_PREFIXES = ("AWS_", "SYNTHPREF_")
RESERVED_ENV_NAMES = frozenset({"OPENAI_BASE_URL", MANIFEST_ENV, TERMINATION_LOG_ENV})


def reserved_env(name: str, settings: OperatorSettings) -> bool:
    """Whether a run may not name worker variable `name` (secretEnv, apiKeyEnv)."""
    return (
        name.startswith(RESERVED_ENV_PREFIXES)
        or name in RESERVED_ENV_NAMES
        or name in WRITABLE_ENV
        or name in settings.extra_env
    )


def env_problems(spec: PreferenceRunSpec, settings: OperatorSettings) -> list[Problem]:
    """Variables a run names that would override what the operator sets for workers, or that
    would send one of the workers' own variables as an API key."""
    named: list[tuple[str, str]] = [
        (f"spec.workers.secretEnv[{i}].name", v.name) for i, v in enumerate(spec.workers.secret_env)
    ]
    for index, model in enumerate(spec.models):
        if model.backend is GenerationBackend.OPENAI and model.openai is not None:
            named.append((f"spec.models[{index}].openai.apiKeyEnv", model.openai.api_key_env))
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path, name in named:
        if reserved_env(name, settings):
            problems.append(
                Problem(
                    Reason.ENV_NOT_ALLOWED,
                    path,
                    f"{path} {name!r} is a variable the operator sets for workers (or one that "
                    "steers where they send credentials: AWS_*, SYNTHPREF_*, OPENAI_BASE_URL, "
                    "the writable paths, the chart's workers.env); use another name",
                )
            )
        elif name in seen and path.startswith("spec.workers.secretEnv"):
            problems.append(
                Problem(
                    Reason.ENV_NOT_ALLOWED,
                    path,
                    f"{path} {name!r} is already set by {seen[name]}; name each variable once",
                )
            )
        seen.setdefault(name, path)
    return problems


def _toleration_allowed(toleration: Toleration, settings: OperatorSettings) -> bool:
    return toleration in (*settings.gpu_tolerations, *settings.allowed_tolerations)


def _node_label_allowed(key: str, value: str, settings: OperatorSettings) -> bool:
    allowed = settings.allowed_node_labels
    return (
        settings.gpu_node_selector.get(key) == value
        or ANY in allowed
        or f"{key}={value}" in allowed
        or f"{key}={ANY}" in allowed
    )


def placement_problems(spec: PreferenceRunSpec, settings: OperatorSettings) -> list[Problem]:
    """Scheduling a run steers that the chart does not allow (another team's pools, preempting
    other work)."""
    workers = spec.workers
    problems: list[Problem] = []
    priority = workers.priority_class_name
    allowed = settings.allowed_priority_classes
    if priority is not None and priority not in allowed and ANY not in allowed:
        path = "spec.workers.priorityClassName"
        problems.append(
            Problem(
                Reason.PLACEMENT_NOT_ALLOWED,
                path,
                f"{path} {priority!r} is not an allowed PriorityClass (allowed: "
                f"{_listing(allowed)}); leave it unset, or an admin adds it to the chart value "
                "security.allowedPriorityClasses",
            )
        )
    for index, toleration in enumerate(workers.tolerations):
        if not _toleration_allowed(toleration, settings):
            path = f"spec.workers.tolerations[{index}]"
            shown = toleration.model_dump(mode="json", by_alias=True, exclude_none=True)
            problems.append(
                Problem(
                    Reason.PLACEMENT_NOT_ALLOWED,
                    path,
                    f"{path} {shown} is not an allowed toleration (the chart's "
                    "workers.gpuTolerations, or one of security.allowedTolerations); leave "
                    "workers.tolerations unset, or an admin adds it to the chart value "
                    "security.allowedTolerations",
                )
            )
    for key, value in sorted(workers.node_selector.items()):
        if not _node_label_allowed(key, value, settings):
            path = f"spec.workers.nodeSelector[{key}]"
            problems.append(
                Problem(
                    Reason.PLACEMENT_NOT_ALLOWED,
                    path,
                    f"{path} {key}={value} is not an allowed node label (allowed: "
                    f"{_listing(settings.allowed_node_labels)}, and the chart's "
                    "workers.gpuNodeSelector); leave it unset, or an admin adds it to the chart "
                    "value security.allowedNodeLabels",
                )
            )
    return problems


def limit_problems(spec: PreferenceRunSpec, settings: OperatorSettings) -> list[Problem]:
    """Sizes over the operator's per-run limits (before prepare: models and replicas)."""
    problems: list[Problem] = []
    if len(spec.models) > settings.max_models:
        problems.append(
            Problem(
                Reason.LIMIT_EXCEEDED,
                "spec.models",
                f"spec.models names {len(spec.models)} models, more than the {settings.max_models} "
                "a run may have (chart value security.limits.maxModels); split the run",
            )
        )
    for index, model in enumerate(spec.models):
        if model.replicas > settings.max_replicas:
            path = f"spec.models[{index}].replicas"
            problems.append(
                Problem(
                    Reason.LIMIT_EXCEEDED,
                    path,
                    f"{path} {model.replicas} is more than the {settings.max_replicas} replicas a "
                    "model may have (chart value security.limits.maxReplicas)",
                )
            )
    return problems


def shard_limit_problem(shards: int, settings: OperatorSettings) -> Problem | None:
    """Prepare cut more shards than a run may have (each becomes pods and storage objects)."""
    if shards <= settings.max_shards:
        return None
    return Problem(
        Reason.LIMIT_EXCEEDED,
        "spec.prompts.shardSize",
        f"prepare cut {shards} prompt shards, more than the {settings.max_shards} a run may have "
        "(chart value security.limits.maxShards); raise spec.prompts.shardSize (in a new "
        "storage.uri) or split the prompts",
    )


def secret_problem(
    use: SecretUse, facts: SecretFacts | None, settings: OperatorSettings, namespace: str
) -> Problem | None:
    """Why the run may not use this Secret reference, if it may not."""
    what = f"{use.path} names Secret {use.name!r}"
    if settings.secret_names and use.name not in settings.secret_names:
        return Problem(
            Reason.SECRET_NOT_ALLOWED,
            use.path,
            f"{what}, which is not in the operator's list of Secrets runs may use "
            f"({_listing(settings.secret_names)}); an admin adds it to the chart value "
            "rbac.secretNames",
        )
    if facts is None or facts.error is not None:
        why = facts.error if facts is not None else "not looked up"
        return Problem(
            Reason.SECRET_NOT_ALLOWED,
            use.path,
            f"{what}, which the operator cannot look up in namespace {namespace} ({why}); "
            "check the operator's RBAC (the chart's rbac.secretNames)",
        )
    if not facts.found:
        label = "" if settings.secret_names else f" labelled {LABEL_ALLOW_RUNS}=true"
        return Problem(
            Reason.SECRET_NOT_FOUND,
            use.path,
            f"{what}, which does not exist in namespace {namespace}; create it{label}",
        )
    if not settings.secret_names and facts.labels.get(LABEL_ALLOW_RUNS) != "true":
        return Problem(
            Reason.SECRET_NOT_ALLOWED,
            use.path,
            f"{what}, which is not opted in for runs; if every run author in the namespace may "
            f"see it: kubectl label secret {use.name} -n {namespace} {LABEL_ALLOW_RUNS}=true",
        )
    return None


def admission_problems(
    spec: PreferenceRunSpec,
    settings: OperatorSettings,
    namespace: str,
    secrets: Mapping[str, SecretFacts],
) -> list[Problem]:
    """Every problem of the run, given the Secrets observed (`secrets_to_observe`)."""
    problems = spec_problems(spec, settings)
    problems += credential_problems(spec, settings, namespace)
    problems += env_problems(spec, settings)
    problems += placement_problems(spec, settings)
    problems += limit_problems(spec, settings)
    for use in secret_uses(spec):
        problem = secret_problem(use, secrets.get(use.name), settings, namespace)
        if problem is not None:
            problems.append(problem)
    return problems


def touching(problems: Sequence[Problem], *prefixes: str) -> list[Problem]:
    """The problems of fields under any of `prefixes` (e.g. "spec.judge.")."""
    return [p for p in problems if p.path.startswith(prefixes)]


# ------------------------------------------------------------------ status


def admission_status(
    previous: RunStatus, problems: Sequence[Problem], generation: int, now: str
) -> tuple[RunStatus, list[Event]]:
    """The status with the Admitted condition set, and a Warning Event when the problems
    changed. With problems the run is held where it is (its phase unchanged, Pending for a new
    run; the message lists every problem); without, only the condition turns True."""
    was = previous.condition(ConditionType.ADMITTED)
    if not problems:
        conditions = set_condition(
            previous.conditions,
            ConditionType.ADMITTED,
            ConditionStatus.TRUE,
            Reason.ADMITTED,
            "every endpoint, image, ServiceAccount and Secret the run names is allowed",
            generation,
            now,
        )
        return previous.model_copy(update={"conditions": conditions}), []
    message = "held: " + "; ".join(p.message for p in problems)
    reason = problems[0].reason
    conditions = set_condition(
        previous.conditions,
        ConditionType.ADMITTED,
        ConditionStatus.FALSE,
        reason,
        message,
        generation,
        now,
    )
    events: list[Event] = []
    if was is None or was.status is not ConditionStatus.FALSE or was.message != message:
        events.append(Event("Warning", reason.value, message))
    status = previous.model_copy(
        update={"message": message, "conditions": conditions, "observed_generation": generation}
    )
    return status, events
