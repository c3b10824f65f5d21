"""Deleting a run: when its finalizer may go, and what to tell the user meanwhile; pure.

The delete handler (`handlers.py`) asks `Reconciler.cancel_batches` to cancel the run's
in-flight judge batches (per `spec.deletionPolicy`), then `deletion_step` decides: release
the finalizer, or keep it and retry with backoff (kopf.TemporaryError with the delay). A run
whose batches cannot be cancelled (judge down, key Secret gone, endpoint no longer allowed) is
never released silently: every failed try is a Warning Event naming the batch ids still
running, and the run is released only once `deletion_timeout_seconds` have passed since its
deletion began, or at once when it carries the annotation `synthpref.dev/skip-batch-cancel:
"true"`; the ids left running are then in the last Event and the operator log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synthpref_operator.names import ANNOTATION_SKIP_BATCH_CANCEL
from synthpref_operator.planner import Event

MAX_DELAY_SECONDS = 30.0  # backoff cap: an override annotation is seen within this long
MAX_IDS_IN_EVENT = 20


@dataclass(frozen=True)
class CancelOutcome:
    """What one try to cancel a deleted run's judge batches achieved."""

    finished: bool  # nothing of the run is left running at the judge (or nothing to cancel)
    message: str  # what was done, or why it could not be
    running: tuple[str, ...] = ()  # batch ids still running, as far as the ledger tells
    ids_known: bool = True  # False when the ledger could not be read


@dataclass(frozen=True)
class DeletionStep:
    """The decision for one call of the delete handler."""

    release: bool
    retry_after: float | None  # seconds until the next try when the finalizer stays
    log: str  # one line for the operator log (every batch id)
    warning: bool  # log it (and the event) as a warning
    event: Event | None  # posted on the run


def retry_delay(attempt: int, remaining: float) -> float:
    """Backoff for try number `attempt` (0-based): 1, 2, 4 ... seconds, at most
    MAX_DELAY_SECONDS, and never much past the deadline."""
    return max(1.0, min(2.0**attempt, MAX_DELAY_SECONDS, remaining))


def _ids(running: Sequence[str], ids_known: bool, limit: int | None) -> str:
    if not ids_known:
        return "unknown (the judge ledger could not be read)"
    if not running:
        return "none"
    shown = list(running if limit is None else running[:limit])
    more = len(running) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def deletion_step(
    outcome: CancelOutcome, *, elapsed: float, timeout: float, attempt: int, skip: bool
) -> DeletionStep:
    """Release or retry, given the try's outcome, the seconds since the deletion began, the
    deadline (`timeout`), the kopf retry count and whether the override annotation is set."""
    if outcome.finished:
        return DeletionStep(True, None, f"deleted: {outcome.message}", False, None)

    if skip:
        reason = "BatchCancelSkipped"

        def text(ids: str) -> str:
            return (
                f"{ANNOTATION_SKIP_BATCH_CANCEL} is set: released without cancelling the judge "
                f"batches ({outcome.message}); still running: {ids}"
            )

        release, delay = True, None
    elif elapsed >= timeout:
        reason = "BatchCancelAbandoned"

        def text(ids: str) -> str:
            return (
                f"gave up cancelling the judge batches after {timeout:.0f} s "
                f"({outcome.message}); released, left running: {ids}"
            )

        release, delay = True, None
    else:
        reason = "BatchCancelRetrying"
        remaining = timeout - elapsed
        wait = retry_delay(attempt, remaining)

        def text(ids: str) -> str:
            return (
                f"cannot cancel the judge batches yet ({outcome.message}); still running: "
                f"{ids}; retrying in {wait:.0f} s; the run is released in {remaining:.0f} s "
                f'anyway, or at once with the annotation {ANNOTATION_SKIP_BATCH_CANCEL}: "true"'
            )

        release, delay = False, wait
    every = _ids(outcome.running, outcome.ids_known, None)
    shown = _ids(outcome.running, outcome.ids_known, MAX_IDS_IN_EVENT)
    return DeletionStep(release, delay, text(every), True, Event("Warning", reason, text(shown)))
