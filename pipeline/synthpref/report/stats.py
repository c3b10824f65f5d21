"""Streaming aggregates of a finished run: what the report's figures and warnings are made of.

Pure (no I/O). `report.collect` reads the run's artifacts shard by shard and feeds every row to
`RunStats`; each aggregate here is bounded by the numbers of models, aspects, answer positions,
rating values and histogram bins, never by the number of rows, so the report of a 1M-prompt run
needs no more memory than that of a 24-prompt one.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Distinct keys a free-text counter keeps (e.g. per-row error messages); the rest is "other".
MAX_KEYS = 12
OTHER = "other"
# Answer length bins, in characters (log-spaced); the last bin is open-ended.
CHAR_EDGES = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
LENGTH_BINS = 24  # completion-token bins between 0 and the largest maxTokens
MARGIN_EDGES = tuple(step / 4 for step in range(0, 17))  # 0, 0.25, ..., 4 (ratings are 1..5)
RATING_VALUES = (1, 2, 3, 4, 5)
EPSILON = 1e-9


@dataclass
class Histogram:
    """Counts per bin over fixed edges: bin i is [edges[i], edges[i+1]); the last bin also
    takes everything at or above the last edge."""

    edges: tuple[float, ...]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.edges)

    def add(self, value: float, weight: int = 1) -> None:
        index = max(bisect.bisect_right(self.edges, value) - 1, 0)
        self.counts[index] += weight

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The lower edge of the bin holding the q-quantile (None when empty)."""
        total = self.total
        if not total:
            return None
        seen = 0
        for edge, count in zip(self.edges, self.counts, strict=True):
            seen += count
            if seen >= q * total:
                return edge
        return self.edges[-1]


