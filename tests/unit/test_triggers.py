"""Which PreferenceRun watch events and timer ticks ask for a reconcile pass (`triggers.py`):
the operator's own progress writes do not, a spec change, the annotations a pass acts on, a
deletion and a status transition do; a run that is done needs no timer."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from synthpref_operator.names import ANNOTATION_RETRY, ANNOTATION_SKIP_BATCH_CANCEL
from synthpref_operator.triggers import RunEventFilter, settled


def body(
    phase: str = "Generating",
    generation: int = 1,
    observed: int = 1,
    retry: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    annotations = {ANNOTATION_RETRY: retry} if retry else {}
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": observed,
        "progress": "3/22",
        "stages": {"shards": 3, "models": [{"name": "a", "shardsDone": 1, "shardsTotal": 3}]},
        "conditions": [
            {"type": "Generated", "status": "False", "reason": "InProgress", "message": "1/3"}
        ],
    }
    if token:
        status["retryToken"] = token
    return {
        "metadata": {"name": "r", "generation": generation, "annotations": annotations},
        "spec": {},
        "status": status,
    }


def changed(before: dict[str, Any], edit: Any) -> bool:
    """Whether the event after `edit` asks for a pass, once `before` was seen."""
    events = RunEventFilter()
    assert events.wants_pass("ns", "r", before)  # new to this process
    after = copy.deepcopy(before)
    edit(after)
    return events.wants_pass("ns", "r", after)


def progress_only(run: dict[str, Any]) -> None:
    status = run["status"]
    status["progress"] = "4/22"
    status["stages"]["models"][0]["shardsDone"] = 2
    status["message"] = "generating: 2/3"
    status["conditions"][0]["message"] = "2/3"
    status["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:00:09Z"
    run["metadata"]["resourceVersion"] = "99"
    run["metadata"]["annotations"]["synthpref.dev/last-handled-configuration"] = "{}"
    run["metadata"]["finalizers"] = ["synthpref.dev/cancel-batches"]


def test_progress_writes_and_kopf_bookkeeping_ask_for_no_pass() -> None:
    assert not changed(body(), progress_only)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda r: r["metadata"].update(generation=2), id="spec edited"),
        pytest.param(
            lambda r: r["metadata"]["annotations"].update({ANNOTATION_RETRY: "1"}), id="retry"
        ),
        pytest.param(
            lambda r: r["metadata"]["annotations"].update({ANNOTATION_SKIP_BATCH_CANCEL: "true"}),
            id="skip batch cancel",
        ),
        pytest.param(
            lambda r: r["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"), id="deleted"
        ),
        pytest.param(lambda r: r["status"].update(phase="Mixing"), id="phase"),
        pytest.param(
            lambda r: r["status"]["conditions"][0].update(status="True", reason="Done"),
            id="condition",
        ),
        pytest.param(lambda r: r["status"].update(retryToken="1"), id="retry acted on"),
        pytest.param(lambda r: r["status"].update(catalog={"generation": 2}), id="catalog"),
        pytest.param(lambda r: r.pop("status"), id="status cleared"),
    ],
)
def test_what_a_pass_reads_asks_for_a_pass(edit: Any) -> None:
    assert changed(body(), edit)


def test_a_forgotten_run_is_new_again_and_runs_are_apart() -> None:
    events = RunEventFilter()
    assert events.wants_pass("ns", "r", body())
    assert not events.wants_pass("ns", "r", body())
    assert events.wants_pass("other", "r", body())
    events.forget("ns", "r")
    assert events.wants_pass("ns", "r", body())


@pytest.mark.parametrize(
    ("run", "done"),
    [
        (body("Succeeded"), True),
        (body("Failed"), True),
        (body("Failed", retry="1", token="1"), True),  # that retry was acted on
        (body("Failed", retry="2", token="1"), False),  # a new retry
        (body("Failed", retry="1"), False),
        (body("Succeeded", generation=2, observed=1), False),  # spec edited since
        (body("Generating"), False),
        (body("Pending"), False),
        (body("Suspended"), False),
        ({"metadata": {"name": "r", "generation": 1}, "spec": {}}, False),  # new
    ],
)
def test_settled_runs_need_no_timer(run: dict[str, Any], done: bool) -> None:
    assert settled(run) is done


def test_a_settled_run_being_deleted_is_not_settled() -> None:
    run = body("Succeeded")
    run["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not settled(run)
