"""The operator's Prometheus metrics and its HTTP endpoints (/metrics, /healthz, /readyz).

`OperatorMetrics` owns a private registry: counters and a histogram that the reconcile pass and
the applier update (`reconcile.Reconciler`, `apply.Applier`), the requests the operator makes of
storage and of the API server (counted by hooks on the clients: `count_storage_requests`,
`count_api_requests`), `RunStatusCollector`, which
keeps the last `RunStatus` of each run (and its spec's judge budget) and turns it into gauges at
scrape time (runs per phase, conditions, stage timings, shard and judge progress, the judge's
cost and budget, its endpoint's outage), and prometheus_client's process and platform
collectors (`process_resident_memory_bytes`, `python_info`). `serve` runs a threaded HTTP server
for them.
Everything here is thread-safe: reconcile passes run in kopf's worker threads.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from synthpref.spec import JudgeBudget
from synthpref_operator.names import Stage
from synthpref_operator.status import (
    ConditionStatus,
    ConditionType,
    Phase,
    Reason,
    RunStatus,
)
from synthpref_operator.throttling import THROTTLED_RETRIES

log = logging.getLogger(__name__)

# Stages in the order they run, with the condition that turns True when each is done.
STAGE_CONDITIONS = (
    (Stage.PREPARE, ConditionType.PREPARED),
    (Stage.GENERATE, ConditionType.GENERATED),
    (Stage.MIX, ConditionType.MIXED),
    (Stage.JUDGE, ConditionType.ANNOTATED),
    (Stage.PARSE, ConditionType.PARSED),
)
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_RUN = ("namespace", "run")
_Family = GaugeMetricFamily | CounterMetricFamily


def _seconds(stamp: str | None) -> float | None:
    """An RFC 3339 status time as a Unix time (None when absent or malformed)."""
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def run_duration(status: RunStatus, now: float) -> float | None:
    """Seconds from the run's start to its completion (or to `now` while it is not done)."""
    start = _seconds(status.start_time)
    if start is None:
        return None
    end = _seconds(status.completion_time) or now
    return max(0.0, end - start)


def stage_durations(status: RunStatus, now: float) -> dict[Stage, float]:
    """Seconds each stage took, from the stage conditions.

    Stages run one after another, so a stage starts when the one before it is done (the first
    when the run starts) and is done at its condition's lastTransitionTime to True. The stage
    in progress counts up to the run's completion time, or `now` while the run goes on.
    """
    begin = _seconds(status.start_time)
    end_of_run = _seconds(status.completion_time) or now
    durations: dict[Stage, float] = {}
    for stage, kind in STAGE_CONDITIONS:
        condition = status.condition(kind)
        if begin is None or condition is None:
            break
        if condition.status is ConditionStatus.TRUE:
            done = _seconds(condition.last_transition_time)
            if done is None:
                break
            durations[stage] = max(0.0, done - begin)
            begin = done
        else:
            if condition.reason is Reason.IN_PROGRESS:
                durations[stage] = max(0.0, end_of_run - begin)
            break
    return durations


