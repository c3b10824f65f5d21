"""Unit tests of synthpref.dedup: the digest set answers as a Python set would, across merges."""

from __future__ import annotations

import random

import pytest

from synthpref.dedup import DigestSet


def test_membership_matches_a_python_set_across_merges() -> None:
    rng = random.Random(7)
    digests = DigestSet(min_merge=16)
    reference: set[int] = set()
    edges = [0, 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
    values = edges + [rng.getrandbits(64) for _ in range(3000)]
    values += rng.sample(values, 500)  # repeats, some long after their first add (merged)
    for value in values:
        assert digests.add(value) is (value not in reference)
        reference.add(value)
        assert value in digests
    assert len(digests) == len(reference)
    assert digests.nbytes() >= 8 * (len(reference) * 7 // 8)  # most of them in the array
    for probe in [rng.getrandbits(64) for _ in range(2000)] + [v ^ 1 for v in edges]:
        assert (probe in digests) is (probe in reference)


@pytest.mark.parametrize("bad", [-1, 2**64])
def test_refuses_what_is_not_64_bit_unsigned(bad: int) -> None:
    with pytest.raises(ValueError, match="64-bit"):
        DigestSet().add(bad)
