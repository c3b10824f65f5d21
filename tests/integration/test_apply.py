"""Applying a pass's actions against the real API server (`apply.Applier`): a stage's Jobs
are created together, one refused Job neither stops the others nor goes unreported (log line,
metric, the refusal the pass shows on the run), what a creation logs names the run of the
pass, and a creation the API server throttles (429) is tried again, not reported."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synthpref.logs import configure_logging, run_context
from synthpref_operator.apply import Applier
from synthpref_operator.devcluster.controlplane import ControlPlane
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


THROTTLED_USER = "throttled-operator"


@pytest.fixture(scope="module")
def throttled_api_client(kube_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A client of an API server that takes one mutating request at a time and answers the
    others 429 (the max-in-flight filter, with priority and fairness off), as a user it
    throttles (the admin's group, system:masters, never is): a cluster-admin by RBAC."""
    from kubernetes import client

    cp = ControlPlane(
        kube_bin_dir,
        tmp_path_factory.mktemp("throttled"),
        extra_apiserver_args=(
            "--max-mutating-requests-inflight=1",
            "--enable-priority-and-fairness=false",
        ),
    )
    cp.start()
    try:
        admin = cp.api_client()
        rbac = "rbac.authorization.k8s.io"
        client.RbacAuthorizationV1Api(admin).create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=THROTTLED_USER),
                role_ref=client.V1RoleRef(api_group=rbac, kind="ClusterRole", name="cluster-admin"),
                subjects=[client.RbacV1Subject(kind="User", name=THROTTLED_USER, api_group=rbac)],
            )
        )
        client.CoreV1Api(admin).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="throttled"))
        )
        throttled = cp.api_client()
        throttled.set_default_header("Impersonate-User", THROTTLED_USER)
        yield throttled
    finally:
        cp.stop()


def test_creations_the_api_server_throttles_are_tried_again_not_reported(
    throttled_api_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = OperatorMetrics()
    applier = Applier(throttled_api_client, OperatorSettings(), metrics, create_concurrency=8)
    spec = make_spec()
    runs = [f"r{i}" for i in range(4)]
    planned = {run: generation_jobs(run, completions=1) for run in runs}

    def one_pass(run: str) -> None:
        body = {"metadata": {"name": run, "namespace": "throttled", "uid": f"u-{run}"}}
        applier.create_jobs(body, spec, planned[run])

    caplog.set_level(logging.DEBUG, logger="synthpref_operator.apply")
    passes = [threading.Thread(target=one_pass, args=(run,)) for run in runs]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=300)
    throttled = [r for r in caplog.records if "throttled (429)" in r.getMessage()]
    assert throttled, "the API server throttled nothing: the test shows nothing"
    # Every Job was created in the end; none is reported as refused, nothing counted as an error.
    assert sorted(applier.jobs_created) == sorted(
        f"throttled/{action.name}" for run in runs for action in planned[run]
    )
    assert all(applier.refusal("throttled", run, planned[run]) is None for run in runs)
    errors = metrics.registry.get_sample_value(
        "synthpref_reconcile_errors_total", {"namespace": "throttled"}
    )
    assert errors is None
