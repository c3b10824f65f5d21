"""Unit tests of synthpref.binarize: mean over valid aspects, strategies, ties and margins."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from synthpref.binarize import (
    AnswerScore,
    DropReason,
    Outcome,
    Pair,
    binarize,
    binarize_prompt,
    preference_row,
    score_answers,
    to_candidate_order,
)
from synthpref.ratings import Parsed, RatingFailure
from synthpref.records import CandidateRecord, MixRecord
from synthpref.spec import BinarizationSpec, BinarizationStrategy, TiesPolicy

U = RatingFailure.UNPARSEABLE
M = RatingFailure.MISSING
NA = RatingFailure.NOT_APPLICABLE
OOR = RatingFailure.OUT_OF_RANGE

RANDOM = BinarizationStrategy.BEST_VS_RANDOM
WORST = BinarizationStrategy.BEST_VS_WORST
ALL = BinarizationStrategy.ALL_PAIRS
DROP = TiesPolicy.DROP
KEEP = TiesPolicy.KEEP


@pytest.mark.parametrize(
    ("ratings", "expected_means"),
    [
        ({"a": [4.0, 2.0], "b": [2.0, 2.0]}, [3.0, 2.0]),
        ({"a": [4.0, 2.0], "b": [NA, 4.0]}, [4.0, 3.0]),  # N/A left out of the mean, not -1
        ({"a": [U, 5.0], "b": [M, 3.0], "c": [OOR, 1.0]}, [None, 3.0]),  # no valid rating: unrated
        ({"a": [5.0, 1.0]}, [5.0, 1.0]),  # an aspect whose request failed is absent
        ({}, [None, None]),
        ({"a": [1.0, 5.0], "b": [2.0, U], "c": [3.0, NA], "d": [5.0, 4.0]}, [2.75, 4.5]),
    ],
)
def test_mean_over_valid_aspects(
    ratings: dict[str, list[Parsed]], expected_means: list[float | None]
) -> None:
    scores = score_answers(ratings, 2)
    assert [None if s is None else s.mean for s in scores] == expected_means
    for index, score in enumerate(scores):
        if score is not None:
            assert score.index == index
            assert all(isinstance(v, float) for v in score.aspects.values())
            assert set(score.aspects) == {
                a for a, v in ratings.items() if isinstance(v[index], float)
            }


def test_score_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="3 ratings for 2 answers"):
        score_answers({"a": [1.0, 2.0, 3.0]}, 2)


@pytest.mark.parametrize(
    ("ratings", "order", "expected"),
    [
        ([1.0, 2.0, 3.0], [0, 1, 2], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0], [2, 0, 1], [2.0, 3.0, 1.0]),
        ([NA, 5.0], [1, 0], [5.0, NA]),
    ],
)
def test_to_candidate_order_undoes_the_permutation(
    ratings: list[Parsed], order: list[int], expected: list[Parsed]
) -> None:
    assert to_candidate_order(ratings, order) == expected


def scores(*means: float | None) -> list[AnswerScore | None]:
    return [None if m is None else AnswerScore(i, m) for i, m in enumerate(means)]


def run(
    means: list[float | None],
    strategy: BinarizationStrategy,
    ties: TiesPolicy = DROP,
    margin: float = 0.0,
    seed: int = 0,
) -> Outcome:
    return binarize(
        scores(*means), strategy=strategy, ties=ties, min_margin=margin, rng=random.Random(seed)
    )


@pytest.mark.parametrize(
    ("means", "strategy", "ties", "margin", "expected"),
    [
        # best vs worst: a single deterministic pair
        ([3.0, 5.0, 1.0, 4.0], WORST, DROP, 0.0, Outcome([Pair(1, 2)])),
        ([3.0, 5.0, 1.0, 4.0], WORST, DROP, 4.0, Outcome([Pair(1, 2)])),
        ([3.0, 5.0, 1.0, 4.0], WORST, DROP, 4.5, Outcome([], DropReason.BELOW_MARGIN)),
        ([None, 5.0, None, 2.0], WORST, DROP, 0.0, Outcome([Pair(1, 3)])),
        # all pairs: every strictly ordered pair over the margin, higher score chosen
        ([3.0, 5.0, 1.0], ALL, DROP, 0.0, Outcome([Pair(0, 2), Pair(1, 0), Pair(1, 2)])),
        ([3.0, 5.0, 1.0], ALL, DROP, 2.0, Outcome([Pair(0, 2), Pair(1, 0), Pair(1, 2)])),
        ([3.0, 5.0, 1.0], ALL, DROP, 2.5, Outcome([Pair(1, 2)])),
        ([3.0, 5.0, 1.0], ALL, DROP, 4.5, Outcome([], DropReason.BELOW_MARGIN)),
        ([4.0, 4.0, 2.0], ALL, DROP, 0.0, Outcome([Pair(0, 2), Pair(1, 2)])),
        # random: the only lower answer over the margin
        ([2.0, 5.0, 4.5], RANDOM, DROP, 1.0, Outcome([Pair(1, 0)])),
        ([2.0, 5.0, 4.5], RANDOM, DROP, 3.5, Outcome([], DropReason.BELOW_MARGIN)),
        # too few rated
        ([None, 5.0, None, None], RANDOM, DROP, 0.0, Outcome([], DropReason.TOO_FEW_RATED)),
        ([None, None], WORST, KEEP, 0.0, Outcome([], DropReason.TOO_FEW_RATED)),
        ([4.0], ALL, DROP, 0.0, Outcome([], DropReason.TOO_FEW_RATED)),
        # all tied
        ([3.0, 3.0, 3.0], RANDOM, DROP, 0.0, Outcome([], DropReason.ALL_TIED)),
        ([3.0, 3.0, None], ALL, DROP, 0.0, Outcome([], DropReason.ALL_TIED)),
        ([3.0, 3.0], WORST, KEEP, 0.5, Outcome([], DropReason.ALL_TIED)),
        # float noise: 1e-12 apart is a tie
        ([3.0, 3.0 + 1e-12], RANDOM, DROP, 0.0, Outcome([], DropReason.ALL_TIED)),
    ],
)
def test_strategies_table(
    means: list[float | None],
    strategy: BinarizationStrategy,
    ties: TiesPolicy,
    margin: float,
    expected: Outcome,
) -> None:
    assert run(means, strategy, ties, margin) == expected


def test_margin_uses_a_tolerance_for_float_means() -> None:
    # (5+5+4)/3 - (4+4+3)/3 is 1.0 up to rounding; a margin of 1.0 must accept it.
    high = sum([5.0, 5.0, 4.0]) / 3
    low = sum([4.0, 4.0, 3.0]) / 3
    assert run([high, low], WORST, margin=1.0) == Outcome([Pair(0, 1)])


def test_best_vs_random_draws_among_strictly_lower() -> None:
    rejected: Counter[int] = Counter()
    for seed in range(300):
        outcome = run([5.0, 4.0, 3.0, 5.0 - 1e-3], RANDOM, seed=seed)
        assert len(outcome.pairs) == 1
        assert outcome.pairs[0].chosen == 0
        rejected[outcome.pairs[0].rejected] += 1
    assert set(rejected) == {1, 2, 3}
    assert min(rejected.values()) > 60


def test_tied_best_with_drop_chooses_one_of_them_and_never_pairs_the_tie() -> None:
    chosen: Counter[int] = Counter()
    for seed in range(200):
        for strategy in (RANDOM, WORST):
            (pair,) = run([5.0, 2.0, 5.0, 1.0], strategy, DROP, seed=seed).pairs
            chosen[pair.chosen] += 1
            assert pair.chosen in (0, 2)
            assert pair.rejected in (1, 3)
            if strategy is WORST:
                assert pair.rejected == 3
    assert chosen[0] > 100 and chosen[2] > 100


def test_tied_best_with_keep_may_pair_the_tie() -> None:
    pairs: Counter[tuple[int, int]] = Counter()
    for seed in range(400):
        (pair,) = run([5.0, 2.0, 5.0], RANDOM, KEEP, seed=seed).pairs
        pairs[(pair.chosen, pair.rejected)] += 1
    assert set(pairs) == {(0, 2), (2, 0), (0, 1), (2, 1)}
    # best-vs-worst still takes the lowest, even with keep
    for seed in range(20):
        assert run([5.0, 2.0, 5.0], WORST, KEEP, seed=seed).pairs[0].rejected == 1


def test_all_tied_with_keep_and_no_margin_forms_a_pair() -> None:
    outcome = run([3.0, 3.0], RANDOM, KEEP)
    assert outcome.dropped is None
    assert {outcome.pairs[0].chosen, outcome.pairs[0].rejected} == {0, 1}
    all_pairs = run([3.0, 3.0, 3.0], ALL, KEEP)
    assert len(all_pairs.pairs) == 3
    assert {frozenset((p.chosen, p.rejected)) for p in all_pairs.pairs} == {
        frozenset(x) for x in ((0, 1), (0, 2), (1, 2))
    }


def test_keep_with_margin_never_pairs_equal_scores() -> None:
    for strategy in (RANDOM, WORST, ALL):
        for seed in range(20):
            outcome = run([5.0, 5.0, 3.0], strategy, KEEP, margin=1.0, seed=seed)
            assert outcome.pairs
            assert all(p.rejected == 2 for p in outcome.pairs)


@pytest.mark.parametrize("strategy", [RANDOM, WORST, ALL])
@pytest.mark.parametrize("ties", [DROP, KEEP])
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0, 2.0])
def test_every_pair_respects_the_margin_and_order(
    strategy: BinarizationStrategy, ties: TiesPolicy, margin: float
) -> None:
    rng = random.Random(1)
    for trial in range(100):
        means: list[float | None] = [
            None if rng.random() < 0.15 else rng.choice([1.0, 2.0, 2.5, 3.0, 4.0, 5.0])
            for _ in range(4)
        ]
        outcome = run(means, strategy, ties, margin, seed=trial)
        assert (outcome.dropped is None) == bool(outcome.pairs)
        for pair in outcome.pairs:
            chosen, rejected = means[pair.chosen], means[pair.rejected]
            assert chosen is not None and rejected is not None
            assert pair.chosen != pair.rejected
            assert chosen - rejected >= margin - 1e-9
            if ties is DROP:
                assert chosen > rejected


def test_binarize_prompt_is_seeded_per_prompt() -> None:
    spec = BinarizationSpec(seed=3)
    means = scores(5.0, 4.0, 3.0, 2.0)
    first = [binarize_prompt(f"p{i}", means, spec) for i in range(50)]
    assert first == [binarize_prompt(f"p{i}", means, spec) for i in range(50)]
    assert len({o.pairs[0].rejected for o in first}) == 3


def test_preference_row() -> None:
    row = MixRecord(
        prompt_id="p1",
        prompt="Why is the sky blue?",
        metadata={"source": "x", "lang": "en"},
        candidates=[
            CandidateRecord(model="a", text="Rayleigh."),
            CandidateRecord(model="b", text="Paint."),
        ],
        order={"honesty": [1, 0]},
    )
    scored = score_answers({"honesty": [5.0, 1.0], "helpfulness": [4.0, NA]}, 2)
    out = preference_row(row, Pair(0, 1), scored)
    assert [msgspec.structs.asdict(m) for m in out.chosen] == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh."},
    ]
    assert out.rejected[1].content == "Paint."
    assert (out.chosen_model, out.rejected_model) == ("a", "b")
    assert (out.chosen_rating, out.rejected_rating) == (4.5, 1.0)
    assert out.chosen_aspect_ratings == {"honesty": 5.0, "helpfulness": 4.0}
    assert out.rejected_aspect_ratings == {"honesty": 1.0}
    assert out.metadata == {"source": "x", "lang": "en"}
    with pytest.raises(ValueError, match="unrated"):
        preference_row(row, Pair(0, 1), [scored[0], None])
