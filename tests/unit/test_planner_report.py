"""The finished run's report on the run: its warnings as the ReportWarnings condition and one
Warning Event each (once), and a retry asked of a Succeeded run: ignored with an Event, the
report read again (a cleared report error)."""

from __future__ import annotations

from dataclasses import replace

from synthpref_operator.planner import (
    MAX_REPORT_WARNINGS,
    Artifacts,
    Event,
    Observed,
    ReportWarning,
    ignore_retry,
    plan,
    retry_ignored,
)
from synthpref_operator.status import ConditionStatus, ConditionType, Phase, Reason, RunStatus
from tests.builders import make_spec

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
REPORT = "s3://bucket/run/report/index.html"
SUMMARY = {"pairs": 5, "prompts": 6, "prompts_with_pairs": 5, "dataset": "s3://bucket/run/dataset/"}
DONE = Artifacts(
    shards=3,
    prompts=6,
    generated=dict.fromkeys(("m0", "m1", "m2", "m3"), 3),
    mixed=3,
    judged=3,
    parsed=3,
    summary=SUMMARY,
    report_uri=REPORT,
)
BIAS = ReportWarning("position_bias", "Position bias: the judge rates answers by where ...")
FAILS = ReportWarning("failed_requests", "Failed requests: 12% of the judge requests ...")


def finish(artifacts: Artifacts, status: RunStatus | None = None) -> tuple[list[object], RunStatus]:
    observed = Observed("r", 1, status or RunStatus(), artifacts=artifacts)
    actions, new = plan(make_spec(judge={"backend": "vllm"}), observed, T1)
    return list(actions), new


def test_report_warnings_become_a_condition_and_one_warning_event_each() -> None:
    actions, status = finish(replace(DONE, report_warnings=(BIAS, FAILS)))
    assert status.phase is Phase.SUCCEEDED
    warned = status.condition(ConditionType.REPORT_WARNINGS)
    assert warned is not None
    assert (warned.status, warned.reason) == (ConditionStatus.TRUE, Reason.REPORT_WARNINGS)
    assert BIAS.message in warned.message and FAILS.message in warned.message
    assert REPORT in warned.message
    events = [a for a in actions if isinstance(a, Event) and a.reason == "ReportWarning"]
    assert [(e.type, e.message) for e in events] == [
        ("Warning", f"{BIAS.message} (the report: {REPORT})"),
        ("Warning", f"{FAILS.message} (the report: {REPORT})"),
    ]
    # The next pass over the same report posts nothing again.
    again, same = finish(replace(DONE, report_warnings=(BIAS, FAILS)), status)
    assert not [a for a in again if isinstance(a, Event)]
    assert same.condition(ConditionType.REPORT_WARNINGS) == warned


def test_a_report_without_warnings_says_so_and_a_missing_one_leaves_no_condition() -> None:
    actions, status = finish(replace(DONE, report_warnings=()))
    quiet = status.condition(ConditionType.REPORT_WARNINGS)
    assert quiet is not None
    assert (quiet.status, quiet.reason) == (ConditionStatus.FALSE, Reason.NO_REPORT_WARNINGS)
    assert not [a for a in actions if isinstance(a, Event) and a.reason == "ReportWarning"]
    _, unknown = finish(replace(DONE, report_warnings=None, report_uri=None))
    assert unknown.condition(ConditionType.REPORT_WARNINGS) is None


def test_many_warnings_are_bounded() -> None:
    many = tuple(ReportWarning(f"k{i}", "x" * 5000) for i in range(50))
    actions, status = finish(replace(DONE, report_warnings=many))
    warned = status.condition(ConditionType.REPORT_WARNINGS)
    assert warned is not None and len(warned.message) < 6000
    assert warned.message.count("; ") >= MAX_REPORT_WARNINGS - 1
    assert f"and {50 - MAX_REPORT_WARNINGS} more" in warned.message
    events = [a for a in actions if isinstance(a, Event) and a.reason == "ReportWarning"]
    assert len(events) == MAX_REPORT_WARNINGS
    assert all(len(e.message) <= 1024 for e in events)


def test_a_retry_of_a_succeeded_run_is_ignored_with_an_event_and_rereads_the_report() -> None:
    failed_report = replace(DONE, report_error="run r: the run report could not be written (x)")
    _, succeeded = finish(failed_report)
    assert succeeded.result is not None and succeeded.result.report_error
    assert retry_ignored(succeeded, "1")
    assert not retry_ignored(succeeded, None)
    assert not retry_ignored(succeeded.model_copy(update={"phase": Phase.FAILED}), "1")

    # `synthpref report` has rewritten the report since: the error is gone, warnings came.
    fixed = Artifacts(report_uri=REPORT, report_warnings=(BIAS,))
    actions, status = ignore_retry(succeeded, "1", fixed, 1, T1)
    assert status.phase is Phase.SUCCEEDED and status.retry_token == "1"
    assert not retry_ignored(status, "1")  # answered once
    assert status.result is not None and status.result.report_error is None
    assert status.result.report_uri == REPORT
    assert status.condition(ConditionType.REPORT_WARNINGS) is not None
    ignored = [a for a in actions if isinstance(a, Event) and a.reason == "RetryIgnored"]
    assert len(ignored) == 1 and ignored[0].type == "Normal"
    assert ignored[0].message.startswith(
        "synthpref.dev/retry=1 ignored: the run Succeeded, so there is nothing to retry"
    )
    assert "the report error is cleared" in ignored[0].message
    assert [a.reason for a in actions if isinstance(a, Event)] == ["RetryIgnored", "ReportWarning"]

    # Storage out of reach: still answered, the status as it was.
    actions, status = ignore_retry(succeeded, "2", None, 1, T1, "bucket gone")
    assert status.result == succeeded.result and status.retry_token == "2"
    assert next(a for a in actions if isinstance(a, Event)).message.endswith(
        "its report could not be read again (bucket gone). To make its dataset again, create "
        "a new PreferenceRun with another storage.uri"
    )
