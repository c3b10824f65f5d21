"""The report as data: sections of figures, tables and warnings, built from the run's aggregates.

Pure. Called by `report.writer` with the `RunStats` that `report.collect` gathered and the run
summary `parse` wrote. The result is `report/report.json` as is, and `report.html` draws every
figure of it, so each number on the page is in the JSON too.

A figure is `{"id", "title", "kind", "caption", "data"}` where `kind` says how `data` is drawn:

- `bars`: `categories`, `series` [{`name`, `values`, optional `errors`}], `xlabel`, `ylabel`,
  `horizontal`, `stacked`, `percent`, optional `reference` (a dashed line at that value) and
  `limits` (of the value axis);
- `histogram`: `edges` (bin i is [edges[i], edges[i+1]), the last one open), `series`
  [{`name`, `counts`}], `xlabel`, `ylabel`;
- `heatmap`: `rows`, `columns`, `values` (None: no data), `percent`, `xlabel`, `ylabel`;
- `intervals`: `labels`, `values`, `low`, `high`, `xlabel`.

A table is `{"id", "title", "columns", "rows"}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from synthpref.outcome import LOSS_CAUSES
from synthpref.report.diagnostics import Finding, findings
from synthpref.report.ranking import bradley_terry, win_rates
from synthpref.report.stats import CHAR_EDGES, Moments, RunStats
from synthpref.spec import PreferenceRunSpec

Figure = dict[str, Any]
Table = dict[str, Any]
Z95 = 1.959964
RATING_LIMITS = [0.8, 5.2]  # the value axis of mean ratings (1..5)


def _figure(figure_id: str, title: str, kind: str, caption: str, **data: Any) -> Figure:
    return {"id": figure_id, "title": title, "kind": kind, "caption": caption, "data": data}


def _table(
    table_id: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Table:
    return {
        "id": table_id,
        "title": title,
        "columns": list(columns),
        "rows": [list(r) for r in rows],
    }


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _int(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key) or 0
    return int(value)


def _counts(value: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


# ----------------------------------------------------------------------------- sections


def funnel_section(stats: RunStats, summary: Mapping[str, Any]) -> dict[str, Any]:
    prepare = summary.get("prepare") or {}
    mix = summary.get("mix") or {}
    prompts = _int(prepare, "prompts") or _int(mix, "prompts")
    steps: list[tuple[str, int]] = [("prompts", prompts)]
    steps += [(f"answered by {m}", stats.answers[m].answered) for m in stats.models]
    steps += [
        ("mixed (enough answers)", _int(mix, "prompts_mixed")),
        ("judged (a reply)", stats.prompts_judged),
        ("rated (2+ rated answers)", stats.prompts_rated),
        ("with a pair", _int(summary, "prompts_with_pairs")),
    ]
    drops: list[tuple[str, int]] = []
    if _int(prepare, "duplicates"):
        drops.append(("prepare: duplicate prompts removed", _int(prepare, "duplicates")))
    if _int(prepare, "malformed"):
        drops.append(("prepare: malformed lines skipped", _int(prepare, "malformed")))
    for model in stats.models:
        for kind, n in sorted(stats.answers[model].errors.items()):
            drops.append((f"answers of {model}: {kind}", n))
    for groups, label in (
        (mix.get("prompts_lacking"), "mix: prompts lacking answers"),
        (summary.get("request_failures"), "judge: requests failed"),
        (summary.get("rating_failures"), "judge: ratings"),
        (summary.get("prompts_dropped"), "binarize: prompts without a pair"),
    ):
        for kind, n in sorted(_counts(groups).items()):
            drops.append((f"{label}: {kind}", n))
    losses = _counts(summary.get("losses"))
    outcome = summary.get("outcome") or {}
    text = [
        f"{prompts} prompts gave {_int(summary, 'pairs')} pairs from "
        f"{_int(summary, 'prompts_with_pairs')} prompts.",
    ]
    if outcome:
        verdict = "met" if outcome.get("accepted", True) else "failed"
        text.append(
            f"The run {verdict} its acceptance check (spec.acceptance): "
            f"{float(outcome.get('pair_fraction', 0)):.0%} of prompts gave a pair "
            f"(at least {float(outcome.get('min_pair_fraction', 0)):.0%} needed), "
            f"{float(outcome.get('failed_request_fraction', 0)):.0%} of judge requests failed "
            f"(at most {float(outcome.get('max_failed_request_fraction', 0)):.0%} allowed)."
        )
        text += [f"Rejected: {problem}" for problem in outcome.get("problems") or []]
    figures = [
        _figure(
            "funnel",
            "From prompts to pairs",
            "bars",
            "How many prompts are left after each step (answers per model, then the prompts "
            "mixed, judged, rated and paired).",
            categories=[name for name, _ in steps],
            series=[{"name": "prompts", "values": [n for _, n in steps]}],
            xlabel="prompts",
            ylabel="",
            horizontal=True,
            stacked=False,
            percent=False,
        ),
        _figure(
            "drops",
            "Every drop, by cause",
            "bars",
            "Items lost or left out on the way, by stage and cause (counts of prompts, answers, "
            "requests or ratings, as named).",
            categories=[name for name, _ in drops] or ["nothing dropped"],
            series=[{"name": "count", "values": [n for _, n in drops] or [0]}],
            xlabel="count",
            ylabel="",
            horizontal=True,
            stacked=False,
            percent=False,
        ),
    ]
    tables = [
        _table(
            "losses",
            "Losses by cause (dataset/summary.json)",
            ["cause", "count", "meaning"],
            [[cause, n, LOSS_CAUSES.get(cause, cause)] for cause, n in losses.items()]
            or [["none", 0, "nothing was lost"]],
        )
    ]
    return {"id": "funnel", "title": "Funnel", "text": text, "figures": figures, "tables": tables}


def models_section(stats: RunStats) -> dict[str, Any]:
    models = stats.models
    reasons = sorted({r for m in models for r in stats.answers[m].finish_reasons})
    figures = [
        _figure(
            "answer_lengths",
            "Answer length (completion tokens)",
            "histogram",
            "Completion tokens of each model's usable answers; answers at the right end "
            "stopped at sampling.maxTokens.",
            edges=list(stats.token_edges),
            series=[{"name": m, "counts": stats.answers[m].token_lengths.counts} for m in models],
            xlabel="completion tokens",
            ylabel="answers",
        ),
        _figure(
            "finish_reasons",
            "Finish reasons",
            "bars",
            "Why each model stopped answering (length: cut at sampling.maxTokens).",
            categories=list(models),
            series=[
                {"name": r, "values": [stats.answers[m].finish_reasons.get(r, 0) for m in models]}
                for r in reasons
            ]
            or [{"name": "none", "values": [0 for _ in models]}],
            xlabel="",
            ylabel="answers",
            horizontal=False,
            stacked=True,
            percent=False,
        ),
    ]
    for aspect in stats.aspects:
        by_model = stats.aspect_model_ratings.get(aspect, {})
        series = []
        for model in models:
            counts: Mapping[int, int] = by_model.get(model, {})
            total = sum(counts.values())
            series.append(
                {"name": model, "values": [_share(counts.get(v, 0), total) for v in range(1, 6)]}
            )
        figures.append(
            _figure(
                f"ratings_{aspect}",
                f"Ratings for {aspect.replace('_', ' ')}",
                "bars",
                f"Share of each model's {aspect} ratings at each value (1 worst, 5 best).",
                categories=[str(v) for v in range(1, 6)],
                series=series,
                xlabel="rating",
                ylabel="share of the model's ratings",
                horizontal=False,
                stacked=False,
                percent=True,
            )
        )
    rows = []
    for model in models:
        answers = stats.answers[model]
        ratings = [
            c
            for a in stats.aspects
            for c in [stats.aspect_model_ratings.get(a, {}).get(model)]
            if c
        ]
        rated = sum(sum(c.values()) for c in ratings)
        mean = sum(v * n for c in ratings for v, n in c.items()) / rated if rated else None
        rows.append(
            [
                model,
                answers.rows,
                answers.answered,
                answers.rows - answers.answered,
                _round(answers.completion_tokens / answers.rows, 1) if answers.rows else None,
                answers.token_lengths.quantile(0.5),
                rated,
                _round(mean, 2),
            ]
        )
    tables = [
        _table(
            "models",
            "Answers per model",
            [
                "model",
                "rows",
                "usable",
                "failed",
                "mean completion tokens",
                "median tokens (bin)",
                "ratings",
                "mean rating",
            ],
            rows,
        )
    ]
    return {
        "id": "models",
        "title": "Models",
        "text": [f"{len(models)} models; ratings on {', '.join(stats.aspects)}."],
        "figures": figures,
        "tables": tables,
    }


def ranking_section(stats: RunStats) -> dict[str, Any]:
    models = stats.models
    rates = win_rates(models, stats.wins, stats.ties)
    ranking = bradley_terry(models, stats.wins, stats.ties)
    figures = [
        _figure(
            "win_rates",
            "Win rate between models",
            "heatmap",
            "Share of prompts where the row's model got a higher mean rating than the column's "
            "(ties count half), over every two answers judged together.",
            rows=list(models),
            columns=list(models),
            values=[[_round(v, 4) for v in row] for row in rates],
            percent=True,
            xlabel="against",
            ylabel="model",
        )
    ]
    text = []
    tables = []
    if ranking is not None:
        figures.append(
            _figure(
                "bradley_terry",
                "Bradley-Terry scores (Elo scale) with 95% intervals",
                "intervals",
                "Scores fitted to every comparison (a weak prior of one tie per pair of models); "
                "400 points is 10:1 odds. Overlapping intervals: no clear order.",
                labels=ranking.models,
                values=[_round(v, 1) for v in ranking.scores],
                low=[_round(v, 1) for v in ranking.low],
                high=[_round(v, 1) for v in ranking.high],
                xlabel="score (Elo scale, mean 0)",
            )
        )
        tables.append(
            _table(
                "ranking",
                "Ranking",
                ["rank", "model", "score", "95% low", "95% high", "comparisons"],
                [
                    [i + 1, m, _round(s, 1), _round(lo, 1), _round(hi, 1), n]
                    for i, (m, s, lo, hi, n) in enumerate(
                        zip(
                            ranking.models,
                            ranking.scores,
                            ranking.low,
                            ranking.high,
                            ranking.comparisons,
                            strict=True,
                        )
                    )
                ],
            )
        )
    else:
        text.append("Too few comparisons between models to rank them.")
    return {
        "id": "ranking",
        "title": "Model ranking",
        "text": text,
        "figures": figures,
        "tables": tables,
    }


def pairs_section(
    stats: RunStats, spec: PreferenceRunSpec, summary: Mapping[str, Any]
) -> dict[str, Any]:
    binarization = spec.binarization
    dropped = _counts(summary.get("prompts_dropped"))
    text = [
        f"{stats.pairs} pairs made by strategy {binarization.strategy.value} (ties: "
        f"{binarization.ties.value}, minimum margin {binarization.min_margin:g}); "
        f"{stats.tied_pairs} of them are ties (margin 0).",
        "Prompts without a pair: "
        + (", ".join(f"{k} {n}" for k, n in sorted(dropped.items())) or "none")
        + ".",
    ]
    models = stats.models
    figures = [
        _figure(
            "margins",
            "Chosen minus rejected rating",
            "histogram",
            "The margin of each pair: its chosen answer's mean rating minus the rejected one's.",
            edges=list(stats.margins.edges),
            series=[{"name": "pairs", "counts": stats.margins.counts}],
            xlabel="margin (rating points)",
            ylabel="pairs",
        ),
        _figure(
            "pair_models",
            "Which models are chosen and rejected",
            "bars",
            "How often each model's answer is the chosen or the rejected one of a pair.",
            categories=list(models),
            series=[
                {"name": "chosen", "values": [stats.chosen_models.get(m, 0) for m in models]},
                {"name": "rejected", "values": [stats.rejected_models.get(m, 0) for m in models]},
            ],
            xlabel="",
            ylabel="pairs",
            horizontal=False,
            stacked=False,
            percent=False,
        ),
    ]
    tables = [
        _table(
            "pairs",
            "Pairs",
            ["pairs", "tied pairs", "strategy", "ties", "min margin", "prompts with a pair"],
            [
                [
                    stats.pairs,
                    stats.tied_pairs,
                    binarization.strategy.value,
                    binarization.ties.value,
                    binarization.min_margin,
                    _int(summary, "prompts_with_pairs"),
                ]
            ],
        )
    ]
    return {
        "id": "pairs",
        "title": "Chosen vs rejected",
        "text": text,
        "figures": figures,
        "tables": tables,
    }


def _half_interval(moments: Moments) -> float | None:
    """Half the width of the mean's 95% interval (0 when it cannot be estimated)."""
    return _round(Z95 * (moments.standard_error or 0.0))


