"""How the observer reads a failed pod's ending, and the run's report once the run is done."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from synthpref import layout
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import LocalStorage
from synthpref_operator.observe import (
    MAX_ERROR_LINE,
    job_state,
    last_error_line,
    observe_artifacts,
    observe_jobs,
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


def test_the_report_warnings_are_read_from_their_small_object(tmp_path: Path) -> None:
    """report/warnings.json (not the large report.json) gives the run its warnings; its read
    is bounded like every read of a run's storage; one written by hand blocks nothing."""
    from synthpref.storage import StorageLimitError, StorageLimits
    from synthpref.storage_bounds import BoundedStorage
    from synthpref_operator.observe import observe_report
    from synthpref_operator.planner import ReportWarning

    storage = BoundedStorage(LocalStorage(tmp_path), StorageLimits(max_object_bytes=4096))
    spec = PreferenceRunSpec.model_validate(spec_dict())
    storage.write_json(layout.PROMPTS_MANIFEST, {"shards": 1, "prompts": 2})
    storage.write_json(layout.SUMMARY, {"pairs": 1})
    storage.write_bytes(layout.REPORT_HTML, b"<html></html>")
    assert observe_artifacts(spec, storage).report_warnings is None  # an older report: none
    storage.write_bytes(layout.REPORT_JSON, b"x" * 100_000)  # never read by the operator
    warning = {"kind": "position_bias", "message": "Position bias: ...", "value": 0.9}
    storage.write_json(layout.REPORT_WARNINGS, {"warnings": [warning]})
    artifacts = observe_artifacts(spec, storage)
    assert artifacts.report_warnings == (ReportWarning("position_bias", "Position bias: ..."),)
    assert observe_report(storage).report_warnings == artifacts.report_warnings
    storage.write_json(layout.REPORT_WARNINGS, {"warnings": "none"})
    (unreadable,) = observe_report(storage).report_warnings or ()
    assert unreadable.kind == "unreadable" and "warnings.json is not what" in unreadable.message
    storage.write_json(layout.REPORT_WARNINGS, {"warnings": [warning] * 100})
    with pytest.raises(StorageLimitError, match=r"warnings\.json: the object is larger"):
        observe_report(storage)
    # A report that failed: its error, no warnings (they would be an earlier report's).
    storage.write_json(layout.REPORT_ERROR, {"error": "run r: the run report could not be written"})
    failed = observe_report(storage)
    assert failed.report_error and failed.report_warnings is None


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


def api_job(name: str, stage: str | None, **parts: Any) -> dict[str, Any]:
    """A Job as the API server lists it, with the bulk `job_state` does not read."""
    labels = {"synthpref.dev/run": "r", "synthpref.dev/model": "m0"}
    if stage is not None:
        labels["synthpref.dev/stage"] = stage
    job: dict[str, Any] = {
        "metadata": {
            "name": name,
            "labels": labels,
            "uid": "0f5e",
            "managedFields": [{"manager": "synthpref", "fieldsV1": {"f:spec": {"f:x": {}}}}],
            **parts.pop("metadata", {}),
        },
        "spec": {
            "completions": 3,
            "template": {"spec": {"containers": [{"name": "worker", "args": ["generate"]}]}},
            **parts.pop("spec", {}),
        },
        **parts,
    }
    return job


