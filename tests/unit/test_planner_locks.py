"""Table tests of the planner's spec locks: which spec sections lock at which stage, a change to
a locked section rejected (SpecChangeRejected, the run holds), operational fields still free,
and a reverted change resuming the run."""

from __future__ import annotations

from typing import Any

import pytest

from synthpref.spec import PreferenceRunSpec
from synthpref_operator.names import Stage
from synthpref_operator.planner import (
    CreateJob,
    Event,
    StepJudge,
    lock_spec,
    plan,
    spec_fingerprint,
)
from synthpref_operator.status import ConditionStatus, ConditionType, Phase, Reason, RunStatus
from tests.builders import spec_dict
from tests.unit.test_planner import GENERATED, JUDGED, MIXED, PREPARED, gen_jobs, observe

T1 = "2026-01-01T00:05:00Z"


def spec(**sections: Any) -> PreferenceRunSpec:
    document = spec_dict(**{"judge": {"backend": "openai", "model": "judge-1"}, **sections})
    return PreferenceRunSpec.model_validate(document)


BASE = spec()


@pytest.mark.parametrize(
    ("current", "locked"),
    [
        (Stage.PREPARE, set()),
        (Stage.GENERATE, set()),
        (Stage.MIX, {"mix", "judge"}),
        (Stage.JUDGE, {"mix", "judge"}),
        (Stage.PARSE, {"mix", "judge", "binarization"}),
        (None, {"mix", "judge", "binarization"}),
    ],
)
def test_sections_lock_when_their_stage_starts(current: Stage | None, locked: set[str]) -> None:
    locks, rejected = lock_spec(BASE, {}, current)
    assert set(locks) == locked and rejected == []
    assert all(locks[s] == spec_fingerprint(BASE, s) for s in locked)


@pytest.mark.parametrize(
    ("changed", "current", "rejected_section"),
    [
        # Locked sections: rejected.
        ({"mix": {"seed": 7}}, Stage.MIX, "mix"),
        ({"mix": {"responsesPerPrompt": 3}}, Stage.JUDGE, "mix"),
        ({"judge": {"backend": "openai", "model": "judge-2"}}, Stage.JUDGE, "judge"),
        ({"judge": {"backend": "openai", "model": "judge-1", "temperature": 1.0}}, None, "judge"),
        ({"binarization": {"strategy": "all-pairs"}}, Stage.PARSE, "binarization"),
        # Not locked yet, or operational fields: accepted.
        ({"mix": {"seed": 7}}, Stage.GENERATE, None),
        ({"binarization": {"strategy": "all-pairs"}}, Stage.JUDGE, None),
        (
            {"judge": {"backend": "openai", "model": "judge-1", "pollIntervalSeconds": 5}},
            Stage.JUDGE,
            None,
        ),
        (
            {
                "judge": {
                    "backend": "openai",
                    "model": "judge-1",
                    "openai": {"baseUrl": "http://other:1/v1", "apiKeyEnv": "OTHER"},
                    "queuedTokenBudget": 1000,
                }
            },
            Stage.JUDGE,
            None,
        ),
    ],
)
def test_changes_to_locked_sections_are_rejected(
    changed: dict[str, Any], current: Stage | None, rejected_section: str | None
) -> None:
    original, _ = lock_spec(BASE, {}, current)
    locks, rejected = lock_spec(spec(**changed), original, current)
    if rejected_section is None:
        assert rejected == []
        assert {k: v for k, v in locks.items() if k in original} == original
    else:
        assert len(rejected) == 1
        assert rejected[0].startswith(f"spec.{rejected_section} cannot change once ")
        assert "revert the change or create a new PreferenceRun" in rejected[0]
        assert locks == original  # the lock keeps the spec the stage started with


def annotating_status() -> RunStatus:
    _, status = plan(BASE, observe(MIXED, gen_jobs(complete=True)), T1)
    assert status.phase is Phase.ANNOTATING and set(status.locked_spec) == {"mix", "judge"}
    return status


def test_rejected_change_holds_the_run_until_reverted() -> None:
    before = annotating_status()
    changed = spec(mix={"seed": 9})
    actions, status = plan(changed, observe(MIXED, gen_jobs(complete=True), before), T1)
    rejected = status.condition(ConditionType.SPEC_CHANGE_REJECTED)
    assert rejected is not None and rejected.status is ConditionStatus.TRUE
    assert rejected.reason is Reason.SPEC_CHANGE_REJECTED
    assert "spec.mix cannot change once mixing has started" in rejected.message
    assert status.message == rejected.message and status.phase is Phase.ANNOTATING
    # No judge step, no Job: the run holds; one Warning event.
    assert not [a for a in actions if isinstance(a, StepJudge | CreateJob)]
    assert [a.reason for a in actions if isinstance(a, Event)] == ["SpecChangeRejected"]
    assert status.locked_spec == before.locked_spec
    # Same rejection on the next pass: no second event.
    actions, again = plan(changed, observe(MIXED, gen_jobs(complete=True), status), T1)
    assert not [a for a in actions if isinstance(a, Event)]
    # Reverted: the condition goes False and the run carries on.
    actions, resumed = plan(BASE, observe(MIXED, gen_jobs(complete=True), again), T1)
    reverted = resumed.condition(ConditionType.SPEC_CHANGE_REJECTED)
    assert reverted is not None and reverted.status is ConditionStatus.FALSE
    assert reverted.reason is Reason.SPEC_CHANGE_REVERTED
    assert StepJudge() in actions and resumed.phase is Phase.ANNOTATING


def test_no_condition_without_a_rejection() -> None:
    for artifacts in (PREPARED, GENERATED, MIXED, JUDGED):
        _, status = plan(BASE, observe(artifacts), T1)
        assert status.condition(ConditionType.SPEC_CHANGE_REJECTED) is None
