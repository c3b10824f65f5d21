"""Apply the planner's actions through the Kubernetes API, idempotently.

Called by `reconcile.Reconciler` after `planner.plan`. A pass starts its new Jobs' creations
(`start_jobs`): they run on a small pool of threads shared by the whole process,
`CREATE_CONCURRENCY` at once, and the pass waits for them a bounded time only. Waiting for all
made a pass as slow as the API server's queue of creations: when fifty runs reached a stage of
twenty models together, passes waited tens of seconds for a thousand Jobs; not waiting at all
let the passes of every run compete with the creations at the API server, and the creations
took longer (`scripts/bench_operator.py`). The run's next pass waits until its creations have
ended (`on_settled`, `reconcile.Reconciler.request`); a creation the API server refuses is
logged with its reason, counted in `synthpref_reconcile_errors_total`, kept for the run's next
pass to show (`refusal`), and planned again by a later pass. A Job already being
created is not started twice; creating a Job that exists (409) is success; a missing Job to
suspend or delete is nothing to do; the status is replaced through the status subresource;
Events go to the run after the status write.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from synthpref.spec import API_GROUP, API_VERSION, KIND, PreferenceRunSpec
from synthpref_operator.builders import job_manifest, owner_reference
from synthpref_operator.crd import PLURAL
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import ANNOTATION_SUSPENDED_BY_RUN
from synthpref_operator.planner import CreateJob, DeleteJob, Event, SuspendJob
from synthpref_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

# Job creations in flight at once, over all passes of the process.
CREATE_CONCURRENCY = 8


class Applier:
    """The API calls of one operator process (thread-safe: the client is)."""

    def __init__(
        self, api_client: Any, settings: OperatorSettings, metrics: OperatorMetrics | None = None
    ) -> None:
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.settings = settings
        self.metrics = metrics
        self.jobs_created: list[str] = []
        self._creators: ThreadPoolExecutor | None = None
        self._creators_lock = threading.Lock()
        self._in_flight: set[tuple[str, str]] = set()  # (namespace, Job name)
        self._runs_creating: Counter[tuple[str, str]] = Counter()  # (namespace, run) -> in flight
        # Called (on a creation's thread) when the last creation in flight for a run ends.
        self.on_settled: Callable[[str, str], None] | None = None
        # Why the API server refused a run's Job, until the Job is created or no longer planned.
        self._refused: dict[tuple[str, str], dict[str, str]] = {}  # (namespace, run) -> Job -> why

    def start_jobs(
        self, run: dict[str, Any], spec: PreferenceRunSpec, actions: Sequence[CreateJob]
    ) -> list[Future[None]]:
        """Start creating the Jobs that are not being created already; returns at once, with
        the creations it started."""
        meta = run["metadata"]
        started = []
        for action in actions:
            key = (meta["namespace"], action.name)
            with self._creators_lock:
                if key in self._in_flight:
                    continue
                self._in_flight.add(key)
                self._runs_creating[(meta["namespace"], meta["name"])] += 1
            # In a copy of this pass's context, so what the creation logs names the run.
            started.append(
                self._pool().submit(
                    contextvars.copy_context().run, self._create_in_background, run, spec, action
                )
            )
        return started

    def _create_in_background(
        self, run: dict[str, Any], spec: PreferenceRunSpec, action: CreateJob
    ) -> None:
        meta = run["metadata"]
        key = (meta["namespace"], action.name)
        refusal: str | None = None
        try:
            self.create_job(run, spec, action)
        except Exception as error:  # the pass has gone on: report it, a later pass retries
            refusal = (
                f"{error.status} {error.reason}: {_api_message(error)}"
                if isinstance(error, ApiException)
                else repr(error)
            )
            log.warning("cannot create Job %s/%s: %s", *key, refusal)
            if self.metrics is not None:
                self.metrics.reconcile_failed(key[0])
        finally:
            run_key = (meta["namespace"], meta["name"])
            with self._creators_lock:
                self._in_flight.discard(key)
                if refusal is not None:
                    self._refused.setdefault(run_key, {})[action.name] = refusal
                elif action.name in self._refused.get(run_key, {}):
                    del self._refused[run_key][action.name]
                self._runs_creating[run_key] -= 1
                settled = self._runs_creating[run_key] <= 0
                if settled:
                    del self._runs_creating[run_key]
            if settled and self.on_settled is not None:
                self.on_settled(*run_key)

    def busy(self, namespace: str, run: str) -> bool:
        """Whether creations of the run's Jobs are in flight."""
        with self._creators_lock:
            return (namespace, run) in self._runs_creating

    def refusal(self, namespace: str, run: str, planned: Sequence[CreateJob]) -> str | None:
        """Why the API server refused the creation of one of the run's Jobs this pass plans
        (the first by name), or None; a refused Job no longer planned is forgotten."""
        wanted = {action.name for action in planned}
        with self._creators_lock:
            refused = self._refused.pop((namespace, run), {})
            refused = {job: why for job, why in refused.items() if job in wanted}
            if not refused:
                return None
            self._refused[(namespace, run)] = refused
            job = min(refused)
            return f"cannot create Job {job}: {refused[job]}"

    def forget(self, namespace: str, run: str) -> None:
        """The run is gone: drop its refusals."""
        with self._creators_lock:
            self._refused.pop((namespace, run), None)

    def creating(self) -> int:
        """How many Job creations are in flight."""
        with self._creators_lock:
            return len(self._in_flight)

    def close(self) -> None:
        """Let the creations in flight finish, then stop the pool."""
        with self._creators_lock:
            pool, self._creators = self._creators, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _pool(self) -> ThreadPoolExecutor:
        with self._creators_lock:
            if self._creators is None:
                self._creators = ThreadPoolExecutor(CREATE_CONCURRENCY, "create-job")
            return self._creators

    def create_job(self, run: dict[str, Any], spec: PreferenceRunSpec, action: CreateJob) -> bool:
        """Create the Job; True when this call created it, False when it already existed."""
        meta = run["metadata"]
        body = job_manifest(meta["name"], meta["namespace"], spec, action, self.settings)
        body["metadata"]["ownerReferences"] = [owner_reference(meta["name"], meta["uid"])]
        try:
            self.batch.create_namespaced_job(meta["namespace"], cast(Any, body))
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        self.jobs_created.append(f"{meta['namespace']}/{action.name}")
        if self.metrics is not None:
            self.metrics.job_created(meta["namespace"], action.stage)
        log.info("created Job %s/%s", meta["namespace"], action.name)
        return True

    def suspend_job(self, namespace: str, action: SuspendJob) -> None:
        patch = {
            "metadata": {
                "annotations": {ANNOTATION_SUSPENDED_BY_RUN: "true" if action.suspend else None}
            },
            "spec": {"suspend": action.suspend},
        }
        try:
            self.batch.patch_namespaced_job(action.name, namespace, patch)
        except ApiException as error:
            if error.status != 404:
                raise

    def delete_job(self, namespace: str, action: DeleteJob) -> None:
        """Delete the Job and, in the background, its pods; a Job already gone is fine."""
        try:
            self.batch.delete_namespaced_job(
                action.name, namespace, propagation_policy="Background"
            )
        except ApiException as error:
            if error.status != 404:
                raise
        log.info("deleted Job %s/%s", namespace, action.name)

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            run = cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL, name
                ),
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return run

    def write_status(self, run: dict[str, Any], status: dict[str, Any]) -> bool:
        """Replace the whole status (optimistic: against the run's resourceVersion). False on
        a conflict: the run changed meanwhile, and its event brings another pass."""
        meta = run["metadata"]
        body = {**run, "status": status}
        try:
            self.custom.replace_namespaced_custom_object_status(
                API_GROUP, API_VERSION, meta["namespace"], PLURAL, meta["name"], body
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    def emit(self, run: dict[str, Any], event: Event) -> None:
        meta = run["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{meta['name']}.{uuid.uuid4().hex[:12]}", namespace=meta["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=f"{API_GROUP}/{API_VERSION}",
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
            ),
            type=event.type,
            reason=event.reason,
            message=event.message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="synthpref-operator"),
            reporting_component="synthpref.dev/operator",
            reporting_instance="synthpref-operator",
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as error:  # an Event is best effort
            log.warning("cannot post Event %s on %s: %s", event.reason, meta["name"], error.status)


def _api_message(error: ApiException) -> str:
    """The API server's own words from an error's Status body (else its raw body)."""
    try:
        return str(json.loads(error.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.body or "")
