"""How the observer reads a failed pod's ending, and how the planner's failure message uses it."""

from __future__ import annotations

from typing import Any

import pytest

from synthpref_operator.observe import pod_failure


def pod(phase: str, index: str = "2", terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    statuses = [{"name": "worker", "state": {"terminated": terminated}}] if terminated else []
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": index}},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            pod("Failed", terminated={"reason": "OOMKilled", "exitCode": 137}),
            "index 2: OOMKilled (exit 137)",
        ),
        (pod("Failed", "0", terminated={"exitCode": 3}), "index 0: Error (exit 3)"),
        (pod("Failed"), "index 2: Failed"),
        (pod("Running"), None),
        (pod("Succeeded", terminated={"reason": "Completed", "exitCode": 0}), None),
    ],
)
def test_pod_failure(given: dict[str, Any], expected: str | None) -> None:
    assert pod_failure(given) == expected
