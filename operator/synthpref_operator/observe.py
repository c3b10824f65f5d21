"""Observe a run for the planner: its child Jobs (by labels), its committed artifacts, the
OpenAI judge's ledger, and the metadata of the Secrets it names (for admission). Called by
`reconcile.Reconciler` at the start of every pass.

Jobs are observed before storage, so a Job seen complete always has its commits visible (a
worker commits before it exits). Secrets read here (S3 keys) go into clients, never into
status or logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypedDict

import msgspec

from synthpref import layout
from synthpref.spec import API_GROUP, API_VERSION, PreferenceRunSpec
from synthpref.storage import (
    COMMIT_SUFFIX,
    S3Storage,
    Storage,
    StorageError,
    StorageLimits,
    open_storage,
    s3_client,
)
from synthpref.storage_bounds import BoundedStorage
from synthpref.storage_retry import RetryPolicy
from synthpref_operator.admission import SecretFacts, SecretNotOptedInError
from synthpref_operator.artifact_memory import (
    JUDGE,
    MIX,
    PARSE,
    ArtifactMemory,
    generation_part,
    job_marks,
)
from synthpref_operator.catalogs import CatalogFacts
from synthpref_operator.crd import CATALOG_PLURAL
from synthpref_operator.names import (
    ANNOTATION_SUSPENDED_BY_RUN,
    LABEL_ALLOW_RUNS,
    LABEL_MODEL,
    LABEL_STAGE,
    Stage,
    run_selector,
)
from synthpref_operator.planner import Artifacts, JobState, JudgeLedger, ReportWarning
from synthpref_operator.status import CostEstimate, JudgeProgress

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_MIX_COMMIT = re.compile(r"^mix/shard-\d+\.jsonl" + re.escape(COMMIT_SUFFIX) + "$")
_PART_COMMIT = re.compile(r"^dataset/part-\d+\.\w+" + re.escape(COMMIT_SUFFIX) + "$")
_GEN_COMMIT = re.compile(r"^generations/[^/]+/shard-\d+\.jsonl" + re.escape(COMMIT_SUFFIX) + "$")


def parse_indexes(text: str | None) -> tuple[int, ...]:
    """A Job's `status.failedIndexes` ("1,3-5") as a tuple of indexes."""
    indexes: list[int] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        low, _, high = part.strip().partition("-")
        indexes.extend(range(int(low), int(high or low) + 1))
    return tuple(indexes)


def job_state(job: dict[str, Any]) -> JobState | None:
    """The planner's view of one Job (as a camelCase dict); None if it is not a stage Job."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        stage = Stage(labels.get(LABEL_STAGE, ""))
    except ValueError:
        return None
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = true.get("Failed") or true.get("FailureTarget")
    failure = ""
    if failed is not None:
        failure = ": ".join(p for p in (failed.get("reason"), failed.get("message")) if p)
    annotations = meta.get("annotations") or {}
    return JobState(
        name=meta["name"],
        stage=stage,
        model=labels.get(LABEL_MODEL),
        completions=int(spec.get("completions") or 1),
        succeeded=int(status.get("succeeded") or 0),
        complete="Complete" in true,
        failed=failed is not None,
        failure=failure,
        failed_indexes=parse_indexes(status.get("failedIndexes")),
        suspended=bool(spec.get("suspend")),
        suspended_by_run=annotations.get(ANNOTATION_SUSPENDED_BY_RUN) == "true",
        deleting=bool(meta.get("deletionTimestamp")),
    )


# The longest worker error line kept in a run's message.
MAX_ERROR_LINE = 500


def last_error_line(message: str | None) -> str:
    """The line of a container's termination message that says why it failed: its last
    `Error: ...` line (the prefix dropped), else its last non-empty line (a log's tail)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return ""
    errors = [line for line in lines if line.startswith("Error:")]
    line = errors[-1].removeprefix("Error:").strip() if errors else lines[-1]
    return line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 3] + "..."


