"""Operator metrics: the run-status collector, counters, the reconcile hooks and the HTTP server
(scraped over real HTTP and parsed with prometheus_client's parser)."""

from __future__ import annotations

import datetime as dt
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from kubernetes.client import ApiException
from prometheus_client.parser import text_string_to_metric_families

from synthpref import logs
from synthpref.spec import JudgeBudget
from synthpref_operator.apply import Applier
from synthpref_operator.metrics import MetricsServer, OperatorMetrics, serve
from synthpref_operator.names import Stage
from synthpref_operator.planner import CreateJob
from synthpref_operator.reconcile import Reconciler
from synthpref_operator.settings import OperatorSettings
from synthpref_operator.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    JudgeProgress,
    ModelProgress,
    Phase,
    Progress,
    Reason,
    RunStatus,
)
from tests.builders import UnreadReply, make_spec, spec_dict

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def at(seconds: float) -> str:
    """T0 + seconds, as the planner writes times."""
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def done(kind: ConditionType, seconds: float) -> Condition:
    return Condition(
        type=kind, status=ConditionStatus.TRUE, reason=Reason.DONE, last_transition_time=at(seconds)
    )


def pending(kind: ConditionType, reason: Reason) -> Condition:
    return Condition(
        type=kind, status=ConditionStatus.FALSE, reason=reason, last_transition_time=at(0)
    )


@dataclass
class Probes:
    healthy: bool = True
    ready: bool = True
    calls: list[str] = field(default_factory=list)


@pytest.fixture
def clock() -> list[float]:
    return [T0.timestamp() + 400]


@pytest.fixture
def metrics(clock: list[float]) -> OperatorMetrics:
    return OperatorMetrics(clock=lambda: clock[0])


@pytest.fixture
def probes() -> Probes:
    return Probes()


@pytest.fixture
def server(metrics: OperatorMetrics, probes: Probes) -> Iterator[MetricsServer]:
    running = serve(metrics, "127.0.0.1", 0, lambda: probes.healthy, lambda: probes.ready)
    yield running
    running.shutdown()


def get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(server: MetricsServer) -> Samples:
    code, text = get(server, "/metrics")
    assert code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def generating_run() -> RunStatus:
    """Prepared after 60 s, generating since (two models), started at T0."""
    return RunStatus(
        phase=Phase.GENERATING,
        start_time=at(0),
        conditions=[
            done(ConditionType.PREPARED, 60),
            pending(ConditionType.GENERATED, Reason.IN_PROGRESS),
            pending(ConditionType.MIXED, Reason.WAITING),
        ],
        stages=Progress(
            shards=8,
            models=[
                ModelProgress(name="m0", shards_done=5, shards_total=8),
                ModelProgress(name="m1", shards_done=2, shards_total=8),
            ],
        ),
    )


def annotating_run() -> RunStatus:
    """Done through mixing, judging with the openai judge; failed at T0 + 1000 s."""
    return RunStatus(
        phase=Phase.FAILED,
        start_time=at(0),
        completion_time=at(1000),
        conditions=[
            done(ConditionType.PREPARED, 10),
            done(ConditionType.GENERATED, 610),
            done(ConditionType.MIXED, 640),
            pending(ConditionType.ANNOTATED, Reason.IN_PROGRESS),
            pending(ConditionType.PARSED, Reason.WAITING),
        ],
        stages=Progress(
            shards=4,
            mix_shards_done=4,
            judge_shards_done=1,
            judge=JudgeProgress(
                files=4,
                requests=120,
                requests_done=90,
                requests_failed=3,
                batches=4,
                batches_by_status={"completed": 1, "in_progress": 3},
                tokens_used=123456,
            ),
        ),
    )


