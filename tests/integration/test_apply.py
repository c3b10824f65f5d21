"""Applying a pass's actions against the real API server (`apply.Applier`): a stage's Jobs
are created together, and one refused Job neither stops the others nor goes unreported."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kubernetes import client

from synthpref.logs import RunContextFilter, run_context
from synthpref_operator.apply import Applier
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import OperatorSettings
from tests.builders import make_spec

pytestmark = pytest.mark.cluster


class Collecting(logging.Handler):
    """Keeps the records it is handed (after its filters have tagged them)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_stages_jobs_are_created_together_and_a_refused_one_is_raised(
    k8s_api_client: Any, namespace: str
) -> None:
    applier = Applier(k8s_api_client, OperatorSettings())
    run = {"metadata": {"name": "r1", "namespace": namespace, "uid": "u-1"}}
    spec = make_spec()
    good = [
        CreateJob(f"r1-generate-{model.name}", Stage.GENERATE, completions=2, model=model.name)
        for model in spec.models
    ]
    refused = CreateJob("R1_not_a_dns_name", Stage.GENERATE, completions=2, model="m0")
    with pytest.raises(client.ApiException) as raised:
        applier.create_jobs(run, spec, [*good[:2], refused, *good[2:]])
    assert raised.value.status == 422
    # Each of the others was created by this call (201), the refused one in their midst.
    assert sorted(applier.jobs_created) == [f"{namespace}/{a.name}" for a in good]
    # The next pass plans them again: Jobs that exist are success, not errors. (The garbage
    # collector may delete some meanwhile: their owner run does not exist; they are made again.)
    applier.create_jobs(run, spec, good)


def test_what_a_creation_logs_names_the_run_of_the_pass(
    k8s_api_client: Any, namespace: str
) -> None:
    """Creations run on the applier's threads; their log lines still carry the pass's run."""
    handler = Collecting()
    handler.addFilter(RunContextFilter())
    logger = logging.getLogger("synthpref_operator.apply")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    spec = make_spec()
    run = {"metadata": {"name": "r2", "namespace": namespace, "uid": "u-2"}}
    actions = [
        CreateJob(f"r2-generate-{model.name}", Stage.GENERATE, completions=1, model=model.name)
        for model in spec.models
    ]
    try:
        with run_context(namespace, "r2"):
            Applier(k8s_api_client, OperatorSettings()).create_jobs(run, spec, actions)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    created = [r for r in handler.records if "created Job" in r.getMessage()]
    assert len(created) == len(actions) > 1
    assert {(r.namespace, r.run) for r in created} == {(namespace, "r2")}  # type: ignore[attr-defined]
