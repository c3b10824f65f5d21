"""judge.budget on the real control plane: the operator holds a run at its spending cap
(BudgetExhausted condition, one Warning Event, no batch that could go over the cap), and a
spec edit raising the cap resumes it to the dataset an uncapped run of the same spec makes.
The run's estimate and COST column are in its status."""

from __future__ import annotations

import time
from typing import Any

import pytest

from synthpref import layout
from synthpref.annotate.ledger import FileLedger
from synthpref.jsonl import read_rows
from synthpref.rows import PreferenceRow
from synthpref.storage import S3Storage, s3_client
from tests.component.test_judge_budget import billed
from tests.integration import test_operator_run as base

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

env = base.env  # the fixture: control plane, test kubelet, S3, the OpenAI test server
MAX_TOKENS = 1024  # judge.maxTokens (the default)


def with_budget(environment: base.Env, name: str, max_tokens: int | None) -> dict[str, Any]:
    document = environment.manifest(name)
    if max_tokens is not None:
        document["spec"]["judge"]["budget"] = {"maxTokens": max_tokens}
    return document


def budget_condition(run: dict[str, Any]) -> dict[str, Any] | None:
    conditions = (run.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "BudgetExhausted"), None)


def wait_for(environment: base.Env, name: str, test: Any, what: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = environment.run(name)
        if test(run):
            return run
        time.sleep(0.3)
    raise AssertionError(f"{name}: not {what} after {timeout}s: {environment.run(name)['status']}")


def ours(environment: base.Env, run: str) -> list[Any]:
    """The test server's batches of one run (by their metadata)."""
    return [
        b
        for b in environment.server.batches.values()
        if (b.metadata or {}).get("synthpref_run") == run
    ]


def held(run: dict[str, Any]) -> bool:
    condition = budget_condition(run)
    return condition is not None and condition["status"] == "True"


def dataset(storage: S3Storage) -> list[dict[str, Any]]:
    rows = [r for s in range(3) for r in read_rows(storage, layout.dataset_shard(s), PreferenceRow)]
    return sorted((r.model_dump() for r in rows), key=lambda r: str(r["prompt_id"]))


def test_the_cap_holds_the_run_and_a_raised_cap_resumes_it(env: base.Env) -> None:
    storage = env.storage()
    operator = env.operator()
    free_spec = env.manifest("free")
    free_spec["spec"]["storage"]["uri"] = env.s3_uri + "-free"
    try:
        env.apply(free_spec)  # the uncapped twin, alongside
        # A cap below any request file: held as soon as the judge starts, nothing submitted.
        env.apply(with_budget(env, "capped", 1))
        run = wait_for(env, "capped", held, "held", timeout=300)
        assert ours(env, "capped") == []
        status = run["status"]
        assert status["phase"] == "Annotating" and status["message"].startswith("held: ")
        assert "requests not submitted" in budget_condition(run)["message"]  # type: ignore[index]

        # A cap the first request file just fits: it goes, and the run holds again mid-run.
        ledgers = sorted(
            (
                FileLedger.model_validate(storage.read_json(k))
                for k in storage.list("judge/ledger/")
            ),
            key=lambda r: r.request_key,
        )
        assert len(ledgers) == 3
        first = ledgers[0]
        cap = first.input_tokens + first.requests * MAX_TOKENS
        env.apply(with_budget(env, "capped", cap))

        def mid_run(run: dict[str, Any]) -> bool:
            judge = (run.get("status") or {}).get("stages", {}).get("judge") or {}
            return held(run) and judge.get("batches", 0) >= 1

        run = wait_for(env, "capped", mid_run, "held mid-run")
        assert 1 <= len(ours(env, "capped")) < len(ledgers)
        used = billed(env.server, "capped").total
        assert used <= cap  # nothing that could go over the cap was submitted

        # Raised: the run completes with the uncapped run's dataset.
        env.apply(with_budget(env, "capped", 10**9))
        run = env.wait_phase("capped", {"Succeeded", "Failed"}, timeout=240)
        free = env.wait_phase("free", {"Succeeded", "Failed"}, timeout=240)
    finally:
        operator.stop()
    assert run["status"]["phase"] == free["status"]["phase"] == "Succeeded", run["status"]
    condition = budget_condition(run)
    assert condition is not None and condition["status"] == "False"
    assert condition["reason"] == "WithinBudget"
    free_storage = S3Storage(env.s3_uri + "-free", s3_client(env.s3_endpoint, "us-east-1"))
    assert dataset(storage) == dataset(free_storage) != []
    events = env.kubectl(
        "get", "events", "-n", env.namespace, "--field-selector", "involvedObject.name=capped"
    ).stdout
    assert "BudgetExhausted" in events
    # The estimate (judge-1 has no price: tokens only) and the COST column's place.
    estimate = run["status"]["estimate"]
    assert estimate["basis"] == "requests" and estimate["requests"] == base.PROMPTS * 4
    wide = env.kubectl("get", "prun", "-n", env.namespace, "-o", "wide").stdout
    assert wide.splitlines()[0].split()[-4:] == ["JUDGE", "COST", "BLOCKED", "MESSAGE"]
