"""The pure planner: `plan(spec, observed, now) -> (actions, status)` for one PreferenceRun.

Called by the reconcile pass (`reconcile.py`) after it observed the run's child Jobs, its
committed artifacts and the judge ledger; the pass then applies the actions and writes the
status. No I/O, no clock: every phase transition is a table test (`tests/unit/test_planner.py`).

Level-based: the current stage is the first whose artifacts are not all committed, whatever
happened before, so a restarted operator computes the same plan. A stage's Job that completed
while its artifacts are incomplete is a failure (it exited 0 but did not commit its work).
Failed is sticky, except a failed acceptance check, which a spec edit re-assesses; Succeeded
follows from the run summary `parse` commits last, when it meets `spec.acceptance`. Whatever
the run lost so far, by cause, is in `status.losses` and the `DataLoss` condition.

Spec sections whose stage has started are locked: their fingerprints go into
`status.lockedSpec`, and a later change is rejected (the SpecChangeRejected condition; the run
holds, creating nothing, until the change is reverted). CEL rules on the spec cannot see the
status, so this is where "cannot change once mixing began" lives.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from synthpref.budget import usd
from synthpref.layout import shards_for_worker
from synthpref.outcome import assess, describe_losses, losses
from synthpref.spec import GenerationBackend, JudgeBackend, PreferenceRunSpec
from synthpref_operator.names import ANNOTATION_RETRY, Stage, job_name
from synthpref_operator.status import (
    TERMINAL_PHASES,
    Condition,
    ConditionStatus,
    ConditionType,
    CostEstimate,
    JudgeProgress,
    ModelProgress,
    Phase,
    Progress,
    Reason,
    RunResult,
    RunStatus,
)

# ------------------------------------------------------------------ observations


@dataclass(frozen=True)
class JobState:
    """What the observer saw of one child Job."""

    name: str
    stage: Stage
    model: str | None = None
    completions: int = 1
    succeeded: int = 0
    complete: bool = False
    failed: bool = False
    failure: str = ""  # reason and message of the Job's Failed condition
    failed_indexes: tuple[int, ...] = ()
    suspended: bool = False
    suspended_by_run: bool = False
    pod_failures: tuple[str, ...] = ()  # how its failed pods ended, e.g. "index 1: OOMKilled"
    deleting: bool = False  # deleted (by a retry), not gone yet: neither failed nor live
    unschedulable: str = ""  # why a pod of it cannot be scheduled: "pod P: 0/1 nodes ..."


@dataclass(frozen=True)
class ReportWarning:
    """One warning of the run report (report/warnings.json): which check, and its sentence."""

    kind: str
    message: str


@dataclass(frozen=True)
class Artifacts:
    """Committed artifacts in the run's storage (counts of committed shards per stage)."""

    shards: int | None = None  # None until prepare committed its manifest
    prompts: int = 0
    prompt_tokens: int | None = None  # estimated tokens of the prompts (prepare's manifest)
    generated: Mapping[str, int] = field(default_factory=dict)
    mixed: int = 0
    judged: int = 0
    parsed: int = 0
    summary: Mapping[str, Any] | None = None
    dataset_uri: str = ""
    report_uri: str | None = None  # set once report/index.html exists
    report_error: str | None = None  # what report/error.json says
    # What report/warnings.json says; None when there is none (no report yet, or it failed).
    report_warnings: tuple[ReportWarning, ...] | None = None


@dataclass(frozen=True)
class JudgeOutage:
    """The judge endpoint fails every call: since when (RFC 3339) and with what."""

    endpoint: str
    since: str
    last_error: str


@dataclass(frozen=True)
class JudgeLedger:
    """The OpenAI judge's ledger summary (judge.backend openai), its fatal error, or an outage
    of its endpoint that the last step ran into."""

    progress: JudgeProgress = field(default_factory=JudgeProgress)
    error: str | None = None
    outage: JudgeOutage | None = None
    # Set when spec.judge.budget holds back request files and no batch is in flight any more:
    # what was spent, the cap and what waits (`synthpref.budget.BudgetHold.message`).
    budget_hold: str | None = None


@dataclass(frozen=True)
class Observed:
    """Everything one pass knows about a run."""

    name: str
    generation: int
    status: RunStatus
    jobs: Mapping[str, JobState] = field(default_factory=dict)
    artifacts: Artifacts = field(default_factory=Artifacts)
    judge: JudgeLedger | None = None
    # The judge's cost estimate from the prompts, when this pass computed one (at admission).
    estimate: CostEstimate | None = None
    retry: str | None = None  # the run's synthpref.dev/retry annotation


# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class CreateJob:
    """Create (idempotently) the Job `name` for `stage` with `completions` indexes."""

    name: str
    stage: Stage
    completions: int
    model: str | None = None


@dataclass(frozen=True)
class SuspendJob:
    """Set the Job's `spec.suspend` (and mark or unmark it as suspended by the run)."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class DeleteJob:
    """Delete a failed Job (and its pods), so that a retried run creates it afresh."""

    name: str


@dataclass(frozen=True)
class StepJudge:
    """Advance the OpenAI judge's batch ledger one step (upload, create, poll, fetch...)."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the run, emitted after the status write."""

    type: str  # Normal | Warning
    reason: str
    message: str


Action = CreateJob | SuspendJob | DeleteJob | StepJudge | Event

_STAGE_PHASE = {
    Stage.PREPARE: Phase.PREPARING,
    Stage.GENERATE: Phase.GENERATING,
    Stage.MIX: Phase.MIXING,
    Stage.JUDGE: Phase.ANNOTATING,
    Stage.PARSE: Phase.PARSING,
}
_STAGE_CONDITION = {
    Stage.PREPARE: ConditionType.PREPARED,
    Stage.GENERATE: ConditionType.GENERATED,
    Stage.MIX: ConditionType.MIXED,
    Stage.JUDGE: ConditionType.ANNOTATED,
    Stage.PARSE: ConditionType.PARSED,
}
_ORDER = (Stage.PREPARE, Stage.GENERATE, Stage.MIX, Stage.JUDGE, Stage.PARSE)

# Spec sections that cannot change once the first stage using them started: (section, the
# fields fingerprinted (None: all), that stage, why).
_LOCKS: tuple[tuple[str, frozenset[str] | None, Stage, str], ...] = (
    ("mix", None, Stage.MIX, "the judge requests were sampled and rendered with it"),
    (
        "judge",
        frozenset(
            {"backend", "model", "structured_output", "rationale_max_chars", "temperature"}
            | {"max_tokens"}
        ),
        Stage.MIX,
        "the judge requests were rendered for it",
    ),
    ("binarization", None, Stage.PARSE, "the dataset is being written with it"),
)
_STARTED = {
    Stage.MIX: "mixing",
    Stage.PARSE: "parsing",
}


# ------------------------------------------------------------------ helpers


def set_condition(
    conditions: Sequence[Condition],
    kind: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    """Conditions with `kind` set; its lastTransitionTime moves only when `status` changes."""
    old = next((c for c in conditions if c.type is kind), None)
    since = old.last_transition_time if old is not None and old.status is status else now
    new = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type is not kind]
    return sorted([*others, new], key=lambda c: list(ConditionType).index(c.type))


# The ReportWarnings condition names at most this many warnings, each cut to this length;
# each warning also gets one Warning Event (whose message the API server takes up to 1 KiB).
MAX_REPORT_WARNINGS = 10
MAX_WARNING_CHARS = 400


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report_warnings_condition(
    conditions: Sequence[Condition],
    warnings: Sequence[ReportWarning] | None,
    report_uri: str | None,
    generation: int,
    now: str,
) -> tuple[list[Condition], list[Action]]:
    """The ReportWarnings condition of a finished run from its report's warnings (unchanged
    while there are none to read: no report yet, or it failed), and one Warning Event per
    warning when they changed, so `kubectl describe` and `kubectl get events` show them."""
    if warnings is None:
        return list(conditions), []
    shown = list(warnings[:MAX_REPORT_WARNINGS])
    where = f" (the report: {report_uri})" if report_uri else ""
    if shown:
        more = len(warnings) - len(shown)
        text = "; ".join(_cut(w.message, MAX_WARNING_CHARS) for w in shown)
        message = f"the run report warns: {text}{f'; and {more} more' if more else ''}{where}"
        status, reason = ConditionStatus.TRUE, Reason.REPORT_WARNINGS
    else:
        message = f"the run report has no warnings{where}"
        status, reason = ConditionStatus.FALSE, Reason.NO_REPORT_WARNINGS
    was = next((c for c in conditions if c.type is ConditionType.REPORT_WARNINGS), None)
    updated = set_condition(
        conditions, ConditionType.REPORT_WARNINGS, status, reason, message, generation, now
    )
    if was is not None and was.status is status and was.message == message:
        return updated, []
    events: list[Action] = [
        Event("Warning", "ReportWarning", _cut(f"{w.message}{where}", 1024)) for w in shown
    ]
    return updated, events


