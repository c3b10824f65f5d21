"""`apply.Applier.start_jobs`: a pass starts its Jobs' creations and returns at once; a Job
whose creation is in flight is not started again; a refusal is kept for the run's next pass
until the Job is created or no longer planned; a pass asked for while the run's creations are
in flight runs once they have ended (`reconcile.Reconciler.request`).

The API server is replaced by a held stand-in here: these are the applier's own bookkeeping
rules, under an API server slower than the passes (`tests/integration/test_apply.py` runs the
creations against the real one)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from kubernetes.client import ApiException

from synthpref_operator.apply import Applier
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob
from synthpref_operator.reconcile import Reconciler
from synthpref_operator.settings import OperatorSettings
from tests.builders import make_spec

RUN = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}}


class HeldBatchApi:
    """Answers `create_namespaced_job` only once released; refuses the names in `refuse`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []
        self.refuse: set[str] = set()
        self._lock = threading.Lock()

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        with self._lock:
            self.calls.append(name)
        assert self.release.wait(60)
        if name in self.refuse:
            error = ApiException(status=403, reason="Forbidden")
            error.body = json.dumps({"message": f'jobs.batch "{name}" is forbidden: quota'})
            raise error


def held_applier() -> tuple[Applier, HeldBatchApi]:
    applier = Applier(None, OperatorSettings())
    api = HeldBatchApi()
    applier.batch = api  # type: ignore[assignment]
    return applier, api


def actions(*names: str) -> list[CreateJob]:
    return [CreateJob(name, Stage.GENERATE, completions=1, model="m0") for name in names]


def settle(applier: Applier) -> None:
    deadline = time.monotonic() + 60
    while applier.creating() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert applier.creating() == 0


def test_a_pass_does_not_wait_and_the_next_does_not_start_a_job_twice() -> None:
    applier, api = held_applier()
    planned = actions("r-generate-a", "r-generate-b")
    applier.start_jobs(RUN, make_spec(), planned)  # returns with both held by the API server
    assert applier.creating() == 2
    applier.start_jobs(RUN, make_spec(), planned)  # the next pass plans them again
    api.release.set()
    settle(applier)
    assert sorted(api.calls) == ["r-generate-a", "r-generate-b"]
    assert sorted(applier.jobs_created) == ["ns/r-generate-a", "ns/r-generate-b"]
    applier.start_jobs(RUN, make_spec(), planned[:1])  # no longer in flight: started again
    applier.close()
    assert sorted(api.calls) == ["r-generate-a", "r-generate-a", "r-generate-b"]


def test_a_refusal_is_kept_until_the_job_is_created_or_no_longer_planned() -> None:
    applier, api = held_applier()
    api.release.set()
    api.refuse = {"r-generate-b", "r-generate-c"}
    planned = actions("r-generate-a", "r-generate-b", "r-generate-c")
    applier.start_jobs(RUN, make_spec(), planned)
    settle(applier)
    why = applier.refusal("ns", "r", planned)
    assert why == (
        'cannot create Job r-generate-b: 403 Forbidden: jobs.batch "r-generate-b" is '
        "forbidden: quota"
    )
    assert applier.refusal("ns", "other", planned) is None
    assert applier.refusal("other", "r", planned) is None
    api.refuse = set()
    applier.start_jobs(RUN, make_spec(), planned[1:2])  # b is created this time
    settle(applier)
    assert applier.refusal("ns", "r", planned) is not None  # c: still refused
    assert "r-generate-c" in (applier.refusal("ns", "r", planned) or "")
    assert applier.refusal("ns", "r", planned[:2]) is None  # c no longer planned: forgotten
    assert applier.refusal("ns", "r", planned) is None
    api.refuse = {"r-generate-a"}
    applier.start_jobs(RUN, make_spec(), planned[:1])
    settle(applier)
    applier.forget("ns", "r")  # the run is gone
    assert applier.refusal("ns", "r", planned) is None


def test_a_pass_asked_for_while_the_runs_jobs_are_created_runs_once_they_are() -> None:
    reconciler = Reconciler(None, OperatorSettings())
    api = HeldBatchApi()
    reconciler.applier.batch = api  # type: ignore[assignment]
    passes: list[str] = []

    def reconcile(namespace: str, name: str) -> None:
        passes.append(name)
        if len(passes) == 1:  # the first pass starts the stage's Jobs
            reconciler.applier.start_jobs(RUN, make_spec(), actions("r-generate-a", "r-mix"))

    reconciler.reconcile = reconcile  # type: ignore[method-assign]
    reconciler.request("ns", "r", "event")
    assert passes == ["r"] and reconciler.applier.busy("ns", "r")
    reconciler.request("ns", "r", "job")  # deferred: the creations are in flight
    reconciler.request("ns", "r", "timer")  # and coalesced with the one before
    reconciler.request("ns", "other", "timer")  # another run is not held up
    assert passes == ["r", "other"]
    api.release.set()
    deadline = time.monotonic() + 60
    while passes.count("r") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    reconciler.close()
    assert passes == ["r", "other", "r"] and not reconciler.applier.busy("ns", "r")
    reconciler.request("ns", "r", "job")  # nothing in flight: at once
    assert passes == ["r", "other", "r", "r"]
