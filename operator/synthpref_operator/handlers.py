"""The kopf operator: thin handlers that hand every trigger to one reconcile pass.

`build_registry` registers, for PreferenceRuns: an event handler and a timer (`interval`) that
both call `Reconciler.request` (the event handler only when something a pass reads changed, and
the timer only while the run is not done: `triggers.py`), and a delete handler (behind a finalizer)
that cancels in-flight judge batches per `spec.deletionPolicy`, keeping the finalizer and
retrying with backoff while they cannot be cancelled (see `deletion.py`); for the operator's
Jobs: an event handler that reconciles the owning run; for ModelCatalogs: an event handler that
reconciles the runs naming the catalog (a held run resolves, a started one gets its
`CatalogChanged` Event). Handlers are sync, so kopf runs them in worker threads and the event
loop never blocks; `OperatorConfig.workers` sizes that thread pool and the API client's
connection pool (each pass holds a thread while it waits on the API server and storage, so
the pool bounds how many runs make progress at once). kopf keeps its own bookkeeping in
`synthpref.dev` annotations; the run's status is written only by the reconcile pass.
`OperatorThread` runs the kopf operator in a thread: `synthpref operator run` (see
`service.py`) and the tests both use it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from synthpref.logs import run_context
from synthpref.spec import API_GROUP, API_VERSION
from synthpref_operator.artifact_memory import RELIST_SECONDS
from synthpref_operator.crd import CATALOG_PLURAL, PLURAL
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import FINALIZER, LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY
from synthpref_operator.reconcile import Reconciler
from synthpref_operator.settings import DEFAULT_JOB_CREATIONS, DEFAULT_WORKERS, OperatorSettings
from synthpref_operator.throttling import OnThrottled, api_retries
from synthpref_operator.triggers import RunEventFilter, settled

log = logging.getLogger(__name__)


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)
    cluster_wide: bool = False
    kubeconfig: str | None = None
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    interval: float = 10.0
    metrics: OperatorMetrics | None = None
    workers: int = DEFAULT_WORKERS
    # Job creations in flight at once, over all runs (`apply.Applier.create_jobs`).
    job_creations: int = DEFAULT_JOB_CREATIONS
    # Seconds between full looks at a busy run's storage (between them, only the parts whose
    # stage Job changed are listed: `artifact_memory.py`).
    relist_seconds: float = RELIST_SECONDS


def _client_configuration(kubeconfig: str | None, on_throttled: OnThrottled | None = None) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    # A request the API server throttles is sent again (`on_throttled` hears of each 429).
    configuration.retries = api_retries(on_throttled)
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except config.ConfigException:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    return configuration


def _connection_info(configuration: Any) -> kopf.ConnectionInfo:
    token = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get(
        "BearerToken"
    )
    scheme = None
    if token:
        scheme, _, token = token.partition(" ") if " " in token else ("Bearer", "", token)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme=scheme,
        token=token or None,
    )


def kopf_settings(workers: int = DEFAULT_WORKERS) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Sync handlers run in this pool (asyncio's default: min(32, cpus + 4) threads).
    settings.execution.max_workers = workers
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # Events are ours (apply.Applier.emit)
    settings.watching.server_timeout = 60
    # Least privilege: no list/watch on namespaces and CRDs cluster-wide. The namespaces are
    # named exactly (no globs) and the CRD exists before the operator starts (Helm installs
    # crds/ first); kopf finds the resources once, by API discovery, at startup.
    settings.scanning.disabled = True
    # A run deleted while its timer pass is in flight: kopf re-checks the timer this often
    # before it releases the finalizer (its default, 60 s, held deletions for a minute).
    settings.background.cancellation_polling = 1.0
    return settings


def api_client_for(kubeconfig: str | None) -> Any:
    """A `kubernetes.client.ApiClient`: the kubeconfig, else in-cluster, else $KUBECONFIG."""
    from kubernetes import client

    return client.ApiClient(_client_configuration(kubeconfig))


def passes_api_client(config: OperatorConfig) -> Any:
    """The `kubernetes.client.ApiClient` of the reconcile passes: a connection per pass in
    flight and per Job creation (`apply.Applier.create_jobs`), its requests and the API
    server's 429s counted in `config.metrics`."""
    from kubernetes import client

    on_throttled = config.metrics.count_throttled if config.metrics is not None else None
    configuration = _client_configuration(config.kubeconfig, on_throttled)
    configuration.connection_pool_maxsize = config.workers + config.job_creations
    api_client = client.ApiClient(configuration)
    if config.metrics is not None:
        config.metrics.count_api_requests(api_client)
    return api_client


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """The handlers of one operator process."""
    registry = kopf.OperatorRegistry()
    api_client = passes_api_client(config)
    # kopf logs in with the same credentials (for in-cluster ones, refreshed as they are used).
    configuration = api_client.configuration
    reconciler = Reconciler(
        api_client, config.settings, config.metrics, config.relist_seconds, config.job_creations
    )
    events = RunEventFilter()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return _connection_info(configuration)

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    def run_changed(
        *, name: str, namespace: str | None, type: str, body: kopf.Body, **_: Any
    ) -> None:
        if not namespace:
            return
        if type == "DELETED":
            events.forget(namespace, name)
            reconciler.forget(namespace, name)
        elif events.wants_pass(namespace, name, body):
            reconciler.request(namespace, name, "event")
        elif config.metrics is not None:
            config.metrics.run_events_ignored.inc()

    def working(body: kopf.Body, **_: Any) -> bool:
        return not settled(body)

    @kopf.timer(
        API_GROUP,
        API_VERSION,
        PLURAL,
        interval=config.interval,
        when=working,
        registry=registry,
    )
    def run_tick(*, name: str, namespace: str | None, **_: Any) -> None:
        if namespace:
            reconciler.request(namespace, name, "timer")

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)
    def job_changed(
        *, labels: Mapping[str, str], namespace: str | None, type: str, **_: Any
    ) -> None:
        run = labels.get(LABEL_RUN)
        if run and namespace and type != "DELETED":
            reconciler.request(namespace, run, "job")

    @kopf.on.event(API_GROUP, API_VERSION, CATALOG_PLURAL, registry=registry)
    def catalog_changed(*, name: str, namespace: str | None, type: str, **_: Any) -> None:
        if type == "DELETED" or not namespace:
            return
        for run in reconciler.runs_using_catalog(namespace, name):
            reconciler.request(namespace, run, "catalog")

    @kopf.on.delete(API_GROUP, API_VERSION, PLURAL, registry=registry)
    def run_deleted(
        *, name: str, namespace: str | None, body: kopf.Body, retry: int, **_: Any
    ) -> None:
        if not namespace:
            return
        if config.metrics is not None:
            config.metrics.forget_run(namespace, name)
        with run_context(namespace, name):
            step = reconciler.finish_deletion(dict(body), retry)
        if step.retry_after is not None:  # the finalizer stays; kopf calls again after it
            raise kopf.TemporaryError(step.log, delay=step.retry_after)

    registry.reconciler = reconciler  # type: ignore[attr-defined]
    return registry


