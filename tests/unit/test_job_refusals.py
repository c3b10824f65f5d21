"""`apply.Applier.create_jobs`: a Job the API server refuses does not stop the others and is
kept, with the API server's words, for the run's pass to show (Blocked JobRefused) until the
Job is created or no longer planned; an error that is no refusal is still raised.

The API server is a stand-in here: these are the applier's own bookkeeping rules
(`tests/integration/test_apply.py` creates against the real one, and
`tests/integration/test_operator_run.py` shows a ResourceQuota's refusal on a run)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from kubernetes.client import ApiException

from synthpref_operator.apply import Applier
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob, DeleteJob
from synthpref_operator.settings import OperatorSettings
from tests.builders import UnreadReply, make_spec

RUN = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}}


class BatchApi:
    """Creates every Job but those in `refuse` (403, as a ResourceQuota answers) and those in
    `unreachable` (no answer at all)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse: set[str] = set()
        self.unreachable: set[str] = set()
        self._lock = threading.Lock()

    def create_namespaced_job(
        self, namespace: str, body: dict[str, Any], **options: Any
    ) -> UnreadReply:
        assert options == {"_preload_content": False}  # the applier reads no Job back
        name = body["metadata"]["name"]
        with self._lock:
            self.calls.append(name)
        if name in self.unreachable:
            raise ConnectionError("connection refused")
        if name in self.refuse:
            error = ApiException(status=403, reason="Forbidden")
            error.body = json.dumps({"message": f'jobs.batch "{name}" is forbidden: quota'})
            raise error
        return UnreadReply()

    def delete_namespaced_job(self, name: str, namespace: str, **options: Any) -> None:
        with self._lock:
            self.calls.append(f"delete {name}")


def applier_with(api: BatchApi) -> Applier:
    applier = Applier(None, OperatorSettings())
    applier.batch = api  # type: ignore[assignment]
    return applier


def actions(*names: str) -> list[CreateJob]:
    return [CreateJob(name, Stage.GENERATE, completions=1, model="m0") for name in names]


def test_a_refusal_is_kept_until_the_job_is_created_or_no_longer_planned() -> None:
    api = BatchApi()
    applier = applier_with(api)
    api.refuse = {"r-generate-b", "r-generate-c"}
    planned = actions("r-generate-a", "r-generate-b", "r-generate-c")
    applier.create_jobs(RUN, make_spec(), planned)  # raises nothing
    assert sorted(api.calls) == ["r-generate-a", "r-generate-b", "r-generate-c"]
    assert list(applier.jobs_created) == ["ns/r-generate-a"]
    assert applier.refusal("ns", "r", planned) == (
        'cannot create Job r-generate-b: 403 Forbidden: jobs.batch "r-generate-b" is '
        "forbidden: quota"
    )
    assert applier.refusal("ns", "other", planned) is None
    assert applier.refusal("other", "r", planned) is None
    api.refuse = set()
    applier.create_jobs(RUN, make_spec(), planned[1:2])  # b is created this time (alone)
    assert "r-generate-c" in (applier.refusal("ns", "r", planned) or "")  # c: still refused
    assert applier.refusal("ns", "r", planned[:2]) is None  # c no longer planned: forgotten
    assert applier.refusal("ns", "r", planned) is None
    applier.delete_job("ns", DeleteJob("r-generate-a"))  # a retry deletes it
    api.refuse = {"r-generate-a"}
    applier.create_jobs(RUN, make_spec(), planned[:1])
    assert applier.refusal("ns", "r", planned) is not None
    applier.forget("ns", "r")  # the run is gone
    assert applier.refusal("ns", "r", planned) is None
    applier.close()


def test_an_api_server_out_of_reach_is_raised_after_the_other_creations() -> None:
    api = BatchApi()
    applier = applier_with(api)
    api.unreachable = {"r-generate-b"}
    planned = actions("r-generate-a", "r-generate-b", "r-generate-c")
    with pytest.raises(ConnectionError):
        applier.create_jobs(RUN, make_spec(), planned)
    assert sorted(applier.jobs_created) == ["ns/r-generate-a", "ns/r-generate-c"]
    assert applier.refusal("ns", "r", planned) is None  # not a refusal: the pass fails
    applier.close()


def test_a_refusal_retried_pass_after_pass_is_warned_once_per_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = BatchApi()
    applier = applier_with(api)
    api.refuse = {"r-generate-a"}
    planned = actions("r-generate-a")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    with caplog.at_level("DEBUG", logger="synthpref_operator.apply"):
        for _ in range(3):  # three passes, the same refusal
            applier.create_jobs(RUN, make_spec(), planned)
        assert warnings() == [
            'cannot create Job ns/r-generate-a: 403 Forbidden: jobs.batch "r-generate-a" is '
            "forbidden: quota"
        ]
        retries = [
            r for r in caplog.records if r.levelname == "DEBUG" and "r-generate-a" in r.getMessage()
        ]
        assert len(retries) == 2
        api.refuse = set()
        applier.create_jobs(RUN, make_spec(), planned)  # created: the refusal ends
        applier.delete_job("ns", DeleteJob("r-generate-a"))  # a retry deletes it
        api.refuse = {"r-generate-a"}
        applier.create_jobs(RUN, make_spec(), planned)  # refused again later: a new warning
        assert len(warnings()) == 2
    applier.close()
