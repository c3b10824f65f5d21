"""Pure parts of the OpenAI judge: sorting batch lines, token estimates, backoff, ledgers."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from synthpref.annotate.estimate import request_tokens, text_tokens
from synthpref.annotate.ledger import FileLedger, Phase
from synthpref.annotate.outcomes import sort_results
from synthpref.layout import judge_ledger, judge_resubmit
from synthpref.retrying import backoff_delay


def out(custom_id: str, status: int = 200, error: dict[str, Any] | None = None) -> str:
    response = None if error else {"status_code": status, "body": {"choices": []}}
    return json.dumps({"custom_id": custom_id, "response": response, "error": error})


@pytest.mark.parametrize(
    ("output", "errors", "ok", "failed"),
    [
        ([out("a"), out("b")], [], {"a", "b"}, {"c": "missing"}),
        (
            [out("a")],
            [out("b", error={"code": "batch_expired"})],
            {"a"},
            {"b": "batch_expired", "c": "missing"},
        ),
        (
            [],
            [out("a", 500), out("b", error={"code": "request_timeout"})],
            set(),
            {"a": "http_500", "b": "request_timeout", "c": "missing"},
        ),
        # a success wins over a failure line for the same request, whatever the order
        ([out("a")], [out("a", error={"code": "x"}), out("b"), out("c")], {"a", "b", "c"}, {}),
    ],
)
def test_sort_results_puts_every_request_in_exactly_one_place(
    output: list[str], errors: list[str], ok: set[str], failed: dict[str, str]
) -> None:
    result = sort_results(["a", "b", "c"], output, errors)
    assert set(result.ok) == ok
    assert result.failed == failed
    assert set(result.failure_lines) == set(failed)
    assert not set(result.ok) & set(result.failed)


def test_sort_results_counts_foreign_and_broken_lines() -> None:
    result = sort_results(["a"], [out("a"), out("zzz"), "{broken"], [], "cancelled")
    assert result.unknown == 2 and set(result.ok) == {"a"}
    assert sort_results(["a"], [], [], "cancelled").failed == {"a": "cancelled"}
    line = json.loads(sort_results(["a"], [], [], "cancelled").failure_lines["a"])
    assert line["custom_id"] == "a" and line["error"]["code"] == "cancelled"


@pytest.mark.parametrize(
    "text",
    ["a a a a a a", "Hello, world!", "x" * 1000, "naïve café — 100% ünïcödé", "", "1+1=2;" * 50],
)
def test_text_estimate_covers_words_and_characters(text: str) -> None:
    tokens = text_tokens(text)
    assert tokens >= len(text.split())
    assert tokens * 3 >= len(text)


def test_request_estimate_adds_message_overhead() -> None:
    body = {
        "messages": [{"role": "system", "content": "be fair"}, {"role": "user", "content": "hi"}]
    }
    assert request_tokens(body) == 3 + (4 + 3) + (4 + 1)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(n, 1.0, 30.0, rng, None) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(30.0, 2.0 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(3, 1.0, 30.0, rng, 7.5) == 7.5
    assert backoff_delay(3, 1.0, 30.0, rng, 600.0) == 30.0


def test_ledger_keys_stay_out_of_the_request_prefix() -> None:
    key = "requests/shard-00003-part-001.jsonl"
    assert judge_ledger(key) == "judge/ledger/shard-00003-part-001.json"
    assert judge_resubmit(key, 2) == "judge/resubmit/shard-00003-part-001-attempt-02.jsonl"
    assert not judge_resubmit(key, 2).startswith("requests/")


def test_a_ledger_written_before_api_errors_were_recorded_still_loads() -> None:
    """The shape of a ledger as earlier versions saved it (no repairs, no api_errors)."""
    old = {
        "request_key": "requests/shard-00000-part-000.jsonl",
        "shard": 0,
        "model": "gpt-4o-2024-08-06",
        "requests": 40,
        "phase": "submitted",
        "attempt": 1,
        "input_key": "requests/shard-00000-part-000.jsonl",
        "input_requests": 40,
        "input_tokens": 31000,
        "not_before": 0.0,
        "current": {
            "attempt": 1,
            "submission": 1,
            "input_key": "requests/shard-00000-part-000.jsonl",
            "file_id": "file-abc",
            "uploaded_at": 1700000000.0,
            "batch_id": "batch_abc",
            "created_at": 1700000001.0,
            "status": "in_progress",
            "request_counts": {"total": 40, "completed": 3, "failed": 0},
            "output_file_id": None,
            "error_file_id": None,
            "errors": [],
            "result_key": None,
        },
        "history": [],
        "done": 0,
        "failed": {},
        "resubmitted": 0,
        "token_limit_retries": 0,
        "tokens_used": 0,
        "error": None,
    }
    ledger = FileLedger.model_validate(json.loads(json.dumps(old)))
    assert (ledger.repairs, ledger.api_errors) == (0, [])
    assert ledger.phase is Phase.SUBMITTED and ledger.current is not None