# kopf's logger that says it cannot install signal handlers outside the main thread.
KOPF_RUNNING_LOGGER = "kopf._core.reactor.running"
THREAD_SIGNALS_WARNING = "OS signals are ignored: running not in the main thread"


class _SignalsHandledByTheProcess(logging.Filter):
    """kopf installs its SIGTERM/SIGINT handlers only when it runs in the main thread, and
    warns `OS signals are ignored: running not in the main thread.` otherwise; it has no flag
    to say that someone else handles them. Here someone does: `service.run_service` installs
    the handlers in the main thread and stops kopf through `OperatorThread`'s stop flag (and
    tests stop it the same way). So that one warning is wrong for this process and is dropped;
    every other record of kopf's passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(THREAD_SIGNALS_WARNING)


def quiet_thread_signals_warning() -> None:
    """Drop kopf's thread-signals warning (once per process; see the filter's doc)."""
    logger = logging.getLogger(KOPF_RUNNING_LOGGER)
    if not any(isinstance(f, _SignalsHandledByTheProcess) for f in logger.filters):
        logger.addFilter(_SignalsHandledByTheProcess())


class OperatorThread:
    """The operator in a thread of this process (tests): `start()`, then `stop()`. Signals are
    the caller's to handle (`service.run_service`); `stop()` stops kopf."""

    def __init__(self, config: OperatorConfig) -> None:
        quiet_thread_signals_warning()
        self.config = config
        self.registry = build_registry(config)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="synthpref-operator", daemon=True)
        self.error: BaseException | None = None

    @property
    def reconciler(self) -> Reconciler:
        reconciler: Reconciler = self.registry.reconciler  # type: ignore[attr-defined]
        return reconciler

    def _main(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    settings=kopf_settings(self.config.workers),
                    standalone=True,
                    clusterwide=self.config.cluster_wide,
                    namespaces=self.config.namespaces,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as error:
            self.error = error

    @property
    def ready(self) -> bool:
        """kopf has started its watches."""
        return self._ready.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def start(self, timeout: float = 30.0) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"operator did not start: {self.error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.reconciler.applier.close()  # no Job creation outlives the operator