def test_the_jobs_read_in_part_give_the_state_the_whole_jobs_give() -> None:
    jobs = [
        api_job(
            "r-generate-m0",
            "generate",
            status={
                "failed": 2,
                "failedIndexes": "0,2-3",
                "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "FailedIndexes"},
                    {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "x"},
                ],
            },
        ),
        api_job(
            "r-mix",
            "mix",
            metadata={
                "annotations": {"synthpref.dev/suspended-by-run": "true"},
                "deletionTimestamp": "2026-12-02T10:00:00Z",
            },
            spec={"suspend": True, "completions": None},
            status=None,
        ),
        api_job(
            "r-prepare",
            "prepare",
            metadata={"labels": None, "annotations": None},
            status={"succeeded": 3, "conditions": [{"type": "Complete", "status": "True"}]},
        ),
        api_job("r-parse", "parse", status={"succeeded": 1, "active": 2}),
        api_job("someone-elses", None),
    ]
    reply = json.dumps({"kind": "JobList", "items": jobs}).encode()
    batch_api = SimpleNamespace(list_namespaced_job=lambda *_, **__: SimpleNamespace(data=reply))
    whole = {job["metadata"]["name"]: job_state(job) for job in jobs}
    expected = {name: state for name, state in whole.items() if state is not None}
    assert len(expected) == 3  # the prepare Job without labels is no stage Job either
    assert observe_jobs(batch_api, "ns", "r") == expected
    failed = expected["r-generate-m0"]
    assert (failed.failed, failed.failed_indexes, failed.failure) == (
        True,
        (0, 2, 3),
        "FailedIndexes: x",
    )
    mix = expected["r-mix"]
    assert (mix.suspended, mix.suspended_by_run, mix.deleting, mix.completions) == (
        True,
        True,
        True,
        1,
    )


def test_the_estimate_comes_from_prepares_counts_not_from_the_prompts(tmp_path: Path) -> None:
    from synthpref.estimate_inputs import estimate_from
    from synthpref.stages.prepare import run_prepare
    from synthpref_operator.observe import PENDING_ESTIMATE, estimate_from_counts

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    lines = [{"text": f"Question {i}: " + "why " * (i % 7)} for i in range(9)]
    lines.append(lines[0])  # a duplicate, dropped by prepare as by `synthpref estimate`
    (prompts / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    spec = PreferenceRunSpec.model_validate(spec_dict(str(prompts), str(tmp_path / "store")))
    storage = LocalStorage(tmp_path / "store")
    before = observe_artifacts(spec, storage)
    assert estimate_from_counts(spec, before) == PENDING_ESTIMATE
    assert PENDING_ESTIMATE.basis == "pending" and "prepare" in (PENDING_ESTIMATE.error or "")
    run_prepare(spec, storage)
    estimate = estimate_from_counts(spec, observe_artifacts(spec, storage))
    expected = estimate_from(spec, None).judge  # reads the prompts, as the CLI does
    assert expected is not None and estimate.basis == "prompts" and estimate.error is None
    assert (estimate.requests, estimate.input_tokens, estimate.output_tokens) == (
        expected.requests,
        expected.tokens.input,
        expected.tokens.output,
    )


def test_a_manifest_that_is_not_prepares_holds_the_pass(tmp_path: Path) -> None:
    from synthpref.storage import StorageError, StorageLimitError
    from synthpref_operator.observe import open_run_storage

    spec = PreferenceRunSpec.model_validate(spec_dict(storage={"uri": str(tmp_path)}))
    storage = open_run_storage(spec, None, "ns")
    storage.write_bytes(layout.PROMPTS_MANIFEST, b'{"shards": "many"}')
    with pytest.raises(StorageError, match="not a manifest"):
        observe_artifacts(spec, storage)
    storage.write_bytes(
        layout.PROMPTS_MANIFEST, b'{"shards": 1, "files": ["' + b"x" * 2**24 + b'"]}'
    )
    with pytest.raises(StorageLimitError, match="maxStorageObjectBytes"):
        observe_artifacts(spec, storage)


def test_a_bucket_that_does_not_exist_is_a_storage_error_not_an_unprepared_run(
    s3_endpoint: str,
) -> None:
    from synthpref.storage import StorageError
    from synthpref_operator.blocked import observation_reason
    from synthpref_operator.observe import open_run_storage
    from synthpref_operator.status import Reason

    storage = {"uri": "s3://no-such-bucket/run", "endpointUrl": s3_endpoint}
    spec = PreferenceRunSpec.model_validate(spec_dict(storage=storage))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist") as caught:
        observe_artifacts(spec, open_run_storage(spec, None, "ns"))
    assert observation_reason(caught.value) is Reason.STORAGE_UNREACHABLE
