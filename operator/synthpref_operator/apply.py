"""Apply the planner's actions through the Kubernetes API, idempotently.

Called by `reconcile.Reconciler` after `planner.plan`. A pass creates its new Jobs together
(`create_jobs`), `create_concurrency` at once over the whole process (`--job-creations`), and
waits for them: a stage of twenty models is twenty Jobs, and one by one, each a round trip to a
busy API server, they made the hop between stages take seconds. (Not waiting was measured too:
with fifty runs starting stages together, the passes of every run then competed with the
creations at the API server and the hops took longer; `scripts/bench_operator.py`, README.)
A creation the API server throttles (429: more requests in flight than it takes) is sent again
by the client, as every request of the operator's is (`throttling`); only a 429 left after those
retries is a refusal. A creation the API server refuses neither stops the others nor fails the
pass: it is logged with the API server's reason (a warning when it starts or its reason changes; the
retries of later passes at debug), counted in `synthpref_reconcile_errors_total`, and kept
(`refusal`) for the pass to show on the run until the Job is created or no longer planned.
Creating a Job that exists (409) is success; a missing Job to suspend or delete is nothing to
do; the status is replaced through the status subresource; Events go to the run after the
status write.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from synthpref.spec import API_GROUP, API_VERSION, KIND, PreferenceRunSpec
from synthpref_operator.builders import job_manifest, owner_reference
from synthpref_operator.crd import PLURAL
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import ANNOTATION_SUSPENDED_BY_RUN
from synthpref_operator.planner import CreateJob, DeleteJob, Event, SuspendJob
from synthpref_operator.recent_jobs import RecentJobs
from synthpref_operator.settings import DEFAULT_JOB_CREATIONS, OperatorSettings

log = logging.getLogger(__name__)

JOBS_CREATED_KEPT = 10_000


class Applier:
    """The API calls of one operator process (thread-safe: the client is)."""

    def __init__(
        self,
        api_client: Any,
        settings: OperatorSettings,
        metrics: OperatorMetrics | None = None,
        create_concurrency: int = DEFAULT_JOB_CREATIONS,
    ) -> None:
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.settings = settings
        self.metrics = metrics
        self.create_concurrency = create_concurrency
        # The latest creations of this process, "namespace/job" (tests and logs read them).
        self.jobs_created: deque[str] = deque(maxlen=JOBS_CREATED_KEPT)
        self.recent = RecentJobs()
        self._creators: ThreadPoolExecutor | None = None
        self._creators_lock = threading.Lock()
        # Why the API server refused a run's Job, until the Job is created or no longer planned.
        self._refused: dict[tuple[str, str], dict[str, str]] = {}  # (namespace, run) -> Job -> why

    def create_jobs(
        self, run: dict[str, Any], spec: PreferenceRunSpec, actions: Sequence[CreateJob]
    ) -> None:
        """Create the Jobs, up to `create_concurrency` at once, and wait for them; what the API
        server refuses is recorded (`refusal`), not raised; any other error (the API server
        out of reach) is raised once every creation has ended. A Job this process created a
        moment ago is not sent again (`recent_jobs`: the pass's list may not show it yet)."""
        namespace = run["metadata"]["namespace"]
        actions = [a for a in actions if not self.recent.is_recent(namespace, a.name)]
        if len(actions) <= 1:
            for action in actions:
                self._create_recorded(run, spec, action)
            return
        # Each creation runs in a copy of this pass's context, so what it logs names the run.
        started = [
            self._pool().submit(
                contextvars.copy_context().run, self._create_recorded, run, spec, action
            )
            for action in actions
        ]
        errors = [error for future in started if (error := future.exception()) is not None]
        if errors:
            raise errors[0]

    def _create_recorded(
        self, run: dict[str, Any], spec: PreferenceRunSpec, action: CreateJob
    ) -> None:
        meta = run["metadata"]
        run_key = (meta["namespace"], meta["name"])
        try:
            self.create_job(run, spec, action)
        except ApiException as error:  # the others go on; the pass shows it, the next retries
            refusal = f"{error.status} {error.reason}: {_api_message(error)}"
            with self._creators_lock:
                refused = self._refused.setdefault(run_key, {})
                repeated = refused.get(action.name) == refusal
                refused[action.name] = refusal
            # Retried each pass while it lasts: a warning when it starts or its reason changes.
            log.log(
                logging.DEBUG if repeated else logging.WARNING,
                "cannot create Job %s/%s: %s",
                meta["namespace"],
                action.name,
                refusal,
            )
            if self.metrics is not None:
                self.metrics.reconcile_failed(meta["namespace"])
            return
        with self._creators_lock:
            self._refused.get(run_key, {}).pop(action.name, None)

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
        """The run is gone: drop its refusals and its recent creations."""
        with self._creators_lock:
            self._refused.pop((namespace, run), None)
        self.recent.forget_run(namespace, run)

    def close(self) -> None:
        """Stop the pool (after the creations in flight)."""
        with self._creators_lock:
            pool, self._creators = self._creators, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _pool(self) -> ThreadPoolExecutor:
        with self._creators_lock:
            if self._creators is None:
                self._creators = ThreadPoolExecutor(self.create_concurrency, "create-job")
            return self._creators

    def create_job(self, run: dict[str, Any], spec: PreferenceRunSpec, action: CreateJob) -> bool:
        """Create the Job; True when this call created it, False when it already existed."""
        meta = run["metadata"]
        body = job_manifest(meta["name"], meta["namespace"], spec, action, self.settings)
        body["metadata"]["ownerReferences"] = [owner_reference(meta["name"], meta["uid"])]
        try:
            # The API server's copy of the Job is not needed; left unread into the client's
            # models, a creation cost 1.24 ms of this process's CPU instead of 1.75 (1,000
            # Jobs, 8 at once, against the test control plane).
            reply: Any = self.batch.create_namespaced_job(
                meta["namespace"], cast(Any, body), _preload_content=False
            )  # urllib3's response, unread
            reply.drain_conn()  # back to the pool
        except ApiException as error:
            if error.status == 409:
                self.recent.created(meta["namespace"], meta["name"], action.name)
                return False
            raise
        self.recent.created(meta["namespace"], meta["name"], action.name)
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
        self.recent.deleted(namespace, action.name)  # the next pass creates it afresh
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
