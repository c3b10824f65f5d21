"""A Job the operator created a moment ago is not sent again while the API server's cache (which
a pass lists) does not show it yet (`recent_jobs.RecentJobs`, `apply.Applier.create_jobs`); a
Job the operator deletes, a run that is gone and the end of the window end that."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiException

from synthpref_operator.apply import Applier
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob, DeleteJob
from synthpref_operator.recent_jobs import RecentJobs
from synthpref_operator.settings import OperatorSettings
from tests.builders import UnreadReply, make_spec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_created_job_is_recent_for_the_window_only() -> None:
    clock = Clock()
    recent = RecentJobs(seconds=60, clock=clock)
    recent.created("ns", "r", "r-generate-a")
    clock.now += 30
    recent.created("ns", "r", "r-generate-b")
    assert recent.is_recent("ns", "r-generate-a") and recent.is_recent("ns", "r-generate-b")
    assert not recent.is_recent("other", "r-generate-a")  # another namespace's Job
    clock.now += 31  # a: 61 s old
    assert not recent.is_recent("ns", "r-generate-a")
    assert recent.is_recent("ns", "r-generate-b")
    assert len(recent) == 1  # what expired is dropped, not kept
    recent.created("ns", "r", "r-generate-a")  # created again: a new window
    clock.now += 59
    assert recent.is_recent("ns", "r-generate-a")


def test_a_deleted_job_or_a_forgotten_run_is_not_recent() -> None:
    recent = RecentJobs(seconds=60, clock=Clock())
    for namespace, run, job in [
        ("ns", "r", "r-generate-a"),
        ("ns", "r", "r-mix"),
        ("ns", "s", "s-mix"),
        ("ns2", "r", "r-mix"),
    ]:
        recent.created(namespace, run, job)
    recent.deleted("ns", "r-generate-a")
    assert not recent.is_recent("ns", "r-generate-a")
    recent.forget_run("ns", "r")
    assert not recent.is_recent("ns", "r-mix")
    assert recent.is_recent("ns", "s-mix") and recent.is_recent("ns2", "r-mix")


class BatchApi:
    """Creates Jobs, answering 409 for those that exist; deletes them."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.existing: set[str] = set()

    def create_namespaced_job(
        self, namespace: str, body: dict[str, Any], **options: Any
    ) -> UnreadReply:
        name = body["metadata"]["name"]
        self.sent.append(name)
        if name in self.existing:
            error = ApiException(status=409, reason="Conflict")
            error.body = json.dumps({"message": f'jobs.batch "{name}" already exists'})
            raise error
        self.existing.add(name)
        return UnreadReply()

    def delete_namespaced_job(self, name: str, namespace: str, **options: Any) -> None:
        self.existing.discard(name)


RUN = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}}


def test_a_pass_whose_list_lags_sends_no_creation_again() -> None:
    api = BatchApi()
    applier = Applier(None, OperatorSettings())
    applier.batch = api  # type: ignore[assignment]
    clock = Clock()
    applier.recent = RecentJobs(seconds=60, clock=clock)
    planned = [CreateJob(f"r-generate-m{i}", Stage.GENERATE, 1, model=f"m{i}") for i in range(3)]
    api.existing.add("r-generate-m2")  # e.g. created by the operator before a restart
    applier.create_jobs(RUN, make_spec(), planned)
    assert sorted(api.sent) == ["r-generate-m0", "r-generate-m1", "r-generate-m2"]
    # The next passes' lists do not show them yet: nothing is sent again, not even the 409.
    for _ in range(3):
        applier.create_jobs(RUN, make_spec(), planned)
    assert len(api.sent) == 3
    applier.delete_job("ns", DeleteJob("r-generate-m0"))  # a retry: created afresh at once
    applier.create_jobs(RUN, make_spec(), planned)
    assert api.sent[3:] == ["r-generate-m0"]
    clock.now += 61  # still not listed after the window: someone deleted it; sent again
    applier.create_jobs(RUN, make_spec(), planned[1:2])
    assert api.sent[4:] == ["r-generate-m1"]
    applier.forget("ns", "r")  # the run is gone (a new run of that name starts afresh)
    applier.create_jobs(RUN, make_spec(), planned[:1])
    assert api.sent[5:] == ["r-generate-m0"]
    assert list(applier.jobs_created) == [
        "ns/r-generate-m0",
        "ns/r-generate-m1",
        "ns/r-generate-m0",
    ]  # the 409s are no creations of this process
    applier.close()
