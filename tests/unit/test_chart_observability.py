"""The chart's monitoring pieces, rendered by helm: the Grafana dashboard's ConfigMap
(grafana.dashboard), the PrometheusRule (prometheusRule) and the ServiceMonitor
(serviceMonitor). None is rendered by default; each is when asked, as its values say. The
alerting rules pass Prometheus' own rule parser (tools/rulecheck: rulefmt and the PromQL
parser, what `promtool check rules` runs); every series a rule or a dashboard panel selects is
one the operator exports (its /metrics text, from `OperatorMetrics` fed the way the reconcile
passes feed it), with the labels and label values it matches on, rate() taken of counters
only and changes() of gauges; the dashboard is a Grafana dashboard (a JSON schema); and
docs/monitoring.md lists the alerts as the chart renders them."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from synthpref.annotate.ledger import Phase as LedgerPhase
from synthpref.spec import JudgeBudget
from synthpref_operator.admission import Problem, admission_status
from synthpref_operator.blocked import blocked_status
from synthpref_operator.metrics import STAGE_CONDITIONS, OperatorMetrics
from synthpref_operator.names import Stage
from synthpref_operator.planner import set_condition
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
from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "synthpref"
DASHBOARD = CHART / "dashboards" / "synthpref.json"
RELEASE, NAMESPACE = "rel", "ml"
FULLNAME = f"{RELEASE}-synthpref"
JOB = f"{FULLNAME}-metrics"
ALERTS = {
    "SynthprefRunFailed",
    "SynthprefRunBlocked",
    "SynthprefRunNotAdmitted",
    "SynthprefJudgeUnreachable",
    "SynthprefJudgeBudgetReached",
    "SynthprefRunStalled",
    "SynthprefOperatorDown",
    "SynthprefReconcileErrors",
    "SynthprefAPIThrottled",
}
# Series the dashboard reads that the operator does not export, and where they come from (its
# own memory, process_resident_memory_bytes, it does: the process collector is on its registry).
OUTSIDE = {
    "up": "Prometheus, for every target it scrapes",
    "container_memory_working_set_bytes": "the kubelet's cAdvisor (the operator container)",
}
# Labels Prometheus gives every series it scrapes, which selectors may match on.
TARGET_LABELS = {"job", "instance"}
SYNTHPREF_NAME = re.compile(r"\bsynthpref_\w+")
GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)\b")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# ------------------------------------------------------------------ helm


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools.helm()), "template", RELEASE, str(CHART), "-n", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def render(*args: str) -> list[dict[str, Any]]:
    """`helm template` with these arguments, parsed into its documents."""
    done = helm_template(*args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


ALL_ON = (
    "--set",
    "grafana.dashboard.enabled=true",
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "serviceMonitor.enabled=true",
)


def alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rule = only(docs, "PrometheusRule")
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


# ------------------------------------------------------------------ what the operator exports


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_in(phase: Phase) -> RunStatus:
    """A run in `phase`, as far along as that phase is: stages done (their conditions True),
    models generating, the OpenAI judge with request files in every ledger phase."""
    order = list(Phase)[: list(Phase).index(Phase.SUCCEEDED)]
    reached = order.index(phase) if phase in order else len(order)
    conditions = []
    for i, (_, kind) in enumerate(STAGE_CONDITIONS):
        if i + 1 < reached:
            conditions.append(
                Condition(
                    type=kind,
                    status=ConditionStatus.TRUE,
                    reason=Reason.DONE,
                    last_transition_time=at(60 * (i + 1)),
                )
            )
        else:
            reason = Reason.IN_PROGRESS if i + 1 == reached else Reason.WAITING
            conditions.append(
                Condition(
                    type=kind,
                    status=ConditionStatus.FALSE,
                    reason=reason,
                    last_transition_time=at(0),
                )
            )
    judge = JudgeProgress(
        files=len(LedgerPhase),
        requests=400,
        requests_done=300,
        requests_failed=2,
        batches=len(LedgerPhase),
        batches_by_status={p.value: 1 for p in LedgerPhase},
        tokens_used=123_456,
    )
    return RunStatus(
        phase=phase,
        start_time=at(0),
        completion_time=at(900) if phase in (Phase.SUCCEEDED, Phase.FAILED) else None,
        conditions=conditions,
        stages=Progress(
            shards=8,
            prompts=400,
            models=[
                ModelProgress(name="qwen", shards_done=8, shards_total=8),
                ModelProgress(name="llama", shards_done=5, shards_total=8),
            ],
            mix_shards_done=8,
            judge_shards_done=3,
            parse_shards_done=1,
            judge=judge,
        ),
    )


def held_runs() -> dict[str, RunStatus]:
    """Runs held the ways the run alerts name, their statuses made by the operator's own
    functions: Blocked (a Secret without its key), not admitted (and so Blocked too), the judge
    endpoint failing (Blocked JudgeUnreachable), the judge budget reached (with its cost)."""
    generation, now = 1, at(120)
    blocked, _ = blocked_status(
        run_in(Phase.GENERATING), Reason.SECRET_KEY_MISSING, "no key token", generation, now
    )
    problem = Problem(Reason.ENDPOINT_NOT_ALLOWED, "spec.judge.baseUrl", "not allowed")
    refused, _ = admission_status(run_in(Phase.PENDING), [problem], generation, now)
    not_admitted, _ = blocked_status(
        refused, problem.reason, refused.message, generation, now, event=False, prefix=""
    )
    judging = run_in(Phase.ANNOTATING)
    assert judging.stages.judge is not None
    failing_judge = judging.stages.judge.model_copy(
        update={"endpoint_failing_since": at(100), "last_error": "connection refused"}
    )
    failing, _ = blocked_status(
        judging.model_copy(
            update={"stages": judging.stages.model_copy(update={"judge": failing_judge})}
        ),
        Reason.JUDGE_UNREACHABLE,
        "judge endpoint unreachable",
        generation,
        now,
    )
    spent_judge = judging.stages.judge.model_copy(update={"cost_usd": 12.5})
    exhausted = judging.model_copy(
        update={
            "stages": judging.stages.model_copy(update={"judge": spent_judge}),
            "conditions": set_condition(
                judging.conditions,
                ConditionType.BUDGET_EXHAUSTED,
                ConditionStatus.TRUE,
                Reason.BUDGET_EXHAUSTED,
                "spent $12.50 of $12.00",
                generation,
                now,
            ),
        }
    )
    return {
        "blocked": blocked,
        "not-admitted": not_admitted,
        "judge-failing": failing,
        "over-budget": exhausted,
    }


class _Events:
    """botocore's event system, as far as `count_storage_requests` uses it."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def register(self, name: str, handler: Any) -> None:
        assert name == "before-send.s3"
        self.handlers.append(handler)


