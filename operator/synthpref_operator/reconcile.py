"""One reconcile pass of a PreferenceRun: observe, plan, apply, write status once, emit Events.

Called by the kopf handlers (`handlers.py`) on every run or Job event and on a timer, always in
a worker thread (never on the event loop). Passes of one run never overlap: a request that
comes while a pass runs makes that pass run once more (`request`). Everything is recomputed
from the cluster and storage on every pass, so a restarted operator simply carries on.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from synthpref.logs import run_context
from synthpref.spec import JudgeBackend, PreferenceRunSpec, format_validation_error
from synthpref.storage import Storage
from synthpref_operator.apply import Applier
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.observe import (
    observe_artifacts,
    observe_jobs,
    observe_judge,
    open_run_storage,
    secret_value,
)
from synthpref_operator.planner import (
    CreateJob,
    Event,
    JudgeLedger,
    Observed,
    StepJudge,
    SuspendJob,
    plan,
)
from synthpref_operator.settings import OperatorSettings
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


def rfc3339(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Slot:
    running: bool = False
    again: bool = False


class Reconciler:
    """Runs reconcile passes for the runs of one operator process."""

    def __init__(
        self, api_client: Any, settings: OperatorSettings, metrics: OperatorMetrics | None = None
    ) -> None:
        self.applier = Applier(api_client, settings, metrics)
        self.metrics = metrics
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._lock = threading.Lock()

    # ---- coalescing

    def request(self, namespace: str, name: str) -> None:
        """Reconcile now, or make the pass in progress for this run run once more."""
        key = (namespace, name)
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
            if slot.running:
                slot.again = True
                return
            slot.running = True
        try:
            while True:
                self.reconcile(namespace, name)
                with self._lock:
                    if not slot.again:
                        slot.running = False
                        return
                    slot.again = False
        except BaseException:
            with self._lock:
                slot.running = False
            raise

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
        if previous.phase in TERMINAL_PHASES and previous.observed_generation == generation:
            return previous  # nothing to do until the spec changes (see planner._reassess)
        jobs = observe_jobs(self.applier.batch, namespace, name, self.applier.core)
        storage = open_run_storage(spec, self.applier.core, namespace)
        artifacts = observe_artifacts(spec, storage)
        judge: JudgeLedger | None = None
        if (
            spec.judge.backend is JudgeBackend.OPENAI
            and artifacts.shards is not None
            and artifacts.mixed >= artifacts.shards
        ):
            judge, judged = observe_judge(spec, storage, name)
            artifacts = replace(artifacts, judged=judged)
        observed = Observed(name, generation, previous, jobs, artifacts, judge)
        actions, status = plan(spec, observed, now)
        events: list[Event] = []
        for action in actions:
            if isinstance(action, CreateJob):
                self.applier.create_job(run, spec, action)
            elif isinstance(action, SuspendJob):
                self.applier.suspend_job(namespace, action)
            elif isinstance(action, StepJudge):
                judge_error = self._step_judge(spec, storage, run)
                if judge_error is not None:
                    # The judge cannot go on: plan again with its error (the run fails).
                    progress = judge.progress if judge is not None else JudgeProgress()
                    observed = replace(observed, judge=JudgeLedger(progress, judge_error))
                    actions, status = plan(spec, observed, now)
                    events = [a for a in actions if isinstance(a, Event)]
                    break
            elif isinstance(action, Event):
                events.append(action)
        self._write(run, previous, status, events)
        return status

    def _write(
        self, run: dict[str, Any], previous: RunStatus, status: RunStatus, events: list[Event]
    ) -> None:
        body = status.to_body()
        if (body != previous.to_body() or not run.get("status")) and not (
            self.applier.write_status(run, body)
        ):
            return  # conflict: the next pass recomputes everything, events included
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

    # ---- the OpenAI judge

    def _api_key(self, spec: PreferenceRunSpec, namespace: str) -> str | None:
        ref = spec.judge.openai.api_key_secret
        if ref is None:
            return None  # BatchClient falls back to the operator's own environment variable
        return secret_value(self.applier.core, namespace, ref.name, ref.key)

    def _annotator(self, spec: PreferenceRunSpec, storage: Storage, run: dict[str, Any]) -> Any:
        from synthpref.annotate.client import BatchClient
        from synthpref.annotate.engine import Annotator

        meta = run["metadata"]
        key = self._api_key(spec, meta["namespace"])
        return Annotator(spec, storage, meta["name"], BatchClient(spec.judge.openai, api_key=key))

    def _step_judge(
        self, spec: PreferenceRunSpec, storage: Storage, run: dict[str, Any]
    ) -> str | None:
        """One ledger step; the error message when the judge cannot go on."""
        from synthpref.annotate.client import FatalApiError
        from synthpref.annotate.engine import FatalAnnotateError

        try:
            annotator = self._annotator(spec, storage, run)
        except (FatalApiError, LookupError) as error:
            return str(error)
        try:
            report = annotator.step()
        except FatalAnnotateError as error:
            return str(error)
        finally:
            annotator.client.close()
        for line in report.actions:
            log.info("judge: %s", line)
        for line in report.transient_errors:
            log.warning("judge (will retry): %s", line)
        return None

    def cancel_batches(self, namespace: str, name: str, spec_document: dict[str, Any]) -> str:
        """On deletion, per `spec.deletionPolicy`: cancel the run's in-flight batches."""
        spec = PreferenceRunSpec.model_validate(spec_document)
        if spec.judge.backend is not JudgeBackend.OPENAI or spec.deletion_policy.value != "cancel":
            return "nothing to cancel"
        storage = open_run_storage(spec, self.applier.core, namespace)
        artifacts = observe_artifacts(spec, storage)
        if artifacts.shards is None or artifacts.mixed < artifacts.shards:
            return "no judge batches yet"
        annotator = self._annotator(
            spec, storage, {"metadata": {"namespace": namespace, "name": name}}
        )
        try:
            summary = annotator.cancel(wait=False)
        finally:
            annotator.client.close()
        return f"cancelled the judge: {summary.files_done}/{summary.files} request files ended"