def pod_failure(pod: dict[str, Any]) -> str | None:
    """How a failed pod (a camelCase dict) ended: "index 1: OOMKilled (exit 137)", with the
    worker's error line from the termination message when there is one."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    meta = pod.get("metadata") or {}
    index = (meta.get("annotations") or {}).get(COMPLETION_INDEX, "?")
    for container in status.get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated")
        if ended:
            reason = ended.get("reason") or "Error"
            line = last_error_line(ended.get("message"))
            said = f": {line}" if line else ""
            return f"index {index}: {reason} (exit {ended.get('exitCode')}){said}"
    return f"index {index}: {status.get('reason') or 'Failed'}"


class _JobMetadata(TypedDict, total=False):
    name: str
    labels: dict[str, str] | None
    annotations: dict[str, str] | None
    deletionTimestamp: str | None


class _JobSpec(TypedDict, total=False):
    completions: int | None
    suspend: bool | None


class _Job(TypedDict, total=False):
    """What `job_state` reads of a Job: its pod template and managed fields, most of its
    bytes, are skipped undecoded."""

    metadata: _JobMetadata
    spec: _JobSpec
    status: dict[str, Any] | None


class _JobList(TypedDict, total=False):
    items: list[_Job] | None


class _AnyList(TypedDict, total=False):
    items: list[dict[str, Any]] | None


def _items(
    lister: Callable[..., Any],
    namespace: str,
    *,
    fresh: bool = False,
    shape: type[Any] = _AnyList,
    **selectors: str,
) -> list[dict[str, Any]]:
    """A listing's items as the API server sent them (camelCase dicts); from its watch cache
    unless `fresh`.

    The client's models are skipped: building them for a run's twenty Jobs and turning them
    back into dicts took about 20 ms of CPU per pass. `resourceVersion=0` lets the API server
    answer from its cache at once; a consistent list waits until that cache has caught up with
    etcd, which took 13-22 s a list while 50 runs created 1,000 Jobs. A list that is a moment
    old shows less done, which a pass handles (a Job this process just created is not sent
    again: `recent_jobs`; one not yet complete is seen complete by the pass its next event
    brings), but it may also still show a Job just deleted: the pass after one that deleted
    Jobs (a retry) asks for a `fresh` list. The reply is decoded as `shape` (a TypedDict of
    the list: what is not in it is skipped, not built), into plain dicts."""
    version = {} if fresh else {"resource_version": "0"}
    reply = lister(namespace, _preload_content=False, **version, **selectors)
    return list(msgspec.json.decode(reply.data, type=shape).get("items") or [])


def observe_jobs(
    batch_api: Any, namespace: str, run: str, core_api: Any = None, *, fresh: bool = True
) -> dict[str, JobState]:
    """The run's Jobs by name (found by the run's labels); `fresh`: a consistent list, else
    from the API server's cache (see `_items`). For a failed Job, `core_api` (when given)
    reads how its pods ended, so that the run's message says OOMKilled or the exit code."""
    listed = _items(
        batch_api.list_namespaced_job,
        namespace,
        fresh=fresh,
        shape=_JobList,
        label_selector=run_selector(run),
    )
    found: dict[str, JobState] = {}
    states = [job_state(item) for item in listed]
    live = [s for s in states if s is not None and not (s.complete or s.failed)]
    waiting = unscheduled_pods(core_api, namespace, run) if live and core_api is not None else {}
    for seen in states:
        if seen is None:
            continue
        state = replace(seen, unschedulable=waiting.get(seen.name, ""))
        if state.failed and core_api is not None:
            pods = _items(
                core_api.list_namespaced_pod,
                namespace,
                label_selector=f"{JOB_NAME_LABEL}={state.name}",
            )
            endings = sorted({e for p in pods if (e := pod_failure(p))})
            state = replace(state, pod_failures=tuple(endings))
        found[state.name] = state
    return found