class RunStatusCollector:
    """The last status of each run, exported as gauges when Prometheus scrapes."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, str], RunStatus] = {}
        self._budgets: dict[tuple[str, str], JudgeBudget] = {}

    def observe(self, namespace: str, name: str, status: RunStatus) -> None:
        with self._lock:
            self._runs[(namespace, name)] = status

    def observe_budget(self, namespace: str, name: str, budget: JudgeBudget | None) -> None:
        """The run's spec.judge.budget (None: it has none), exported with its status."""
        with self._lock:
            if budget is None:
                self._budgets.pop((namespace, name), None)
            else:
                self._budgets[(namespace, name)] = budget

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._runs.pop((namespace, name), None)
            self._budgets.pop((namespace, name), None)

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            runs = sorted(self._runs.items())
            budgets = dict(self._budgets)
        families = self._families()
        now = self._clock()
        phases = dict.fromkeys(Phase, 0)
        for (namespace, name), status in runs:
            phases[status.phase] += 1
            self._add_run(families, namespace, name, status, now)
            budget = budgets.get((namespace, name))
            if budget is not None:
                self._add_budget(families, [namespace, name], budget)
        for phase, count in phases.items():
            families["runs"].add_metric([phase.value], count)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, _Family]:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        return {
            "runs": gauge("synthpref_runs", "PreferenceRuns by phase.", labels=["phase"]),
            "phase": gauge(
                "synthpref_run_phase",
                "1 for the phase each PreferenceRun is in.",
                labels=[*_RUN, "phase"],
            ),
            "condition": gauge(
                "synthpref_run_condition",
                "1 for each condition of a PreferenceRun's status, with its status (True, False, "
                "Unknown) and reason (e.g. Blocked True SecretNotFound, Admitted False "
                "EndpointNotAllowed, BudgetExhausted True).",
                labels=[*_RUN, "type", "status", "reason"],
            ),
            "duration": gauge(
                "synthpref_run_duration_seconds",
                "Seconds from a run's start to its completion (so far, while it runs).",
                labels=_RUN,
            ),
            "stage": gauge(
                "synthpref_run_stage_duration_seconds",
                "Seconds each stage took (so far, for the stage in progress).",
                labels=[*_RUN, "stage"],
            ),
            "shards": gauge(
                "synthpref_run_shards", "Prompt shards of a run (0 before prepare).", labels=_RUN
            ),
            "stage_shards": gauge(
                "synthpref_stage_shards_done",
                "Committed shards of the mix, judge and parse stages.",
                labels=[*_RUN, "stage"],
            ),
            "model_done": gauge(
                "synthpref_generation_shards_done",
                "Committed answer shards per model.",
                labels=[*_RUN, "model"],
            ),
            "model_total": gauge(
                "synthpref_generation_shards", "Prompt shards per model.", labels=[*_RUN, "model"]
            ),
            "batches": gauge(
                "synthpref_judge_batches",
                "Judge request files by ledger phase (openai judge).",
                labels=[*_RUN, "status"],
            ),
            "requests": gauge(
                "synthpref_judge_requests",
                "Judge requests answered (done) or failed for good (failed).",
                labels=[*_RUN, "outcome"],
            ),
            "tokens": counter(
                "synthpref_judge_tokens", "Tokens the judge used (openai judge).", labels=_RUN
            ),
            "cost": gauge(
                "synthpref_judge_cost_usd",
                "US dollars of the tokens the judge used, at Batch API prices (openai judge; "
                "absent without a price).",
                labels=_RUN,
            ),
            "failing": gauge(
                "synthpref_judge_endpoint_failing_since_seconds",
                "Unix time since when every call to the run's judge endpoint has failed; absent "
                "while it answers (after judge.giveUpAfterSeconds the run fails).",
                labels=_RUN,
            ),
            "budget_usd": gauge(
                "synthpref_judge_budget_usd",
                "The judge's spending cap in US dollars (spec.judge.budget.maxUsd; absent "
                "without one).",
                labels=_RUN,
            ),
            "budget_tokens": gauge(
                "synthpref_judge_budget_tokens",
                "The judge's cap in tokens (spec.judge.budget.maxTokens; absent without one).",
                labels=_RUN,
            ),
        }

    @staticmethod
    def _add_run(
        families: dict[str, _Family], namespace: str, name: str, status: RunStatus, now: float
    ) -> None:
        run = [namespace, name]
        families["phase"].add_metric([*run, status.phase.value], 1)
        for condition in status.conditions:
            families["condition"].add_metric(
                [*run, condition.type.value, condition.status.value, condition.reason.value], 1
            )
        duration = run_duration(status, now)
        if duration is not None:
            families["duration"].add_metric(run, duration)
        for stage, seconds in stage_durations(status, now).items():
            families["stage"].add_metric([*run, stage.value], seconds)
        progress = status.stages
        families["shards"].add_metric(run, progress.shards)
        for stage, done in (
            (Stage.MIX, progress.mix_shards_done),
            (Stage.JUDGE, progress.judge_shards_done),
            (Stage.PARSE, progress.parse_shards_done),
        ):
            families["stage_shards"].add_metric([*run, stage.value], done)
        for model in progress.models:
            families["model_done"].add_metric([*run, model.name], model.shards_done)
            families["model_total"].add_metric([*run, model.name], model.shards_total)
        judge = progress.judge
        if judge is None:
            return
        for phase, count in sorted(judge.batches_by_status.items()):
            families["batches"].add_metric([*run, phase], count)
        families["requests"].add_metric([*run, "done"], judge.requests_done)
        families["requests"].add_metric([*run, "failed"], judge.requests_failed)
        families["tokens"].add_metric(run, judge.tokens_used)
        if judge.cost_usd is not None:
            families["cost"].add_metric(run, judge.cost_usd)
        failing_since = _seconds(judge.endpoint_failing_since)
        if failing_since is not None:
            families["failing"].add_metric(run, failing_since)

    @staticmethod
    def _add_budget(families: dict[str, _Family], run: list[str], budget: JudgeBudget) -> None:
        if budget.max_usd is not None:
            families["budget_usd"].add_metric(run, budget.max_usd)
        if budget.max_tokens is not None:
            families["budget_tokens"].add_metric(run, budget.max_tokens)


