"""The run's outcome: losses by cause and the acceptance thresholds (outcome.assess)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from synthpref.outcome import assess, describe_losses, losses
from synthpref.spec import AcceptanceSpec


def summary(
    *,
    prompts: int = 10,
    with_pairs: int = 10,
    requests: int = 40,
    failed: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "prompts": prompts,
        "prompts_with_pairs": with_pairs,
        "pairs": with_pairs,
        "requests": requests,
        "request_failures": failed or {},
        "mix": {"prompts": prompts},
    }
    document.update(extra)
    return document


def test_every_cause_is_counted_and_named() -> None:
    document = summary(
        with_pairs=6,
        failed={"error": 2, "no_result": 1},
        rating_failures={"unparseable": 4, "not_applicable": 1},
        prompts_dropped={"all_tied": 1},
        mix={"prompts": 10, "unusable_answers": 3, "prompts_lacking": {"too_few_answers": 2}},
        prepare={"malformed": 5},
    )
    counted = losses(document, model_shards_failed=1)
    assert counted == {
        "malformed_prompt_lines": 5,
        "model_shards_failed": 1,
        "failed_answers": 3,
        "prompts_lacking_answers": 2,
        "requests_failed": 3,
        "unparseable_ratings": 4,
        "not_applicable_ratings": 1,
        "prompts_without_pair": 1,
    }
    text = describe_losses(counted)
    assert "3 judge requests failed after all attempts" in text
    assert "2 prompts without enough answers" in text
    assert "5 malformed prompt lines skipped" in text


def test_a_clean_run_loses_nothing_and_is_accepted() -> None:
    result = assess(summary(), AcceptanceSpec())
    assert result.accepted and result.losses == {} and result.problems == ()
    assert result.message("s3://b/run/dataset/") == "dataset with 10 pairs at s3://b/run/dataset/"


@pytest.mark.parametrize(
    ("document", "acceptance", "problem"),
    [
        (summary(with_pairs=0), AcceptanceSpec(), r"0 of 10 prompts \(0\.0%\) yielded a pair"),
        (summary(with_pairs=4), AcceptanceSpec(), r"below acceptance.minPairFraction 0.5"),
        (
            summary(with_pairs=8),
            AcceptanceSpec(min_pair_fraction=0.9),
            r"8 of 10 prompts \(80\.0%\).*minPairFraction 0.9",
        ),
        (
            summary(failed={"error": 5}),
            AcceptanceSpec(),
            r"5 of 40 judge requests \(12\.5%\) failed after all attempts, above "
            r"acceptance.maxFailedRequestFraction 0.1",
        ),
    ],
)
def test_thresholds_reject(
    document: dict[str, Any], acceptance: AcceptanceSpec, problem: str
) -> None:
    result = assess(document, acceptance)
    assert not result.accepted
    assert any(re.search(problem, p) for p in result.problems), result.problems
    assert "rejected: " in result.message()


@pytest.mark.parametrize(
    ("document", "acceptance"),
    [
        # Zero pairs only when the user says so.
        (summary(with_pairs=0), AcceptanceSpec(min_pair_fraction=0)),
        (summary(with_pairs=5), AcceptanceSpec()),  # exactly the threshold
        (summary(failed={"error": 4}), AcceptanceSpec()),  # 10% is not above 10%
        (
            summary(failed={"error": 40}, with_pairs=0),
            AcceptanceSpec(min_pair_fraction=0, max_failed_request_fraction=1),
        ),
    ],
)
def test_thresholds_accept(document: dict[str, Any], acceptance: AcceptanceSpec) -> None:
    assert assess(document, acceptance).accepted


def test_assessment_round_trips_as_json() -> None:
    record = assess(summary(with_pairs=3, failed={"error": 1}), AcceptanceSpec()).to_dict()
    assert record["accepted"] is False
    assert record["pair_fraction"] == 0.3
    assert record["failed_request_fraction"] == 0.025
    assert record["losses"] == {"requests_failed": 1}
    assert isinstance(record["problems"], list) and len(record["problems"]) == 1
