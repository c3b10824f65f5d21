"""Which PreferenceRun watch events and timer ticks need a reconcile pass; pure.

Called by the kopf handlers (`handlers.py`). Every write of a run's status is also a watch
event; most of those writes only move progress counters (a Job's succeeded count, judge
progress), which the next pass recomputes from the cluster and storage anyway. So a run event
asks for a pass only when something a pass reads from the run changed since the last event this
process saw of it (`RunFacts`), or the run is new to this process: its spec (generation), the
annotations it acts on (retry, skip-batch-cancel), its deletion, and the gist of its status
(phase, conditions, observed generation, retry token, frozen catalog), because some passes end
with a status transition that the next pass builds on (a retried run back to Pending, a catalog
just frozen). Job events and the timer ask for passes regardless.

A run that is done (`settled`: Succeeded or Failed for its current generation, with no retry
asked for) needs no timer: only a spec change, the retry annotation or its deletion can make
it move again, and those are events.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from synthpref_operator.names import ANNOTATION_RETRY, ANNOTATION_SKIP_BATCH_CANCEL

_TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class RunFacts:
    """What a reconcile pass reads from the run object itself."""

    generation: int
    deleting: bool
    retry: str | None
    skip_batch_cancel: str | None
    phase: str
    observed_generation: int
    retry_token: str | None
    catalog: str  # the frozen catalog's models and generation, as compact text
    conditions: tuple[tuple[str, str, str], ...]  # (type, status, reason)


def run_facts(body: Mapping[str, Any]) -> RunFacts:
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    conditions = tuple(
        sorted(
            (str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")))
            for c in status.get("conditions") or []
        )
    )
    return RunFacts(
        generation=int(meta.get("generation") or 0),
        deleting=bool(meta.get("deletionTimestamp")),
        retry=annotations.get(ANNOTATION_RETRY),
        skip_batch_cancel=annotations.get(ANNOTATION_SKIP_BATCH_CANCEL),
        phase=str(status.get("phase") or ""),
        observed_generation=int(status.get("observedGeneration") or 0),
        retry_token=status.get("retryToken"),
        catalog=repr(status.get("catalog")),
        conditions=conditions,
    )


def settled(body: Mapping[str, Any]) -> bool:
    """Done for its current spec: Succeeded or Failed, observed at its current generation, with
    no retry annotation the run has not acted on (`planner.retry_requested`)."""
    facts = run_facts(body)
    if facts.deleting or facts.phase not in _TERMINAL:
        return False
    if facts.observed_generation != facts.generation:
        return False
    retry_asked = facts.phase == "Failed" and bool(facts.retry) and facts.retry != facts.retry_token
    return not retry_asked


class RunEventFilter:
    """The last `RunFacts` this process saw per run; thread-safe (kopf handler threads)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], RunFacts] = {}
        self._lock = threading.Lock()

    def wants_pass(self, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """Whether this event of the run asks for a pass (and remember what it showed)."""
        facts = run_facts(body)
        key = (namespace, name)
        with self._lock:
            before = self._seen.get(key)
            self._seen[key] = facts
        return before != facts

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._seen.pop((namespace, name), None)
