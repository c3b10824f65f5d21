"""`apply.Applier.create_jobs` keeps at most `create_concurrency` creations in flight over the
whole process (`synthpref operator run --job-creations`), whatever number of passes create Jobs
at once (the API server is a stand-in that holds every creation a moment and counts how many
it holds together). Throttled requests: `test_throttling.py`."""

from __future__ import annotations

import threading
import time
from typing import Any

from synthpref_operator.apply import Applier
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import DEFAULT_JOB_CREATIONS, OperatorSettings
from tests.builders import UnreadReply, make_spec


class HoldingBatchApi:
    """Holds each creation `hold` seconds; the first `expected` wait for one another (a
    barrier), so a pool smaller than `expected` fails the test instead of passing it slowly."""

    def __init__(self, expected: int, hold: float = 0.2) -> None:
        self.hold = hold
        self.in_flight = 0
        self.most = 0
        self.created: list[str] = []
        self._lock = threading.Lock()
        self._first = threading.Barrier(expected, timeout=120)
        self._arrived = 0
        self._expected = expected

    def create_namespaced_job(self, namespace: str, body: dict[str, Any], **_: Any) -> UnreadReply:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self._arrived += 1
            first = self._arrived <= self._expected
        if first:
            self._first.wait()
        time.sleep(self.hold)
        with self._lock:
            self.in_flight -= 1
            self.created.append(body["metadata"]["name"])
        return UnreadReply()


def test_creations_in_flight_are_capped_over_all_passes() -> None:
    api = HoldingBatchApi(expected=3)
    applier = Applier(None, OperatorSettings(), create_concurrency=3)
    applier.batch = api  # type: ignore[assignment]
    runs = [{"metadata": {"name": f"r{i}", "namespace": "ns", "uid": f"u{i}"}} for i in range(2)]

    def one_pass(run: dict[str, Any]) -> None:
        name = run["metadata"]["name"]
        jobs = [
            CreateJob(f"{name}-generate-m{m}", Stage.GENERATE, completions=1, model=f"m{m}")
            for m in range(4)  # the spec's four models
        ]
        try:
            applier.create_jobs(run, make_spec(), jobs)
        except BaseException as error:  # a thread's error would otherwise pass unseen
            errors.append(error)

    errors: list[BaseException] = []
    passes = [threading.Thread(target=one_pass, args=(run,)) for run in runs]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=300)
    applier.close()
    assert errors == []
    assert len(api.created) == 8
    assert api.most == 3  # reached (the barrier) and never passed


def test_the_default_is_the_operators_flag_default() -> None:
    assert Applier(None, OperatorSettings()).create_concurrency == DEFAULT_JOB_CREATIONS
