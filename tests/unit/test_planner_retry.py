"""Table tests of a Failed run retried through its synthpref.dev/retry annotation, and of the
Blocked condition (`blocked.py`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from synthpref.storage import StorageUnavailableError
from synthpref_operator.blocked import blocked_status, observation_reason
from synthpref_operator.names import Stage
from synthpref_operator.planner import DeleteJob, Event, JobState, Observed, plan
from synthpref_operator.status import ConditionStatus, ConditionType, Phase, Reason, RunStatus
from tests.unit.test_planner import (
    EMPTY,
    GENERATED,
    PREPARED,
    T0,
    T1,
    creates,
    gen_jobs,
    job,
    jobs,
    observe,
    spec,
)

ARTIFACTS = replace(PREPARED, generated={"m0": 3, "m1": 3, "m2": 1, "m3": 3})


def failed_jobs(**broken: Any) -> dict[str, JobState]:
    """m0, m1, m3 done; m2's Job failed (its shard 0 lost its retries)."""
    failed = job(Stage.GENERATE, "m2", completions=1, failed=True, failed_indexes=(0,), **broken)
    return {**gen_jobs(complete=True), failed.name: failed}


def seen(
    status: RunStatus | None, retry: str | None, states: dict[str, JobState] | None = None
) -> Observed:
    jobs = failed_jobs() if states is None else states
    return replace(observe(ARTIFACTS, jobs, status), retry=retry)


def failed_run() -> RunStatus:
    _, status = plan(spec(), seen(None, None), T0)
    assert status.phase is Phase.FAILED
    return status


def test_a_new_retry_token_deletes_the_failed_jobs_and_goes_back_to_pending() -> None:
    actions, status = plan(spec(), seen(failed_run(), "1"), T1)
    assert [a for a in actions if isinstance(a, DeleteJob)] == [DeleteJob("r-generate-m2")]
    assert creates(actions) == []  # the next pass creates it afresh, once it is gone
    assert status.phase is Phase.PENDING and status.completion_time is None
    assert status.retry_token == "1"
    assert "committed work is kept" in status.message
    condition = status.condition(ConditionType.FAILED)
    assert condition is not None and condition.status is ConditionStatus.FALSE
    assert condition.reason is Reason.RETRIED
    assert any(isinstance(a, Event) and a.reason == "Retried" for a in actions)
    # Next pass: the failed Job is gone; only that model's Job is created again.
    gone = {n: j for n, j in failed_jobs().items() if n != "r-generate-m2"}
    actions, status = plan(spec(), seen(status, "1", gone), T1)
    assert status.phase is Phase.GENERATING
    assert creates(actions) == [("r-generate-m2", Stage.GENERATE, 1, "m2")]


def test_a_job_still_being_deleted_is_neither_a_failure_nor_created_again() -> None:
    _, retried = plan(spec(), seen(failed_run(), "1"), T1)
    actions, status = plan(spec(), seen(retried, "1", failed_jobs(deleting=True)), T1)
    assert status.phase is Phase.GENERATING and creates(actions) == []
    assert "model_shards_failed" not in status.losses


def test_no_new_token_keeps_the_run_failed() -> None:
    failed = failed_run()
    for token in (None, ""):
        actions, status = plan(spec(), seen(failed, token), T1)
        assert actions == [] and status.phase is Phase.FAILED
    done = failed.model_copy(update={"retry_token": "1"})
    actions, status = plan(spec(), seen(done, "1"), T1)
    assert actions == [] and status.phase is Phase.FAILED


def test_a_token_set_while_running_is_recorded_so_a_later_failure_waits_for_a_new_one() -> None:
    _, status = plan(spec(), replace(observe(GENERATED, gen_jobs(complete=True)), retry="a"), T0)
    assert status.phase is Phase.MIXING and status.retry_token == "a"


def test_blocked_holds_the_phase_warns_once_per_cause_and_clears() -> None:
    start = RunStatus()
    held, events = blocked_status(
        start, Reason.SECRET_KEY_MISSING, "Secret ns/s3 has no key 'id'", 1, T0
    )
    assert held.phase is Phase.PENDING and held.message == "blocked: Secret ns/s3 has no key 'id'"
    condition = held.condition(ConditionType.BLOCKED)
    assert condition is not None and condition.status is ConditionStatus.TRUE
    assert condition.reason is Reason.SECRET_KEY_MISSING
    assert [(e.type, e.reason) for e in events] == [("Warning", "SecretKeyMissing")]
    same, again = blocked_status(
        held, Reason.SECRET_KEY_MISSING, "Secret ns/s3 has no key 'id'", 1, T1
    )
    assert again == [] and same.condition(ConditionType.BLOCKED) == condition
    # The next pass that gets through clears it.
    _, clear = plan(spec(), observe(status=same), T1)
    cleared = clear.condition(ConditionType.BLOCKED)
    assert cleared is not None and cleared.status is ConditionStatus.FALSE
    assert cleared.reason is Reason.NOT_BLOCKED and cleared.last_transition_time == T1
    assert clear.phase is Phase.PENDING and not clear.message.startswith("blocked")


def test_an_unschedulable_pod_blocks_the_run_in_its_phase_with_one_warning() -> None:
    why = "pod r-generate-m0-0-x cannot be scheduled: 0/1 nodes are available"
    states = {**gen_jobs(), "r-generate-m0": job(Stage.GENERATE, "m0", unschedulable=why)}
    actions, status = plan(spec(), observe(PREPARED, states), T0)
    assert status.phase is Phase.GENERATING
    assert status.message.endswith(f"; blocked: Job r-generate-m0: {why}")
    blocked = status.condition(ConditionType.BLOCKED)
    assert blocked is not None and blocked.reason is Reason.UNSCHEDULABLE
    warnings = [a for a in actions if isinstance(a, Event) and a.reason == "Unschedulable"]
    assert len(warnings) == 1
    again, _ = plan(spec(), observe(PREPARED, states, status), T1)
    assert not [a for a in again if isinstance(a, Event) and a.type == "Warning"]


def test_a_job_kueue_has_not_admitted_blocks_the_run() -> None:
    queued = spec(queueName="gpu-queue")
    states = jobs(job(Stage.PREPARE, suspended=True))
    _, status = plan(queued, observe(EMPTY, states), T0)
    blocked = status.condition(ConditionType.BLOCKED)
    assert blocked is not None and blocked.reason is Reason.QUEUED
    assert "Job r-prepare waits for Kueue to admit it (queue gpu-queue)" in status.message
    # Suspended by the run itself (spec.suspend): not blocked, suspended.
    _, held = plan(spec(queueName="q", suspend=True), observe(EMPTY, states), T0)
    assert held.phase is Phase.SUSPENDED
    not_blocked = held.condition(ConditionType.BLOCKED)
    assert not_blocked is None or not_blocked.status is ConditionStatus.FALSE


def test_observation_errors_map_to_reasons() -> None:
    assert observation_reason(LookupError("x")) is Reason.SECRET_KEY_MISSING
    assert (
        observation_reason(StorageUnavailableError("s3://b/r: down")) is Reason.STORAGE_UNREACHABLE
    )


def test_an_admission_hold_keeps_its_own_message() -> None:
    held, events = blocked_status(
        RunStatus(), Reason.SECRET_NOT_FOUND, "held: x", 1, T0, event=False, prefix=""
    )
    assert held.message == "held: x" and events == []
    condition = held.condition(ConditionType.BLOCKED)
    assert condition is not None and condition.reason is Reason.SECRET_NOT_FOUND
