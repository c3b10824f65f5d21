"""From per-aspect ratings to (chosen, rejected) pairs: mean over aspects, then a strategy.

Called by `parse` once per prompt. Pure; the only randomness is a Random seeded per prompt from
(binarization seed, prompt id), so reruns give the same dataset.

Scores: an answer's score is the mean of its valid ratings over the aspects (a failed or N/A
rating is left out of the mean, never counted as a number); an answer with no valid rating at
all is unrated and takes no part.

Pairs. A pair (c, r) *qualifies* when mean(c) - mean(r) >= min_margin and either mean(c) >
mean(r), or the two are equal and ties is `keep`. Means closer than 1e-9 count as equal.

- best-vs-random (default): chosen is the best-scored answer; rejected is drawn uniformly from the
  answers that qualify against it.
- best-vs-worst: chosen as above; rejected is the lowest-scored answer that qualifies.
- all-pairs: every pair of rated answers that qualifies, higher score chosen; pairs come sorted
  by (chosen, rejected) candidate index.

Ties. With `drop`, equal scores never form a pair: when several answers share the best score,
one of them (drawn at random) is chosen and is paired only with a strictly lower answer. With
`keep`, equal scores may form a pair: when the best is tied, one of the tied answers (drawn at
random) is chosen and the other tied-best answers are candidates for rejected alongside the lower
ones (best-vs-random draws among all of them; best-vs-worst still takes the lowest); in all-pairs
a tied pair is kept once, oriented at random. Every random draw above uses the per-prompt Random.

A prompt with no pair is dropped with one reason: `too_few_rated` (fewer than two rated
answers), `all_tied` (every rated answer has the same score and no tie may form a pair: ties is
drop, or min_margin > 0), `below_margin` (no pair reaches min_margin).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from synthpref.ratings import Parsed, RatingFailure
from synthpref.records import MessageRecord, MixRecord, PreferenceRecord
from synthpref.sampling import stable_rng
from synthpref.spec import BinarizationSpec, BinarizationStrategy, TiesPolicy

EPSILON = 1e-9


class DropReason(StrEnum):
    """Why a prompt produced no pair (keys of the parse summary's counts)."""

    TOO_FEW_RATED = "too_few_rated"
    ALL_TIED = "all_tied"
    BELOW_MARGIN = "below_margin"


@dataclass(frozen=True)
class AnswerScore:
    """One rated answer: its candidate index, mean score and the valid per-aspect ratings."""

    index: int
    mean: float
    aspects: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    """Candidate indices of the chosen and the rejected answer."""

    chosen: int
    rejected: int


@dataclass(frozen=True)
class Outcome:
    """The pairs of one prompt, or the reason there are none."""

    pairs: list[Pair]
    dropped: DropReason | None = None


def to_candidate_order(ratings: Sequence[Parsed], order: Sequence[int]) -> list[Parsed]:
    """Undo the presentation order: ratings[n] is for answer n+1, i.e. candidate order[n]."""
    if len(ratings) != len(order):
        raise ValueError(f"{len(ratings)} ratings for {len(order)} answers")
    result: list[Parsed] = [RatingFailure.MISSING] * len(order)
    for position, candidate in enumerate(order):
        result[candidate] = ratings[position]
    return result


def score_answers(
    aspect_ratings: Mapping[str, Sequence[Parsed]], count: int
) -> list[AnswerScore | None]:
    """Per candidate, the mean over aspects with a valid rating; None when it has none.

    `aspect_ratings[aspect][i]` is candidate i's rating (candidate order); an aspect whose
    request failed is simply absent.
    """
    valid: list[dict[str, float]] = [{} for _ in range(count)]
    for aspect, values in aspect_ratings.items():
        if len(values) != count:
            raise ValueError(f"aspect {aspect!r}: {len(values)} ratings for {count} answers")
        for ratings, value in zip(valid, values, strict=False):
            if isinstance(value, float):
                ratings[aspect] = value
    return [
        AnswerScore(index, sum(ratings.values()) / len(ratings), ratings) if ratings else None
        for index, ratings in enumerate(valid)
    ]


def _qualifies(chosen: AnswerScore, rejected: AnswerScore, ties: TiesPolicy, margin: float) -> bool:
    gap = chosen.mean - rejected.mean
    if gap < margin - EPSILON:
        return False
    if abs(gap) <= EPSILON:
        return ties is TiesPolicy.KEEP
    return gap > 0


def _pick(rng: random.Random, group: list[AnswerScore]) -> AnswerScore:
    return group[0] if len(group) == 1 else rng.choice(group)


def binarize(
    scores: Sequence[AnswerScore | None],
    *,
    strategy: BinarizationStrategy,
    ties: TiesPolicy,
    min_margin: float,
    rng: random.Random,
) -> Outcome:
    """The pairs for one prompt's scored answers (see the module docstring for the rules)."""
    rated = [s for s in scores if s is not None]
    if len(rated) < 2:
        return Outcome([], DropReason.TOO_FEW_RATED)
    means = [s.mean for s in rated]
    top = max(means)
    if top - min(means) <= EPSILON and (ties is TiesPolicy.DROP or min_margin > EPSILON):
        return Outcome([], DropReason.ALL_TIED)
    if strategy is BinarizationStrategy.ALL_PAIRS:
        pairs: list[Pair] = []
        for position, first in enumerate(rated):
            for second in rated[position + 1 :]:
                high, low = (first, second) if first.mean >= second.mean else (second, first)
                if abs(first.mean - second.mean) <= EPSILON and rng.random() < 0.5:
                    high, low = low, high
                if _qualifies(high, low, ties, min_margin):
                    pairs.append(Pair(high.index, low.index))
        pairs.sort(key=lambda pair: (pair.chosen, pair.rejected))
        return Outcome(pairs) if pairs else Outcome([], DropReason.BELOW_MARGIN)
    chosen = _pick(rng, [s for s in rated if top - s.mean <= EPSILON])
    pool = [s for s in rated if s is not chosen and _qualifies(chosen, s, ties, min_margin)]
    if not pool:
        return Outcome([], DropReason.BELOW_MARGIN)
    if strategy is BinarizationStrategy.BEST_VS_WORST:
        lowest = min(s.mean for s in pool)
        rejected = _pick(rng, [s for s in pool if s.mean - lowest <= EPSILON])
    else:
        rejected = _pick(rng, pool)
    return Outcome([Pair(chosen.index, rejected.index)])


def binarize_prompt(
    prompt_id: str, scores: Sequence[AnswerScore | None], spec: BinarizationSpec
) -> Outcome:
    """`binarize` with the spec's settings and a Random seeded by (spec.seed, prompt_id)."""
    return binarize(
        scores,
        strategy=spec.strategy,
        ties=spec.ties,
        min_margin=spec.min_margin,
        rng=stable_rng(spec.seed, prompt_id, "binarize"),
    )


def _conversation(prompt: str, answer: str) -> list[MessageRecord]:
    return [
        MessageRecord(role="user", content=prompt),
        MessageRecord(role="assistant", content=answer),
    ]


def preference_row(
    row: MixRecord, pair: Pair, scores: Sequence[AnswerScore | None]
) -> PreferenceRecord:
    """The dataset row (`rows.PreferenceRow`, as its twin) for one pair of `row`'s candidates."""
    chosen, rejected = scores[pair.chosen], scores[pair.rejected]
    if chosen is None or rejected is None:
        raise ValueError(f"prompt {row.prompt_id!r}: pair {pair} includes an unrated answer")
    return PreferenceRecord(
        prompt_id=row.prompt_id,
        prompt=row.prompt,
        chosen=_conversation(row.prompt, row.candidates[pair.chosen].text),
        rejected=_conversation(row.prompt, row.candidates[pair.rejected].text),
        chosen_rating=chosen.mean,
        rejected_rating=rejected.mean,
        chosen_model=row.candidates[pair.chosen].model,
        rejected_model=row.candidates[pair.rejected].model,
        chosen_aspect_ratings=dict(chosen.aspects),
        rejected_aspect_ratings=dict(rejected.aspects),
        metadata=dict(row.metadata),
    )