def cpu_workers(shards: int, shards_per_worker: int) -> int:
    """Indexes of a mix/parse Job: one per `shards_per_worker` shards, at least one."""
    return max(1, min(shards, math.ceil(shards / shards_per_worker)))


def generation_workers(spec: PreferenceRunSpec, model: str, shards: int) -> int:
    return max(1, min(spec.model(model).replicas, shards))


def _stage_done(spec: PreferenceRunSpec, art: Artifacts, stage: Stage) -> bool:
    shards = art.shards
    if shards is None:
        return False
    if stage is Stage.PREPARE:
        return True
    if stage is Stage.GENERATE:
        return all(art.generated.get(m.name, 0) >= shards for m in spec.models)
    if stage is Stage.MIX:
        return art.mixed >= shards
    if stage is Stage.JUDGE:
        return art.judged >= shards
    return art.summary is not None


def _stage_jobs(spec: PreferenceRunSpec, run: str, stage: Stage) -> list[tuple[str, str | None]]:
    """(Job name, model) of the Jobs a stage runs (none for the OpenAI judge)."""
    if stage is Stage.GENERATE:
        return [(job_name(run, stage, m.name), m.name) for m in spec.models]
    if stage is Stage.JUDGE and spec.judge.backend is JudgeBackend.OPENAI:
        return []
    return [(job_name(run, stage), None)]


# At most this many shards or ranges of shards are named in a message (the status stays small).
_SHARDS_SHOWN = 20


def _describe_shards(shards: list[int]) -> str:
    """`0, 2, 5-9`: runs of three or more as ranges, then `... and N more` past a few."""
    if not shards:
        return "?"
    runs: list[list[int]] = []
    for shard in sorted(set(shards)):
        if runs and shard == runs[-1][-1] + 1:
            runs[-1].append(shard)
        else:
            runs.append([shard])
    items: list[str] = []
    for run in runs:
        items += [f"{run[0]}-{run[-1]}"] if len(run) >= 3 else [str(s) for s in run]
    shown = ", ".join(items[:_SHARDS_SHOWN])
    extra = len(items) - _SHARDS_SHOWN
    return f"{shown} and {extra} more" if extra > 0 else shown


def _failed_shards(art: Artifacts, job: JobState) -> list[int]:
    """The shards of a Job's failed indexes (empty when they cannot be told)."""
    total = art.shards or 0
    if not total or not all(i < job.completions for i in job.failed_indexes):
        return []
    return sorted(
        s for i in job.failed_indexes for s in shards_for_worker(total, i, max(job.completions, 1))
    )


def _job_failure(spec: PreferenceRunSpec, art: Artifacts, job: JobState) -> str:
    """A failure message naming the stage, the model and the shards of the failed indexes."""
    shards = _failed_shards(art, job)
    what = f"model {job.model}" if job.model else f"stage {job.stage.value}"
    detail = f" ({job.failure})" if job.failure else ""
    pods = f"; pods: {', '.join(job.pod_failures)}" if job.pod_failures else ""
    return (
        f"{what}: shard(s) {_describe_shards(shards)} failed: Job {job.name} "
        f"index(es) {_describe_shards(list(job.failed_indexes))} exhausted their retries"
        f"{detail}{pods}"
    )


def _incomplete(spec: PreferenceRunSpec, art: Artifacts, job: JobState) -> str | None:
    """Why a completed Job's stage is still not done (its artifacts are missing), if it is not."""
    shards = art.shards
    if job.stage is Stage.PREPARE:
        return None if shards is not None else "prompts/manifest.json is not committed"
    if shards is None:
        return None
    if job.stage is Stage.GENERATE and job.model is not None:
        done = art.generated.get(job.model, 0)
        return None if done >= shards else f"model {job.model}: {done}/{shards} shards committed"
    if job.stage is Stage.MIX:
        return None if art.mixed >= shards else f"mix: {art.mixed}/{shards} shards committed"
    if job.stage is Stage.JUDGE:
        return None if art.judged >= shards else f"judge: {art.judged}/{shards} shards rated"
    if job.stage is Stage.PARSE:
        return (
            None
            if art.summary is not None
            else (f"parse: {art.parsed}/{shards} dataset parts committed, no dataset/summary.json")
        )
    return None


