"""What the generate stage asks and commits: a model's messages, row errors, finish reasons and
the per-model error budget (pure)."""

from __future__ import annotations

import pytest

from synthpref.backends.base import ChatResult, count_finish_reasons
from synthpref.rows import GenerationRow, PromptRow
from synthpref.spec import ModelSpec
from synthpref.stages.generate import (
    ErrorBudgetExceededError,
    chat_request,
    check_error_budget,
    row_error,
)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (ChatResult(key="k", text="An answer.", finish_reason="stop"), None),
        (ChatResult(key="k", text="Cut off at the lim", finish_reason="length"), None),
        (ChatResult(key="k", error="prompt too long"), "prompt too long"),
        (ChatResult(key="k", text="Partial", finish_reason="content_filter"), "content filtered"),
        (
            ChatResult(key="k", error="no reply text", finish_reason="content_filter"),
            "content filtered",
        ),
        (ChatResult(key="k", text=" \n\t", finish_reason="stop"), "empty answer"),
        (ChatResult(key="k", text="", finish_reason="length"), "empty answer"),
    ],
)
def test_row_errors_for_every_backend(result: ChatResult, error: str | None) -> None:
    found = row_error(result)
    assert found == error if error is None else str(found).startswith(error)


def rows(errors: int, total: int) -> list[GenerationRow]:
    return [
        GenerationRow(
            prompt_id=f"p{i}",
            model="m",
            error=f"cause {i % 2}" if i < errors else None,
            text=None if i < errors else "ok",
        )
        for i in range(total)
    ]


def test_the_error_budget_allows_exactly_its_share_of_rows() -> None:
    model = ModelSpec(name="m", path="m", error_budget=0.1)
    check_error_budget(model, 0, rows(2, 20))  # 2 <= 0.1 x 20
    with pytest.raises(ErrorBudgetExceededError) as caught:
        check_error_budget(model, 7, rows(3, 20))
    assert str(caught.value).startswith(
        "model m: prompt shard 7 has 3 row errors in 20 rows, more than errorBudget 0.1 allows "
        "(2); first causes: cause 0; cause 1;"
    )
    check_error_budget(ModelSpec(name="m", path="m", error_budget=1.0), 0, rows(5, 5))
    with pytest.raises(ErrorBudgetExceededError):
        check_error_budget(ModelSpec(name="m", path="m", error_budget=0.0), 0, rows(1, 5))


def test_a_models_system_prompt_comes_before_every_prompt() -> None:
    prompt = PromptRow(id="p1", text="What is 2 + 2?", source="f:1")
    plain = ModelSpec(name="m", path="m")
    terse = ModelSpec(name="t", path="m", system_prompt="Answer in one word.")

    assert chat_request(plain, prompt).messages == [{"role": "user", "content": "What is 2 + 2?"}]
    assert chat_request(terse, prompt).messages == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]


def test_finish_reasons_are_counted_and_rows_that_never_ran_are_not() -> None:
    counts = {"stop": 1}
    count_finish_reasons(counts, ["stop", "length", None, "length", "content_filter"])
    assert counts == {"stop": 2, "length": 2, "content_filter": 1}
