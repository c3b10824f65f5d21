"""The run's status stays far below the API server's object size limits at the scale of the
Tulu 3 recipe (20 models x 1,000 shards), whatever state the run is in: its size must not
grow with the number of shards beyond a few kilobytes."""

from __future__ import annotations

import json

import pytest

from synthpref_operator.names import Stage, job_name
from synthpref_operator.planner import Artifacts, JobState, JudgeLedger, Observed, plan
from synthpref_operator.status import JudgeProgress, RunStatus
from tests.builders import make_spec

MODELS, SHARDS = 20, 1000
NOW = "2026-01-01T00:00:00Z"
LIMIT = 64 * 1024


def size(status: RunStatus) -> int:
    return len(json.dumps(status.to_body(), separators=(",", ":")))


def generation_jobs(failed: bool) -> dict[str, JobState]:
    jobs = {}
    for model in range(MODELS):
        name = job_name("big-run", Stage.GENERATE, f"m{model}")
        jobs[name] = JobState(
            name,
            Stage.GENERATE,
            f"m{model}",
            completions=8,
            succeeded=0 if failed else 4,
            failed=failed,
            failure="BackoffLimitExceeded: Job has reached the specified backoff limit",
            failed_indexes=(0, 2, 4, 6) if failed else (),
            pod_failures=tuple(f"index {i}: OOMKilled (exit 137)" for i in range(8)),
        )
    return jobs


@pytest.mark.parametrize("failed", [False, True], ids=["generating", "every index failed"])
def test_status_at_20_models_by_1000_shards_is_small(failed: bool) -> None:
    spec = make_spec(models=MODELS)
    artifacts = Artifacts(
        shards=SHARDS,
        prompts=SHARDS * 270,
        generated={f"m{i}": 500 for i in range(MODELS)},
    )
    judge = JudgeLedger(
        JudgeProgress(files=SHARDS, batches=SHARDS, batches_by_status={"submitted": SHARDS})
    )
    observed = Observed(
        "big-run", 1, RunStatus(), generation_jobs(failed), artifacts, judge, retry="1"
    )
    _, status = plan(spec, observed, NOW)
    # Twice over: the status of the next pass builds on this one.
    _, status = plan(spec, Observed("big-run", 1, status, observed.jobs, artifacts, judge), NOW)
    assert status.phase.value == ("Failed" if failed else "Generating")
    assert size(status) < LIMIT / 4, size(status)


@pytest.mark.parametrize(
    ("shards", "text"),
    [
        ([], "?"),
        ([1], "1"),
        ([0, 2], "0, 2"),
        ([0, 1], "0, 1"),
        ([0, 1, 2, 3, 7, 9, 10, 11], "0-3, 7, 9-11"),
        (list(range(0, 1000, 8)), ", ".join(str(s) for s in range(0, 160, 8)) + " and 105 more"),
    ],
)
def test_failed_shards_are_named_in_ranges_and_cut(shards: list[int], text: str) -> None:
    from synthpref_operator.planner import _describe_shards

    assert _describe_shards(shards) == text
