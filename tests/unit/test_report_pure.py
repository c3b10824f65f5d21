"""The report's pure parts: streaming aggregates, the model ranking, the bias warnings on
synthetic judgements, the dataset card and the provenance's template hashes."""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref.report.card import data_glob, dataset_card, load_snippet, size_category
from synthpref.report.diagnostics import findings
from synthpref.report.document import build_document, figure_ids
from synthpref.report.provenance import template_hashes
from synthpref.report.ranking import bradley_terry, win_rates
from synthpref.report.stats import Correlation, Histogram, Moments, RunStats
from synthpref.spec import OutputFormat, PreferenceRunManifest, PreferenceRunSpec
from synthpref.timing import Stopwatch, timing_of
from tests.builders import manifest_dict, spec_dict

ROOT = Path(__file__).resolve().parents[2]

MODELS = ["m0", "m1", "m2", "m3"]
ASPECTS = ["helpfulness", "honesty"]


def test_histogram_moments_and_correlation() -> None:
    histogram = Histogram((0, 10, 20))
    for value in (0, 5, 10, 19, 20, 500):
        histogram.add(value)
    assert histogram.counts == [2, 2, 2]  # the last bin is open-ended
    assert histogram.quantile(0.5) == 10
    moments = Moments()
    for number in (1.0, 2.0, 3.0):
        moments.add(number)
    assert moments.mean == 2.0 and moments.variance == pytest.approx(1.0)
    line, flat = Correlation(), Correlation()
    for x in range(10):
        line.add(x, 2 * x + 1)
        flat.add(x, 3.0)
    assert line.r == pytest.approx(1.0)
    assert flat.r is None  # a constant side has no correlation


def test_timing_records_round_trip() -> None:
    ticks = iter([100.0, 102.5])
    watch = Stopwatch(clock=lambda: 1_700_000_000.0, monotonic=lambda: next(ticks))
    assert timing_of({"timing": watch.record()}) == (1_700_000_000.0, 2.5)
    assert timing_of({"rows": 3}) is None and timing_of(None) is None


def test_bradley_terry_recovers_the_order_with_intervals() -> None:
    strengths = {"m0": 4.0, "m1": 2.0, "m2": 1.0, "m3": 0.5}
    rng = random.Random(1)
    wins: dict[str, Counter[str]] = {}
    for _ in range(3000):
        a, b = rng.sample(MODELS, 2)
        winner, loser = (
            (a, b) if rng.random() < strengths[a] / (strengths[a] + strengths[b]) else (b, a)
        )
        wins.setdefault(winner, Counter())[loser] += 1
    ranking = bradley_terry(MODELS, wins, {})
    assert ranking is not None
    assert ranking.models == MODELS
    assert abs(sum(ranking.scores)) < 1e-6  # centred
    # log2 odds of m0 over m3 is 3: 3 x 400 log10(2) = 361 Elo points apart
    gap = ranking.scores[0] - ranking.scores[-1]
    assert 300 < gap < 420
    for score, low, high in zip(ranking.scores, ranking.low, ranking.high, strict=True):
        assert low < score < high and high - low < 100
    rates = win_rates(MODELS, wins, {})
    assert rates[0][0] is None and rates[0][3] is not None and rates[0][3] > 0.8
    assert rates[3][0] == pytest.approx(1 - rates[0][3])


def test_a_model_that_never_wins_stays_finite_and_lone_models_are_not_ranked() -> None:
    wins = {"m0": Counter({"m1": 20})}
    ranking = bradley_terry(MODELS, wins, {})
    assert ranking is not None and ranking.models == ["m0", "m1"]
    assert all(math.isfinite(v) for v in ranking.low + ranking.high)
    assert bradley_terry(MODELS, {}, {}) is None


def stats_with(rate: object) -> RunStats:
    """200 four-answer requests rated by `rate(position, chars, rng)` (None: unparseable)."""
    stats = RunStats(models=MODELS, aspects=ASPECTS, max_tokens=100)
    rng = random.Random(7)
    for _ in range(200):
        shown = []
        for position in range(1, 5):
            chars = rng.randint(20, 400)
            value = rate(position, chars, rng)  # type: ignore[operator]
            shown.append((MODELS[position - 1], chars, "unparseable" if value is None else value))
        stats.add_reply("helpfulness", shown)
    return stats