def _progress(spec: PreferenceRunSpec, art: Artifacts, judge: JudgeLedger | None) -> Progress:
    shards = art.shards or 0
    return Progress(
        shards=shards,
        prompts=art.prompts,
        models=[
            ModelProgress(
                name=m.name,
                shards_done=min(art.generated.get(m.name, 0), shards),
                shards_total=shards,
            )
            for m in spec.models
        ],
        mix_shards_done=min(art.mixed, shards),
        judge_shards_done=min(art.judged, shards),
        parse_shards_done=min(art.parsed, shards),
        judge=_judge_progress(judge),
    )


def _judge_progress(judge: JudgeLedger | None) -> JudgeProgress | None:
    if judge is None:
        return None
    if judge.outage is None:
        return judge.progress
    return judge.progress.model_copy(
        update={
            "endpoint_failing_since": judge.outage.since,
            "last_error": judge.outage.last_error,
        }
    )


def _estimate(spec: PreferenceRunSpec, observed: Observed) -> CostEstimate | None:
    """The judge's estimate: from the prompts (computed at admission) until the request files
    exist, then from them once (later attempts change the ledgers' counts, not the estimate)."""
    estimate = observed.estimate or observed.status.estimate
    judge = observed.judge
    if judge is None or not judge.progress.requests:
        return estimate
    if estimate is not None and estimate.basis == "requests":
        return estimate
    price = spec.judge.price()
    requests = judge.progress.requests
    tokens_in, tokens_out = judge.progress.input_tokens, requests * spec.judge.max_tokens
    return CostEstimate(
        basis="requests",
        requests=requests,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=price.cost(tokens_in, tokens_out) if price is not None else None,
        price=price.describe() if price is not None else None,
    )


def cost_text(estimate: CostEstimate | None, judge: JudgeProgress | None, judged: bool) -> str:
    """The COST column: the actual cost once the judge is done, else ~the estimate."""
    if judged and judge is not None and judge.cost_usd is not None:
        return usd(judge.cost_usd)
    if estimate is not None and estimate.cost_usd is not None:
        return "~" + usd(estimate.cost_usd)
    return ""


def outage_text(outage: JudgeOutage) -> str:
    """What the run's message says while the judge endpoint fails."""
    return (
        f"judge endpoint {outage.endpoint} unreachable since {outage.since}, retrying every pass "
        f"(last error: {outage.last_error})"
    )


def progress_text(spec: PreferenceRunSpec, art: Artifacts) -> str:
    """`done/total` work units: prepare (1) plus every stage's shards."""
    if art.shards is None:
        return ""
    shards = art.shards
    total = 1 + shards * (len(spec.models) + 3)
    done = 1 + sum(min(art.generated.get(m.name, 0), shards) for m in spec.models)
    done += min(art.mixed, shards) + min(art.judged, shards)
    done += shards if art.summary is not None else min(art.parsed, shards)
    return f"{done}/{total}"


def _result(art: Artifacts, accepted: bool = True) -> RunResult | None:
    summary = art.summary
    if summary is None:
        return None
    return RunResult(
        accepted=accepted,
        dataset_uri=str(summary.get("dataset") or art.dataset_uri),
        pairs=int(summary.get("pairs", 0)),
        prompts=int(summary.get("prompts", 0)),
        prompts_with_pairs=int(summary.get("prompts_with_pairs", 0)),
        drops={str(k): int(v) for k, v in (summary.get("prompts_dropped") or {}).items()},
        request_failures={
            str(k): int(v) for k, v in (summary.get("request_failures") or {}).items()
        },
        report_uri=art.report_uri,
        report_error=art.report_error,
    )


def _losses(observed: Observed) -> dict[str, int]:
    """What the run lost so far, by cause: failed model shards and judge requests while it
    runs, every cause once parse wrote the summary (see `synthpref.outcome`)."""
    art = observed.artifacts
    shards_failed = sum(
        len(_failed_shards(art, j) or j.failed_indexes or (0,))
        for j in observed.jobs.values()
        if j.stage is Stage.GENERATE and j.failed and not j.deleting
    )
    if art.summary is not None:
        return losses(art.summary, shards_failed)
    counts = {"model_shards_failed": shards_failed}
    if observed.judge is not None:
        counts["requests_failed"] = observed.judge.progress.requests_failed
    return {cause: n for cause, n in counts.items() if n}