def unschedulable(pod: dict[str, Any]) -> str | None:
    """Why a pending pod (a camelCase dict) cannot be scheduled, if the scheduler said so."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            name = (pod.get("metadata") or {}).get("name", "?")
            return f"pod {name} cannot be scheduled: {condition.get('message') or 'Unschedulable'}"
    return None


def unscheduled_pods(core_api: Any, namespace: str, run: str) -> dict[str, str]:
    """Job name -> why one of its pods cannot be scheduled, over the run's pending pods (one
    list; the API server filters by phase, so a run's thousands of running or finished pods
    are not sent on every pass)."""
    pods = _items(
        core_api.list_namespaced_pod,
        namespace,
        label_selector=run_selector(run),
        field_selector="status.phase=Pending",
    )
    found: dict[str, str] = {}
    for pod in pods:
        why = unschedulable(pod)
        job = ((pod.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL)
        if why and job and job not in found:
            found[job] = why
    return found


def _count(keys: list[str], pattern: re.Pattern[str]) -> int:
    return sum(1 for k in keys if pattern.match(k))


def observe_artifacts(
    spec: PreferenceRunSpec,
    storage: Storage,
    memory: ArtifactMemory | None = None,
    jobs: Mapping[str, JobState] | None = None,
    now: float = 0.0,
) -> Artifacts:
    """Committed shards per stage. Without `memory`, from full listings of the run's storage;
    with it (kept across passes, see `artifact_memory.py`), only the parts whose stage Job
    changed since they were last looked at (`jobs`: this pass's Jobs; `now`: monotonic time)
    are listed again."""
    memory = memory if memory is not None else ArtifactMemory()
    if memory.manifest is None:
        if not storage.exists(layout.PROMPTS_MANIFEST):
            # S3 answers a lookup in a bucket that does not exist as "not there": a listing
            # says which it is (a StorageError, so the run is blocked, not failed by prepare).
            storage.list(layout.PROMPTS_MANIFEST)
            return Artifacts(dataset_uri=storage.url("dataset/"))
        manifest = prompt_manifest(storage)
        memory.manifest = (manifest.shards, manifest.prompts)
        memory.prompt_tokens = manifest.prompt_tokens
    shards, prompts = memory.manifest
    marks = job_marks((jobs or {}).values())
    parts = [generation_part(m.name) for m in spec.models] + [MIX, PARSE]
    due = memory.due(parts, marks, now)
    due_models = len(due & {generation_part(m.name) for m in spec.models})
    if due_models > 1 and one_listing_is_cheaper(shards, len(spec.models), due_models):
        listing = storage.list("generations/")  # one listing for several models
        for model in spec.models:
            part = generation_part(model.name)
            if part in due:
                mine = [k for k in listing if k.startswith(part)]
                memory.saw(part, _count(mine, _GEN_COMMIT), marks, now)
    else:
        for model in spec.models:
            part = generation_part(model.name)
            if part in due:
                memory.saw(part, _count(storage.list(part), _GEN_COMMIT), marks, now)
    if MIX in due:
        memory.saw(MIX, _count(storage.list("mix/"), _MIX_COMMIT), marks, now)
    mixed = memory.counts[MIX]
    if mixed >= shards and JUDGE in memory.due([JUDGE], marks, now):
        memory.saw(JUDGE, judged_shards(storage, shards), marks, now)
    if PARSE in due:
        memory.saw(PARSE, _count(storage.list("dataset/"), _PART_COMMIT), marks, now)
        _observe_outcome(storage, memory)
    return Artifacts(
        shards=shards,
        prompts=prompts,
        prompt_tokens=memory.prompt_tokens,
        generated={m.name: memory.counts[generation_part(m.name)] for m in spec.models},
        mixed=mixed,
        judged=memory.counts.get(JUDGE, 0) if mixed >= shards else 0,
        parsed=memory.counts[PARSE],
        summary=memory.summary,
        dataset_uri=storage.url("dataset/"),
        report_uri=memory.report_uri,
        report_error=memory.report_error,
        report_warnings=memory.report_warnings,
    )


# Keys in one page of an S3 listing.
LIST_PAGE_KEYS = 1000


def one_listing_is_cheaper(shards: int, models: int, due_models: int) -> bool:
    """Whether listing all of generations/ takes no more pages than listing the `due_models`
    models' prefixes one by one (each model has two keys per shard: data and marker)."""
    per_model = -(-2 * shards // LIST_PAGE_KEYS)
    return -(-2 * shards * models // LIST_PAGE_KEYS) <= due_models * per_model


def _observe_outcome(storage: Storage, memory: ArtifactMemory) -> None:
    """The summary that ends the parse stage, and the report written before it: its page, its
    error, or its warnings (each a small object, read bounded like every object here)."""
    summary = storage.read_json(layout.SUMMARY) if storage.exists(layout.SUMMARY) else None
    memory.summary = summary
    memory.report_uri = memory.report_error = memory.report_warnings = None
    if summary is not None:
        outcome = observe_report(storage)
        memory.report_uri = outcome.report_uri
        memory.report_error = outcome.report_error
        memory.report_warnings = outcome.report_warnings


class _Warning(msgspec.Struct):
    kind: str
    message: str


class _Warnings(msgspec.Struct):
    """What the operator reads of report/warnings.json."""

    warnings: list[_Warning]


def observe_report(storage: Storage) -> Artifacts:
    """The run report as it is now: its page's URI once written, the error that stopped it
    (report/error.json), else its warnings (report/warnings.json; None when there is none, e.g.
    written by an older version). Only the report fields of the result are set."""
    report_uri = storage.url(layout.REPORT_HTML) if storage.exists(layout.REPORT_HTML) else None
    if storage.exists(layout.REPORT_ERROR):
        error = storage.read_json(layout.REPORT_ERROR)
        text = str(error.get("error", "")) if isinstance(error, dict) else str(error)
        return Artifacts(report_uri=report_uri, report_error=text)
    warnings = None
    if report_uri is not None and storage.exists(layout.REPORT_WARNINGS):
        try:
            found = msgspec.json.decode(
                storage.read_bytes(layout.REPORT_WARNINGS), type=_Warnings
            ).warnings
        except msgspec.DecodeError as error:  # written by hand: say so, block nothing
            where = storage.url(layout.REPORT_WARNINGS)
            found = [_Warning("unreadable", f"{where} is not what the report writes: {error}")]
        warnings = tuple(ReportWarning(w.kind, w.message) for w in found)
    return Artifacts(report_uri=report_uri, report_warnings=warnings)


def judged_shards(storage: Storage, shards: int) -> int:
    """Shards whose every committed request file has a committed first-attempt result (the
    vLLM judge's output); the OpenAI judge's count comes from its ledger instead."""
    requests = {
        k.removesuffix(COMMIT_SUFFIX)
        for k in storage.list("requests/")
        if k.endswith(".jsonl" + COMMIT_SUFFIX)
    }
    results = {
        k.removesuffix(COMMIT_SUFFIX)
        for k in storage.list("results/")
        if k.endswith(".jsonl" + COMMIT_SUFFIX)
    }
    done = 0
    for shard in range(shards):
        mine = [k for k in requests if k.startswith(layout.request_prefix(shard))]
        if all(layout.result_for_request(k) in results for k in mine):
            done += 1
    return done


def observe_judge(spec: PreferenceRunSpec, storage: Storage, run: str) -> tuple[JudgeLedger, int]:
    """The OpenAI judge's ledger summary and the shards whose request files all ended."""
    from synthpref.annotate import ledger as ledgers
    from synthpref.annotate.engine import Annotator

    annotator = Annotator(spec, storage, run, None)
    records = annotator.ledgers()
    summary = annotator.summary()
    by_shard: dict[int, bool] = dict.fromkeys(annotator.shards, True)
    for record in records:
        by_shard[record.shard] = by_shard.get(record.shard, True) and (
            record.phase in ledgers.TERMINAL_PHASES
        )
    progress = JudgeProgress(
        files=summary.files,
        files_done=summary.files_done,
        requests=summary.requests,
        requests_done=summary.done,
        requests_failed=summary.failed,
        requests_resubmitted=summary.resubmitted,
        batches=summary.batches,
        batches_by_status=dict(summary.phases),
        input_tokens=sum(r.input_tokens for r in records),
        tokens_used=summary.tokens_used,
        input_tokens_used=summary.input_tokens_used,
        output_tokens_used=summary.output_tokens_used,
        cost_usd=summary.cost_usd,
    )
    hold = annotator.budget_hold()
    held = None
    if hold is not None and not hold.in_flight:
        held = hold.message("raise spec.judge.budget to resume")
    ledger = JudgeLedger(progress=progress, budget_hold=held)
    return ledger, sum(1 for ok in by_shard.values() if ok)


class _PromptManifest(msgspec.Struct):
    """What the operator reads of prepare's manifest (the rest, e.g. the file list, skipped)."""

    shards: int
    prompts: int = 0
    prompt_tokens: int | None = None


def prompt_manifest(storage: Storage) -> _PromptManifest:
    """Prepare's committed manifest: shards, prompts and their estimated tokens; a
    StorageError naming it when it is not what prepare writes."""
    try:
        manifest = msgspec.json.decode(
            storage.read_bytes(layout.PROMPTS_MANIFEST), type=_PromptManifest
        )
    except msgspec.DecodeError as error:
        where = storage.url(layout.PROMPTS_MANIFEST)
        raise StorageError(f"{where}: not a manifest: {error}") from None
    if manifest.shards < 0 or manifest.prompts < 0:
        raise StorageError(f"{storage.url(layout.PROMPTS_MANIFEST)}: negative counts")
    return manifest


PENDING_ESTIMATE = CostEstimate(
    basis="pending", error="waiting for prepare to count the prompts (prompts/manifest.json)"
)


def estimate_from_counts(spec: PreferenceRunSpec, artifacts: Artifacts) -> CostEstimate:
    """The judge's cost estimate from the prompt counts prepare committed (the operator reads
    no prompt itself); pending until prepare is done."""
    from synthpref.run_estimate import PromptStats, estimate_run

    if artifacts.shards is None:
        return PENDING_ESTIMATE
    if artifacts.prompt_tokens is None:
        return CostEstimate(
            basis="prompts",
            error="prompts/manifest.json has no prompt token count (prepared by an older "
            "version); `synthpref estimate` gives one",
        )
    judge = estimate_run(spec, PromptStats(artifacts.prompts, artifacts.prompt_tokens)).judge
    assert judge is not None  # every run has a judge
    return CostEstimate(
        basis=judge.basis,
        requests=judge.requests,
        input_tokens=judge.tokens.input,
        output_tokens=judge.tokens.output,
        cost_usd=judge.cost_usd,
        price=judge.price.describe() if judge.price is not None else None,
    )


def secret_value(
    core_api: Any, namespace: str, name: str, key: str, *, require_opt_in: bool = True
) -> str:
    """One key of a Secret, decoded; the error names the Secret and key, never the value. With
    `require_opt_in` the opt-in label is checked again on the very object read (admission saw
    the metadata; the Secret may have changed since), and a Secret without it is not used."""
    import base64

    from kubernetes.client import ApiException

    try:
        secret = core_api.read_namespaced_secret(name, namespace)
    except ApiException as error:
        raise LookupError(f"Secret {namespace}/{name}: cannot read ({error.status})") from None
    labels = (secret.metadata.labels if secret.metadata is not None else None) or {}
    if require_opt_in and labels.get(LABEL_ALLOW_RUNS) != "true":
        raise SecretNotOptedInError(
            f"Secret {namespace}/{name} is no longer opted in for runs (label "
            f"{LABEL_ALLOW_RUNS}=true); the run is held until it is"
        )
    data = secret.data or {}
    if key not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise LookupError(
            f"Secret {namespace}/{name} has no key {key!r} (its keys: {keys}); add the key to "
            "the Secret or name one of its keys in the spec"
        )
    return base64.b64decode(data[key]).decode()


# A reconcile pass waits out short storage faults only: it must not hold a worker thread for
# minutes; a failed pass is retried, and the workers ride out longer outages themselves.
PASS_STORAGE_RETRY = RetryPolicy(deadline_s=20.0, max_delay_s=5.0)


def open_run_storage(
    spec: PreferenceRunSpec,
    core_api: Any,
    namespace: str,
    read_secret: Callable[[str, str], str] | None = None,
    limits: StorageLimits | None = None,
) -> BoundedStorage:
    """The run's storage, every read and listing bounded by `limits` (its author can write
    anything there); S3 credentials come from the Secrets the spec names, if any (read by
    `read_secret(name, key)`: default `secret_value`, `run_cache` passes its cache), else the
    operator's own (admission allows that only where the chart grants it)."""
    settings = spec.storage
    limits = limits if limits is not None else StorageLimits()
    if not settings.uri.startswith("s3://") or settings.credentials is None:
        inner = open_storage(
            settings.uri, settings.endpoint_url, settings.region, PASS_STORAGE_RETRY
        )
        return BoundedStorage(inner, limits)
    if read_secret is None:

        def read_secret(name: str, key: str) -> str:
            return secret_value(core_api, namespace, name, key)

    creds = settings.credentials
    client = s3_client(
        settings.endpoint_url,
        settings.region,
        access_key_id=read_secret(creds.access_key_id.name, creds.access_key_id.key),
        secret_access_key=read_secret(creds.secret_access_key.name, creds.secret_access_key.key),
    )
    return BoundedStorage(S3Storage(settings.uri, client, PASS_STORAGE_RETRY), limits)


_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def observe_secrets(core_api: Any, namespace: str, names: list[str]) -> dict[str, SecretFacts]:
    """Whether each Secret exists and its labels, for admission (`admission.py`). Asks the API
    server for the metadata only (PartialObjectMetadata), so no Secret value is transferred."""
    import json

    from kubernetes.client import ApiException

    found: dict[str, SecretFacts] = {}
    for name in names:
        try:
            reply = core_api.read_namespaced_secret(
                name, namespace, _headers={"Accept": _METADATA_ONLY}, _preload_content=False
            )
        except ApiException as error:
            if error.status == 404:
                found[name] = SecretFacts(found=False)
            else:
                found[name] = SecretFacts(found=False, error=f"HTTP {error.status}")
            continue
        metadata = json.loads(reply.data).get("metadata") or {}
        found[name] = SecretFacts(
            found=True,
            labels=dict(metadata.get("labels") or {}),
            resource_version=str(metadata.get("resourceVersion") or ""),
        )
    return found


def observe_catalog(custom_api: Any, namespace: str, name: str) -> CatalogFacts:
    """The ModelCatalog a run names (`catalogs.catalog_pass`): its generation and spec."""
    from kubernetes.client import ApiException

    try:
        catalog = custom_api.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, CATALOG_PLURAL, name
        )
    except ApiException as error:
        if error.status == 404:
            return CatalogFacts(found=False)
        return CatalogFacts(found=False, error=f"HTTP {error.status}")
    generation = int((catalog.get("metadata") or {}).get("generation") or 0)
    return CatalogFacts(found=True, generation=generation, document=catalog.get("spec") or {})
