"""Judge prices: a small table of known OpenAI judge models and the cost of token counts.

Used by `synthpref estimate` (`synthpref.estimate`), by the judge's budget (`synthpref.budget`,
the annotate engine) and by the operator's status. Pure: no I/O.

Prices are list prices in US dollars per million tokens (input, output) and the Batch API's
discount on both (0.5: half price). Source: OpenAI's pricing page
(https://platform.openai.com/docs/pricing, standard tier), as listed on 2025-08-07 (the gpt-5
launch), typed in by hand: the page itself cannot be fetched from where this was written. On
2026-12-01 the figures agreed with copies of the page on third-party price guides (gpt-4o,
-mini, gpt-4.1 family, gpt-5 family, o3). Prices change, so check them; a spec may give
its own with `judge.pricing`, which wins over the table. Cached-input prices are
ignored (the Batch API bills judge prompts as ordinary input), so an estimate errs high.

A dated snapshot name (`gpt-4o-2024-08-06`) is looked up as is first, then by its family
(`gpt-4o`), the longest known name it starts with followed by '-'.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2025-08-07"
PRICES_SOURCE = "https://platform.openai.com/docs/pricing"
BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens, and the fraction the Batch API takes off both."""

    input_per_million: float
    output_per_million: float
    batch_discount: float = BATCH_DISCOUNT
    source: str = f"price table of {PRICES_AS_OF}"

    def cost(self, input_tokens: int, output_tokens: int, *, batch: bool = True) -> float:
        """US dollars for these tokens (at Batch API prices when `batch`)."""
        factor = (1.0 - self.batch_discount) if batch else 1.0
        dollars = input_tokens * self.input_per_million + output_tokens * self.output_per_million
        return dollars * factor / 1_000_000

    def describe(self) -> str:
        return (
            f"${self.input_per_million:g} in / ${self.output_per_million:g} out per 1M tokens, "
            f"batch discount {self.batch_discount:.0%} ({self.source})"
        )


# model → (input, output) list price per 1M tokens; every one has the 50 % Batch API discount.
_TABLE: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o1": (15.00, 60.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}
PRICE_TABLE: dict[str, Price] = {name: Price(*prices) for name, prices in _TABLE.items()}


def known_price(model: str) -> Price | None:
    """The table's price of `model` (exactly, else its family), or None when not listed."""
    if model in PRICE_TABLE:
        return PRICE_TABLE[model]
    families = [name for name in PRICE_TABLE if model.startswith(name + "-")]
    return PRICE_TABLE[max(families, key=len)] if families else None


def price_for(model: str, override: Price | None) -> Price | None:
    """The spec's own price when given, else the table's; None when neither knows the model."""
    return override if override is not None else known_price(model)