def _stage_message(spec: PreferenceRunSpec, art: Artifacts, stage: Stage, obs: Observed) -> str:
    shards = art.shards or 0
    if stage is Stage.PREPARE:
        return "preparing prompt shards"
    if stage is Stage.GENERATE:
        parts = [
            f"{m.name} {min(art.generated.get(m.name, 0), shards)}/{shards}" for m in spec.models
        ]
        return "generating: " + ", ".join(parts)
    if stage is Stage.MIX:
        return f"mixing: {art.mixed}/{shards} shards"
    if stage is Stage.JUDGE:
        if obs.judge is not None:
            p = obs.judge.progress
            text = (
                f"annotating ({spec.judge.backend.value}): {p.files_done}/{p.files} request files, "
                f"{p.requests_done}/{p.requests} requests"
            )
            outage = obs.judge.outage
            return text if outage is None else f"{text}; {outage_text(outage)}"
        return f"annotating ({spec.judge.backend.value}): {art.judged}/{shards} shards"
    return f"parsing: {art.parsed}/{shards} shards"


def spec_fingerprint(spec: PreferenceRunSpec, section: str) -> str:
    """A short digest of the locked fields of one spec section."""
    fields = next(f for name, f, _, _ in _LOCKS if name == section)
    value = getattr(spec, section).model_dump(mode="json", include=fields)
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def lock_spec(
    spec: PreferenceRunSpec, locked: Mapping[str, str], current: Stage | None
) -> tuple[dict[str, str], list[str]]:
    """The locks once the run is at `current` (None: done), and why each changed section is
    rejected (empty: no rejected change). A section's lock is taken when its stage starts."""
    reached = len(_ORDER) if current is None else _ORDER.index(current)
    locks = dict(locked)
    rejected = []
    for section, _, stage, why in _LOCKS:
        if _ORDER.index(stage) > reached:
            continue
        fingerprint = spec_fingerprint(spec, section)
        if section not in locks:
            locks[section] = fingerprint
        elif locks[section] != fingerprint:
            rejected.append(
                f"spec.{section} cannot change once {_STARTED[stage]} has started ({why}); "
                "revert the change or create a new PreferenceRun"
            )
    return locks, rejected


# ------------------------------------------------------------------ the plan