@dataclass
class Exposition:
    """The operator's /metrics text, by sample name: its family's type, its label names and
    the values each label takes."""

    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def exported() -> Exposition:
    """What an operator with a run in every phase exports once every counter has counted."""
    metrics = OperatorMetrics(clock=lambda: T0.timestamp() + 600)
    for i, phase in enumerate(Phase):
        metrics.observe_run(f"team-{i % 2}", f"run-{phase.value.lower()}", run_in(phase))
    for name, status in held_runs().items():
        metrics.observe_budget("team-0", name, JudgeBudget(max_usd=12.0, max_tokens=2_000_000))
        metrics.observe_run("team-0", name, status)
    for stage in Stage:
        metrics.job_created("team-0", stage)
    metrics.reconcile_failed("team-1")
    for trigger in ("event", "job", "timer", "catalog", "again"):
        metrics.reconcile_passes.labels(trigger=trigger).inc()
        metrics.reconcile_duration.observe(0.3)
    metrics.run_events_ignored.inc()
    api = SimpleNamespace(rest_client=SimpleNamespace(request=lambda *a, **k: None))
    metrics.count_api_requests(api)
    for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
        api.rest_client.request(method, "https://kubernetes/apis")
    metrics.count_throttled("PATCH")
    events = _Events()
    metrics.count_storage_requests(SimpleNamespace(meta=SimpleNamespace(events=events)))
    for operation, method in (("ListObjectsV2", "GET"), ("GetObject", "GET"), ("PutObject", "PUT")):
        for handler in events.handlers:
            handler(
                request=SimpleNamespace(method=method), event_name=f"before-send.s3.{operation}"
            )

    out = Exposition()
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.types[sample.name] = family.type
            out.labels.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                out.values.setdefault((sample.name, label), set()).add(value)
    return out


