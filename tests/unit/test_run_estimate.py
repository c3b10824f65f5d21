"""The run estimate (`synthpref.run_estimate`): from prompts alone it comes close to counting
the judge requests `mix` would render, its cost is the price table's, and its text says what
it assumed. Pure: no storage."""

from __future__ import annotations

from typing import Any

import pytest

from synthpref.annotate.estimate import request_tokens, text_tokens
from synthpref.judge_requests import build_request
from synthpref.pricing import known_price
from synthpref.rows import Candidate, MixRow
from synthpref.run_estimate import (
    PromptStats,
    RequestStats,
    as_document,
    estimate_run,
    render,
)
from tests.builders import make_spec

PROMPTS = [f"Question {i}: explain why the sky is blue, in {i + 2} sentences." for i in range(6)]
ANSWERS = {
    "m0": "Rayleigh scattering sends short wavelengths every way. " * 8,
    "m1": "Because blue light scatters more than red light does. " * 3,
    "m2": "The sky is blue. " * 20,
    "m3": "Air molecules scatter sunlight; blue scatters most, so the sky looks blue. " * 5,
}


def rendered_tokens(spec: Any) -> int:
    """What the engine counts for the requests mix would render for PROMPTS and ANSWERS, each
    prompt rated over k answers (all four models: k = 4)."""
    total = 0
    for n, prompt in enumerate(PROMPTS):
        row = MixRow(
            prompt_id=f"p{n}",
            prompt=prompt,
            candidates=[Candidate(model=m, text=t) for m, t in ANSWERS.items()],
            order={a: [0, 1, 2, 3] for a in spec.mix.aspects},
        )
        for aspect in spec.mix.aspects:
            total += request_tokens(build_request(row, aspect, 0, spec.judge).body)
    return total


@pytest.mark.parametrize("structured", [True, False])
def test_from_prompts_and_measured_answers_it_matches_the_rendered_requests(
    structured: bool,
) -> None:
    spec = make_spec(judge={"model": "gpt-4o-mini", "structuredOutput": structured})
    prompts = PromptStats(len(PROMPTS), sum(text_tokens(p) for p in PROMPTS))
    measured = {m: float(text_tokens(t)) for m, t in ANSWERS.items()}

    estimate = estimate_run(spec, prompts, measured)

    judge = estimate.judge
    assert judge is not None and judge.basis == "prompts"
    assert judge.requests == len(PROMPTS) * 4
    exact = rendered_tokens(spec)
    assert abs(judge.tokens.input - exact) <= 0.02 * exact  # token counts are not additive
    assert judge.tokens.output == judge.requests * spec.judge.max_tokens
    price = known_price("gpt-4o-mini")
    assert price is not None
    assert judge.cost_usd == pytest.approx(price.cost(judge.tokens.input, judge.tokens.output))
    assert [m.output_tokens for m in estimate.models] == [
        round(len(PROMPTS) * measured[m]) for m in ANSWERS
    ]


def test_without_answers_each_counts_at_its_max_tokens() -> None:
    spec = make_spec(judge={"model": "gpt-4o"})
    short = estimate_run(spec, PromptStats(10, 100), {m: 10.0 for m in ANSWERS})
    bound = estimate_run(spec, PromptStats(10, 100))
    assert [m.output_tokens for m in bound.models] == [10 * 512] * 4
    assert short.judge is not None and bound.judge is not None
    # Four answers of 512 tokens instead of 10 per request, 4 aspects, 10 prompts.
    assert bound.judge.tokens.input - short.judge.tokens.input == 4 * 4 * 10 * 502


def test_on_policy_requests_rate_two_answers() -> None:
    spec = make_spec(mix={"onPolicyModel": "m0"})
    measured = {"m0": 100.0, "m1": 10.0, "m2": 20.0, "m3": 30.0}
    lone = estimate_run(spec, PromptStats(1, 0), measured)
    empty = estimate_run(spec, PromptStats(1, 0), dict.fromkeys(measured, 0.0))
    assert lone.judge is not None and empty.judge is not None
    # Per aspect: the on-policy answer (100) and the others' mean (20).
    assert lone.judge.tokens.input - empty.judge.tokens.input == 4 * 120


def test_request_files_win_once_mixed() -> None:
    spec = make_spec(judge={"model": "gpt-4o"})
    estimate = estimate_run(spec, PromptStats(10, 100), None, RequestStats(37, 12_345))
    assert estimate.judge is not None
    assert (estimate.judge.basis, estimate.judge.requests) == ("requests", 37)
    assert estimate.judge.tokens.input == 12_345


def test_a_judge_without_a_price_has_no_cost_and_says_why() -> None:
    spec = make_spec(judge={"model": "judge-1"})
    estimate = estimate_run(spec, PromptStats(3, 30))
    assert estimate.judge is not None and estimate.judge.cost_usd is None
    assert any("give judge.pricing" in note for note in estimate.notes)
    text = render(estimate)
    assert "cost:" not in text and "judge: judge-1 (openai; from prompts)" in text


def test_the_text_and_json_name_prices_and_assumptions() -> None:
    spec = make_spec(judge={"model": "gpt-4o"})
    estimate = estimate_run(spec, PromptStats(10, 100))
    text = render(estimate)
    assert "(Batch API prices, at most)" in text
    assert "$2.5 in / $10 out per 1M tokens, batch discount 50% (price table of" in text
    assert "characters / 3" in text
    document = as_document(estimate)
    judge = document["judge"]
    assert isinstance(judge, dict) and judge["requests"] == 40
