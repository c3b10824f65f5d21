"""The operator as a long-running process: what `synthpref operator run` starts.

It configures logging, serves /metrics, /healthz and /readyz, and runs the kopf operator
(`handlers.OperatorThread`) either at once or, with leader election, only while this replica
holds the Lease (`leader.Candidate`). SIGTERM/SIGINT stop it cleanly: kopf stops, the Lease is
released so a standby takes over at once, and the process exits 0. Losing the Lease, or kopf
dying, exits 1 so that the Deployment restarts the pod (as a follower).

Before anything, `preflight` checks the credentials, the API server and the CRD; these, and a
metrics port in use, fail with one `Error:` line (`OperatorStartError`), not a traceback.

Health: /healthz fails when the operator thread should run but has died. /readyz is ready when
this replica leads and kopf has started its watches, or when it is a healthy standby.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType

from synthpref.logs import LogFormat, configure_logging
from synthpref_operator.handlers import OperatorConfig, OperatorThread, api_client_for
from synthpref_operator.leader import Candidate, LeaseConfig
from synthpref_operator.malloc_arenas import limit_malloc_arenas
from synthpref_operator.metrics import OperatorMetrics, serve
from synthpref_operator.preflight import OperatorStartError, preflight

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_LOST = 1


@dataclass(frozen=True)
class ServiceConfig:
    """Process-level options (the CLI's flags besides the operator's own)."""

    log_level: str = "info"
    log_format: LogFormat = "text"
    metrics_host: str = "0.0.0.0"  # a pod serves its probes on all interfaces
    metrics_port: int = 8080
    lease: LeaseConfig | None = None  # None: no leader election, act at once


class _StopRequested(Exception):  # noqa: N818 - control flow, not an error
    """Raised by `_Process.lead` when asked to stop."""


class _HideStopping(logging.Filter):
    """The election library logs our `_StopRequested` with a traceback; a clean stop is no error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _StopRequested))


class _Process:
    def __init__(self, operator: OperatorConfig, service: ServiceConfig) -> None:
        self.operator_config = operator
        self.metrics = operator.metrics or OperatorMetrics()
        operator.metrics = self.metrics  # the reconcile passes count into what /metrics serves
        self.service = service
        self.stop = threading.Event()
        self.shutdown = threading.Event()  # asked to stop (a signal), as opposed to lost
        self.lost = threading.Event()
        self.thread: OperatorThread | None = None
        self.candidate: Candidate | None = None

    # ---- health

    def acting(self) -> bool:
        return self.candidate is None or self.candidate.leading.is_set()

    def healthy(self) -> bool:
        if self.lost.is_set():
            return False
        if not self.acting():
            return True  # a standby is healthy while it waits for the Lease
        return self.thread is None or self.thread.is_alive()

    def ready(self) -> bool:
        if not self.acting():
            return not self.lost.is_set()
        return self.thread is not None and self.thread.ready and self.thread.is_alive()

    # ---- the operator while acting

    def lead(self) -> None:
        """Run kopf until stopped. Always ends by raising, which makes the candidate stop
        renewing the Lease (returning would keep it renewed with nobody acting)."""
        self.thread = OperatorThread(self.operator_config).start()
        while not self.stop.is_set():
            self.thread.join(0.5)
            if not self.thread.is_alive() and not self.stop.is_set():
                raise RuntimeError(f"the operator stopped: {self.thread.error!r}")
        raise _StopRequested("stopping")  # `main` stops the operator thread

    def on_lost(self) -> None:
        if not self.shutdown.is_set():
            log.error("lost the Lease or the operator: exiting so that the pod restarts")
            self.lost.set()
        self.stop.set()

    def request_stop(self) -> None:
        self.shutdown.set()
        self.stop.set()

    def main(self) -> int:
        config = self.service
        server = None
        if config.metrics_port:
            try:
                server = serve(
                    self.metrics,
                    config.metrics_host,
                    config.metrics_port,
                    healthy=self.healthy,
                    ready=self.ready,
                )
            except OSError as error:
                raise OperatorStartError(
                    f"cannot serve /metrics on {config.metrics_host}:{config.metrics_port} "
                    f"({error.strerror or error}): another process uses the port; stop it, or "
                    "pass --metrics-port with a free port (0: any free port)"
                ) from None
            log.info("serving /metrics, /healthz, /readyz on port %d", server.port)
        if config.lease is None:
            worker = threading.Thread(target=self._lead_quietly, name="lead", daemon=True)
        else:
            self.candidate = Candidate(
                api_client_for(self.operator_config.kubeconfig), config.lease
            )
            worker = threading.Thread(
                target=self.candidate.run,
                args=(self.lead, self.on_lost),
                name="leader-election",
                daemon=True,
            )
        worker.start()
        self.stop.wait()
        if self.thread is not None:
            self.thread.stop()
        if self.candidate is not None:
            # Let the candidate see the operator stop and quit renewing, then hand over.
            worker.join(
                self.candidate.config.renew_deadline + 2 * self.candidate.config.retry_period
            )
            if not self.lost.is_set():
                self.candidate.release()
        if server is not None:
            server.shutdown()
        return EXIT_LOST if self.lost.is_set() else EXIT_OK

    def _lead_quietly(self) -> None:
        try:
            self.lead()
        except _StopRequested:
            pass
        except Exception as error:
            log.error("%s", error)
            self.on_lost()


def run_service(operator: OperatorConfig, service: ServiceConfig) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until the Lease or the operator is lost (exit 1)."""
    limit_malloc_arenas()  # before any thread starts
    configure_logging(service.log_level, service.log_format)
    election_log = logging.getLogger("leaderelection")
    election_log.setLevel(logging.WARNING)  # it logs every retry at INFO
    election_log.addFilter(_HideStopping())
    preflight(operator.kubeconfig)
    process = _Process(operator, service)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        process.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "synthpref operator starting: %s",
        "all namespaces"
        if operator.cluster_wide
        else "namespaces " + ", ".join(operator.namespaces),
    )
    return process.main()
