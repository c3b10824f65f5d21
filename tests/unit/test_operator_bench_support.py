"""Pure helpers of the operator benchmark harness (tests/support): index ranges as the Job
controller writes them, Prometheus-style histogram quantiles, S3 operations of requests."""

from __future__ import annotations

import pytest

from tests.support.operator_bench import histogram_quantile, quantiles
from tests.support.s3_fault_proxy import s3_operation
from tests.support.stage_simulator import index_ranges


@pytest.mark.parametrize(
    ("indexes", "text"),
    [(set(), ""), ({0}, "0"), ({0, 1, 2, 3}, "0-3"), ({0, 1, 3, 5, 6}, "0-1,3,5-6")],
)
def test_index_ranges(indexes: set[int], text: str) -> None:
    assert index_ranges(indexes) == text


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    buckets = {0.1: 50.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.55)
    assert histogram_quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None


def test_quantiles_nearest_rank() -> None:
    found = quantiles([float(v) for v in range(1, 101)])
    assert (found["n"], found["p50"], found["p95"], found["max"]) == (100, 50.0, 95.0, 100.0)
    assert quantiles([])["p95"] is None


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/bucket?list-type=2&prefix=mix%2F", "LIST"),
        ("GET", "/bucket/", "LIST"),
        ("GET", "/bucket/runs/a/mix/shard-00000.jsonl", "GET"),
        ("HEAD", "/bucket/runs/a/prompts/manifest.json", "HEAD"),
        ("PUT", "/bucket/runs/a/x", "PUT"),
    ],
)
def test_s3_operation(method: str, path: str, operation: str) -> None:
    assert s3_operation(method, path) == operation