def _mean_rating_series(groups: Sequence[Moments]) -> dict[str, Any]:
    """A bar series of mean ratings with 95% error bars, one bar per group (one empty bar
    when there are none)."""
    return {
        "name": "mean rating",
        "values": [_round(m.mean) for m in groups] or [0],
        "errors": [_half_interval(m) for m in groups] or [0],
    }


def judge_section(stats: RunStats, warnings: Sequence[Finding]) -> dict[str, Any]:
    positions = sorted(stats.position_ratings)
    all_ratings = sum((stats.position_ratings[p].total for p in positions), 0.0)
    all_n = sum(stats.position_ratings[p].n for p in positions)
    mean = all_ratings / all_n if all_n else None
    values_total = sum(stats.rating_values.values())
    rating_values = sorted(stats.rating_values)
    length_bins = sorted(stats.length_bins)
    failures = [
        (f"request: {k}", n, stats.requests) for k, n in sorted(stats.request_failures.items())
    ]
    ratings_total = values_total + sum(stats.rating_failures.values())
    failures += [
        (f"rating: {k}", n, ratings_total) for k, n in sorted(stats.rating_failures.items())
    ]
    n_pairs = stats.pair_aspects
    figures = [
        _figure(
            "position_ratings",
            "Mean rating by shown position",
            "bars",
            "The judge saw each request's answers in a recorded order; an unbiased judge rates "
            "every position alike (dashed: the mean of all ratings; bars: 95% intervals).",
            categories=[f"answer {p}" for p in positions] or ["no ratings"],
            series=[_mean_rating_series([stats.position_ratings[p] for p in positions])],
            xlabel="position shown to the judge",
            ylabel="mean rating",
            horizontal=False,
            stacked=False,
            percent=False,
            reference=_round(mean),
            limits=RATING_LIMITS,
        ),
        _figure(
            "pair_order",
            "Where the pairs' answers were shown",
            "bars",
            "Per pair and aspect: was the chosen answer shown before the rejected one, and was "
            "it shown first of all; observed vs expected with the random order.",
            categories=["chosen before rejected", "chosen shown first"],
            series=[
                {
                    "name": "observed",
                    "values": [
                        _share(stats.chosen_before_rejected, n_pairs),
                        _share(stats.chosen_first, n_pairs),
                    ],
                },
                {
                    "name": "expected",
                    "values": [0.5 if n_pairs else None, _share(stats.expected_first, n_pairs)],
                },
            ],
            xlabel="",
            ylabel="share of (pair, aspect)",
            horizontal=False,
            stacked=False,
            percent=True,
        ),
        _figure(
            "rating_values",
            "How often each rating is given",
            "bars",
            "Share of all valid ratings at each value; one value taking most of them is a "
            "rating collapse.",
            categories=[f"{v:g}" for v in rating_values] or ["no ratings"],
            series=[
                {
                    "name": "share",
                    "values": [_share(stats.rating_values[v], values_total) for v in rating_values]
                    or [0],
                }
            ],
            xlabel="rating",
            ylabel="share of ratings",
            horizontal=False,
            stacked=False,
            percent=True,
        ),
        _figure(
            "length_ratings",
            "Mean rating by answer length",
            "bars",
            f"Mean rating of the answers in each length band (characters); correlation between "
            f"rating and log length: {_fmt(stats.length_rating.r)}.",
            categories=[_band(i) for i in length_bins] or ["no ratings"],
            series=[_mean_rating_series([stats.length_bins[i] for i in length_bins])],
            xlabel="answer length (characters)",
            ylabel="mean rating",
            horizontal=False,
            stacked=False,
            percent=False,
            reference=_round(mean),
            limits=RATING_LIMITS,
        ),
        _figure(
            "judge_failures",
            "Failed requests and unreadable ratings",
            "bars",
            "Share of judge requests without a usable reply, and of ratings in the replies that "
            "could not be used, by cause (N/A: the judge said the aspect does not apply).",
            categories=[name for name, _, _ in failures] or ["no failures"],
            series=[
                {"name": "share", "values": [_share(n, total) for _, n, total in failures] or [0]}
            ],
            xlabel="share",
            ylabel="",
            horizontal=True,
            stacked=False,
            percent=True,
        ),
    ]
    decided = stats.longer_wins["higher"] + stats.longer_wins["lower"]
    text = [
        f"{stats.requests} judge requests, {stats.replies} replies, {values_total} valid ratings.",
        f"Of two answers shown together with different lengths, the longer one was rated "
        f"higher in {_pct(_share(stats.longer_wins['higher'], decided))} of the decided cases.",
    ]
    if not warnings:
        text.append("No strong bias found.")
    tables = [
        _table(
            "position_ratings",
            "Ratings by shown position",
            ["position", "ratings", "mean", "95% +/-"],
            [
                [
                    p,
                    stats.position_ratings[p].n,
                    _round(stats.position_ratings[p].mean),
                    _half_interval(stats.position_ratings[p]),
                ]
                for p in positions
            ],
        )
    ]
    return {
        "id": "judge",
        "title": "Judge diagnostics",
        "text": text,
        "warnings": [asdict(w) for w in warnings],
        "figures": figures,
        "tables": tables,
    }


