"""A compact set of 64-bit digests: what `prepare` has seen, to drop duplicate prompts.

Called by `prepare.read_prompts` with each prompt id (16 hex digits: 64 bits of SHA-256). A
Python set of those id strings costs ~100 bytes a prompt (~100 MiB at 1M prompts; measure with
scripts/bench_mix_parse.py --prepare); here most digests sit in one sorted numpy array at 8
bytes each, and only the latest in a small Python set, merged into the array when it holds an
eighth as many (so the set stays a small part of the memory, and a digest takes part in about
nine merges over a run, each linear: the array and the sorted newcomers are two runs). Pure.
"""

from __future__ import annotations

import numpy as np

# The recent set is merged into the array once it holds this many digests, or an eighth of
# the array if that is more.
MIN_MERGE = 65_536


class DigestSet:
    """Membership of 64-bit unsigned integers (e.g. `int(prompt_id, 16)`)."""

    def __init__(self, min_merge: int = MIN_MERGE) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._min_merge = min_merge

    def __len__(self) -> int:
        return int(self._sorted.size) + len(self._recent)

    def __contains__(self, digest: int) -> bool:
        if digest in self._recent:
            return True
        index = int(self._sorted.searchsorted(np.uint64(digest)))
        return index < self._sorted.size and int(self._sorted[index]) == digest

    def add(self, digest: int) -> bool:
        """Add `digest` (0 <= digest < 2**64); False (and no change) when it was there."""
        if not 0 <= digest < 2**64:
            raise ValueError(f"digest {digest} is not a 64-bit unsigned integer")
        if digest in self:
            return False
        self._recent.add(digest)
        if len(self._recent) >= max(self._min_merge, self._sorted.size // 8):
            self._merge()
        return True

    def _merge(self) -> None:
        fresh = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        fresh.sort()
        merged = np.concatenate((self._sorted, fresh))
        merged.sort(kind="stable")  # timsort: merges the two sorted runs in linear time
        self._sorted = merged
        self._recent = set()

    def nbytes(self) -> int:
        """Bytes held by the array (the recent set is at most an eighth of the digests)."""
        return int(self._sorted.nbytes)