def test_runs_are_counted_per_phase_with_every_phase_present(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    metrics.observe_run("a", "r1", generating_run())
    metrics.observe_run("a", "r2", generating_run())
    metrics.observe_run("b", "r1", annotating_run())
    metrics.observe_run("b", "gone", RunStatus(phase=Phase.SUCCEEDED))
    metrics.forget_run("b", "gone")
    metrics.observe_run("a", "r2", RunStatus(phase=Phase.SUSPENDED))  # the latest status counts

    runs = named(scrape(server), "synthpref_runs")
    expected = dict.fromkeys(Phase, 0.0) | {
        Phase.GENERATING: 1.0,
        Phase.FAILED: 1.0,
        Phase.SUSPENDED: 1.0,
    }
    assert runs == {frozenset({("phase", p.value)}): v for p, v in expected.items()}


def test_stage_and_run_durations_come_from_the_conditions(
    metrics: OperatorMetrics, server: MetricsServer, clock: list[float]
) -> None:
    metrics.observe_run("a", "gen", generating_run())
    metrics.observe_run("a", "judge", annotating_run())
    samples = scrape(server)

    def stages(run: str) -> dict[str, float]:
        found = named(samples, "synthpref_run_stage_duration_seconds")
        return {
            dict(labels)["stage"]: v for labels, v in found.items() if dict(labels)["run"] == run
        }

    # running: the stage in progress counts up to now (T0 + 400 s)
    assert stages("gen") == {"prepare": 60.0, "generate": 340.0}
    assert value(samples, "synthpref_run_duration_seconds", namespace="a", run="gen") == 400.0
    # failed while judging: the judge stage ends at the run's completion
    assert stages("judge") == {"prepare": 10.0, "generate": 600.0, "mix": 30.0, "judge": 360.0}
    assert value(samples, "synthpref_run_duration_seconds", namespace="a", run="judge") == 1000.0
    assert value(samples, "synthpref_run_phase", namespace="a", run="judge", phase="Failed") == 1

    clock[0] += 100
    later = scrape(server)
    assert value(later, "synthpref_run_duration_seconds", namespace="a", run="gen") == 500.0
    assert value(later, "synthpref_run_duration_seconds", namespace="a", run="judge") == 1000.0


def test_judge_and_generation_progress(metrics: OperatorMetrics, server: MetricsServer) -> None:
    metrics.observe_run("a", "gen", generating_run())
    metrics.observe_run("b", "judge", annotating_run())
    samples = scrape(server)

    batches = named(samples, "synthpref_judge_batches")
    assert batches == {
        frozenset({("namespace", "b"), ("run", "judge"), ("status", "completed")}): 1.0,
        frozenset({("namespace", "b"), ("run", "judge"), ("status", "in_progress")}): 3.0,
    }
    judge = {"namespace": "b", "run": "judge"}
    assert value(samples, "synthpref_judge_requests", **judge, outcome="done") == 90
    assert value(samples, "synthpref_judge_requests", **judge, outcome="failed") == 3
    assert value(samples, "synthpref_judge_tokens_total", **judge) == 123456
    assert value(samples, "synthpref_stage_shards_done", **judge, stage="mix") == 4
    assert value(samples, "synthpref_stage_shards_done", **judge, stage="judge") == 1
    # no judge progress yet: no judge series for that run
    assert not [k for k in named(samples, "synthpref_judge_requests") if ("run", "gen") in k]

    gen = {"namespace": "a", "run": "gen"}
    assert value(samples, "synthpref_generation_shards_done", **gen, model="m0") == 5
    assert value(samples, "synthpref_generation_shards_done", **gen, model="m1") == 2
    assert value(samples, "synthpref_generation_shards", **gen, model="m1") == 8
    assert value(samples, "synthpref_run_shards", **gen) == 8


def conditions_of(samples: Samples, run: str) -> set[tuple[str, str, str]]:
    """(type, status, reason) of each synthpref_run_condition series of `run`."""
    found = named(samples, "synthpref_run_condition")
    out = set()
    for labels, v in found.items():
        label = dict(labels)
        if label["run"] == run:
            assert v == 1
            out.add((label["type"], label["status"], label["reason"]))
    return out


def with_condition(
    status: RunStatus, kind: ConditionType, state: ConditionStatus, reason: Reason
) -> RunStatus:
    kept = [c for c in status.conditions if c.type is not kind]
    new = Condition(type=kind, status=state, reason=reason, last_transition_time=at(300))
    return status.model_copy(update={"conditions": [*kept, new]})


def test_every_condition_is_exported_with_its_status_and_reason(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    held = with_condition(
        generating_run(), ConditionType.BLOCKED, ConditionStatus.TRUE, Reason.UNSCHEDULABLE
    )
    held = with_condition(held, ConditionType.ADMITTED, ConditionStatus.TRUE, Reason.ADMITTED)
    refused = with_condition(
        RunStatus(), ConditionType.ADMITTED, ConditionStatus.FALSE, Reason.SECRET_NOT_ALLOWED
    )
    metrics.observe_run("a", "held", held)
    metrics.observe_run("a", "refused", refused)
    samples = scrape(server)
    assert conditions_of(samples, "held") == {
        ("Prepared", "True", "Done"),
        ("Generated", "False", "InProgress"),
        ("Mixed", "False", "Waiting"),
        ("Blocked", "True", "Unschedulable"),
        ("Admitted", "True", "Admitted"),
    }
    assert conditions_of(samples, "refused") == {("Admitted", "False", "SecretNotAllowed")}

    # a new reason, then no block: the old series go, the new ones come
    held = with_condition(held, ConditionType.BLOCKED, ConditionStatus.TRUE, Reason.QUEUED)
    metrics.observe_run("a", "held", held)
    assert ("Blocked", "True", "Queued") in conditions_of(scrape(server), "held")
    assert ("Blocked", "True", "Unschedulable") not in conditions_of(scrape(server), "held")
    held = with_condition(held, ConditionType.BLOCKED, ConditionStatus.FALSE, Reason.NOT_BLOCKED)
    metrics.observe_run("a", "held", held)
    blocked = {c for c in conditions_of(scrape(server), "held") if c[0] == "Blocked"}
    assert blocked == {("Blocked", "False", "NotBlocked")}

    metrics.forget_run("a", "held")
    samples = scrape(server)
    assert conditions_of(samples, "held") == set()
    assert conditions_of(samples, "refused") == {("Admitted", "False", "SecretNotAllowed")}


def judging(**judge: Any) -> RunStatus:
    """`annotating_run`, still annotating, with these JudgeProgress fields."""
    status = annotating_run()
    assert status.stages.judge is not None
    progress = status.stages.judge.model_copy(update=judge)
    return status.model_copy(
        update={
            "phase": Phase.ANNOTATING,
            "completion_time": None,
            "stages": status.stages.model_copy(update={"judge": progress}),
        }
    )


def test_judge_cost_budget_and_endpoint_outage(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    run = {"namespace": "b", "run": "judge"}
    metrics.observe_budget("b", "judge", JudgeBudget(max_usd=25.0, max_tokens=1_000_000))
    metrics.observe_run(
        "b", "judge", judging(cost_usd=3.25, endpoint_failing_since=at(700), last_error="503")
    )
    samples = scrape(server)
    assert value(samples, "synthpref_judge_cost_usd", **run) == 3.25
    assert value(samples, "synthpref_judge_budget_usd", **run) == 25.0
    assert value(samples, "synthpref_judge_budget_tokens", **run) == 1_000_000
    since = value(samples, "synthpref_judge_endpoint_failing_since_seconds", **run)
    assert since == T0.timestamp() + 700

    # the endpoint answers again, the cost grows, the budget is raised (in USD only)
    metrics.observe_budget("b", "judge", JudgeBudget(max_usd=40.0))
    metrics.observe_run("b", "judge", judging(cost_usd=4.5))
    samples = scrape(server)
    assert value(samples, "synthpref_judge_cost_usd", **run) == 4.5
    assert value(samples, "synthpref_judge_budget_usd", **run) == 40.0
    assert named(samples, "synthpref_judge_budget_tokens") == {}
    assert named(samples, "synthpref_judge_endpoint_failing_since_seconds") == {}

    # no price: no cost; the budget removed from the spec: no budget
    metrics.observe_budget("b", "judge", None)
    metrics.observe_run("b", "judge", judging(cost_usd=None))
    samples = scrape(server)
    for name in ("synthpref_judge_cost_usd", "synthpref_judge_budget_usd"):
        assert named(samples, name) == {}, name

    # forgotten: nothing of the run is left, and a budget seen before does not come back
    metrics.observe_budget("b", "judge", JudgeBudget(max_tokens=5))
    metrics.observe_run("b", "judge", judging(endpoint_failing_since=at(700)))
    metrics.forget_run("b", "judge")
    assert not [k for k in scrape(server) if ("run", "judge") in k[1]]
    metrics.observe_run("b", "judge", judging())
    assert named(scrape(server), "synthpref_judge_budget_tokens") == {}


def test_a_budget_is_exported_only_with_its_runs_status(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    metrics.observe_budget("a", "new", JudgeBudget(max_usd=10.0))
    assert named(scrape(server), "synthpref_judge_budget_usd") == {}
    metrics.observe_run("a", "new", RunStatus())
    assert value(scrape(server), "synthpref_judge_budget_usd", namespace="a", run="new") == 10.0


def test_the_process_own_memory_and_platform(server: MetricsServer) -> None:
    samples = scrape(server)
    resident = value(samples, "process_resident_memory_bytes")
    assert resident is not None and resident > 0
    assert named(samples, "python_info")


def test_counters_and_the_reconcile_histogram(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    metrics.job_created("a", Stage.GENERATE)
    metrics.job_created("a", Stage.GENERATE)
    metrics.job_created("b", Stage.PREPARE)
    metrics.reconcile_failed("a")
    metrics.reconcile_duration.observe(0.2)
    samples = scrape(server)
    jobs = "synthpref_jobs_created_total"
    assert value(samples, jobs, namespace="a", stage="generate") == 2
    assert value(samples, jobs, namespace="b", stage="prepare") == 1
    assert value(samples, "synthpref_reconcile_errors_total", namespace="a") == 1
    assert value(samples, "synthpref_reconcile_duration_seconds_count") == 1
    assert value(samples, "synthpref_reconcile_duration_seconds_bucket", le="0.25") == 1
    assert value(samples, "synthpref_reconcile_duration_seconds_bucket", le="0.1") == 0


def test_healthz_and_readyz_follow_their_probes(server: MetricsServer, probes: Probes) -> None:
    assert get(server, "/healthz") == (200, "ok\n")
    assert get(server, "/readyz") == (200, "ok\n")
    probes.ready = False
    assert get(server, "/readyz")[0] == 503
    assert get(server, "/healthz")[0] == 200
    probes.healthy, probes.ready = False, True
    assert get(server, "/healthz")[0] == 503
    assert get(server, "/readyz")[0] == 200
    assert get(server, "/nothing")[0] == 404


def test_a_probe_that_raises_is_unhealthy(metrics: OperatorMetrics) -> None:
    def broken() -> bool:
        raise RuntimeError("no lease")

    running = serve(metrics, "127.0.0.1", 0, broken, lambda: True)
    try:
        assert get(running, "/healthz")[0] == 503
        assert get(running, "/readyz")[0] == 200
    finally:
        running.shutdown()


# ------------------------------------------------------------------ the hooks


def reconciler(metrics: OperatorMetrics) -> Reconciler:
    return Reconciler(None, OperatorSettings(), metrics)


def test_a_reconcile_pass_is_timed_recorded_and_tagged_with_the_run(
    metrics: OperatorMetrics, server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = reconciler(metrics)
    seen: list[Any] = []

    def one_pass(namespace: str, name: str) -> RunStatus | None:
        seen.append(logs._context.get())
        return generating_run() if name == "r1" else None

    monkeypatch.setattr(subject, "_reconcile", one_pass)
    subject.request("a", "r1")
    subject.reconcile("a", "r2")  # deleted: nothing to export
    samples = scrape(server)
    assert seen == [("a", "r1"), ("a", "r2")]
    assert logs._context.get() is None
    assert value(samples, "synthpref_runs", phase="Generating") == 1
    assert value(samples, "synthpref_run_phase", namespace="a", run="r1", phase="Generating") == 1
    assert value(samples, "synthpref_reconcile_duration_seconds_count") == 2

    monkeypatch.setattr(subject, "_reconcile", lambda namespace, name: None)
    subject.request("a", "r1")  # the run is gone: it is forgotten
    assert value(scrape(server), "synthpref_runs", phase="Generating") == 0


class RunReader:
    """Applier.get_run: one run, as the API server returns it."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run

    def __call__(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.run


def test_a_pass_records_the_specs_judge_budget(
    metrics: OperatorMetrics, server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = reconciler(metrics)
    done_status = RunStatus(phase=Phase.SUCCEEDED, observed_generation=3).to_body()
    run = {
        "metadata": {"name": "r1", "namespace": "a", "generation": 3},
        "spec": spec_dict(judge={"budget": {"maxUsd": 7.5}}),
        "status": done_status,  # done: the pass ends there, with no request
    }
    monkeypatch.setattr(subject.applier, "get_run", RunReader(run))
    subject.request("a", "r1")
    samples = scrape(server)
    assert value(samples, "synthpref_judge_budget_usd", namespace="a", run="r1") == 7.5
    assert value(samples, "synthpref_run_phase", namespace="a", run="r1", phase="Succeeded") == 1

    run["spec"] = spec_dict()  # the budget is taken out of the spec
    subject.request("a", "r1")
    assert named(scrape(server), "synthpref_judge_budget_usd") == {}


def test_a_failing_pass_is_counted_and_still_raises(
    metrics: OperatorMetrics, server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = reconciler(metrics)

    def failing(namespace: str, name: str) -> RunStatus | None:
        raise ApiException(status=500, reason="boom")

    monkeypatch.setattr(subject, "_reconcile", failing)
    with pytest.raises(ApiException):
        subject.request("a", "r1")
    with pytest.raises(ApiException):
        subject.request("a", "r1")  # the slot was released
    samples = scrape(server)
    assert value(samples, "synthpref_reconcile_errors_total", namespace="a") == 2
    assert value(samples, "synthpref_reconcile_duration_seconds_count") == 2


class FakeBatch:
    """BatchV1Api.create_namespaced_job: the first create of a name succeeds, then 409."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def create_namespaced_job(
        self, namespace: str, body: dict[str, Any], **options: Any
    ) -> UnreadReply:
        name = body["metadata"]["name"]
        if name in self.names:
            raise ApiException(status=409, reason="AlreadyExists")
        self.names.add(name)
        return UnreadReply()


def test_jobs_are_counted_only_when_this_call_created_them(
    metrics: OperatorMetrics, server: MetricsServer
) -> None:
    applier = Applier(None, OperatorSettings(), metrics)
    applier.batch = cast(Any, FakeBatch())
    run = {"metadata": {"name": "r1", "namespace": "a", "uid": "u-1"}}
    spec = make_spec()
    prepare = CreateJob(name="r1-prepare", stage=Stage.PREPARE, completions=1)
    generate = CreateJob(name="r1-generate-m0", stage=Stage.GENERATE, completions=2, model="m0")
    assert applier.create_job(run, spec, prepare) is True
    assert applier.create_job(run, spec, prepare) is False  # exists: not counted again
    assert applier.create_job(run, spec, generate) is True
    samples = scrape(server)
    jobs = "synthpref_jobs_created_total"
    assert value(samples, jobs, namespace="a", stage="prepare") == 1
    assert value(samples, jobs, namespace="a", stage="generate") == 1


def test_passes_are_counted_by_trigger_and_a_lost_status_write_runs_again(
    metrics: OperatorMetrics, server: MetricsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = reconciler(metrics)
    calls: list[str] = []

    def one_pass(namespace: str, name: str) -> RunStatus | None:
        calls.append(name)
        if len(calls) == 1:
            subject.request(namespace, name, "job")  # comes while the pass runs
        if len(calls) == 2:
            subject._again(namespace, name)  # its status write lost a conflict
        return None

    monkeypatch.setattr(subject, "_reconcile", one_pass)
    subject.request("a", "r1", "timer")
    assert calls == ["r1"] * 3
    samples = scrape(server)
    for trigger in ("timer", "job", "again"):
        assert value(samples, "synthpref_reconcile_passes_total", trigger=trigger) == 1


def test_api_server_requests_are_counted_by_method(metrics: OperatorMetrics) -> None:
    from kubernetes import client
    from urllib3.exceptions import MaxRetryError

    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # nothing listens: the request is still sent
    configuration.retries = 0
    api = client.ApiClient(configuration)
    metrics.count_api_requests(api)
    with pytest.raises(MaxRetryError):
        client.CoreV1Api(api).read_namespaced_secret("s", "ns", _request_timeout=5)
    assert metrics.registry.get_sample_value("synthpref_api_requests_total", {"method": "GET"}) == 1