class OperatorMetrics:
    """The metrics of one operator process, in a registry of their own."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.jobs_created = Counter(
            "synthpref_jobs_created",
            "Jobs the operator created, by stage.",
            ["namespace", "stage"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "synthpref_reconcile_errors",
            "Reconcile passes that raised an error, and Job creations the API server refused.",
            ["namespace"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "synthpref_reconcile_duration_seconds",
            "Duration of reconcile passes.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_passes = Counter(
            "synthpref_reconcile_passes",
            "Reconcile passes, by what asked for them (event: the run changed, job: one of its "
            "Jobs changed, timer, catalog: its ModelCatalog changed, again: a follow-up pass).",
            ["trigger"],
            registry=self.registry,
        )
        self.run_events_ignored = Counter(
            "synthpref_run_events_ignored",
            "PreferenceRun watch events that asked for no pass (nothing a pass reads changed, "
            "e.g. the operator's own progress writes).",
            registry=self.registry,
        )
        self.storage_requests = Counter(
            "synthpref_storage_requests",
            "HTTP requests the operator sent to run storage (S3), by operation: LIST, GET, "
            "HEAD, PUT, POST, DELETE (retries included).",
            ["operation"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "synthpref_api_requests",
            "Requests of the reconcile passes to the Kubernetes API server, by HTTP method "
            "(kopf's own watches not included).",
            ["method"],
            registry=self.registry,
        )
        self.api_throttled = Counter(
            "synthpref_api_throttled",
            "Answers 429 (Too Many Requests) of the Kubernetes API server to the operator's "
            "requests, by HTTP method; each throttled request is sent again after its "
            f"Retry-After, up to {THROTTLED_RETRIES} times.",
            ["method"],
            registry=self.registry,
        )
        self.runs = RunStatusCollector(clock)
        self.registry.register(self.runs)
        # process_resident_memory_bytes, process_cpu_seconds_total, ... (from /proc: Linux
        # only) and python_info.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def job_created(self, namespace: str, stage: Stage) -> None:
        self.jobs_created.labels(namespace=namespace, stage=stage.value).inc()

    def count_storage_requests(self, client: Any) -> None:
        """Count every HTTP request a boto3 S3 `client` sends (`synthpref_storage_requests`)."""

        def on_send(request: Any, event_name: str = "", **_: Any) -> None:
            operation = event_name.rsplit(".", 1)[-1]
            verb = "LIST" if operation.startswith("List") else str(request.method).upper()
            self.storage_requests.labels(operation=verb).inc()

        client.meta.events.register("before-send.s3", on_send)

    def count_api_requests(self, api_client: Any) -> None:
        """Count every request a `kubernetes.client.ApiClient` sends (`synthpref_api_requests`)."""
        rest = api_client.rest_client
        send = rest.request

        def request(method: str, *args: Any, **kwargs: Any) -> Any:
            self.api_requests.labels(method=method.upper()).inc()
            return send(method, *args, **kwargs)

        rest.request = request

    def count_throttled(self, method: str) -> None:
        """One 429 answer of the API server (`throttling.ThrottledRetry` calls it)."""
        self.api_throttled.labels(method=method).inc()

    def reconcile_failed(self, namespace: str) -> None:
        self.reconcile_errors.labels(namespace=namespace).inc()

    def observe_run(self, namespace: str, name: str, status: RunStatus) -> None:
        """Record the status a reconcile pass computed (exported at the next scrape)."""
        self.runs.observe(namespace, name, status)

    def observe_budget(self, namespace: str, name: str, budget: JudgeBudget | None) -> None:
        """Record the run's spec.judge.budget (each pass that reads a valid spec): exported
        with the run's status, as `synthpref_judge_budget_usd` and `_tokens`."""
        self.runs.observe_budget(namespace, name, budget)

    def forget_run(self, namespace: str, name: str) -> None:
        """Stop exporting a run (it was deleted)."""
        self.runs.forget(namespace, name)


# ------------------------------------------------------------------ HTTP

_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Access lines (probes every few seconds) only at debug level."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _check(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:
        log.exception("health probe raised")
        return False


def metrics_app(
    metrics: OperatorMetrics, healthy: Callable[[], bool], ready: Callable[[], bool]
) -> Callable[[_Environ, _StartResponse], Iterable[bytes]]:
    """The WSGI app: GET /metrics, /healthz and /readyz (200 ok, else 503)."""
    exposition = make_wsgi_app(metrics.registry)
    probes = {"/healthz": healthy, "/readyz": ready}

    def app(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"method not allowed\n")
        if path == "/metrics":
            body: Iterable[bytes] = exposition(environ, start_response)
            return body
        probe = probes.get(path)
        if probe is None:
            return _reply(start_response, "404 Not Found", b"not found\n")
        if _check(probe):
            return _reply(start_response, "200 OK", b"ok\n")
        return _reply(start_response, "503 Service Unavailable", b"unavailable\n")

    return app


def _reply(start_response: _StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body]


class MetricsServer:
    """A running HTTP server: its bound `port`, and `shutdown()`."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def shutdown(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def serve(
    metrics: OperatorMetrics,
    host: str,
    port: int,
    healthy: Callable[[], bool],
    ready: Callable[[], bool],
) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz on host:port (0: a free port) in a daemon thread."""
    server = make_server(
        host,
        port,
        metrics_app(metrics, healthy, ready),
        server_class=_Server6 if ":" in host else _Server,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="synthpref-metrics", daemon=True)
    thread.start()
    log.debug("serving /metrics, /healthz and /readyz on %s:%d", host, server.server_address[1])
    return MetricsServer(server, thread)
