"""What a run will cost before it runs: prompts, answer tokens per model, judge requests,
tokens and US dollars at Batch API prices. Pure: `estimate_inputs` gathers what it reads.

Called by `synthpref estimate` and by the operator when it admits a run (the estimate in
`status.estimate`). Token counts are the judge engine's own estimate
(`annotate.estimate.request_tokens`: no tokenizer, about characters / 3, which over-counts
ordinary English by roughly a third), so the figures err high, as a budget should.

- Each model answers every prompt: at most `sampling.maxTokens` tokens per answer; once its
  generations exist, the measured mean (of the answers' text, counted the same way) is shown
  and used.
- The judge gets one request per prompt and aspect. Its input is the rendered judge prompt
  (template + prompt + the k answers it rates); once `mix` wrote the request files it is counted
  from them exactly (basis `requests`). Its output is bounded by `judge.maxTokens` per request:
  the estimate's output tokens are that bound, so the cost is an upper bound too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from synthpref.annotate.estimate import request_tokens
from synthpref.budget import Cap, Tokens, usd
from synthpref.pricing import Price
from synthpref.spec import PreferenceRunSpec
from synthpref.templates import render_messages


@dataclass(frozen=True)
class PromptStats:
    """The run's unique prompts and their estimated tokens in all."""

    count: int
    tokens: int


@dataclass(frozen=True)
class RequestStats:
    """The judge request files `mix` wrote: requests and estimated input tokens."""

    requests: int
    input_tokens: int


@dataclass(frozen=True)
class ModelEstimate:
    name: str
    prompts: int
    max_tokens: int  # sampling.maxTokens: the most an answer may take
    measured_mean: float | None  # mean estimated tokens of its answers, once generated

    @property
    def answer_tokens(self) -> float:
        """Tokens per answer the estimate uses: measured when known, else the bound."""
        return self.measured_mean if self.measured_mean is not None else float(self.max_tokens)

    @property
    def output_tokens(self) -> int:
        return round(self.prompts * self.answer_tokens)


@dataclass(frozen=True)
class JudgeEstimate:
    model: str
    backend: str
    requests: int
    tokens: Tokens  # input (estimated) and output (bounded by maxTokens)
    basis: str  # "prompts" (rendered from prompts and answer lengths) or "requests" (files)
    price: Price | None
    cost_usd: float | None  # at Batch API prices; None without a price (or a vLLM judge)
    budget: str | None = None  # judge.budget, described


@dataclass(frozen=True)
class RunEstimate:
    prompts: PromptStats
    models: list[ModelEstimate] = field(default_factory=list)
    judge: JudgeEstimate | None = None
    notes: list[str] = field(default_factory=list)


def _answers_per_request(spec: PreferenceRunSpec, models: Sequence[ModelEstimate]) -> float:
    """Expected answer tokens in one judge request: the on-policy model's answer and one of
    the others', or k answers of models drawn at random (their mean)."""
    by_name = {m.name: m.answer_tokens for m in models}
    on_policy = spec.mix.on_policy_model
    if on_policy is not None:
        others = [t for name, t in by_name.items() if name != on_policy]
        return by_name[on_policy] + sum(others) / max(1, len(others))
    return spec.mix.responses_per_prompt * sum(by_name.values()) / max(1, len(by_name))


def _template_tokens(spec: PreferenceRunSpec, answers: int) -> dict[str, int]:
    """Per aspect, the tokens of a judge request with an empty prompt and empty answers."""
    return {
        aspect: request_tokens(
            {
                "messages": render_messages(
                    "", [""] * answers, aspect, structured=spec.judge.structured_output
                )
            }
        )
        for aspect in spec.mix.aspects
    }