JUDGES = {
    "content": (lambda p, chars, rng: float(rng.randint(1, 5)), set()),
    "position": (lambda p, chars, rng: float(6 - p), {"position_bias"}),
    "length": (lambda p, chars, rng: 1.0 + min(4.0, chars // 80), {"length_bias"}),
    "constant": (lambda p, chars, rng: 3.0, {"rating_collapse"}),
    "garbled": (
        lambda p, chars, rng: None if rng.random() < 0.2 else float(rng.randint(1, 5)),
        {"unparseable_ratings"},
    ),
}


@pytest.mark.parametrize("judge", sorted(JUDGES))
def test_each_warning_fires_for_its_bias_only(judge: str) -> None:
    rate, expected = JUDGES[judge]
    assert {f.kind for f in findings(stats_with(rate))} == expected


def test_pairs_shown_in_order_and_failed_requests_warn() -> None:
    stats = RunStats(models=MODELS, aspects=ASPECTS, max_tokens=100)
    for _ in range(40):
        stats.add_pair(chosen_model="m0", rejected_model="m1", margin=1.0, positions=[(1, 3, 4)])
        stats.add_request_failure("error")
    kinds = {f.kind for f in findings(stats)}
    assert kinds == {"pair_order", "failed_requests"}
    balanced = RunStats(models=MODELS, aspects=ASPECTS, max_tokens=100)
    for i in range(40):
        balanced.add_pair(
            chosen_model="m0",
            rejected_model="m1",
            margin=1.0,
            positions=[(1 + i % 2, 2 - i % 2, 2)],
        )
    assert findings(balanced) == []


def test_few_ratings_never_warn() -> None:
    stats = RunStats(models=MODELS, aspects=ASPECTS, max_tokens=100)
    stats.add_reply("helpfulness", [("m0", 10, 5.0), ("m1", 10, 1.0)])
    assert findings(stats) == []


def test_the_document_of_an_empty_run_has_every_figure() -> None:
    spec = PreferenceRunSpec.model_validate(spec_dict())
    stats = RunStats(models=MODELS, aspects=list(spec.mix.aspects), max_tokens=512)
    document = build_document(stats, {}, spec, run={"name": "r"})
    ids = figure_ids(document)
    assert len(ids) == len(set(ids)) and {"funnel", "win_rates", "position_ratings"} <= set(ids)
    assert document["warnings"] == []


def manifest(**sections: Any) -> PreferenceRunManifest:
    return PreferenceRunManifest.model_validate(manifest_dict(spec_dict(**sections), name="prefs"))


@pytest.mark.parametrize(
    ("rows", "category"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_500_000, "1M<n<10M")]
)
def test_size_categories(rows: int, category: str) -> None:
    assert size_category(rows) == category


def test_the_card_points_at_the_data_files_and_leaves_the_license_open() -> None:
    run = manifest(output={"format": "parquet"})
    card = dataset_card(
        run,
        {"pairs": 12, "prepare": {"prompts": 20}, "losses": {"requests_failed": 2}},
        dataset_uri="s3://bucket/run/dataset/",
        report_uri="s3://bucket/run/report/index.html",
        judge_served=["gpt-4o-2024-08-06"],
    )
    front = yaml.safe_load(card.split("---\n")[1])
    assert "license" not in front
    assert front["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "part-*.parquet"}]}
    ]
    assert front["task_categories"] == ["text-generation"]
    assert front["size_categories"] == ["n<1K"]
    snippet = load_snippet("s3://bucket/run/dataset/", OutputFormat.PARQUET)
    assert snippet in card and len(snippet.splitlines()) == 2
    assert 'load_dataset("parquet", data_files="s3://bucket/run/dataset/part-*.parquet"' in snippet
    assert data_glob(OutputFormat.JSONL) == "part-*.jsonl"
    assert "requests_failed 2" in card and "gpt-4o-2024-08-06" in card


def test_the_card_links_to_no_made_up_project_page() -> None:
    """pyproject.toml names no project URL, so the card links to none (it once linked to a
    repository that does not exist)."""
    assert "urls" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    card = dataset_card(
        manifest(),
        {"pairs": 1, "prepare": {"prompts": 2}},
        dataset_uri="s3://bucket/run/dataset/",
        report_uri="s3://bucket/run/report/index.html",
        judge_served=[],
    )
    assert re.findall(r"\]\((https?://[^)]*)\)", card) == []
    assert "github.com" not in card and "made by synthpref the way" in card


def test_template_hashes_follow_the_judge_prompt() -> None:
    structured = template_hashes(PreferenceRunSpec.model_validate(spec_dict()))
    text = template_hashes(
        PreferenceRunSpec.model_validate(spec_dict(judge={"structuredOutput": False}))
    )
    assert structured == template_hashes(PreferenceRunSpec.model_validate(spec_dict()))
    for aspect, entry in structured["aspects"].items():
        assert entry["messages_sha256"] != text["aspects"][aspect]["messages_sha256"]
        assert len(entry["response_format_sha256"]) == 64
        assert "response_format_sha256" not in text["aspects"][aspect]
