"""The judge's price table (`synthpref.pricing`) and spending cap (`synthpref.budget`), and
the spec rules of judge.pricing and judge.budget: table tests, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from synthpref.budget import BudgetHold, Cap, Spending, Tokens, upper_bound, usd
from synthpref.pricing import PRICE_TABLE, Price, known_price, price_for
from synthpref.spec import JudgeSpec


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # the older snapshot has its own price
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest family wins
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("o4-mini", "o4-mini"),
    ],
)
def test_snapshots_are_priced_by_their_family(model: str, family: str) -> None:
    assert known_price(model) is PRICE_TABLE[family]


@pytest.mark.parametrize("model", ["judge-1", "gpt-4", "gpt-4ox", "Qwen/Qwen2.5-72B-Instruct"])
def test_unknown_models_have_no_price(model: str) -> None:
    assert known_price(model) is None


def test_batch_prices_are_half_the_list_price() -> None:
    price = known_price("gpt-4o-2024-08-06")
    assert price is not None
    # 1M input tokens at $2.50 and 100k output tokens at $10 per 1M, half off.
    assert price.cost(1_000_000, 100_000) == pytest.approx((2.50 + 1.00) / 2)
    assert price.cost(1_000_000, 100_000, batch=False) == pytest.approx(3.50)


def test_the_spec_price_wins_over_the_table() -> None:
    own = Price(1.0, 2.0, 0.0, source="spec")
    assert price_for("gpt-4o", own) is own
    judge = JudgeSpec.model_validate(
        {"model": "gpt-4o", "pricing": {"inputPerMillionUsd": 1, "outputPerMillionUsd": 2}}
    )
    price = judge.price()
    assert price is not None and price.cost(1_000_000, 1_000_000) == pytest.approx(1.5)


def cap(**kwargs: Any) -> Cap:
    return Cap(price=Price(1.0, 2.0, 0.5), **kwargs)  # $0.50 / $1.00 per 1M at batch prices


@pytest.mark.parametrize(
    ("the_cap", "spent", "in_flight", "batch", "fits"),
    [
        # dollars: 1M input = $0.50
        (cap(max_usd=1.0), Tokens(1_000_000), Tokens(), Tokens(1_000_000), True),  # exactly
        (cap(max_usd=1.0), Tokens(1_000_000), Tokens(), Tokens(1_000_001), False),
        (cap(max_usd=1.0), Tokens(), Tokens(0, 500_000), Tokens(1_000_001), False),  # in flight
        (cap(max_usd=1.0), Tokens(0, 1_000_000), Tokens(), Tokens(1), False),  # output dearer
        # tokens
        (cap(max_tokens=100), Tokens(40, 10), Tokens(25, 25), Tokens(0), True),
        (cap(max_tokens=100), Tokens(40, 10), Tokens(25, 25), Tokens(1), False),
        # both: the stricter one decides
        (cap(max_usd=100.0, max_tokens=10), Tokens(), Tokens(), Tokens(5, 6), False),
        (cap(max_usd=0.000001, max_tokens=10**9), Tokens(), Tokens(), Tokens(5, 6), False),
    ],
)
def test_a_batch_goes_only_within_the_cap(
    the_cap: Cap, spent: Tokens, in_flight: Tokens, batch: Tokens, fits: bool
) -> None:
    assert Spending(spent, in_flight).may_submit(the_cap, batch) is fits


def test_no_cap_lets_everything_go() -> None:
    assert Spending(Tokens(10**12), Tokens(10**12)).may_submit(None, Tokens(10**12))


def test_a_batch_bound_is_its_input_and_max_tokens_per_request() -> None:
    assert upper_bound(5000, 10, 1024) == Tokens(5000, 10_240)


def test_the_hold_message_says_spent_cap_and_what_waits() -> None:
    hold = BudgetHold(
        cap(max_usd=0.02, max_tokens=50_000),
        Spending(Tokens(12_000, 800), Tokens()),
        48,
        Tokens(4_000, 10_240),
    )
    message = hold.message("raise judge.budget to resume")
    assert message == (
        "judge budget reached: spent $0.0068 (12,800 tokens) of the cap of $0.0200 "
        "(judge.budget.maxUsd) and 50,000 tokens (judge.budget.maxTokens); 48 requests not "
        "submitted (the next batch may use up to 14,240 tokens, $0.0122); raise judge.budget "
        "to resume"
    )
    assert not hold.in_flight


def test_dollars_read_as_cents_from_one_dollar() -> None:
    assert [usd(1234.5), usd(1), usd(0.01234)] == ["$1,234.50", "$1.00", "$0.0123"]


@pytest.mark.parametrize(
    ("judge", "problem"),
    [
        ({"budget": {}}, "give maxUsd, maxTokens or both"),
        ({"model": "judge-1", "budget": {"maxUsd": 5}}, "no price known for judge model"),
        ({"backend": "vllm", "model": "x", "budget": {"maxTokens": 5}}, "openai judge only"),
        ({"budget": {"maxUsd": 0}}, "greater than 0"),
        ({"pricing": {"inputPerMillionUsd": 1}}, "outputPerMillionUsd"),
    ],
)
def test_budget_and_pricing_rules(judge: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        JudgeSpec.model_validate(judge)


@pytest.mark.parametrize(
    "judge",
    [
        {"budget": {"maxUsd": 5}},  # the table knows the default judge model
        {"model": "judge-1", "budget": {"maxTokens": 5}},  # tokens need no price
        {
            "model": "judge-1",
            "pricing": {"inputPerMillionUsd": 1, "outputPerMillionUsd": 2},
            "budget": {"maxUsd": 5},
        },
    ],
)
def test_budgets_that_can_be_counted(judge: dict[str, Any]) -> None:
    assert JudgeSpec.model_validate(judge).budget is not None
