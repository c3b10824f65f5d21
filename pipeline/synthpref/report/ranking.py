"""Model ranking from the judge's ratings: a win-rate matrix and Bradley-Terry scores with 95%
intervals.

Pure. Called by `report.document` with the pairwise counts `RunStats` gathered: for every
prompt, every two judged answers from different models count once, as a win for the one with
the higher mean rating or as a tie.

Bradley-Terry: P(a beats b) = p_a / (p_a + p_b), a tie counting half a win each way. The
strengths are fitted by Hunter's MM algorithm with a weak prior (`PRIOR` virtual ties between
every two models), which keeps a model that never won finite and the fit defined when some
models never met. Scores are on the Elo scale (400 log10 p, centred on the mean); their
standard errors come from the inverse Fisher information (a pseudo-inverse, as the scores are
defined up to a constant) and the intervals are +/- 1.96 of them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PRIOR = 1.0
ELO = 400 / math.log(10)
Z95 = 1.959964


@dataclass(frozen=True)
class Ranking:
    """Models best first, with score, 95% interval and how many comparisons each took part in."""

    models: list[str]
    scores: list[float]
    low: list[float]
    high: list[float]
    comparisons: list[int]


def _count(table: Mapping[str, Counter[str]], a: str, b: str) -> int:
    row = table.get(a)
    return int(row.get(b, 0)) if row is not None else 0


def win_rates(
    models: Sequence[str], wins: Mapping[str, Counter[str]], ties: Mapping[str, Counter[str]]
) -> list[list[float | None]]:
    """rate[i][j]: the share of comparisons model i won against model j (a tie is half);
    None when the two never met (and on the diagonal)."""
    rates: list[list[float | None]] = []
    for a in models:
        row: list[float | None] = []
        for b in models:
            won, lost, tied = _count(wins, a, b), _count(wins, b, a), _count(ties, a, b)
            total = won + lost + tied
            row.append((won + tied / 2) / total if a != b and total else None)
        rates.append(row)
    return rates


def bradley_terry(
    models: Sequence[str],
    wins: Mapping[str, Counter[str]],
    ties: Mapping[str, Counter[str]],
    *,
    prior: float = PRIOR,
    iterations: int = 10_000,
    tolerance: float = 1e-10,
) -> Ranking | None:
    """Bradley-Terry scores of the models that took part in a comparison (None: fewer than 2)."""
    count = {
        m: sum(_count(wins, m, o) + _count(wins, o, m) + _count(ties, m, o) for o in models)
        for m in models
    }
    ranked = [m for m in models if count[m] > 0]
    size = len(ranked)
    if size < 2:
        return None
    won = np.zeros((size, size))
    games = np.zeros((size, size))
    for i, a in enumerate(ranked):
        for j, b in enumerate(ranked):
            if i == j:
                continue
            won[i, j] = _count(wins, a, b) + (_count(ties, a, b) + prior) / 2
            games[i, j] = _count(wins, a, b) + _count(wins, b, a) + _count(ties, a, b) + prior
    total_won = won.sum(axis=1)
    strength = np.ones(size)
    for _ in range(iterations):
        pair_sums = strength[:, None] + strength[None, :]
        denominator = (games / pair_sums).sum(axis=1)
        updated = total_won / denominator
        updated /= np.exp(np.log(updated).mean())
        done = float(np.max(np.abs(np.log(updated) - np.log(strength)))) < tolerance
        strength = updated
        if done:
            break
    theta = np.log(strength)
    chance = strength[:, None] / (strength[:, None] + strength[None, :])
    weight = games * chance * chance.T
    information = np.diag(weight.sum(axis=1)) - weight
    covariance = np.linalg.pinv(information)
    errors = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    scores = ELO * (theta - theta.mean())
    order = sorted(range(size), key=lambda i: -scores[i])
    return Ranking(
        models=[ranked[i] for i in order],
        scores=[float(scores[i]) for i in order],
        low=[float(scores[i] - Z95 * ELO * errors[i]) for i in order],
        high=[float(scores[i] + Z95 * ELO * errors[i]) for i in order],
        comparisons=[count[ranked[i]] for i in order],
    )
