"""What sharded stages share: summaries that add up over shards, and the resumable shard loop.

A stage's summary counts one shard; the run's summary is the sum over shards, whether a shard
was done by this call or committed earlier (its summary then comes from the commit marker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Self, TypeVar


@dataclass
class ShardSummary:
    """Counts over shards: integer fields add, dict fields (counts by kind) merge-add."""

    shards_done: int = 0
    shards_skipped: int = 0

    def add(self, other: Self) -> None:
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if isinstance(mine, dict):
                merged = Counter(mine)
                merged.update(theirs)
                setattr(self, item.name, dict(sorted(merged.items())))
            else:
                setattr(self, item.name, mine + theirs)

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> Self:
        """A summary read back from a commit marker (unknown keys ignored)."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in known})


SummaryT = TypeVar("SummaryT", bound=ShardSummary)


def run_shards(
    shards: Iterable[int],
    *,
    committed: Callable[[int], dict[str, Any] | None],
    run_shard: Callable[[int], SummaryT],
    total: SummaryT,
    on_shard: Callable[[int], None] | None = None,
) -> SummaryT:
    """Run `run_shard` on every shard not committed yet; add every shard's summary to `total`.

    `committed(shard)` returns the shard's commit info (whose "summary" holds what the shard
    counted when it was done) or None when the shard must be (re)done.
    """
    for shard in shards:
        info = committed(shard)
        if info is None:
            total.add(run_shard(shard))
        else:
            done = type(total).from_stored(info.get("summary", {}))
            done.shards_skipped, done.shards_done = 1, 0
            total.add(done)
        if on_shard is not None:
            on_shard(shard)
    return total
