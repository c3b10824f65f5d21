"""The Jobs this operator process created a moment ago, which the API server's cache may not
show yet.

A pass lists a run's Jobs from the API server's watch cache (`observe._items`), which lags
etcd, by seconds during a burst of creations. A Job created by one pass and missing from the
next pass's list was planned and sent again, and the API server answered 409 (it exists): in
the 50-run benchmark 795 of 1,995 creations were such repeats, each a full request through
admission. `RecentJobs` holds each created (or found existing) Job for `RECENT_SECONDS`, and
the applier does not send those again; a Job this process deletes (a retry) or a run that is
gone is forgotten at once, and after the window a Job still missing from the lists is created
again as before (someone deleted it). Pure: the clock is given; thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RECENT_SECONDS = 60.0


class RecentJobs:
    """(namespace, Job) -> (run, when created), oldest first."""

    def __init__(
        self, seconds: float = RECENT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._created: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def created(self, namespace: str, run: str, job: str) -> None:
        """The Job exists: this process created it, or its creation found it there."""
        with self._lock:
            self._created.pop((namespace, job), None)  # re-inserted last: the order is by time
            self._created[(namespace, job)] = (run, self._clock())

    def is_recent(self, namespace: str, job: str) -> bool:
        """Whether the Job was created within the window (so a list without it is stale)."""
        with self._lock:
            self._expire()
            return (namespace, job) in self._created

    def deleted(self, namespace: str, job: str) -> None:
        with self._lock:
            self._created.pop((namespace, job), None)

    def forget_run(self, namespace: str, run: str) -> None:
        with self._lock:
            for key, (owner, _) in list(self._created.items()):
                if key[0] == namespace and owner == run:
                    del self._created[key]

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._created)

    def _expire(self) -> None:
        oldest = self._clock() - self.seconds
        while self._created:
            key, (_, when) = next(iter(self._created.items()))
            if when > oldest:
                return
            del self._created[key]