def plan(spec: PreferenceRunSpec, observed: Observed, now: str) -> tuple[list[Action], RunStatus]:
    """The actions to take and the status to write for one reconcile pass."""
    prev = observed.status
    art = observed.artifacts
    gen = observed.generation
    run = observed.name
    conditions = list(prev.conditions)

    def condition(kind: ConditionType, ok: bool, reason: Reason, message: str = "") -> None:
        nonlocal conditions
        status = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        conditions = set_condition(conditions, kind, status, reason, message, gen, now)

    locks: dict[str, str] = dict(prev.locked_spec)
    lost = _losses(observed)
    result: RunResult | None = None

    def finish(phase: Phase, message: str, actions: list[Action]) -> tuple[list[Action], RunStatus]:
        waiting = _waiting(spec, observed) if phase in _WORKING_PHASES else None
        outage = observed.judge.outage if observed.judge is not None else None
        if waiting is None and outage is not None and phase in _WORKING_PHASES:
            # The message says it already, and a JudgeUnreachable Event marks its start.
            text = f"blocked: {outage_text(outage)}"
            condition(ConditionType.BLOCKED, True, Reason.JUDGE_UNREACHABLE, text)
        elif waiting is not None:
            reason, why = waiting
            text = f"blocked: {why}"
            was = prev.condition(ConditionType.BLOCKED)
            condition(ConditionType.BLOCKED, True, reason, text)
            message = f"{message}; {text}"
            if was is None or was.status is not ConditionStatus.TRUE or was.message != text:
                actions.append(Event("Warning", reason.value, text))
        else:
            condition(ConditionType.BLOCKED, False, Reason.NOT_BLOCKED)
        if lost:
            condition(ConditionType.DATA_LOSS, True, Reason.DATA_LOST, describe_losses(lost))
        else:
            condition(ConditionType.DATA_LOSS, False, Reason.NO_DATA_LOSS, "nothing lost so far")
        estimate = _estimate(spec, observed)
        judged = art.shards is not None and art.judged >= art.shards
        status = RunStatus(
            estimate=estimate,
            cost=cost_text(estimate, observed.judge.progress if observed.judge else None, judged),
            phase=phase,
            message=message,
            progress=progress_text(spec, art),
            observed_generation=gen,
            start_time=prev.start_time or now,
            completion_time=(prev.completion_time or now) if phase in TERMINAL_PHASES else None,
            conditions=conditions,
            stages=_progress(spec, art, observed.judge),
            result=result,
            locked_spec=locks,
            losses=lost,
            catalog=prev.catalog,
            retry_token=observed.retry,
        )
        if phase is not prev.phase:
            kind = "Warning" if phase is Phase.FAILED else "Normal"
            actions.append(Event(kind, phase.value, message))
        was_failing = prev.stages.judge is not None and prev.stages.judge.endpoint_failing_since
        if outage is not None and not was_failing and phase is not Phase.FAILED:
            actions.append(Event("Warning", Reason.JUDGE_UNREACHABLE.value, outage_text(outage)))
        return actions, status

    if retry_requested(prev, observed.retry):
        return _retry(spec, observed, now)
    if prev.phase is Phase.FAILED and not _reassess(prev, gen):
        return [], prev.model_copy(update={"observed_generation": gen})

    done = {stage: _stage_done(spec, art, stage) for stage in _ORDER}
    current = next((s for s in _ORDER if not done[s]), None)
    for stage in _ORDER:
        if done[stage]:
            condition(_STAGE_CONDITION[stage], True, Reason.DONE)
        elif stage is current:
            condition(_STAGE_CONDITION[stage], False, Reason.IN_PROGRESS)
        else:
            condition(_STAGE_CONDITION[stage], False, Reason.WAITING)

    failure = _failure(spec, observed)
    if failure is not None:
        reason, message = failure
        condition(ConditionType.FAILED, True, reason, message)
        condition(ConditionType.SUCCEEDED, False, Reason.NOT_FINISHED)
        return finish(Phase.FAILED, message, [])
    condition(ConditionType.FAILED, False, Reason.NO_FAILURE)

    locks, rejected = lock_spec(spec, prev.locked_spec, current)
    if rejected:
        message = "; ".join(rejected)
        was = prev.condition(ConditionType.SPEC_CHANGE_REJECTED)
        condition(ConditionType.SPEC_CHANGE_REJECTED, True, Reason.SPEC_CHANGE_REJECTED, message)
        events: list[Action] = []
        if was is None or was.status is not ConditionStatus.TRUE or was.message != message:
            events.append(Event("Warning", Reason.SPEC_CHANGE_REJECTED.value, message))
        # Hold where the run is: nothing new is created with a spec the run cannot honour.
        return finish(prev.phase, message, events)
    if prev.condition(ConditionType.SPEC_CHANGE_REJECTED) is not None:
        condition(ConditionType.SPEC_CHANGE_REJECTED, False, Reason.SPEC_CHANGE_REVERTED)

    if current is None:
        assert art.summary is not None
        assessment = assess(art.summary, spec.acceptance)
        result = _result(art, assessment.accepted)
        message = assessment.message(result.dataset_uri if result else "")
        if prev.condition(ConditionType.SUSPENDED) is None:
            condition(ConditionType.SUSPENDED, False, Reason.NOT_SUSPENDED)
        conditions, warned = report_warnings_condition(
            conditions, art.report_warnings, art.report_uri, gen, now
        )
        if not assessment.accepted:
            message = f"acceptance check failed: {message}"
            condition(ConditionType.FAILED, True, Reason.ACCEPTANCE_FAILED, message)
            condition(ConditionType.SUCCEEDED, False, Reason.ACCEPTANCE_FAILED, message)
            return finish(Phase.FAILED, message, warned)
        condition(ConditionType.SUCCEEDED, True, Reason.SUCCEEDED, message)
        return finish(Phase.SUCCEEDED, message, warned)
    condition(ConditionType.SUCCEEDED, False, Reason.NOT_FINISHED)

    actions: list[Action] = []
    live = [j for j in observed.jobs.values() if not (j.complete or j.failed or j.deleting)]
    if spec.suspend:
        actions += [SuspendJob(j.name, True) for j in live if not j.suspended]
        message = "suspended: " + _stage_message(spec, art, current, observed)
        condition(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "spec.suspend is true")
        return finish(Phase.SUSPENDED, message, actions)
    was_suspended = prev.condition(ConditionType.SUSPENDED)
    resumed = was_suspended is not None and (
        was_suspended.status is ConditionStatus.TRUE or was_suspended.reason is Reason.RESUMED
    )
    condition(ConditionType.SUSPENDED, False, Reason.RESUMED if resumed else Reason.NOT_SUSPENDED)
    actions += [SuspendJob(j.name, False) for j in live if j.suspended_by_run]

    budget_events = _budget_condition(spec, observed, condition)
    actions += budget_events

    shards = art.shards or 0
    for name, model in _stage_jobs(spec, run, current):
        if (
            current is Stage.GENERATE
            and model is not None
            and (art.generated.get(model, 0) >= shards)
        ):
            continue
        if name in observed.jobs:
            continue
        if current is Stage.PREPARE:
            completions = 1
        elif current is Stage.GENERATE and model is not None:
            completions = generation_workers(spec, model, shards)
        elif current is Stage.JUDGE:
            completions = 1
        else:
            completions = cpu_workers(shards, _SHARDS_PER_CPU_WORKER)
        actions.append(CreateJob(name, current, completions, model))
    if current is Stage.JUDGE and spec.judge.backend is JudgeBackend.OPENAI:
        actions.append(StepJudge())

    phase = _STAGE_PHASE[current]
    if current is Stage.PREPARE and job_name(run, Stage.PREPARE) not in observed.jobs:
        phase = Phase.PENDING
    message = _stage_message(spec, art, current, observed)
    hold = observed.judge.budget_hold if observed.judge is not None else None
    if current is Stage.JUDGE and hold is not None:
        message = f"held: {hold}"
    return finish(phase, message, actions)


