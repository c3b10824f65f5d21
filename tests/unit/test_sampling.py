"""Unit tests of synthpref.sampling: seeded, order-independent choice of k distinct answers."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from synthpref.rows import GenerationRow
from synthpref.sampling import (
    Selection,
    Shortfall,
    ShortfallReason,
    answer_order,
    choose_models,
    select,
    stable_rng,
)

ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
MODELS = [f"m{i}" for i in range(8)]


def gen(
    model: str, prompt_id: str = "p1", *, text: str | None = "", error: str | None = None
) -> GenerationRow:
    return GenerationRow(
        prompt_id=prompt_id,
        model=model,
        text=f"answer of {model}" if text == "" else text,
        error=error,
    )


def test_stable_rng_is_the_same_in_a_fresh_process() -> None:
    # Python's hash() is salted per process; the seed must not be.
    code = "from synthpref.sampling import stable_rng;print(stable_rng(7, 'p1', 'models').random())"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert float(other.stdout) == stable_rng(7, "p1", "models").random()


def test_stable_rng_separates_parts() -> None:
    assert stable_rng(0, "ab", "c").random() != stable_rng(0, "a", "bc").random()
    assert stable_rng(0, "p").random() != stable_rng(1, "p").random()


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_choice_is_reproducible_distinct_and_of_size_k(k: int) -> None:
    first = choose_models("p1", MODELS, k=k, seed=3)
    again = choose_models("p1", list(MODELS), k=k, seed=3)
    assert first == again
    assert isinstance(first, list)
    assert len(first) == k
    assert len(set(first)) == k
    assert set(first) <= set(MODELS)


def test_choice_does_not_depend_on_listing_order() -> None:
    for prompt in [f"p{i}" for i in range(50)]:
        forward = choose_models(prompt, MODELS, k=4, seed=1)
        backward = choose_models(prompt, list(reversed(MODELS)), k=4, seed=1)
        assert forward == backward


def test_choice_varies_with_seed_and_prompt() -> None:
    by_prompt = {tuple(choose_models(f"p{i}", MODELS, k=4, seed=0)) for i in range(30)}  # type: ignore[arg-type]
    by_seed = {tuple(choose_models("p1", MODELS, k=4, seed=s)) for s in range(30)}  # type: ignore[arg-type]
    assert len(by_prompt) > 20
    assert len(by_seed) > 20


def test_choice_is_roughly_uniform_over_models() -> None:
    counts: Counter[str] = Counter()
    for i in range(2000):
        chosen = choose_models(f"p{i}", MODELS, k=4, seed=0)
        assert isinstance(chosen, list)
        counts.update(chosen)
    # Each model is expected 1000 times (2000 prompts * 4 / 8).
    assert all(850 < counts[m] < 1150 for m in MODELS), counts


@pytest.mark.parametrize(
    ("available", "k", "on_policy", "reason"),
    [
        (["a"], 2, None, ShortfallReason.TOO_FEW_ANSWERS),
        (["a", "b", "c"], 4, None, ShortfallReason.TOO_FEW_ANSWERS),
        ([], 2, None, ShortfallReason.TOO_FEW_ANSWERS),
        (["a", "b", "c"], 2, "z", ShortfallReason.ON_POLICY_MISSING),
        (["z"], 2, "z", ShortfallReason.TOO_FEW_ANSWERS),
        ([], 2, "z", ShortfallReason.ON_POLICY_MISSING),
    ],
)
def test_too_few_answers_is_a_reported_shortfall(
    available: list[str], k: int, on_policy: str | None, reason: ShortfallReason
) -> None:
    result = choose_models("p1", available, k=k, seed=0, on_policy_model=on_policy)
    assert isinstance(result, Shortfall)
    assert result.reason is reason
    assert result.available == len(available)
    assert result.prompt_id == "p1"


def test_on_policy_model_is_always_one_side_and_not_always_first() -> None:
    firsts: Counter[bool] = Counter()
    others: Counter[str] = Counter()
    for i in range(400):
        pair = choose_models(f"p{i}", MODELS, k=4, seed=5, on_policy_model="m3")
        assert isinstance(pair, list)
        assert len(pair) == 2
        assert "m3" in pair
        assert len(set(pair)) == 2
        firsts[pair[0] == "m3"] += 1
        others[next(m for m in pair if m != "m3")] += 1
    assert firsts[True] > 100 and firsts[False] > 100
    assert set(others) == set(MODELS) - {"m3"}


def test_select_uses_only_usable_answers() -> None:
    rows = [
        gen("a"),
        gen("b", text=None, error="context length exceeded"),
        gen("c", text="   "),
        gen("d"),
        gen("e", text="fine", error="partial"),
    ]
    result = select("p1", rows, k=2, seed=0, aspects=ASPECTS)
    assert isinstance(result, Selection)
    assert {c.model for c in result.candidates} == {"a", "d"}
    assert {c.text for c in result.candidates} == {"answer of a", "answer of d"}
    short = select("p1", rows, k=3, seed=0, aspects=ASPECTS)
    assert isinstance(short, Shortfall)
    assert (short.reason, short.available, short.needed) == (ShortfallReason.TOO_FEW_ANSWERS, 2, 3)


def test_select_is_independent_of_row_order() -> None:
    rows = [gen(m, "p9") for m in MODELS]
    a = select("p9", rows, k=4, seed=2, aspects=ASPECTS, shuffle=True)
    b = select("p9", list(reversed(rows)), k=4, seed=2, aspects=ASPECTS, shuffle=True)
    assert a == b


@pytest.mark.parametrize(
    "rows",
    [
        [gen("a"), gen("a")],
        [gen("a"), gen("b", prompt_id="other")],
    ],
)
def test_select_rejects_inconsistent_input(rows: list[GenerationRow]) -> None:
    with pytest.raises(ValueError, match=r"p1|other"):
        select("p1", rows, k=2, seed=0, aspects=ASPECTS)


def test_order_is_identity_without_shuffle() -> None:
    assert answer_order("p1", ASPECTS, 4, seed=0, shuffle=False) == {
        a: [0, 1, 2, 3] for a in ASPECTS
    }


def test_shuffled_order_is_a_seeded_permutation_per_aspect() -> None:
    seen: set[tuple[int, ...]] = set()
    for i in range(20):
        order = answer_order(f"p{i}", ASPECTS, 4, seed=0, shuffle=True)
        assert order == answer_order(f"p{i}", ASPECTS, 4, seed=0, shuffle=True)
        assert set(order) == set(ASPECTS)
        for permutation in order.values():
            assert sorted(permutation) == [0, 1, 2, 3]
            seen.add(tuple(permutation))
    assert len(seen) > 10  # really shuffled, and not the same permutation for every aspect
