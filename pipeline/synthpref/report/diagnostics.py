"""Judge diagnostics: plain warnings when the judge's ratings show a strong bias.

Pure. Called by `report.document` with the run's `RunStats`. A warning needs both a large
effect (the thresholds below) and enough evidence that it is not chance (at least
`MIN_SAMPLES` observations and, where a test applies, a z-score of at least `MIN_Z`), so a
small run with an honest judge stays quiet.

- position bias: the mean rating of the answers shown at some position differs from that of
  another position by `POSITION_SPREAD` or more; or the chosen answer of a pair was shown
  before the rejected one in a share of requests that differs from 50% by `ORDER_SHARE_GAP`
  (the answers' order is drawn at random per aspect, so an unbiased judge gives about 50%);
- length bias: the correlation between a rating and the answer's length (log characters) is
  `LENGTH_CORRELATION` or more in size;
- rating collapse: one rating value is `COLLAPSE_SHARE` or more of all ratings;
- unreadable ratings: `UNPARSEABLE_RATE` or more of the ratings in the judge's replies could
  not be read (unparseable, missing, out of range; N/A answers are not counted here);
- failed requests: `FAILED_RATE` or more of the judge requests got no usable reply;
- truncated replies: `TRUNCATED_RATE` or more of the judge's replies stopped at maxTokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from synthpref.report.stats import RunStats

MIN_SAMPLES = 30
MIN_Z = 3.0
POSITION_SPREAD = 0.5
ORDER_SHARE_GAP = 0.15
LENGTH_CORRELATION = 0.3
COLLAPSE_SHARE = 0.8
UNPARSEABLE_RATE = 0.05
FAILED_RATE = 0.05
TRUNCATED_RATE = 0.05
NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class Finding:
    """One warning: which check fired, a plain sentence, and the measured value vs threshold."""

    kind: str
    message: str
    value: float
    threshold: float


def _causes(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda x: -x[1]))


def position_bias(stats: RunStats) -> list[Finding]:
    findings = []
    positions = {
        p: m for p, m in stats.position_ratings.items() if m.n >= MIN_SAMPLES and m.mean is not None
    }
    if len(positions) >= 2:
        high = max(positions, key=lambda p: positions[p].mean or 0.0)
        low = min(positions, key=lambda p: positions[p].mean or 0.0)
        spread = (positions[high].mean or 0.0) - (positions[low].mean or 0.0)
        error = math.hypot(
            positions[high].standard_error or 0.0, positions[low].standard_error or 0.0
        )
        if spread >= POSITION_SPREAD and (error == 0 or spread / error >= MIN_Z):
            findings.append(
                Finding(
                    "position_bias",
                    f"Position bias: the judge rates answers by where they are shown, not by "
                    f"what they say: answers shown as number {high} get {positions[high].mean:.2f} "
                    f"on average, those shown as number {low} get {positions[low].mean:.2f} "
                    f"(a spread of {spread:.2f}; {POSITION_SPREAD:g} or more warns).",
                    round(spread, 4),
                    POSITION_SPREAD,
                )
            )
    n = stats.pair_aspects
    if n >= MIN_SAMPLES:
        share = stats.chosen_before_rejected / n
        gap = abs(share - 0.5)
        if gap >= ORDER_SHARE_GAP and gap / math.sqrt(0.25 / n) >= MIN_Z:
            findings.append(
                Finding(
                    "pair_order",
                    f"Pairs follow the shown order: the chosen answer was shown before the "
                    f"rejected one in {share:.0%} of the judge's requests for the dataset's pairs "
                    f"(about 50% is expected, as the order is drawn at random).",
                    round(share, 4),
                    0.5 + ORDER_SHARE_GAP,
                )
            )
    return findings


def length_bias(stats: RunStats) -> list[Finding]:
    r = stats.length_rating.r
    n = stats.length_rating.n
    if r is None or n < MIN_SAMPLES or abs(r) < LENGTH_CORRELATION:
        return []
    if abs(math.atanh(max(min(r, 0.999999), -0.999999))) * math.sqrt(n - 3) < MIN_Z:
        return []
    direction = "longer" if r > 0 else "shorter"
    decided = stats.longer_wins["higher"] + stats.longer_wins["lower"]
    detail = ""
    if decided:
        share = stats.longer_wins["higher" if r > 0 else "lower"] / decided
        detail = (
            f"; of two answers shown together, the {direction} one was rated higher in {share:.0%}"
        )
    return [
        Finding(
            "length_bias",
            f"Length bias: {direction} answers get higher ratings (correlation {r:+.2f} between "
            f"rating and answer length over {n} ratings{detail}; {LENGTH_CORRELATION:g} or more "
            f"in size warns).",
            round(r, 4),
            LENGTH_CORRELATION,
        )
    ]


def rating_collapse(stats: RunStats) -> list[Finding]:
    total = sum(stats.rating_values.values())
    if total < MIN_SAMPLES:
        return []
    value, count = stats.rating_values.most_common(1)[0]
    share = count / total
    if share < COLLAPSE_SHARE:
        return []
    return [
        Finding(
            "rating_collapse",
            f"Rating collapse: {share:.0%} of all ratings are {value:g}, so the judge barely tells "
            f"answers apart ({COLLAPSE_SHARE:.0%} or more warns).",
            round(share, 4),
            COLLAPSE_SHARE,
        )
    ]


def unreadable(stats: RunStats) -> list[Finding]:
    findings = []
    failures = {k: n for k, n in stats.rating_failures.items() if k != NOT_APPLICABLE}
    valid = sum(stats.rating_values.values())
    ratings = valid + sum(stats.rating_failures.values())
    if ratings >= MIN_SAMPLES and failures:
        rate = sum(failures.values()) / ratings
        if rate >= UNPARSEABLE_RATE:
            findings.append(
                Finding(
                    "unparseable_ratings",
                    f"Unreadable ratings: {rate:.0%} of the ratings in the judge's replies could "
                    f"not be read ({_causes(failures)}); they are left out, never counted as a "
                    f"number ({UNPARSEABLE_RATE:.0%} or more warns).",
                    round(rate, 4),
                    UNPARSEABLE_RATE,
                )
            )
    if stats.requests >= MIN_SAMPLES and stats.request_failures:
        rate = sum(stats.request_failures.values()) / stats.requests
        if rate >= FAILED_RATE:
            findings.append(
                Finding(
                    "failed_requests",
                    f"Failed requests: {rate:.0%} of the judge requests got no usable reply "
                    f"({_causes(stats.request_failures)}; {FAILED_RATE:.0%} or more warns).",
                    round(rate, 4),
                    FAILED_RATE,
                )
            )
    replies = sum(stats.judge.finish_reasons.values())
    if replies >= MIN_SAMPLES:
        rate = stats.judge.finish_reasons["length"] / replies
        if rate >= TRUNCATED_RATE:
            findings.append(
                Finding(
                    "truncated_replies",
                    f"Truncated replies: {rate:.0%} of the judge's replies stopped at "
                    f"judge.maxTokens before they were finished ({TRUNCATED_RATE:.0%} or more "
                    f"warns); raise judge.maxTokens.",
                    round(rate, 4),
                    TRUNCATED_RATE,
                )
            )
    return findings


def findings(stats: RunStats) -> list[Finding]:
    """Every warning the run's judge deserves, most telling first."""
    return [
        *position_bias(stats),
        *length_bias(stats),
        *rating_collapse(stats),
        *unreadable(stats),
    ]
