"""The operator's cost per pass on the real control plane (the small version of the scale
benchmark, `scripts/bench_operator.py`): three runs of five shards reconciled at once all
succeed; a run whose Jobs do not change is reconciled on its timer without listing its storage
again; and a run that is done costs nothing more: no pass, no storage request. Read from the
operator's own counters (`synthpref_reconcile_passes_total`, `synthpref_storage_requests_total`)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from synthpref_operator.handlers import OperatorConfig, OperatorThread
from synthpref_operator.metrics import OperatorMetrics
from tests.integration.test_operator_run import Env, env  # noqa: F401 - the fixture

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RUNS = ("scale-a", "scale-b", "scale-held")
INTERVAL = 0.5


def small_run(where: Env, name: str, **spec: Any) -> dict[str, Any]:
    """Five shards of two prompts, two models of the test server, the OpenAI judge."""
    document = where.manifest(name, **spec)
    document["spec"]["storage"]["uri"] = f"{where.s3_uri}/{name}"
    document["spec"]["prompts"]["shardSize"] = 2
    document["spec"]["models"] = document["spec"]["models"][:2]
    document["spec"]["mix"]["responsesPerPrompt"] = 2
    return document


def count(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def passes(metrics: OperatorMetrics, trigger: str | None = None) -> float:
    triggers = [trigger] if trigger else ["event", "job", "timer", "catalog", "again"]
    return sum(count(metrics, "synthpref_reconcile_passes_total", trigger=t) for t in triggers)


def storage_requests(metrics: OperatorMetrics, operation: str | None = None) -> float:
    operations = [operation] if operation else ["LIST", "GET", "HEAD", "PUT", "POST", "DELETE"]
    return sum(count(metrics, "synthpref_storage_requests_total", operation=o) for o in operations)


def wait_until(what: str, check: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(INTERVAL)


def test_runs_at_once_cost_nothing_while_unchanged_or_done(env: Env) -> None:  # noqa: F811
    # The held run's generation pods take a while, so that it is suspended mid-generation.
    env.kubelet.delay(lambda pod: "scale-held-generate-" in pod["metadata"]["name"], 8, count=1)
    metrics = OperatorMetrics()
    config = OperatorConfig(
        namespaces=[env.namespace],
        kubeconfig=str(env.kubeconfig),
        settings=env.settings(),
        interval=INTERVAL,
        metrics=metrics,
        workers=8,
        relist_seconds=3600,  # no safety-net relisting within the test
    )
    operator = OperatorThread(config).start()
    try:
        for name in RUNS:
            env.apply(small_run(env, name))
        env.wait_phase("scale-held", {"Generating"}, timeout=120)
        env.apply(small_run(env, "scale-held", suspend=True))
        for name in RUNS[:2]:
            run = env.wait_phase(name, {"Succeeded", "Failed"}, timeout=420)
            assert run["status"]["phase"] == "Succeeded", run["status"]
            assert run["status"]["progress"] == "26/26"  # 1 + 5 x (2 models + mix + judge + parse)
        env.wait_phase("scale-held", {"Suspended"}, timeout=60)
        time.sleep(3)  # the suspension's last Job updates

        # Steady state: the held run is reconciled on its timer, and lists nothing.
        timer, lists = passes(metrics, "timer"), storage_requests(metrics, "LIST")
        time.sleep(10 * INTERVAL)
        assert passes(metrics, "timer") - timer >= 4
        assert storage_requests(metrics, "LIST") == lists

        env.apply(small_run(env, "scale-held", suspend=False))
        run = env.wait_phase("scale-held", {"Succeeded", "Failed"}, timeout=420)
        assert run["status"]["phase"] == "Succeeded", run["status"]

        # Done: no timer, no pass, no storage request any more.
        time.sleep(3)
        before = passes(metrics), storage_requests(metrics)
        time.sleep(10 * INTERVAL)
        assert (passes(metrics), storage_requests(metrics)) == before
    finally:
        operator.stop()
    print(
        f"\npasses: {passes(metrics):.0f} "
        f"(event {passes(metrics, 'event'):.0f}, job {passes(metrics, 'job'):.0f}, "
        f"timer {passes(metrics, 'timer'):.0f}, again {passes(metrics, 'again'):.0f}); "
        f"run events ignored: {count(metrics, 'synthpref_run_events_ignored_total'):.0f}; "
        "storage requests: "
        + ", ".join(
            f"{o} {storage_requests(metrics, o):.0f}" for o in ("LIST", "GET", "HEAD", "PUT")
        )
    )