STAGE_ORDER = ("prepare", "generate", "mix", "judge", "parse")


def _stage_rank(stage: str) -> int:
    name = stage.split(":", 1)[0]
    return STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)


def cost_section(stats: RunStats, spec: PreferenceRunSpec) -> dict[str, Any]:
    stages = sorted(stats.stage_times, key=_stage_rank)
    times = [stats.stage_times[s] for s in stages]
    judge = stats.judge
    token_rows = [
        (m, stats.answers[m].prompt_tokens, stats.answers[m].completion_tokens)
        for m in stats.models
    ]
    token_rows.append((f"judge ({spec.judge.model})", judge.prompt_tokens, judge.completion_tokens))
    figures = [
        _figure(
            "stage_time",
            "Time per stage",
            "bars",
            "Wall time from a stage's first unit of work to its last, and busy time summed over "
            "its units (more than the wall time when workers ran in parallel).",
            categories=stages or ["no timings recorded"],
            series=[
                {
                    "name": "wall seconds",
                    "values": [_round(t.wall_seconds, 1) for t in times] or [0],
                },
                {
                    "name": "busy seconds",
                    "values": [_round(t.busy_seconds, 1) for t in times] or [0],
                },
            ],
            xlabel="seconds",
            ylabel="",
            horizontal=True,
            stacked=False,
            percent=False,
        ),
        _figure(
            "tokens",
            "Tokens per model and judge",
            "bars",
            "Prompt and completion tokens spent by each answering model and by the judge "
            "(every judge attempt counted, as reported in its replies' usage).",
            categories=[name for name, _, _ in token_rows],
            series=[
                {"name": "prompt tokens", "values": [p for _, p, _ in token_rows]},
                {"name": "completion tokens", "values": [c for _, _, c in token_rows]},
            ],
            xlabel="tokens",
            ylabel="",
            horizontal=True,
            stacked=True,
            percent=False,
        ),
    ]
    tables = [
        _table(
            "stage_time",
            "Time per stage",
            ["stage", "units timed", "wall seconds", "busy seconds"],
            [
                [s, t.units, _round(t.wall_seconds, 1), _round(t.busy_seconds, 1)]
                for s, t in zip(stages, times, strict=True)
            ],
        ),
        _table(
            "judge_usage",
            "The judge's usage",
            [
                "result lines",
                "ok",
                "errors",
                "prompt tokens",
                "completion tokens",
                "finish reasons",
                "served as",
                "fingerprints",
            ],
            [
                [
                    judge.lines,
                    judge.ok,
                    ", ".join(f"{k} {n}" for k, n in sorted(judge.errors.items())) or "none",
                    judge.prompt_tokens,
                    judge.completion_tokens,
                    ", ".join(f"{k} {n}" for k, n in sorted(judge.finish_reasons.items()))
                    or "none",
                    ", ".join(sorted(judge.served_models)) or "unknown",
                    ", ".join(sorted(judge.fingerprints)) or "none",
                ]
            ],
        ),
    ]
    return {
        "id": "cost",
        "title": "Tokens and time",
        "text": [],
        "figures": figures,
        "tables": tables,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _band(index: int) -> str:
    low = CHAR_EDGES[index]
    if index + 1 < len(CHAR_EDGES):
        return f"{low}-{CHAR_EDGES[index + 1] - 1}"
    return f"{low}+"


def build_document(
    stats: RunStats,
    summary: Mapping[str, Any],
    spec: PreferenceRunSpec,
    *,
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The whole report: `run` (name, storage and dataset URIs, times), the warnings, and the
    sections in reading order."""
    warnings = findings(stats)
    return {
        "title": f"synthpref run report: {run.get('name', '')}",
        "run": dict(run),
        "headline": {
            "prompts": _int(summary.get("prepare") or {}, "prompts"),
            "pairs": _int(summary, "pairs"),
            "prompts_with_pairs": _int(summary, "prompts_with_pairs"),
            "accepted": bool((summary.get("outcome") or {}).get("accepted", True)),
            "losses": _counts(summary.get("losses")),
        },
        "warnings": [asdict(w) for w in warnings],
        "sections": [
            funnel_section(stats, summary),
            models_section(stats),
            ranking_section(stats),
            pairs_section(stats, spec, summary),
            judge_section(stats, warnings),
            cost_section(stats, spec),
        ],
    }


def figure_ids(document: Mapping[str, Any]) -> list[str]:
    """Every figure's id, in page order."""
    return [f["id"] for s in document["sections"] for f in s["figures"]]
