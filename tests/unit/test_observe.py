"""How the observer reads a failed pod's ending, and the run's report once the run is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synthpref import layout
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import LocalStorage
from synthpref_operator.observe import (
    MAX_ERROR_LINE,
    last_error_line,
    observe_artifacts,
    pod_failure,
    unschedulable,
)
from tests.builders import spec_dict


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
        # The worker's termination message: its `Error:` line, or the log tail's last line.
        (
            pod(
                "Failed",
                "1",
                terminated={
                    "exitCode": 1,
                    "message": "INFO reading\nError: p.jsonl:6: missing string field 'text'\n",
                },
            ),
            "index 1: Error (exit 1): p.jsonl:6: missing string field 'text'",
        ),
        (
            pod("Failed", terminated={"exitCode": 1, "message": "Traceback\nKeyError: 'x'\n\n"}),
            "index 2: Error (exit 1): KeyError: 'x'",
        ),
        (pod("Failed"), "index 2: Failed"),
        (pod("Running"), None),
        (pod("Succeeded", terminated={"reason": "Completed", "exitCode": 0}), None),
    ],
)
def test_pod_failure(given: dict[str, Any], expected: str | None) -> None:
    assert pod_failure(given) == expected


def test_the_report_is_observed_once_the_run_is_done(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    spec = PreferenceRunSpec.model_validate(spec_dict())
    storage.write_json(layout.PROMPTS_MANIFEST, {"shards": 1, "prompts": 2})
    storage.write_bytes(layout.REPORT_HTML, b"<html></html>")
    # The summary marks the run done; before it, a report (of an earlier try) is not reported.
    assert observe_artifacts(spec, storage).report_uri is None
    storage.write_json(layout.SUMMARY, {"pairs": 1})
    artifacts = observe_artifacts(spec, storage)
    assert artifacts.report_uri == storage.url(layout.REPORT_HTML)
    assert artifacts.report_error is None
    storage.write_json(layout.REPORT_ERROR, {"error": "run r: the run report could not be written"})
    assert (
        observe_artifacts(spec, storage).report_error
        == "run r: the run report could not be written"
    )


def test_a_long_error_line_is_cut() -> None:
    line = last_error_line("Error: " + "x" * 2000)
    assert len(line) == MAX_ERROR_LINE and line.endswith("...")


def test_unschedulable_pod() -> None:
    pending = {
        "metadata": {"name": "r-generate-m0-0-abc"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    assert unschedulable(pending) == (
        "pod r-generate-m0-0-abc cannot be scheduled: "
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )
    assert unschedulable({"status": {"phase": "Running"}}) is None
    assert unschedulable({"status": {"phase": "Pending", "conditions": []}}) is None
