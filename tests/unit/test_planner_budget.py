"""Table tests of the planner's judge budget and cost: the BudgetExhausted hold (condition,
one Event, message) and its release by a raised cap, the estimate in the status and the COST
column (estimated until judged, then actual)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from synthpref.spec import PreferenceRunSpec
from synthpref_operator.planner import Event, JudgeLedger, Observed, StepJudge, plan
from synthpref_operator.status import (
    ConditionStatus,
    ConditionType,
    CostEstimate,
    JudgeProgress,
    Phase,
    Reason,
    RunStatus,
)
from tests.builders import spec_dict
from tests.unit.test_planner import JUDGED, MIXED, T0, T1, observe

HOLD = (
    "judge budget reached: spent $0.0212 (9,838 tokens) of the cap of $0.0317 "
    "(judge.budget.maxUsd); 26 requests not submitted (the next batch may use up to 9,181 "
    "tokens, $0.0151); raise spec.judge.budget to resume"
)
PROGRESS = JudgeProgress(files=6, files_done=3, requests=48, requests_done=22, input_tokens=9000)


def spec(**judge: Any) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(spec_dict(judge={"backend": "openai", **judge}))


def budgeted(**budget: Any) -> PreferenceRunSpec:
    return spec(budget=budget or {"maxUsd": 5})


def budget_events(actions: list[Any]) -> list[Event]:
    return [a for a in actions if isinstance(a, Event) and a.reason == "BudgetExhausted"]


def test_a_held_judge_shows_the_condition_once_with_one_event_and_keeps_stepping() -> None:
    held = observe(MIXED, judge=JudgeLedger(PROGRESS, budget_hold=HOLD))

    actions, status = plan(budgeted(), held, T0)

    condition = status.condition(ConditionType.BUDGET_EXHAUSTED)
    assert condition is not None and condition.status is ConditionStatus.TRUE
    assert (condition.reason, condition.message) == (Reason.BUDGET_EXHAUSTED, HOLD)
    assert [(e.type, e.message) for e in budget_events(actions)] == [("Warning", HOLD)]
    assert status.phase is Phase.ANNOTATING and status.message == f"held: {HOLD}"
    assert StepJudge() in actions  # a raised cap is seen by the next step

    again, status_again = plan(budgeted(), replace(held, status=status), T1)
    assert budget_events(again) == []
    kept = status_again.condition(ConditionType.BUDGET_EXHAUSTED)
    assert kept is not None and kept.last_transition_time == T0


def test_a_raised_cap_releases_the_hold() -> None:
    _, held = plan(budgeted(), observe(MIXED, judge=JudgeLedger(PROGRESS, budget_hold=HOLD)), T0)

    actions, status = plan(
        budgeted(maxUsd=50), observe(MIXED, status=held, judge=JudgeLedger(PROGRESS)), T1
    )

    condition = status.condition(ConditionType.BUDGET_EXHAUSTED)
    assert condition is not None and condition.status is ConditionStatus.FALSE
    assert (condition.reason, condition.last_transition_time) == (Reason.WITHIN_BUDGET, T1)
    assert budget_events(actions) == [] and StepJudge() in actions
    assert not status.message.startswith("held")


def test_runs_without_a_budget_have_no_budget_condition() -> None:
    _, status = plan(spec(), observe(MIXED, judge=JudgeLedger(PROGRESS)), T0)
    assert status.condition(ConditionType.BUDGET_EXHAUSTED) is None


SPENT = {"cost_usd": 0.0123}
FROM_PROMPTS = CostEstimate(basis="prompts", requests=48, input_tokens=20_000, cost_usd=1.5)


@pytest.mark.parametrize(
    ("observed", "basis", "cost"),
    [
        # Admitted: the estimate from the prompts, in the COST column with a tilde.
        (replace(observe(), estimate=FROM_PROMPTS), "prompts", "~$1.50"),
        # Kept from the status when not computed again.
        (observe(status=RunStatus(estimate=FROM_PROMPTS)), "prompts", "~$1.50"),
        # Mixed: from the request files (gpt-4o: $1.25 / $5 per 1M at batch prices).
        (
            replace(observe(MIXED, judge=JudgeLedger(PROGRESS)), estimate=FROM_PROMPTS),
            "requests",
            f"~${(9000 * 1.25 + 48 * 1024 * 5.0) / 1e6:.4f}",
        ),
        # Judged: the actual cost of the results' usage.
        (
            replace(
                observe(
                    JUDGED, judge=JudgeLedger(PROGRESS.model_copy(update={"cost_usd": 0.0123}))
                ),
                estimate=FROM_PROMPTS,
            ),
            "requests",
            "$0.0123",
        ),
    ],
)
def test_the_estimate_and_the_cost_column(observed: Observed, basis: str, cost: str) -> None:
    _, status = plan(spec(model="gpt-4o-2024-08-06"), observed, T0)
    assert status.estimate is not None and status.estimate.basis == basis
    assert status.cost == cost