def estimate_run(
    spec: PreferenceRunSpec,
    prompts: PromptStats,
    measured: Mapping[str, float] | None = None,
    requests: RequestStats | None = None,
) -> RunEstimate:
    """The estimate from the prompts, the measured mean answer tokens per model (models with
    generations) and, once mixed, the request files."""
    measured = measured or {}
    models = [
        ModelEstimate(m.name, prompts.count, m.sampling.max_tokens, measured.get(m.name))
        for m in spec.models
    ]
    judge = spec.judge
    if requests is not None:
        count, input_tokens, basis = requests.requests, requests.input_tokens, "requests"
    else:
        k = 2 if spec.mix.on_policy_model is not None else spec.mix.responses_per_prompt
        answers = _answers_per_request(spec, models)
        count = prompts.count * len(spec.mix.aspects)
        input_tokens = sum(
            overhead * prompts.count + prompts.tokens + round(prompts.count * answers)
            for overhead in _template_tokens(spec, k).values()
        )
        basis = "prompts"
    tokens = Tokens(input_tokens, count * judge.max_tokens)
    openai = judge.backend.value == "openai"
    price = judge.price() if openai else None
    cost = price.cost(tokens.input, tokens.output) if price is not None else None
    notes = [
        "tokens are estimated without a tokenizer (about characters / 3; errs high)",
        f"judge output is bounded by judge.maxTokens ({judge.max_tokens}) per request",
    ]
    if any(m.measured_mean is None for m in models):
        notes.append("answers not yet generated are counted at their model's maxTokens")
    if openai and price is None:
        notes.append(f"no price known for {judge.model!r}: give judge.pricing for a cost")
    budget = judge.budget
    cap = None if budget is None else Cap(budget.max_usd, budget.max_tokens, price).describe()
    return RunEstimate(
        prompts,
        models,
        JudgeEstimate(judge.model, judge.backend.value, count, tokens, basis, price, cost, cap),
        notes,
    )


def render(estimate: RunEstimate) -> str:
    """The estimate as the plain text `synthpref estimate` prints."""
    p = estimate.prompts
    lines = [f"prompts: {p.count:,} ({p.tokens:,} tokens)", "", "answering models:"]
    width = max([len(m.name) for m in estimate.models] + [5])
    lines.append(
        f"  {'model':<{width}}  {'prompts':>9}  {'max/answer':>10}  {'measured':>9}  "
        f"{'output tokens':>14}"
    )
    for m in estimate.models:
        measured = f"{m.measured_mean:,.0f}" if m.measured_mean is not None else "-"
        lines.append(
            f"  {m.name:<{width}}  {m.prompts:>9,}  {m.max_tokens:>10,}  {measured:>9}  "
            f"{m.output_tokens:>14,}"
        )
    judge = estimate.judge
    if judge is not None:
        lines += [
            "",
            f"judge: {judge.model} ({judge.backend}; from {judge.basis})",
            f"  requests:      {judge.requests:>14,}",
            f"  input tokens:  {judge.tokens.input:>14,}",
            f"  output tokens: {judge.tokens.output:>14,} (at most)",
        ]
        if judge.cost_usd is not None:
            lines.append(f"  cost:          {usd(judge.cost_usd):>14} (Batch API prices, at most)")
        if judge.price is not None:
            lines.append(f"  price:         {judge.price.describe()}")
        if judge.budget is not None:
            lines.append(f"  budget:        {judge.budget}")
    lines += ["", *(f"note: {note}" for note in estimate.notes)]
    return "\n".join(lines)


def as_document(estimate: RunEstimate) -> dict[str, object]:
    """The estimate as JSON-ready data (`synthpref estimate --json`)."""
    judge = estimate.judge
    return {
        "prompts": {"count": estimate.prompts.count, "tokens": estimate.prompts.tokens},
        "models": [
            {
                "name": m.name,
                "prompts": m.prompts,
                "max_tokens": m.max_tokens,
                "measured_mean": m.measured_mean,
                "output_tokens": m.output_tokens,
            }
            for m in estimate.models
        ],
        "judge": None
        if judge is None
        else {
            "model": judge.model,
            "backend": judge.backend,
            "basis": judge.basis,
            "requests": judge.requests,
            "input_tokens": judge.tokens.input,
            "output_tokens": judge.tokens.output,
            "cost_usd": judge.cost_usd,
            "price": judge.price.describe() if judge.price is not None else None,
            "budget": judge.budget,
        },
        "notes": list(estimate.notes),
    }