# ------------------------------------------------------------------ expressions


Selector = dict[str, Any]


def rule_selectors(rule_file: Path) -> tuple[int, dict[str, list[Selector]]]:
    """Check a rule file with Prometheus' rule parser; its rule count and each rule's selectors."""
    done = subprocess.run(
        [str(tools.rulecheck()), "rules", str(rule_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    return int(found["rules"]), dict(found["selectors"])


def expr_selectors(exprs: list[str]) -> list[list[Selector]]:
    """Parse PromQL expressions with Prometheus' parser; the selectors of each."""
    done = subprocess.run(
        [str(tools.rulecheck()), "exprs"],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [list(s) for s in json.loads(done.stdout)["selectors"]]


def selector_problems(selector: Selector, exported: Exposition) -> list[str]:
    """What a selector names that the operator does not export (metric, label, label value)."""
    name = str(selector["name"])
    if name in OUTSIDE:
        return []
    if name not in exported.types:
        return [f"{name} is not exported"]
    problems = []
    for matcher in selector["matchers"]:
        label, kind, value = matcher["label"], matcher["type"], matcher["value"]
        if label in TARGET_LABELS:
            continue
        if label not in exported.labels[name]:
            problems.append(f"{name} has no label {label}")
            continue
        if "$" in value or kind in ("!=", "!~"):
            continue  # a dashboard variable, or a negative matcher
        wanted = value.split("|") if kind == "=~" else [value]
        missing = set(wanted) - exported.values[(name, label)]
        if missing:
            problems.append(f"{name}{{{label}{kind}{value!r}}}: no series with {sorted(missing)}")
    return problems


def function_problems(expr: str, exported: Exposition) -> list[str]:
    """rate(), irate() and increase() of a non-counter; changes() of a non-gauge."""
    problems = []
    for fn, name in re.findall(r"\b(rate|irate|increase|changes)\(\s*([A-Za-z_:][\w:]*)", expr):
        kind = exported.types.get(name)
        if name in OUTSIDE or kind is None:
            continue  # reported by selector_problems
        if fn == "changes" and kind != "gauge":
            problems.append(f"changes({name}) of a {kind}")
        if fn != "changes" and kind not in ("counter", "histogram"):
            problems.append(f"{fn}({name}) of a {kind}")
    return problems


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows too."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and of the variables' label_values() queries."""
    exprs = [t["expr"] for p in dashboard_panels(board) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
        if match:
            exprs.append(f"count by ({match[2]}) ({match[1]})")
    return exprs


# ------------------------------------------------------------------ rendering


def test_nothing_is_rendered_by_default() -> None:
    docs = render()
    assert not kinds(docs) & {"ConfigMap", "PrometheusRule", "ServiceMonitor"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["grafana"]["dashboard"]["enabled"] is False
    assert values["prometheusRule"]["enabled"] is False
    assert values["serviceMonitor"]["enabled"] is False


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard() -> None:
    (config_map,) = [d for d in render(*ALL_ON) if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == f"{FULLNAME}-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["synthpref.json"]) == dashboard()

    other = only(
        render(
            "--set",
            "grafana.dashboard.enabled=true",
            "--set",
            "grafana.dashboard.namespace=monitoring",
            "--set-json",
            'grafana.dashboard.labels={"grafana_dashboard": null, "dashboards": "synthpref"}',
            "--set",
            "grafana.dashboard.annotations.grafana_folder=ML",
        ),
        "ConfigMap",
    )
    assert other["metadata"]["namespace"] == "monitoring"
    assert other["metadata"]["labels"]["dashboards"] == "synthpref"
    assert "grafana_dashboard" not in other["metadata"]["labels"]
    assert other["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_service_monitor_scrapes_the_metrics_service_on_its_named_port() -> None:
    docs = render(
        *ALL_ON,
        "--set",
        "serviceMonitor.interval=15s",
        "--set",
        "serviceMonitor.labels.release=kube-prometheus-stack",
    )
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "metrics"
    assert endpoint["path"] == service["metadata"]["annotations"]["prometheus.io/path"]
    assert endpoint["interval"] == "15s"
    # the run's namespace label must not become exported_namespace
    assert endpoint["honorLabels"] is True
    # the job of its targets is the Service's name: what the rules select
    assert service["metadata"]["name"] == JOB


def test_prometheus_rule_alerts_and_their_values() -> None:
    docs = render(*ALL_ON)
    rule = only(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    found = alerts(docs)
    assert set(found) == ALERTS
    assert found["SynthprefRunStalled"]["for"] == "30m"
    assert found["SynthprefRunBlocked"]["for"] == found["SynthprefRunNotAdmitted"]["for"] == "30m"
    assert "> 300\n" in found["SynthprefJudgeUnreachable"]["expr"]
    assert "for" not in found["SynthprefJudgeUnreachable"]
    assert "for" not in found["SynthprefJudgeBudgetReached"]
    assert found["SynthprefOperatorDown"]["labels"] == {"severity": "critical"}
    for name, alert in found.items():
        assert f'job="{JOB}"' in alert["expr"], name
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name

    docs = render(
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.stalledMinutes=45",
        "--set",
        "prometheusRule.blockedMinutes=60",
        "--set",
        "prometheusRule.judgeUnreachableMinutes=12",
        "--set",
        "prometheusRule.job=synthpref",
        "--set",
        "prometheusRule.additionalLabels.release=kube-prometheus-stack",
        "--set",
        "prometheusRule.ruleLabels.team=ml-data",
        "--set-json",
        'prometheusRule.disabled=["SynthprefAPIThrottled"]',
    )
    rule = only(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    found = alerts(docs)
    assert set(found) == ALERTS - {"SynthprefAPIThrottled"}
    assert found["SynthprefRunStalled"]["for"] == "45m"
    assert "45 minutes" in found["SynthprefRunStalled"]["annotations"]["summary"]
    for name in ("SynthprefRunBlocked", "SynthprefRunNotAdmitted"):
        assert found[name]["for"] == "60m", name
        assert "60 minutes" in found[name]["annotations"]["summary"], name
        assert "{{ $labels.reason }}" in found[name]["annotations"]["summary"], name
    assert "> 720\n" in found["SynthprefJudgeUnreachable"]["expr"]
    for name, alert in found.items():
        assert alert["labels"]["team"] == "ml-data", name
        assert 'job="synthpref"' in alert["expr"] and JOB not in alert["expr"], name

    # no operator pod, no alert that it is down
    found = alerts(render("--set", "prometheusRule.enabled=true", "--set", "replicaCount=0"))
    assert set(found) == ALERTS - {"SynthprefOperatorDown"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--set", "serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"),
            "serviceMonitor.enabled scrapes the metrics Service",
        ),
        (
            ("--set", "prometheusRule.enabled=true", "--set", "metrics.enabled=false"),
            "prometheusRule.enabled alerts on the operator's metrics",
        ),
        (("--set", "prometheusRule.stalledMinutes=0"), "/prometheusRule/stalledMinutes"),
        (("--set", "prometheusRule.blockedMinutes=0"), "/prometheusRule/blockedMinutes"),
        (
            ("--set", "prometheusRule.judgeUnreachableMinutes=1.5"),
            "/prometheusRule/judgeUnreachableMinutes",
        ),
        (("--set", "prometheusRule.ruleLabels.severity=info"), "/prometheusRule/ruleLabels"),
        (("--set-json", 'prometheusRule.disabled=["Nope"]'), "/prometheusRule/disabled/0"),
        (("--set", 'prometheusRule.job=a\\"b'), "/prometheusRule/job"),
        (("--set", "prometheusRule.severity=page"), "additional properties 'severity'"),
        (("--set", "serviceMonitor.interval=30 seconds"), "/serviceMonitor/interval"),
        (("--set", "grafana.dashboard.namespace=Not_A_Name"), "/grafana/dashboard/namespace"),
        (("--set", "grafana.enabled=true"), "additional properties 'enabled'"),
    ],
)
def test_wrong_values_fail_naming_them(args: tuple[str, ...], message: str) -> None:
    done = helm_template(*args)
    assert done.returncode != 0
    assert message in done.stderr


# ------------------------------------------------------------------ the rules, checked


def test_rules_pass_prometheus_rule_checker(tmp_path: Path) -> None:
    for args in ((), ("--set", "replicaCount=0", "--set", "prometheusRule.job=x")):
        rule = only(render(*ALL_ON, *args), "PrometheusRule")
        rule_file = tmp_path / "rules.yaml"
        rule_file.write_text(yaml.safe_dump(rule["spec"]))
        count, _ = rule_selectors(rule_file)
        assert count == sum(len(group["rules"]) for group in rule["spec"]["groups"])


def test_rule_checker_refuses_broken_rules(tmp_path: Path) -> None:
    """The checker is not a no-op: a bad expression, a bad template, an unknown field fail."""
    broken = {
        "expression": {"alert": "A", "expr": "sum(rate(synthpref_x_total[5m])"},
        "template": {"alert": "A", "expr": "up == 0", "annotations": {"summary": "{{ $labels"}},
        "field": {"alert": "A", "expr": "up == 0", "severity": "page"},
        "duration": {"alert": "A", "expr": "up == 0", "for": "5 minutes"},
    }
    for what, rule in broken.items():
        rule_file = tmp_path / f"{what}.yaml"
        rule_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
        done = subprocess.run(
            [str(tools.rulecheck()), "rules", str(rule_file)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 1, what
        assert done.stderr.strip(), what


def test_rules_select_only_what_the_operator_exports(exported: Exposition, tmp_path: Path) -> None:
    rule = only(render(*ALL_ON), "PrometheusRule")
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump(rule["spec"]))
    _, selectors = rule_selectors(rule_file)
    exprs = {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(selectors) == set(exprs) == ALERTS
    problems = []
    for name, expr in exprs.items():
        names = {s["name"] for s in selectors[name]}
        # the parser's names and a plain regex over the text agree on the operator's series
        assert set(SYNTHPREF_NAME.findall(expr)) == {n for n in names if n.startswith("synthpref_")}
        assert names - set(exported.types) <= {"up"}, name
        problems += [
            f"{name}: {p}" for s in selectors[name] for p in selector_problems(s, exported)
        ]
        problems += [f"{name}: {p}" for p in function_problems(expr, exported)]
    assert problems == []


def test_the_checks_catch_a_series_the_operator_does_not_export(exported: Exposition) -> None:
    wrong_name, wrong_label, wrong_value = expr_selectors(
        [
            "synthpref_judge_spend_usd > 0",
            'synthpref_runs{stage="mix"}',
            'synthpref_run_phase{phase="Blocked"}',
        ]
    )
    assert selector_problems(wrong_name[0], exported) == [
        "synthpref_judge_spend_usd is not exported"
    ]
    assert selector_problems(wrong_label[0], exported) == ["synthpref_runs has no label stage"]
    assert "no series with ['Blocked']" in selector_problems(wrong_value[0], exported)[0]
    assert function_problems("changes(synthpref_reconcile_errors_total[5m])", exported) == [
        "changes(synthpref_reconcile_errors_total) of a counter"
    ]
    assert function_problems("rate(synthpref_judge_requests[5m])", exported) == [
        "rate(synthpref_judge_requests) of a gauge"
    ]
    # and the operator's counters are exported with their _total suffix
    assert exported.types["synthpref_api_throttled_total"] == "counter"
    assert "synthpref_api_throttled" not in exported.types


# ------------------------------------------------------------------ the dashboard, checked

# What Grafana needs of a dashboard, and what this one keeps to: every panel has an id, a type,
# a title and a place on the 24-column grid; every panel but a row has PromQL targets.
DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "tags": {"type": "array", "items": {"type": "string"}},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^\\w+$"},
                            "type": {"enum": ["datasource", "query", "custom", "constant"]},
                        },
                    },
                }
            },
        },
        "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}},
    },
    "$defs": {
        "gridPos": {
            "type": "object",
            "required": ["h", "w", "x", "y"],
            "properties": {
                "h": {"type": "integer", "minimum": 1},
                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                "y": {"type": "integer", "minimum": 0},
            },
        },
        "target": {
            "type": "object",
            "required": ["expr", "refId", "datasource"],
            "properties": {
                "expr": {"type": "string", "minLength": 1},
                "refId": {"type": "string", "minLength": 1},
                "legendFormat": {"type": "string"},
                "datasource": {
                    "type": "object",
                    "required": ["type", "uid"],
                    "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string"}},
                },
            },
        },
        "panel": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"type": "string", "minLength": 1},
                "title": {"type": "string", "minLength": 1},
                "gridPos": {"$ref": "#/$defs/gridPos"},
                "panels": {"type": "array", "items": {"$ref": "#/$defs/panel"}},
            },
            "if": {"properties": {"type": {"const": "row"}}},
            "then": {"properties": {"targets": {"maxItems": 0}}},
            "else": {
                "required": ["targets", "datasource"],
                "properties": {
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/$defs/target"},
                    }
                },
            },
        },
    },
}


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    jsonschema.Draft202012Validator.check_schema(DASHBOARD_SCHEMA)
    jsonschema.validate(board, DASHBOARD_SCHEMA, cls=jsonschema.Draft202012Validator)
    panels = dashboard_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    # no two panels overlap, and none runs off the grid's 24 columns
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
    # the variables the queries use exist
    variables = {v["name"] for v in board["templating"]["list"]}
    used = {v for e in dashboard_exprs(board) for v in re.findall(r"\$(\w+)", e)}
    assert used - {"__rate_interval"} <= variables


