"""When a unit of work (a shard, a request file) started and how long it took, for its commit
marker.

Every stage puts `Stopwatch.record()` under `TIMING_KEY` in the commit info of what it commits,
so the run report (`synthpref.report`) shows the time of each stage wherever it ran: in a local
run or in a cluster Job's pods. No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

TIMING_KEY = "timing"


class Stopwatch:
    """Started on creation: wall-clock start (epoch seconds) and monotonic elapsed seconds."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self.started_at = clock()
        self._started = monotonic()

    def record(self) -> dict[str, float]:
        """`{"started_at": epoch seconds, "seconds": elapsed}`, rounded to milliseconds."""
        return span(self.started_at, self._monotonic() - self._started)


def span(started_at: float, seconds: float) -> dict[str, float]:
    """A timing record from a start time and a duration."""
    return {"started_at": round(started_at, 3), "seconds": round(max(seconds, 0.0), 3)}


def timing_of(info: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(started_at, seconds) from a commit info, or None when it holds no timing (a marker
    written before timings were recorded)."""
    if not info:
        return None
    record = info.get(TIMING_KEY)
    if not isinstance(record, Mapping):
        return None
    try:
        return float(record["started_at"]), float(record["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
