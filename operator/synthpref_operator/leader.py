"""Leader election over a `coordination.k8s.io` Lease, so that of several replicas one acts.

`Candidate.run` blocks: it waits until this process holds the Lease (the Kubernetes client's
`leaderelection` package does the acquire/renew protocol), then calls `on_started` in a thread
while it keeps renewing. When a renewal fails for `renew_deadline` seconds, or `on_started`
raises, it calls `on_stopped`, after which the process must stop acting (the CLI exits 1 and
the Deployment restarts the pod as a follower). `release` gives the Lease up at a clean
shutdown so that a standby replica takes over within `retry_period` instead of waiting for the
Lease to expire.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease, who we are, and the timing (seconds, whole numbers as the library wants)."""

    name: str
    namespace: str
    identity: str
    lease_duration: int = 15
    renew_deadline: int = 10
    retry_period: int = 2

    def problems(self) -> list[str]:
        """What is wrong with the timing (the library would `sys.exit` on it)."""
        out = []
        if self.retry_period < 1:
            out.append("retry period must be at least 1 s")
        if self.renew_deadline <= 1.2 * self.retry_period:
            out.append("renew deadline must be more than 1.2 x the retry period")
        if self.lease_duration <= self.renew_deadline:
            out.append("lease duration must be more than the renew deadline")
        return out


class Candidate:
    """One process's part in the election for `config.name`."""

    def __init__(self, api_client: Any, config: LeaseConfig) -> None:
        from kubernetes import client
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        self.config = config
        self.leading = threading.Event()
        self._lock = LeaseLock(config.name, config.namespace, config.identity)  # type: ignore[no-untyped-call]
        # LeaseLock builds its API object from the default configuration; use ours.
        self._lock.api_instance = client.CoordinationV1Api(api_client)
        self._coordination = self._lock.api_instance

    def run(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        """Wait for the Lease, lead until it is lost, then call `on_stopped` (blocks)."""
        from kubernetes.leaderelection import electionconfig, leaderelection

        def started() -> None:
            self.leading.set()
            log.info("leading: holding Lease %s/%s", self.config.namespace, self.config.name)
            on_started()

        def stopped() -> None:
            self.leading.clear()
            log.info("stopped leading: Lease %s/%s", self.config.namespace, self.config.name)
            on_stopped()

        log.info(
            "waiting to lead: Lease %s/%s as %s",
            self.config.namespace,
            self.config.name,
            self.config.identity,
        )
        election = electionconfig.Config(  # type: ignore[no-untyped-call]
            self._lock,
            self.config.lease_duration,
            self.config.renew_deadline,
            self.config.retry_period,
            started,
            stopped,
        )
        leaderelection.LeaderElection(election).run()  # type: ignore[no-untyped-call]

    def release(self) -> bool:
        """Give the Lease up if we hold it (best effort; call after `run` returned)."""
        from kubernetes.client import ApiException

        self.leading.clear()
        try:
            lease = self._coordination.read_namespaced_lease(
                self.config.name, self.config.namespace
            )
            if lease.spec is None or lease.spec.holder_identity != self.config.identity:
                return False
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self._coordination.replace_namespaced_lease(
                self.config.name, self.config.namespace, lease
            )
        except ApiException as error:
            log.warning("could not release Lease %s: %s", self.config.name, error.status)
            return False
        log.info("released Lease %s/%s", self.config.namespace, self.config.name)
        return True