def suspend_held(jobs: Iterable[JobState]) -> list[SuspendJob]:
    """What a held run suspends: its live Jobs not suspended yet (marked as suspended by the
    run, so the first pass that admits it again resumes them)."""
    return [
        SuspendJob(j.name, True)
        for j in jobs
        if not (j.complete or j.failed or j.deleting or j.suspended)
    ]


def _budget_condition(
    spec: PreferenceRunSpec,
    observed: Observed,
    condition: Callable[[ConditionType, bool, Reason, str], None],
) -> list[Action]:
    """BudgetExhausted: True while the cap holds the judge back (one Event as it begins),
    False once a raised cap lets it go on; absent for runs that never had a budget."""
    hold = observed.judge.budget_hold if observed.judge is not None else None
    was = observed.status.condition(ConditionType.BUDGET_EXHAUSTED)
    if hold is not None:
        condition(ConditionType.BUDGET_EXHAUSTED, True, Reason.BUDGET_EXHAUSTED, hold)
        if was is None or was.status is not ConditionStatus.TRUE:
            return [Event("Warning", Reason.BUDGET_EXHAUSTED.value, hold)]
        return []
    if spec.judge.budget is not None or was is not None:
        condition(ConditionType.BUDGET_EXHAUSTED, False, Reason.WITHIN_BUDGET, "")
    return []


_WORKING_PHASES = frozenset(
    {
        Phase.PENDING,
        Phase.PREPARING,
        Phase.GENERATING,
        Phase.MIXING,
        Phase.ANNOTATING,
        Phase.PARSING,
    }
)


def _waiting(spec: PreferenceRunSpec, observed: Observed) -> tuple[Reason, str] | None:
    """Why a live Job of the run cannot start: a pod no node takes, or Kueue not admitting it."""
    for job in sorted(observed.jobs.values(), key=lambda j: j.name):
        if job.complete or job.failed or job.deleting:
            continue
        if job.unschedulable:
            return Reason.UNSCHEDULABLE, f"Job {job.name}: {job.unschedulable}"
        if job.suspended and not job.suspended_by_run and spec.queue_name and not spec.suspend:
            return Reason.QUEUED, (
                f"Job {job.name} waits for Kueue to admit it (queue {spec.queue_name}); "
                "kubectl get workloads shows why"
            )
    return None


def retry_requested(prev: RunStatus, token: str | None) -> bool:
    """A Failed run whose synthpref.dev/retry annotation has a value not acted on yet."""
    return prev.phase is Phase.FAILED and bool(token) and token != prev.retry_token


def retry_ignored(prev: RunStatus, token: str | None) -> bool:
    """A Succeeded run with a synthpref.dev/retry value not seen yet: nothing to retry."""
    return prev.phase is Phase.SUCCEEDED and bool(token) and token != prev.retry_token


