"""Artifact names and the split of shards between workers."""

from __future__ import annotations

import pytest

from synthpref import layout


@pytest.mark.parametrize(
    ("total", "worker", "workers", "expected"),
    [(5, 0, 1, [0, 1, 2, 3, 4]), (5, 1, 2, [1, 3]), (5, 0, 2, [0, 2, 4]), (2, 3, 4, [])],
)
def test_shards_for_worker(total: int, worker: int, workers: int, expected: list[int]) -> None:
    assert layout.shards_for_worker(total, worker, workers) == expected


def test_every_shard_taken_exactly_once() -> None:
    taken = sorted(s for w in range(3) for s in layout.shards_for_worker(10, w, 3))
    assert taken == list(range(10))


def test_bad_worker_index() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        layout.shards_for_worker(4, 2, 2)


def test_worker_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert layout.worker_from_env() == 3
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "x")
    with pytest.raises(ValueError, match="not a non-negative integer"):
        layout.worker_from_env()


def test_result_names_line_up_with_requests() -> None:
    request = layout.request_file(7, 2)
    assert request.startswith(layout.request_prefix(7))
    result = layout.result_for_request(request)
    assert result == layout.result_file(7, 2)
    assert result.startswith(layout.result_prefix(7))


def test_engine_logs_are_named_per_stage_model_and_worker() -> None:
    assert layout.engine_log("generate", "smol") == "logs/generate-smol.log"
    assert layout.engine_log("judge") == "logs/judge.log"
    assert layout.engine_log("judge", None, 1, 2) == "logs/judge-worker-1.log"
    assert layout.engine_log("generate", "smol", 0, 3) == "logs/generate-smol-worker-0.log"
