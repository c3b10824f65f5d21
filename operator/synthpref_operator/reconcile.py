"""One reconcile pass of a PreferenceRun: observe, plan, apply, write status once, emit Events.

Called by the kopf handlers (`handlers.py`) on run and Job events and on a timer, always in
a worker thread (never on the event loop). Passes of one run never overlap: a request that
comes while a pass runs makes that pass run once more (`request`). Everything is recomputed
from the cluster and storage, so a restarted operator simply carries on; between passes a run
keeps only caches (`run_cache.RunCache`: Secret values by resourceVersion, its storage client,
and what its storage showed, looked at again where a stage Job changed).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from pydantic import ValidationError

from synthpref.catalog import with_models
from synthpref.logs import run_context
from synthpref.run_lease import LeaseHeldError
from synthpref.spec import (
    API_GROUP,
    API_VERSION,
    DeletionPolicy,
    JudgeBackend,
    PreferenceRunSpec,
    format_validation_error,
)
from synthpref.storage import Storage, StorageError
from synthpref_operator.admission import (
    Problem,
    SecretFacts,
    SecretNotOptedInError,
    admission_problems,
    admission_status,
    operator_key_allowed,
    secrets_to_observe,
    shard_limit_problem,
    touching,
)
from synthpref_operator.apply import Applier
from synthpref_operator.artifact_memory import RELIST_SECONDS
from synthpref_operator.blocked import blocked_status, observation_reason
from synthpref_operator.catalogs import catalog_pass
from synthpref_operator.crd import PLURAL
from synthpref_operator.deletion import CancelOutcome, DeletionStep, deletion_step
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import ANNOTATION_RETRY, ANNOTATION_SKIP_BATCH_CANCEL
from synthpref_operator.observe import (
    PENDING_ESTIMATE,
    estimate_from_counts,
    observe_artifacts,
    observe_catalog,
    observe_jobs,
    observe_judge,
    observe_report,
    observe_secrets,
    open_run_storage,
)
from synthpref_operator.planner import (
    CreateJob,
    DeleteJob,
    Event,
    JudgeLedger,
    JudgeOutage,
    Observed,
    StepJudge,
    SuspendJob,
    ignore_retry,
    plan,
    retry_ignored,
    retry_requested,
    suspend_held,
)
from synthpref_operator.run_cache import RunCache
from synthpref_operator.settings import DEFAULT_JOB_CREATIONS, OperatorSettings
from synthpref_operator.status import (
    TERMINAL_PHASES,
    ConditionStatus,
    ConditionType,
    JudgeProgress,
    Phase,
    Reason,
    RunStatus,
)

log = logging.getLogger(__name__)

# The operator's own OpenAI API key, for runs of the namespaces the chart grants it to.
OPERATOR_API_KEY_ENV = "OPENAI_API_KEY"
# Retries of one judge API call within a reconcile pass (see Reconciler._annotator).
JUDGE_RETRIES_PER_PASS = 1


def rfc3339(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Slot:
    running: bool = False
    again: str | None = None  # the trigger of a request that came during the pass


class Reconciler:
    """Runs reconcile passes for the runs of one operator process."""

    def __init__(
        self,
        api_client: Any,
        settings: OperatorSettings,
        metrics: OperatorMetrics | None = None,
        relist_seconds: float = RELIST_SECONDS,
        create_concurrency: int = DEFAULT_JOB_CREATIONS,
    ) -> None:
        self.applier = Applier(api_client, settings, metrics, create_concurrency)
        self.metrics = metrics
        self.cache = RunCache(metrics, relist_seconds, settings)
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._lock = threading.Lock()

    # ---- coalescing

    def request(self, namespace: str, name: str, trigger: str = "event") -> None:
        """Reconcile now, or make the pass in progress for this run run once more.
        `trigger` (event, job, timer, catalog) only labels the pass in the metrics."""
        key = (namespace, name)
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
            if slot.running:
                slot.again = trigger
                return
            slot.running = True
        try:
            while True:
                if self.metrics is not None:
                    self.metrics.reconcile_passes.labels(trigger=trigger).inc()
                self.reconcile(namespace, name)
                with self._lock:
                    if slot.again is None:
                        slot.running = False
                        return
                    trigger, slot.again = slot.again, None
        except BaseException:
            with self._lock:
                slot.running = False
            raise

    def _again(self, namespace: str, name: str) -> None:
        """Make the pass in progress run once more (its status write lost a conflict, and the
        change that caused it may be one that asks for no pass, e.g. kopf's finalizer)."""
        with self._lock:
            slot = self._slots.get((namespace, name))
            if slot is not None and slot.running and slot.again is None:
                slot.again = "again"

    def forget(self, namespace: str, name: str) -> None:
        """The run is gone: drop what its passes kept (Secret values, clients, memory)."""
        self.cache.forget(namespace, name)
        self.applier.forget(namespace, name)
        with self._lock:
            slot = self._slots.get((namespace, name))
            if slot is not None and not slot.running:
                del self._slots[(namespace, name)]

    # ---- the pass

    def reconcile(self, namespace: str, name: str) -> RunStatus | None:
        """One pass, logged with the run as context, timed and recorded in the metrics."""
        with run_context(namespace, name):
            if self.metrics is None:
                return self._reconcile(namespace, name)
            started = time.monotonic()
            try:
                status = self._reconcile(namespace, name)
            except Exception:
                self.metrics.reconcile_failed(namespace)
                raise
            finally:
                self.metrics.reconcile_duration.observe(time.monotonic() - started)
            if status is None:
                self.metrics.forget_run(namespace, name)
            else:
                self.metrics.observe_run(namespace, name, status)
            return status

    def _reconcile(self, namespace: str, name: str) -> RunStatus | None:
        run = self.applier.get_run(namespace, name)
        if run is None or run["metadata"].get("deletionTimestamp"):
            return None
        generation = int(run["metadata"].get("generation") or 0)
        previous = RunStatus.model_validate(run.get("status") or {})
        now = rfc3339()
        try:
            spec = PreferenceRunSpec.model_validate(run.get("spec") or {})
        except ValidationError as error:
            status = self._invalid(previous, generation, now, error, name)
            self._write(run, previous, status, [Event("Warning", "SpecInvalid", status.message)])
            return status
        if self.metrics is not None:  # the status does not say it: synthpref_judge_budget_*
            self.metrics.observe_budget(namespace, name, spec.judge.budget)
        if spec.model_catalog is not None:
            facts = observe_catalog(self.applier.custom, namespace, spec.model_catalog.name)
            taken = catalog_pass(spec, previous, facts, namespace)
            if taken.spec is None or taken.events:
                # Held, just frozen, or the catalog was edited: this pass ends with that status
                # write; its event brings the next pass, which uses the frozen models.
                status, notes = taken.status, taken.events
                if taken.problem is not None:
                    status, notes = admission_status(previous, [taken.problem], generation, now)
                    status, _ = blocked_status(  # as for the other admission holds, below
                        status,
                        taken.problem.reason,
                        status.message,
                        generation,
                        now,
                        event=False,
                        prefix="",
                    )
                self._write(run, previous, status, notes)
                return status
            spec = taken.spec
        retry = (run["metadata"].get("annotations") or {}).get(ANNOTATION_RETRY)
        if previous.phase in TERMINAL_PHASES and previous.observed_generation == generation:
            if retry is not None and retry_ignored(previous, retry):
                return self._ignore_retry(run, spec, previous, retry, generation, now)
            if not retry_requested(previous, retry):
                return previous  # nothing to do until the spec changes (see planner._reassess)
        # Before any Secret value is read, storage opened, the judge called or a Job created.
        problems, secrets = self._admission(spec, namespace)
        if problems:
            return self._hold(run, previous, problems, generation, now)
        admitted, _ = admission_status(previous, problems, generation, now)
        try:
            fresh = self.cache.fresh_jobs_needed(namespace, name)
            jobs = observe_jobs(self.applier.batch, namespace, name, self.applier.core, fresh=fresh)
            storage = self.cache.storage(spec, self.applier.core, namespace, name, secrets)
            basis = (str(run["metadata"].get("uid") or ""), generation, retry)
            memory = self.cache.artifact_memory(namespace, name, basis)
            artifacts = observe_artifacts(spec, storage, memory, jobs, time.monotonic())
            judge: JudgeLedger | None = None
            if (
                spec.judge.backend is JudgeBackend.OPENAI
                and artifacts.shards is not None
                and artifacts.mixed >= artifacts.shards
            ):
                judge, judged = observe_judge(spec, storage, name)
                artifacts = replace(artifacts, judged=judged)
                judge_lease(storage, namespace, name, done=judged >= (artifacts.shards or 0))
        except SecretNotOptedInError as error:  # lost its opt-in since admission looked
            problem = Problem(Reason.SECRET_NOT_ALLOWED, "spec", str(error))
            return self._hold(run, previous, [problem], generation, now)
        except (LookupError, StorageError, LeaseHeldError) as error:
            # A Secret without its key, storage out of reach, another writer holding the run:
            # say so, and try again next pass.
            log.warning("blocked: %s", error)
            held, warnings = blocked_status(
                admitted, observation_reason(error), str(error), generation, now
            )
            self._write(run, previous, held, warnings)
            return held
        if artifacts.shards is not None and (
            too_many := shard_limit_problem(artifacts.shards, self.applier.settings)
        ):
            return self._hold(run, previous, [too_many], generation, now)
        # What the judge is expected to cost, from prepare's counts (pending until then).
        estimate = None
        if previous.estimate is None or previous.estimate.basis == PENDING_ESTIMATE.basis:
            estimate = estimate_from_counts(spec, artifacts)
        observed = Observed(
            name, generation, admitted, jobs, artifacts, judge, estimate=estimate, retry=retry
        )
        actions, status = plan(spec, observed, now)
        creations = [a for a in actions if isinstance(a, CreateJob)]
        self.applier.create_jobs(run, spec, creations)
        events: list[Event] = []
        for action in actions:
            if isinstance(action, CreateJob):
                continue  # created above, together
            if isinstance(action, SuspendJob):
                self.applier.suspend_job(namespace, action)
            elif isinstance(action, DeleteJob):
                self.cache.jobs_deleted(namespace, name)
                self.applier.delete_job(namespace, action)
            elif isinstance(action, StepJudge):
                judge_error, outage = self._step_judge(spec, storage, run, previous, secrets)
                if judge_error is not None or outage is not None:
                    # The judge cannot go on (the run fails), or its endpoint is down (the
                    # status says so while it retries): plan again with what the step saw.
                    progress = judge.progress if judge is not None else JudgeProgress()
                    observed = replace(observed, judge=JudgeLedger(progress, judge_error, outage))
                    actions, status = plan(spec, observed, now)
                    events = [a for a in actions if isinstance(a, Event)]
                    break
            elif isinstance(action, Event):
                events.append(action)
        if (refusal := self.applier.refusal(namespace, name, creations)) is not None:
            # A creation was refused (a quota, an admission policy): say so.
            status, warnings = blocked_status(
                status, Reason.JOB_REFUSED, refusal, generation, now, before=previous
            )
            events += warnings
        self._write(run, previous, status, events)
        return status

    def _ignore_retry(
        self,
        run: dict[str, Any],
        spec: PreferenceRunSpec,
        previous: RunStatus,
        retry: str,
        generation: int,
        now: str,
    ) -> RunStatus:
        """A retry asked of a Succeeded run: say (an Event) that it is ignored and why, and read
        the run's report objects again (a few small reads, after admission as always), so a
        report rewritten since by `synthpref report` shows on the run."""
        meta = run["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        outcome, why = None, ""
        problems, secrets = self._admission(spec, namespace)
        if problems:
            why = f"the run may not use what it names: {problems[0].message}"
        else:
            try:
                storage = self.cache.storage(spec, self.applier.core, namespace, name, secrets)
                outcome = observe_report(storage)
            except (LookupError, StorageError, SecretNotOptedInError) as error:
                why = str(error)
        actions, status = ignore_retry(previous, retry, outcome, generation, now, why)
        self._write(run, previous, status, [a for a in actions if isinstance(a, Event)])
        return status

    def _hold(
        self,
        run: dict[str, Any],
        previous: RunStatus,
        problems: list[Problem],
        generation: int,
        now: str,
    ) -> RunStatus:
        """Hold the run for `problems` (Admitted=False, Blocked with the first reason, one
        Warning Event per change) and suspend its live Jobs, which go on once it is admitted
        again: nothing of the run runs with what it may no longer use."""
        admitted, events = admission_status(previous, problems, generation, now)
        held, _ = blocked_status(
            admitted, problems[0].reason, admitted.message, generation, now, event=False, prefix=""
        )
        meta = run["metadata"]
        jobs = observe_jobs(self.applier.batch, meta["namespace"], meta["name"])
        for action in suspend_held(jobs.values()):
            self.applier.suspend_job(meta["namespace"], action)
        self._write(run, previous, held, events)
        return held

    def _write(
        self, run: dict[str, Any], previous: RunStatus, status: RunStatus, events: list[Event]
    ) -> None:
        body = status.to_body()
        if (body != previous.to_body() or not run.get("status")) and not (
            self.applier.write_status(run, body)
        ):
            # Conflict: the next pass recomputes everything, events included.
            meta = run["metadata"]
            self._again(meta["namespace"], meta["name"])
            return
        for event in events:
            self.applier.emit(run, event)

    @staticmethod
    def _invalid(
        previous: RunStatus, generation: int, now: str, error: ValidationError, name: str
    ) -> RunStatus:
        from synthpref_operator.planner import set_condition

        message = format_validation_error(f"PreferenceRun {name}", error).replace("\n", ";")
        conditions = set_condition(
            previous.conditions,
            ConditionType.FAILED,
            ConditionStatus.TRUE,
            Reason.SPEC_INVALID,
            message,
            generation,
            now,
        )
        return previous.model_copy(
            update={
                "phase": Phase.FAILED,
                "message": message,
                "conditions": conditions,
                "observed_generation": generation,
                "completion_time": previous.completion_time or now,
            }
        )

    def _admission(
        self, spec: PreferenceRunSpec, namespace: str
    ) -> tuple[list[Problem], dict[str, SecretFacts]]:
        """What the run names but may not use, and what was seen of the Secrets it names
        (their metadata only)."""
        settings = self.applier.settings
        names = secrets_to_observe(spec, settings)
        secrets = observe_secrets(self.applier.core, namespace, names)
        return admission_problems(spec, settings, namespace, secrets), secrets

    def _admission_problems(self, spec: PreferenceRunSpec, namespace: str) -> list[Problem]:
        """What the run names but may not use (reads the named Secrets' metadata only)."""
        return self._admission(spec, namespace)[0]

    def runs_using_catalog(self, namespace: str, catalog: str) -> list[str]:
        """Names of the runs in `namespace` whose spec.modelCatalog names `catalog`."""
        listing = cast(
            dict[str, Any],
            self.applier.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL
            ),
        )
        return [
            run["metadata"]["name"]
            for run in listing.get("items") or []
            if ((run.get("spec") or {}).get("modelCatalog") or {}).get("name") == catalog
        ]

    # ---- the OpenAI judge

    def _api_key(
        self,
        spec: PreferenceRunSpec,
        namespace: str,
        run: str,
        secrets: Mapping[str, SecretFacts] | None = None,
    ) -> str:
        """The judge's API key: from the run's cache while the Secret's resourceVersion (read
        by admission this pass, in `secrets`) is unchanged; read afresh when it is unknown."""
        ref = spec.judge.openai.api_key_secret
        if ref is None:
            # Checked again where it is used: admission holds such a run anyway. The run never
            # chooses which of the operator's variables is read (its apiKeyEnv is ignored here).
            if not operator_key_allowed(spec, namespace, self.applier.settings):
                raise LookupError(
                    "spec.judge.openai.apiKeySecret is unset and the operator's own API key may "
                    "not judge this run"
                )
            own = os.environ.get(OPERATOR_API_KEY_ENV)
            if not own:
                raise LookupError(
                    "spec.judge.openai.apiKeySecret is unset and the operator has no API key "
                    f"of its own (${OPERATOR_API_KEY_ENV}); name a Secret with the run's key"
                )
            return own
        facts = (secrets or {}).get(ref.name)
        version = facts.resource_version if facts is not None else ""
        return self.cache.secret(self.applier.core, namespace, run, ref.name, ref.key, version)

    def _annotator(
        self,
        spec: PreferenceRunSpec,
        storage: Storage,
        run: dict[str, Any],
        failing_since: float | None = None,
        secrets: Mapping[str, SecretFacts] | None = None,
    ) -> Any:
        from synthpref.annotate.client import BatchClient
        from synthpref.annotate.engine import Annotator

        meta = run["metadata"]
        key = self._api_key(spec, meta["namespace"], meta["name"], secrets)
        # One quick retry per call: a pass must not hold a worker thread for minutes; the next
        # pass tries again, and the outage is tracked across passes in the status.
        client = BatchClient(spec.judge.openai, api_key=key, max_retries=JUDGE_RETRIES_PER_PASS)
        return Annotator(spec, storage, meta["name"], client, failing_since=failing_since)

    def _step_judge(
        self,
        spec: PreferenceRunSpec,
        storage: Storage,
        run: dict[str, Any],
        previous: RunStatus,
        secrets: Mapping[str, SecretFacts],
    ) -> tuple[str | None, JudgeOutage | None]:
        """One ledger step: (the error when the judge cannot go on, the endpoint's outage)."""
        from synthpref.annotate.client import FatalApiError
        from synthpref.annotate.engine import FatalAnnotateError

        judge_status = previous.stages.judge
        since = judge_status.endpoint_failing_since if judge_status is not None else None
        try:
            annotator = self._annotator(
                spec, storage, run, _parse_time(since).timestamp() if since else None, secrets
            )
        except (FatalApiError, LookupError) as error:
            return str(error), None
        try:
            report = annotator.step()
        except FatalAnnotateError as error:
            return str(error), None
        finally:
            annotator.client.close()
        for line in report.actions:
            log.info("judge: %s", line)
        for line in report.transient_errors:
            log.warning("judge (will retry): %s", line)
        if report.failing_since is None:
            return None, None
        gave_up = annotator.unavailable_error(
            f"once it answers, retry the run (annotation {ANNOTATION_RETRY}=<new value>)"
        )
        if gave_up is not None:
            return str(gave_up), None
        failing = dt.datetime.fromtimestamp(report.failing_since, dt.UTC)
        outage = JudgeOutage(report.endpoint, rfc3339(failing), report.last_error or "")
        return None, outage

    # ---- deletion

    def finish_deletion(self, run: dict[str, Any], attempt: int) -> DeletionStep:
        """One try of the delete handler (`attempt`: kopf's retry count): cancel the run's
        batches, then release or retry (the caller raises kopf.TemporaryError with the delay);
        logs the outcome and posts its Event on the run."""
        meta = run["metadata"]
        skip = (meta.get("annotations") or {}).get(ANNOTATION_SKIP_BATCH_CANCEL) == "true"
        try:
            outcome = self.cancel_batches(
                meta["namespace"], meta["name"], run.get("spec") or {}, run.get("status"), skip=skip
            )
        except Exception as error:  # e.g. the API server or storage unreachable: try again
            outcome = CancelOutcome(False, f"{type(error).__name__}: {error}", ids_known=False)
        began = meta.get("deletionTimestamp")
        elapsed = (dt.datetime.now(dt.UTC) - _parse_time(began)).total_seconds() if began else 0.0
        step = deletion_step(
            outcome,
            elapsed=elapsed,
            timeout=self.applier.settings.deletion_timeout_seconds,
            attempt=attempt,
            skip=skip,
        )
        log.log(logging.WARNING if step.warning else logging.INFO, "%s", step.log)
        if step.event is not None:
            self.applier.emit(run, step.event)
        return step

    def cancel_batches(
        self,
        namespace: str,
        name: str,
        spec_document: dict[str, Any],
        status_document: dict[str, Any] | None = None,
        *,
        skip: bool = False,
    ) -> CancelOutcome:
        """On deletion, per `spec.deletionPolicy`: cancel the run's in-flight judge batches,
        never through a Secret or at an endpoint the run may not use. With `skip` (the
        override annotation) the judge is not called: the batches still running are listed."""
        try:
            spec = PreferenceRunSpec.model_validate(spec_document)
        except ValidationError:
            return CancelOutcome(True, "the spec is invalid, so the run never started")
        if spec.model_catalog is not None:
            frozen = RunStatus.model_validate(status_document or {}).catalog
            if frozen is None:
                return CancelOutcome(True, "the run never took its models, so it never started")
            spec = with_models(spec, frozen.models)
        if spec.judge.backend is not JudgeBackend.OPENAI:
            return CancelOutcome(True, "no judge batches (vllm judge)")
        if spec.deletion_policy is DeletionPolicy.LEAVE:
            return CancelOutcome(True, "deletionPolicy leave: judge batches left running")
        problems = self._admission_problems(spec, namespace)
        if blocked := touching(problems, "spec.storage."):
            judge = RunStatus.model_validate(status_document or {}).stages.judge
            if judge is None or judge.batches == 0:
                return CancelOutcome(True, "no judge batches were created")
            why = "; ".join(p.message for p in blocked)
            return CancelOutcome(False, f"cannot read the judge ledger: {why}", ids_known=False)
        storage = open_run_storage(spec, self.applier.core, namespace)
        artifacts = observe_artifacts(spec, storage)
        if artifacts.shards is None or artifacts.mixed < artifacts.shards:
            return CancelOutcome(True, "no judge batches yet")
        from synthpref.annotate.engine import Annotator

        running = _running_batches(Annotator(spec, storage, name, None))
        if skip:
            return CancelOutcome(not running, "not cancelled", running)
        if blocked := touching(problems, "spec.judge."):
            why = "; ".join(p.message for p in blocked)
            return CancelOutcome(not running, f"the judge may not be called: {why}", running)
        # The client retries each call once (_annotator): the handler's own backoff retries.
        meta = {"metadata": {"namespace": namespace, "name": name}}
        try:
            annotator = self._annotator(spec, storage, meta)
        except Exception as error:  # no key (Secret gone or changed)
            return CancelOutcome(False, str(error), running)
        try:
            summary = annotator.cancel(wait=False)
        except Exception as error:
            return CancelOutcome(False, str(error), _running_batches(annotator))
        finally:
            annotator.client.close()
        return CancelOutcome(
            True,
            f"cancelled the judge: {len(running)} batch(es) cancelled, "
            f"{summary.files_done}/{summary.files} request files ended",
        )


# The operator's hold on a run's lease while it steps the judge: renewed every pass.
JUDGE_LEASE_TTL_S = 300.0


def judge_lease(storage: Storage, namespace: str, name: str, *, done: bool) -> None:
    """Take (or renew) the run's lease for the operator's judge loop, so no second writer
    (`synthpref annotate run`, `run --local` on the same storage) submits the same requests;
    give it up once the judge is done. The holder is the same for every operator process (one
    leads at a time), so a new leader carries on at once."""
    from synthpref.run_lease import RunLease

    lease = RunLease(
        storage,
        "the operator's judge",
        ttl_s=JUDGE_LEASE_TTL_S,
        holder=f"synthpref operator ({namespace}/{name})",
    )
    if done:
        lease.release_if_held()
    else:
        lease.acquire()


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _running_batches(annotator: Any) -> tuple[str, ...]:
    """Ids of the run's batches that are submitted and neither ended nor being cancelled."""
    from synthpref.annotate.engine import ENDED_STATUSES
    from synthpref.annotate.ledger import Phase as LedgerPhase

    return tuple(
        record.current.batch_id
        for record in annotator.ledgers()
        if record.phase is LedgerPhase.SUBMITTED
        and record.current is not None
        and record.current.batch_id
        and record.current.status not in (*ENDED_STATUSES, "cancelling")
    )
