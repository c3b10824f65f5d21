"""Retry arithmetic and wording shared by everything that retries: the storage layer
(`storage_retry`), the chat backend and the Batch API client (`backends`, `annotate`).

Pure: delays and the words of a WARNING line, no sleeping and no I/O.
"""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    base_s: float,
    max_s: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (1-based): the server's retry-after when it
    gives one (capped at `max_s`), else exponential backoff with jitter in [50%, 100%]."""
    if retry_after is not None:
        return min(retry_after, max_s)
    ceiling = min(max_s, base_s * 2.0 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * rng.random())


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    if 10 <= number % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def seconds(value: float) -> str:
    """A delay for humans: `20 s`, `4.5 s`, `0.05 s`."""
    return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"
