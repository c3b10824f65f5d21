"""Applying a pass's actions against the real API server (`apply.Applier`): a stage's Jobs
are created together, one refused Job neither stops the others nor goes unreported (log line,
metric, the refusal the pass shows on the run), what a creation logs names the run of the
pass, and a request the API server throttles (429), of any kind a pass makes, is sent again by
the operator's client, not reported."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest

from synthpref.logs import configure_logging, run_context
from synthpref.spec import API_GROUP, API_VERSION
from synthpref_operator import observe
from synthpref_operator.apply import Applier
from synthpref_operator.crd import PLURAL, crd
from synthpref_operator.devcluster.controlplane import ControlPlane
from synthpref_operator.handlers import OperatorConfig, passes_api_client
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import LABEL_ALLOW_RUNS, LABEL_RUN, Stage
from synthpref_operator.planner import CreateJob, DeleteJob, Event, SuspendJob
from synthpref_operator.settings import OperatorSettings
from tests.builders import make_spec, manifest_dict
from tests.support.polling import wait_for

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
THROTTLED_NAMESPACE = "throttled"


@dataclass
class Throttled:
    """A control plane whose API server takes one mutating and one read request at a time and
    answers the others 429 (the max-in-flight filters, with priority and fairness off), for a
    user it throttles (the admin's group, system:masters, never is): a cluster-admin by RBAC,
    with a kubeconfig of its own. The PreferenceRun CRD is installed."""

    kubeconfig: Path
    admin: Any


@pytest.fixture(scope="module")
def throttled(kube_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Throttled]:
    from kubernetes import client

    work = tmp_path_factory.mktemp("throttled")
    cp = ControlPlane(
        kube_bin_dir,
        work,
        extra_apiserver_args=(
            "--max-mutating-requests-inflight=1",
            "--max-requests-inflight=1",
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
        core = client.CoreV1Api(admin)
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=THROTTLED_NAMESPACE))
        )
        core.create_namespaced_secret(
            THROTTLED_NAMESPACE,
            client.V1Secret(
                # Opted in for runs: the operator reads no value of a Secret without it.
                metadata=client.V1ObjectMeta(name="keys", labels={LABEL_ALLOW_RUNS: "true"}),
                string_data={"k": "v"},
            ),
        )
        client.ApiextensionsV1Api(admin).create_custom_resource_definition(cast(Any, crd()))
        kubeconfig = cp.write_kubeconfig(
            work / "throttled.kubeconfig", user=THROTTLED_USER, groups=()
        )
        yield Throttled(kubeconfig, admin)
    finally:
        cp.stop()


def run_at_once(one_pass: Callable[[str], None], runs: list[str]) -> None:
    """A pass per run, all at once (each on its own thread, as kopf's workers run them)."""
    passes = [threading.Thread(target=one_pass, args=(run,)) for run in runs]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=600)


def passes_client(throttled: Throttled, metrics: OperatorMetrics) -> Any:
    """The passes' own client, as the operator builds it, for the throttled user."""
    return passes_api_client(OperatorConfig(kubeconfig=str(throttled.kubeconfig), metrics=metrics))


def throttled_methods(metrics: OperatorMetrics) -> set[str]:
    """The HTTP methods of the requests the API server throttled (`synthpref_api_throttled`)."""
    return {
        sample.labels["method"]
        for family in metrics.registry.collect()
        if family.name == "synthpref_api_throttled"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value > 0
    }


def test_creations_the_api_server_throttles_are_sent_again_not_reported(
    throttled: Throttled,
) -> None:
    metrics = OperatorMetrics()
    applier = Applier(
        passes_client(throttled, metrics), OperatorSettings(), metrics, create_concurrency=8
    )
    spec = make_spec()
    runs = [f"r{i}" for i in range(4)]
    planned = {run: generation_jobs(run, completions=1) for run in runs}

    def one_pass(run: str) -> None:
        body = {"metadata": {"name": run, "namespace": THROTTLED_NAMESPACE, "uid": f"u-{run}"}}
        applier.create_jobs(body, spec, planned[run])

    run_at_once(one_pass, runs)
    assert "POST" in throttled_methods(metrics), "the API server throttled no creation"
    # Every Job was created in the end; none is reported as refused, nothing counted as an error.
    assert sorted(applier.jobs_created) == sorted(
        f"{THROTTLED_NAMESPACE}/{action.name}" for run in runs for action in planned[run]
    )
    assert all(applier.refusal(THROTTLED_NAMESPACE, run, planned[run]) is None for run in runs)
    errors = metrics.registry.get_sample_value(
        "synthpref_reconcile_errors_total", {"namespace": THROTTLED_NAMESPACE}
    )
    assert errors is None
    # The 429s are counted apart from the requests (each counted once, however often sent).
    count = metrics.registry.get_sample_value
    assert count("synthpref_api_requests_total", {"method": "POST"}) == len(applier.jobs_created)


def test_every_kind_of_call_a_pass_makes_rides_out_a_throttling_api_server(
    throttled: Throttled,
) -> None:
    """Reads, status writes, patches, deletions and Events of passes of several runs at once,
    through the operator's client: none fails although the API server throttles them."""
    from kubernetes import client

    metrics = OperatorMetrics()
    api = passes_client(throttled, metrics)
    applier = Applier(api, OperatorSettings(), create_concurrency=4)
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    runs = [f"calls{i}" for i in range(6)]
    custom = client.CustomObjectsApi(throttled.admin)
    for run in runs:
        # The CRD is served once it is Established.
        wait_for(partial(_created_run, custom, run), timeout=300, what="the CRD to be served")
    failures: list[BaseException] = []

    def one_pass(run: str) -> None:
        try:
            stored = applier.get_run(THROTTLED_NAMESPACE, run)  # GET
            assert stored is not None
            uid = stored["metadata"]["uid"]
            body = {"metadata": {"name": run, "namespace": THROTTLED_NAMESPACE, "uid": uid}}
            actions = generation_jobs(run, completions=1)
            applier.create_jobs(body, make_spec(), actions)  # POST
            for _ in range(3):
                assert observe.observe_jobs(batch, THROTTLED_NAMESPACE, run).keys() == {
                    action.name for action in actions
                }  # LIST
                assert observe.secret_value(core, THROTTLED_NAMESPACE, "keys", "k") == "v"
            for action in actions:  # PATCH
                applier.suspend_job(THROTTLED_NAMESPACE, SuspendJob(action.name, suspend=True))
            stored = applier.get_run(THROTTLED_NAMESPACE, run)
            assert stored is not None
            assert applier.write_status(stored, {"phase": "Generating"})  # PUT
            applier.emit(stored, Event("Normal", "Throttled", "a pass under a busy server"))
            for action in actions:  # DELETE
                applier.delete_job(THROTTLED_NAMESPACE, DeleteJob(action.name))
        except BaseException as error:  # reported by the test below
            failures.append(error)

    run_at_once(one_pass, runs)
    assert not failures, [str(failure) for failure in failures]
    assert all(
        applier.refusal(THROTTLED_NAMESPACE, run, generation_jobs(run)) is None for run in runs
    )
    throttled_verbs = throttled_methods(metrics)
    # Both of the API server's limits were hit: the test shows retries of reads and of writes.
    assert "GET" in throttled_verbs
    assert throttled_verbs & {"POST", "PATCH", "PUT", "DELETE"}
    for run in runs:
        stored: Any = custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, THROTTLED_NAMESPACE, PLURAL, run
        )
        assert stored["status"]["phase"] == "Generating"
    admin_core = client.CoreV1Api(throttled.admin)
    events: Any = admin_core.list_namespaced_event(THROTTLED_NAMESPACE).items
    assert sorted(e.involved_object.name for e in events if e.reason == "Throttled") == runs
    jobs: Any = client.BatchV1Api(throttled.admin).list_namespaced_job(THROTTLED_NAMESPACE).items
    left = [job for job in jobs if job.metadata.deletion_timestamp is None]
    assert not [job.metadata.name for job in left if job.metadata.labels[LABEL_RUN] in runs]


def _created_run(custom: Any, run: str) -> bool:
    """Create the PreferenceRun `run`; False while the API server does not serve the CRD yet."""
    from kubernetes.client import ApiException

    try:
        custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, THROTTLED_NAMESPACE, PLURAL, manifest_dict(name=run)
        )
    except ApiException as error:
        if error.status == 404:
            return False
        if error.status != 409:
            raise
    return True
