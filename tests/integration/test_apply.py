"""Applying a pass's actions against the real API server (`apply.Applier`): a stage's Jobs
are created together, one refused Job neither stops the others nor goes unreported (log line,
metric, the refusal the pass shows on the run), and what a creation logs names the run of the
pass."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from synthpref.logs import configure_logging, run_context
from synthpref_operator.apply import Applier
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob
from synthpref_operator.settings import OperatorSettings
from tests.builders import make_spec

pytestmark = pytest.mark.cluster


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The operator's JSON log lines, as production configures them; the root logger is put
    back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def generation_jobs(run: str, completions: int = 2) -> list[CreateJob]:
    return [
        CreateJob(f"{run}-generate-{m.name}", Stage.GENERATE, completions=completions, model=m.name)
        for m in make_spec().models
    ]


def test_a_stages_jobs_are_created_together_and_a_refused_one_is_reported(
    k8s_api_client: Any, namespace: str, json_log: io.StringIO
) -> None:
    metrics = OperatorMetrics()
    applier = Applier(k8s_api_client, OperatorSettings(), metrics)
    run = {"metadata": {"name": "r1", "namespace": namespace, "uid": "u-1"}}
    spec = make_spec()
    good = generation_jobs("r1")
    refused = CreateJob("R1_not_a_dns_name", Stage.GENERATE, completions=2, model="m0")
    planned = [*good[:2], refused, *good[2:]]
    with run_context(namespace, "r1"):
        applier.create_jobs(run, spec, planned)  # raises nothing: the refusal is kept
    # Each of the others was created (201), the refused one in their midst.
    assert sorted(applier.jobs_created) == [f"{namespace}/{a.name}" for a in good]
    # The refusal: the API server's reason, for the run's next pass, the log and the metric.
    why = applier.refusal(namespace, "r1", planned)
    assert why is not None and why.startswith("cannot create Job R1_not_a_dns_name: 422")
    assert "R1_not_a_dns_name" in why.split(": 422", 1)[1]  # the API server's own message
    assert applier.refusal(namespace, "other-run", planned) is None
    warnings = [
        line
        for line in map(json.loads, json_log.getvalue().splitlines())
        if line["level"] == "warning"
    ]
    assert [(w["namespace"], w["run"]) for w in warnings] == [(namespace, "r1")]
    assert "cannot create Job" in warnings[0]["message"] and "422" in warnings[0]["message"]
    errors = metrics.registry.get_sample_value(
        "synthpref_reconcile_errors_total", {"namespace": namespace}
    )
    assert errors == 1
    # The next pass plans the good ones again: Jobs that exist are success, not errors; the
    # refused Job no longer planned is forgotten. (The garbage collector may delete some
    # meanwhile: their owner run does not exist; they are made again.)
    applier.create_jobs(run, spec, good)
    assert applier.refusal(namespace, "r1", good) is None
    assert applier.refusal(namespace, "r1", planned) is None
    assert (
        metrics.registry.get_sample_value(
            "synthpref_reconcile_errors_total", {"namespace": namespace}
        )
        == 1
    )


def test_what_a_creation_logs_names_the_run_of_the_pass(
    k8s_api_client: Any, namespace: str, json_log: io.StringIO
) -> None:
    """Creations run on the applier's threads; their log lines still carry the pass's run."""
    applier = Applier(k8s_api_client, OperatorSettings())
    run = {"metadata": {"name": "r2", "namespace": namespace, "uid": "u-2"}}
    actions = generation_jobs("r2", completions=1)
    with run_context(namespace, "r2"):
        applier.create_jobs(run, make_spec(), actions)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    created = [line for line in lines if "created Job" in line["message"]]
    assert len(created) == len(actions) > 1
    assert {(line["namespace"], line["run"]) for line in created} == {(namespace, "r2")}
