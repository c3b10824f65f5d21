"""The tokens a batch used: `sort_results` sums `usage.total_tokens` over the lines the service
answered (outputs and non-2xx responses alike), ignoring lines without usage or with junk."""

from __future__ import annotations

import json
from typing import Any

from synthpref.annotate.outcomes import sort_results


def line(custom_id: str, usage: Any = None, status: int = 200, error: Any = None) -> str:
    body: dict[str, Any] = {"choices": []}
    if usage is not None:
        body["usage"] = usage
    response = None if error else {"status_code": status, "body": body}
    return json.dumps({"custom_id": custom_id, "response": response, "error": error})


def test_tokens_sum_usage_over_answered_lines() -> None:
    output = [
        line("a", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
        line("b", {"total_tokens": 7}),
        line("zzz", {"total_tokens": 100}),  # not ours, but billed all the same
        "{broken",
    ]
    errors = [
        line("c", {"total_tokens": 3}, status=500),
        line("d", error={"code": "batch_expired", "message": "expired"}),
    ]
    result = sort_results(["a", "b", "c", "d"], output, errors)
    assert result.tokens == 15 + 7 + 100 + 3
    # The parts the judge's budget prices, where the line gives them.
    assert (result.prompt_tokens, result.completion_tokens) == (10, 5)
    assert set(result.ok) == {"a", "b"}


def test_lines_without_usable_usage_count_nothing() -> None:
    output = [
        line("a"),
        line("b", {"total_tokens": "12"}),
        line("c", {"total_tokens": True}),
        line("d", {"total_tokens": -4}),
        line("e", []),
    ]
    assert sort_results(["a", "b", "c", "d", "e"], output, []).tokens == 0