@dataclass
class Moments:
    """Count, mean and variance of a stream of numbers (sums, so shards merge by adding)."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.squares += value * value

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        if self.n < 2:
            return None
        return max(self.squares - self.total * self.total / self.n, 0.0) / (self.n - 1)

    @property
    def standard_error(self) -> float | None:
        variance = self.variance
        return math.sqrt(variance / self.n) if variance is not None else None


@dataclass
class Correlation:
    """Pearson correlation of a stream of (x, y) pairs."""

    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.syy += y * y
        self.sxy += x * y

    @property
    def r(self) -> float | None:
        if self.n < 3:
            return None
        vx = self.sxx - self.sx * self.sx / self.n
        vy = self.syy - self.sy * self.sy / self.n
        if vx <= EPSILON or vy <= EPSILON:
            return None  # one side is constant: no correlation to speak of
        return (self.sxy - self.sx * self.sy / self.n) / math.sqrt(vx * vy)


class BoundedCounter(Counter[str]):
    """A Counter of free-text keys that keeps at most MAX_KEYS of them (the rest: "other")."""

    def count(self, key: str, weight: int = 1) -> None:
        if key not in self and len(self) >= MAX_KEYS:
            key = OTHER
        self[key] += weight


def error_kind(error: str) -> str:
    """A short, bounded name for a per-row error message (its text before the first detail)."""
    head = error.split(":", 1)[0].split("(", 1)[0].strip()
    return head[:60] or "error"


def log_length(chars: int) -> float:
    return math.log10(1 + chars)


@dataclass
class ModelStats:
    """One answering model's answers."""

    rows: int = 0
    answered: int = 0
    errors: BoundedCounter = field(default_factory=BoundedCounter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_lengths: Histogram = field(default_factory=lambda: Histogram((0.0,)))
    char_lengths: Histogram = field(default_factory=lambda: Histogram(CHAR_EDGES))


@dataclass
class StageTime:
    """Work units of one stage (shards, request files) with a recorded timing."""

    units: int = 0
    busy_seconds: float = 0.0
    first_start: float | None = None
    last_end: float | None = None

    def add(self, started_at: float, seconds: float) -> None:
        self.units += 1
        self.busy_seconds += seconds
        end = started_at + seconds
        self.first_start = (
            started_at if self.first_start is None else min(self.first_start, started_at)
        )
        self.last_end = end if self.last_end is None else max(self.last_end, end)

    @property
    def wall_seconds(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start


@dataclass
class JudgeUsage:
    """What the judge's result lines say about the judge itself (every attempt counted)."""

    lines: int = 0
    ok: int = 0
    errors: BoundedCounter = field(default_factory=BoundedCounter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: Counter[str] = field(default_factory=Counter)
    served_models: BoundedCounter = field(default_factory=BoundedCounter)
    fingerprints: BoundedCounter = field(default_factory=BoundedCounter)


@dataclass
class RunStats:
    """Every aggregate of the report. Feed it with the `add_*` methods, in any order of shards."""

    models: list[str]
    aspects: list[str]
    max_tokens: int
    answers: dict[str, ModelStats] = field(default_factory=dict)
    # judge: ratings as the judge gave them (before the answer order is undone)
    position_ratings: dict[int, Moments] = field(default_factory=dict)
    rating_values: Counter[float] = field(default_factory=Counter)
    aspect_model_ratings: dict[str, dict[str, Counter[int]]] = field(default_factory=dict)
    rating_failures: Counter[str] = field(default_factory=Counter)
    request_failures: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    replies: int = 0
    length_rating: Correlation = field(default_factory=Correlation)
    length_bins: dict[int, Moments] = field(default_factory=dict)
    longer_wins: Counter[str] = field(default_factory=Counter)  # higher / lower / tie
    judge: JudgeUsage = field(default_factory=JudgeUsage)
    # prompts
    prompts_mixed: int = 0
    prompts_judged: int = 0
    prompts_rated: int = 0
    # model ranking: wins[a][b] = prompts where a's mean rating beat b's; ties counted apart
    wins: dict[str, Counter[str]] = field(default_factory=dict)
    ties: dict[str, Counter[str]] = field(default_factory=dict)
    # pairs
    pairs: int = 0
    tied_pairs: int = 0
    margins: Histogram = field(default_factory=lambda: Histogram(MARGIN_EDGES))
    chosen_models: Counter[str] = field(default_factory=Counter)
    rejected_models: Counter[str] = field(default_factory=Counter)
    chosen_before_rejected: int = 0  # (pair, aspect) where the chosen answer was shown earlier
    chosen_first: int = 0  # (pair, aspect) where the chosen answer was shown first of all
    pair_aspects: int = 0
    expected_first: float = 0.0  # sum over (pair, aspect) of 1/k: chosen_first's expectation
    # time per stage
    stage_times: dict[str, StageTime] = field(default_factory=dict)
    token_edges: tuple[float, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.token_edges = tuple(
            round(i * self.max_tokens / LENGTH_BINS, 3) for i in range(LENGTH_BINS)
        )
        for model in self.models:
            self._model(model)

    def _model(self, model: str) -> ModelStats:
        if model not in self.answers:
            self.answers[model] = ModelStats(token_lengths=Histogram(self.token_edges))
        return self.answers[model]

    # ------------------------------------------------------------ answers

    def add_answer(
        self,
        model: str,
        *,
        text: str | None,
        error: str | None,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        stats = self._model(model)
        stats.rows += 1
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.finish_reasons[finish_reason or "none"] += 1
        if error is not None or not (text or "").strip():
            stats.errors.count(error_kind(error or "empty answer"))
            return
        stats.answered += 1
        stats.token_lengths.add(completion_tokens)
        stats.char_lengths.add(len(text or ""))

    # ------------------------------------------------------------ judge

    def add_result_line(
        self,
        *,
        ok: bool,
        error_code: str | None,
        usage: Mapping[str, Any] | None,
        finish_reason: str | None,
        served_model: str | None,
        fingerprint: str | None,
    ) -> None:
        judge = self.judge
        judge.lines += 1
        if ok:
            judge.ok += 1
        else:
            judge.errors.count(error_code or "error")
        if usage:
            judge.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            judge.completion_tokens += int(usage.get("completion_tokens") or 0)
        if ok:
            judge.finish_reasons[finish_reason or "none"] += 1
        if served_model:
            judge.served_models.count(served_model)
        if fingerprint:
            judge.fingerprints.count(fingerprint)

    def add_request_failure(self, kind: str) -> None:
        self.requests += 1
        self.request_failures[kind] += 1

    def add_reply(
        self,
        aspect: str,
        shown: Sequence[tuple[str, int, float | str]],
    ) -> None:
        """One parsed judge reply: per shown position (1-based order), the answer's model, its
        length in characters, and its rating (a float) or the failure's name."""
        self.requests += 1
        self.replies += 1
        by_model = self.aspect_model_ratings.setdefault(aspect, {})
        rated: list[tuple[int, float]] = []
        for position, (model, chars, value) in enumerate(shown, start=1):
            if isinstance(value, str):
                self.rating_failures[value] += 1
                continue
            self.position_ratings.setdefault(position, Moments()).add(value)
            self.rating_values[round(value, 1)] += 1
            by_model.setdefault(model, Counter())[round(value)] += 1
            x = log_length(chars)
            self.length_rating.add(x, value)
            bin_index = max(bisect.bisect_right(CHAR_EDGES, chars) - 1, 0)
            self.length_bins.setdefault(bin_index, Moments()).add(value)
            rated.append((chars, value))
        for i, (chars_a, value_a) in enumerate(rated):
            for chars_b, value_b in rated[i + 1 :]:
                if chars_a == chars_b:
                    continue
                longer, shorter = (value_a, value_b) if chars_a > chars_b else (value_b, value_a)
                if abs(longer - shorter) <= EPSILON:
                    self.longer_wins["tie"] += 1
                else:
                    self.longer_wins["higher" if longer > shorter else "lower"] += 1

    def add_prompt(
        self,
        models: Sequence[str],
        scores: Sequence[float | None],
        *,
        judged: bool,
    ) -> None:
        """One mixed prompt: its candidates' models and mean ratings (None: unrated)."""
        self.prompts_mixed += 1
        self.prompts_judged += judged
        rated = [(m, s) for m, s in zip(models, scores, strict=True) if s is not None]
        if len(rated) >= 2:
            self.prompts_rated += 1
        for i, (model_a, score_a) in enumerate(rated):
            for model_b, score_b in rated[i + 1 :]:
                if model_a == model_b:
                    continue
                if abs(score_a - score_b) <= EPSILON:
                    self.ties.setdefault(model_a, Counter())[model_b] += 1
                    self.ties.setdefault(model_b, Counter())[model_a] += 1
                elif score_a > score_b:
                    self.wins.setdefault(model_a, Counter())[model_b] += 1
                else:
                    self.wins.setdefault(model_b, Counter())[model_a] += 1

    # ------------------------------------------------------------ pairs

    def add_pair(
        self,
        *,
        chosen_model: str,
        rejected_model: str,
        margin: float,
        positions: Sequence[tuple[int, int, int]],
    ) -> None:
        """One dataset row; `positions` lists per aspect the 1-based shown positions of the
        chosen and the rejected answer and the number of answers shown."""
        self.pairs += 1
        if abs(margin) <= EPSILON:
            self.tied_pairs += 1
        self.margins.add(margin)
        self.chosen_models[chosen_model] += 1
        self.rejected_models[rejected_model] += 1
        for chosen, rejected, shown in positions:
            self.pair_aspects += 1
            self.chosen_before_rejected += chosen < rejected
            self.chosen_first += chosen == 1
            self.expected_first += 1 / shown

    # ------------------------------------------------------------ time

    def add_timing(self, stage: str, started_at: float, seconds: float) -> None:
        self.stage_times.setdefault(stage, StageTime()).add(started_at, seconds)
