"""The delete handler's decision (`synthpref_operator.deletion`): release the finalizer, or keep
it and retry with backoff, saying which batches still run."""

from __future__ import annotations

import pytest

from synthpref_operator.deletion import (
    MAX_DELAY_SECONDS,
    CancelOutcome,
    deletion_step,
    retry_delay,
)
from synthpref_operator.names import ANNOTATION_SKIP_BATCH_CANCEL

DOWN = CancelOutcome(False, "HTTP 503 from http://judge/v1", ("batch_a", "batch_b"))


def test_finished_releases_quietly() -> None:
    step = deletion_step(
        CancelOutcome(True, "cancelled 2 batches"), elapsed=0, timeout=600, attempt=0, skip=False
    )
    assert step.release and step.retry_after is None and step.event is None
    assert not step.warning and "cancelled 2 batches" in step.log


def test_failure_before_the_deadline_keeps_the_finalizer() -> None:
    step = deletion_step(DOWN, elapsed=10, timeout=600, attempt=0, skip=False)
    assert not step.release and step.retry_after == 1
    assert step.event is not None and step.event.type == "Warning"
    assert step.event.reason == "BatchCancelRetrying"
    for text in (step.event.message, step.log):
        assert "batch_a, batch_b" in text
        assert "HTTP 503 from http://judge/v1" in text
        assert ANNOTATION_SKIP_BATCH_CANCEL in text
        assert "released in 590 s" in text


def test_deadline_releases_naming_what_is_left_running() -> None:
    step = deletion_step(DOWN, elapsed=600, timeout=600, attempt=9, skip=False)
    assert step.release and step.retry_after is None and step.warning
    assert step.event is not None and step.event.reason == "BatchCancelAbandoned"
    assert "left running: batch_a, batch_b" in step.event.message
    assert "left running: batch_a, batch_b" in step.log


def test_override_annotation_releases_at_once() -> None:
    step = deletion_step(DOWN, elapsed=0, timeout=600, attempt=0, skip=True)
    assert step.release and step.event is not None
    assert step.event.reason == "BatchCancelSkipped"
    assert "still running: batch_a, batch_b" in step.event.message


def test_unknown_ids_and_long_lists() -> None:
    unknown = CancelOutcome(False, "cannot read the judge ledger", ids_known=False)
    step = deletion_step(unknown, elapsed=0, timeout=60, attempt=0, skip=False)
    assert step.event is not None and "unknown (the judge ledger" in step.event.message
    many = CancelOutcome(False, "down", tuple(f"batch_{i}" for i in range(25)))
    step = deletion_step(many, elapsed=60, timeout=60, attempt=0, skip=False)
    assert step.event is not None
    assert "batch_19 and 5 more" in step.event.message
    assert "batch_24" in step.log  # the log has every id


@pytest.mark.parametrize(
    ("attempt", "remaining", "delay"),
    [(0, 600, 1), (1, 600, 2), (3, 600, 8), (10, 600, MAX_DELAY_SECONDS), (5, 3, 3), (5, 0.2, 1)],
)
def test_retry_delay_backs_off_up_to_the_deadline(
    attempt: int, remaining: float, delay: float
) -> None:
    assert retry_delay(attempt, remaining) == delay
