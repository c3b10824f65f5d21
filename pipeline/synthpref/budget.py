"""The judge's spending cap (`judge.budget`): may the next batch go, and what to say at the cap.

Called by the annotate engine before it submits a request file (upload, then batch), by the
operator's observer (for the BudgetExhausted condition) and by `synthpref estimate`. Pure.

What counts: the actual usage of every fetched result (the service's `usage` on each line) plus,
for every batch in flight, an upper bound: its estimated input tokens
(`annotate.estimate.request_tokens`, which over-counts ordinary prose) and `maxTokens` output
tokens per request. A batch goes only when all of that plus the same bound of the batch itself
stays within the cap, so the run cannot end over it as long as the input estimate holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from synthpref.pricing import Price


@dataclass(frozen=True)
class Tokens:
    """Input (prompt) and output (completion) tokens."""

    input: int = 0
    output: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.input + other.input, self.output + other.output)


def upper_bound(input_tokens: int, requests: int, max_tokens: int) -> Tokens:
    """The most a batch of `requests` requests may use: its input and maxTokens per reply."""
    return Tokens(input_tokens, requests * max_tokens)


def usd(amount: float) -> str:
    """Dollars the way a person reads them: cents from $1 up, else four decimals."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


@dataclass(frozen=True)
class Cap:
    """judge.budget with the price it is counted at (None only without maxUsd)."""

    max_usd: float | None = None
    max_tokens: int | None = None
    price: Price | None = None

    def cost(self, tokens: Tokens) -> float | None:
        return None if self.price is None else self.price.cost(tokens.input, tokens.output)

    def fits(self, tokens: Tokens) -> bool:
        """Whether using `tokens` in all stays within the cap."""
        if self.max_tokens is not None and tokens.total > self.max_tokens:
            return False
        cost = self.cost(tokens)
        # A rounding margin: a cap equal to the cost of what is used must not hold the run.
        return self.max_usd is None or cost is None or cost <= self.max_usd * (1 + 1e-9)

    def describe(self) -> str:
        parts = []
        if self.max_usd is not None:
            parts.append(f"{usd(self.max_usd)} (judge.budget.maxUsd)")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens:,} tokens (judge.budget.maxTokens)")
        return " and ".join(parts)


@dataclass(frozen=True)
class Spending:
    """What the judge used so far (`spent`, actual) and may still use (`in_flight`, bound)."""

    spent: Tokens = Tokens()
    in_flight: Tokens = Tokens()

    def may_submit(self, cap: Cap | None, batch: Tokens) -> bool:
        return cap is None or cap.fits(self.spent + self.in_flight + batch)


@dataclass(frozen=True)
class BudgetHold:
    """Request files wait because their batch could take the run over the cap."""

    cap: Cap
    spending: Spending
    waiting_requests: int  # requests of the files held back
    next_batch: Tokens  # the bound of the smallest file held back

    @property
    def in_flight(self) -> bool:
        return self.spending.in_flight.total > 0

    def message(self, resume: str) -> str:
        spent = self.spending.spent
        cost = self.cap.cost(spent)
        used = f"{usd(cost)} ({spent.total:,} tokens)" if cost is not None else f"{spent.total:,}"
        flight = ""
        if self.in_flight:
            bound = self.cap.cost(self.spending.in_flight)
            flight = f" plus at most {self.spending.in_flight.total:,} tokens" + (
                f" ({usd(bound)})" if bound is not None else ""
            )
            flight += " in flight"
        nxt = self.cap.cost(self.next_batch)
        next_text = f"{self.next_batch.total:,} tokens" + (
            f", {usd(nxt)}" if nxt is not None else ""
        )
        return (
            f"judge budget reached: spent {used}{flight} of the cap of {self.cap.describe()}; "
            f"{self.waiting_requests:,} requests not submitted (the next batch may use up to "
            f"{next_text}); {resume}"
        )