def test_dashboard_panels_select_only_what_the_operator_exports(exported: Exposition) -> None:
    exprs = dashboard_exprs(dashboard())
    parsed = expr_selectors([GRAFANA_RANGES.sub("5m", e) for e in exprs])
    problems = []
    named: set[str] = set()
    for expr, selectors in zip(exprs, parsed, strict=True):
        names = {s["name"] for s in selectors}
        named |= names
        assert set(SYNTHPREF_NAME.findall(expr)) == {n for n in names if n.startswith("synthpref_")}
        problems += [f"{expr}: {p}" for s in selectors for p in selector_problems(s, exported)]
        problems += [f"{expr}: {p}" for p in function_problems(expr, exported)]
    assert problems == []
    assert named - set(exported.types) == set(OUTSIDE)
    # what the panels are for: runs by phase, held runs, progress, the judge (tokens and cost
    # against its budget, its endpoint's outage), requests, throttling, reconcile errors and
    # durations, the operator's memory
    assert {
        "synthpref_runs",
        "synthpref_run_condition",
        "synthpref_judge_cost_usd",
        "synthpref_judge_budget_usd",
        "synthpref_judge_budget_tokens",
        "synthpref_judge_endpoint_failing_since_seconds",
        "process_resident_memory_bytes",
        "synthpref_stage_shards_done",
        "synthpref_generation_shards_done",
        "synthpref_judge_tokens_total",
        "synthpref_api_requests_total",
        "synthpref_storage_requests_total",
        "synthpref_api_throttled_total",
        "synthpref_reconcile_errors_total",
        "synthpref_reconcile_duration_seconds_bucket",
    } <= named


def test_monitoring_doc_lists_the_alerts() -> None:
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    rows = re.findall(r"^\| `(Synthpref\w+)` \| (\w+) \|", doc, re.M)
    found = alerts(render("--set", "prometheusRule.enabled=true"))
    assert {name: severity for name, severity in rows} == {
        name: alert["labels"]["severity"] for name, alert in found.items()
    }
