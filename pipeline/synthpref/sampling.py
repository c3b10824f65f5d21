"""Which answers go to the judge: k distinct models per prompt, and the order the judge sees them.

Called by the `mix` stage once per prompt with every model's GenerationRow for that prompt. Pure
and seeded: the draw depends only on (seed, prompt_id) and the set of usable answers, never on
the order the rows were read in or on Python's per-process `hash()` salt. A prompt that cannot
be mixed comes back as a `Shortfall` with a reason, so the stage counts it instead of dropping it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from synthpref.records import CandidateRecord
from synthpref.seeding import stable_seed


class ShortfallReason(StrEnum):
    """Why a prompt could not be mixed (the keys of the mix summary's counts)."""

    TOO_FEW_ANSWERS = "too_few_answers"
    ON_POLICY_MISSING = "on_policy_missing"


@dataclass(frozen=True)
class Shortfall:
    """A prompt without enough usable answers: `available` usable, `needed` required."""

    prompt_id: str
    reason: ShortfallReason
    available: int
    needed: int


class Generation(Protocol):
    """What sampling reads of a generation (`rows.GenerationRow` or `records.GenerationRecord`)."""

    @property
    def prompt_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def text(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...


def stable_rng(seed: int, *parts: str) -> random.Random:
    """A Random seeded from (seed, *parts) via `seeding.stable_seed`: the same in every process."""
    return random.Random(stable_seed(seed, *parts))


def usable(row: Generation) -> bool:
    """An answer the judge can rate: it has text and no error."""
    return row.error is None and row.text is not None and row.text.strip() != ""


def usable_answers(prompt_id: str, rows: Iterable[Generation]) -> dict[str, str]:
    """Model name → answer text of the usable answers; a model answering twice is an error."""
    answers: dict[str, str] = {}
    seen: set[str] = set()
    for row in rows:
        if row.prompt_id != prompt_id:
            raise ValueError(
                f"generation for prompt {row.prompt_id!r} passed with prompt {prompt_id!r}"
            )
        if row.model in seen:
            raise ValueError(f"prompt {prompt_id!r}: model {row.model!r} answered more than once")
        seen.add(row.model)
        if usable(row) and row.text is not None:
            answers[row.model] = row.text
    return answers


def choose_models(
    prompt_id: str,
    models: Iterable[str],
    *,
    k: int,
    seed: int,
    on_policy_model: str | None = None,
) -> list[str] | Shortfall:
    """Pick the models whose answers are judged, in candidate order.

    `models` are the models with a usable answer (any order, no repeats). Without an on-policy
    model, k distinct models are drawn uniformly. With one, k is 2: the on-policy model and one
    drawn from the rest; their candidate order is itself drawn, so the on-policy answer is not
    always answer 1.
    """
    pool = sorted(set(models))
    rng = stable_rng(seed, prompt_id, "models")
    if on_policy_model is not None:
        if on_policy_model not in pool:
            return Shortfall(prompt_id, ShortfallReason.ON_POLICY_MISSING, len(pool), 2)
        rest = [m for m in pool if m != on_policy_model]
        if not rest:
            return Shortfall(prompt_id, ShortfallReason.TOO_FEW_ANSWERS, len(pool), 2)
        pair = [on_policy_model, rng.choice(rest)]
        rng.shuffle(pair)
        return pair
    if k < 2:
        raise ValueError(f"k must be at least 2 (got {k})")
    if len(pool) < k:
        return Shortfall(prompt_id, ShortfallReason.TOO_FEW_ANSWERS, len(pool), k)
    return rng.sample(pool, k)


def answer_order(
    prompt_id: str, aspects: Sequence[str], count: int, *, seed: int, shuffle: bool
) -> dict[str, list[int]]:
    """Per aspect, the candidate indices in the order the judge sees them (MixRow.order).

    Identity without `shuffle`; with it, an independent seeded permutation per aspect, so a
    position bias of the judge does not follow one candidate across every aspect.
    """
    order: dict[str, list[int]] = {}
    for aspect in aspects:
        indices = list(range(count))
        if shuffle:
            stable_rng(seed, prompt_id, "order", aspect).shuffle(indices)
        order[aspect] = indices
    return order


@dataclass(frozen=True)
class Selection:
    """The candidates chosen for one prompt and the per-aspect presentation order."""

    candidates: list[CandidateRecord]
    order: dict[str, list[int]]


def select(
    prompt_id: str,
    generations: Iterable[Generation],
    *,
    k: int,
    seed: int,
    aspects: Sequence[str],
    on_policy_model: str | None = None,
    shuffle: bool = False,
) -> Selection | Shortfall:
    """Candidates and answer order for one prompt from all its generations, or a Shortfall."""
    answers = usable_answers(prompt_id, generations)
    chosen = choose_models(prompt_id, answers, k=k, seed=seed, on_policy_model=on_policy_model)
    if isinstance(chosen, Shortfall):
        return chosen
    candidates = [CandidateRecord(model=m, text=answers[m]) for m in chosen]
    return Selection(
        candidates=candidates,
        order=answer_order(prompt_id, aspects, len(candidates), seed=seed, shuffle=shuffle),
    )