def ignore_retry(
    prev: RunStatus,
    token: str,
    outcome: Artifacts | None,
    generation: int,
    now: str,
    why_unread: str = "",
) -> tuple[list[Action], RunStatus]:
    """A retry asked of a Succeeded run: nothing is redone (its Jobs and storage are left as
    they are); the value is recorded so it is answered once, with a Normal Event saying why.
    The report is read again (`outcome`: the run's report objects as just read; None when they
    could not be, `why_unread` saying why), so a report rewritten by `synthpref report` since
    (its error gone, its warnings) shows on the run."""
    conditions: list[Condition] = list(prev.conditions)
    result = prev.result
    events: list[Action] = []
    if outcome is not None and result is not None:
        result = result.model_copy(
            update={"report_uri": outcome.report_uri, "report_error": outcome.report_error}
        )
        conditions, events = report_warnings_condition(
            conditions, outcome.report_warnings, outcome.report_uri, generation, now
        )
        if outcome.report_error:
            read = f"its report was read again: {outcome.report_error}"
        elif prev.result is not None and prev.result.report_error:
            read = "its report was read again: the report error is cleared"
        else:
            read = "its report was read again"
    else:
        read = f"its report could not be read again ({why_unread or 'no result yet'})"
    message = (
        f"{ANNOTATION_RETRY}={token} ignored: the run Succeeded, so there is nothing to retry "
        f"(a retry redoes what a Failed run is missing); {read}. To make its dataset again, "
        "create a new PreferenceRun with another storage.uri"
    )
    status = prev.model_copy(
        update={"retry_token": token, "result": result, "conditions": conditions}
    )
    return [Event("Normal", Reason.RETRY_IGNORED.value, message), *events], status


def _retry(spec: PreferenceRunSpec, observed: Observed, now: str) -> tuple[list[Action], RunStatus]:
    """Retry a Failed run: delete its failed Jobs (committed shards stay in storage, so the
    Jobs created afresh by the next passes redo only what is missing) and go back to Pending;
    the next pass plans from the artifacts as always."""
    prev, art, gen = observed.status, observed.artifacts, observed.generation
    broken = sorted(
        j.name
        for j in observed.jobs.values()
        if not j.deleting and (j.failed or j.complete) and _incomplete(spec, art, j) is not None
    )
    deleting = f"deleting Job(s) {', '.join(broken)}; " if broken else ""
    message = f"retrying ({ANNOTATION_RETRY}={observed.retry}): {deleting}committed work is kept"
    conditions = set_condition(
        prev.conditions,
        ConditionType.FAILED,
        ConditionStatus.FALSE,
        Reason.RETRIED,
        message,
        gen,
        now,
    )
    status = prev.model_copy(
        update={
            "phase": Phase.PENDING,
            "message": message,
            "conditions": conditions,
            "observed_generation": gen,
            "completion_time": None,
            "retry_token": observed.retry,
        }
    )
    actions: list[Action] = [DeleteJob(name) for name in broken]
    actions.append(Event("Normal", Reason.RETRIED.value, message))
    return actions, status


def _reassess(prev: RunStatus, generation: int) -> bool:
    """A run that failed only its acceptance check is judged again after a spec edit (e.g.
    lowered thresholds); every other failure is final."""
    failed = prev.condition(ConditionType.FAILED)
    return (
        failed is not None
        and failed.reason is Reason.ACCEPTANCE_FAILED
        and prev.observed_generation != generation
    )


# mix and parse: one worker per this many shards (see `cpu_workers`).
_SHARDS_PER_CPU_WORKER = 20


def _failure(spec: PreferenceRunSpec, observed: Observed) -> tuple[Reason, str] | None:
    """The first reason the run cannot go on, if any."""
    art = observed.artifacts
    for job in sorted(observed.jobs.values(), key=lambda j: _ORDER.index(j.stage)):
        if job.deleting or _incomplete(spec, art, job) is None:
            continue  # its work is committed, whatever became of the Job afterwards
        if job.failed:
            return Reason.JOB_FAILED, _job_failure(spec, art, job)
        if job.complete:
            return Reason.STAGE_INCOMPLETE, (
                f"Job {job.name} completed but its work is not committed: "
                f"{_incomplete(spec, art, job)}"
            )
    if observed.judge is not None and observed.judge.error:
        return Reason.JUDGE_FAILED, f"judge: {observed.judge.error}"
    return None


def uses_gpu(spec: PreferenceRunSpec, stage: Stage, model: str | None) -> int:
    """GPUs per pod of a stage's Job (0 for CPU stages and for openai-backend models)."""
    if stage is Stage.GENERATE and model is not None:
        m = spec.model(model)
        return m.gpu_count if m.backend is GenerationBackend.VLLM else 0
    if stage is Stage.JUDGE:
        return spec.judge.gpu_count
    return 0
