"""judge.budget and `synthpref estimate` against the OpenAI-compatible test server: a local
run (`run_local`, what `synthpref run --local` calls) that reaches its spending cap stops with
BudgetExhaustedError before any batch that could take it over the cap, and a rerun with the cap
raised finishes with the dataset an uncapped run makes; the estimate of a mixed run counts its
request files and measured answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synthpref.annotate import ledger as ledgers
from synthpref.annotate.engine import BudgetExhaustedError
from synthpref.budget import Tokens, upper_bound
from synthpref.cli import error_line
from synthpref.local_run import run_local
from synthpref.pricing import Price
from synthpref.rows import BatchResultLine
from synthpref.spec import PreferenceRunManifest, PreferenceRunSpec
from synthpref.storage import LocalStorage
from tests.component.test_annotate_openai import (
    KEY_ENV,
    RUN,
    assert_each_request_once,
    build_spec,
    dataset,
    expected_dataset,
    request_files,
    request_lines,
    run_until_mix,
)
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer

pytestmark = pytest.mark.timeout(180)

PRICING = {"inputPerMillionUsd": 2.0, "outputPerMillionUsd": 8.0, "batchDiscount": 0.5}
PRICE = Price(2.0, 8.0, 0.5)
MAX_TOKENS = 256


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def manifest(spec: PreferenceRunSpec) -> PreferenceRunManifest:
    return PreferenceRunManifest.model_validate(
        {
            "apiVersion": "synthpref.dev/v1alpha1",
            "kind": "PreferenceRun",
            "metadata": {"name": RUN},
            "spec": json.loads(spec.model_dump_json(by_alias=True)),
        }
    )


def billed(server: OpenAIServer, run: str | None = None) -> Tokens:
    """What the server answered in its batches' output files (those of `run`, by the batch
    metadata, when given), by their usage."""
    used = Tokens()
    for batch in server.batches.values():
        if batch.output_file_id is None:
            continue
        if run is not None and (batch.metadata or {}).get("synthpref_run") != run:
            continue
        for text in server.files[batch.output_file_id].data.decode().splitlines():
            body = BatchResultLine.model_validate_json(text).response
            usage = (body.body or {}).get("usage", {}) if body is not None else {}
            used += Tokens(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return used


def capped(tmp_path: Path, server: OpenAIServer, budget: dict[str, Any] | None) -> Any:
    judge: dict[str, Any] = {"maxTokens": MAX_TOKENS, "pricing": PRICING}
    if budget is not None:
        judge["budget"] = budget
    return build_spec(tmp_path, server, structured=False, **judge)


def test_a_capped_local_run_holds_at_the_cap_and_a_raised_cap_finishes_it(
    tmp_path: Path, server: OpenAIServer
) -> None:
    storage = LocalStorage(tmp_path / "store")
    # First learn the files' bounds (estimated input + maxTokens per request) from the run's own
    # request files: stop the run at once with a cap below any file.
    tiny = capped(tmp_path, server, {"maxTokens": 1})
    with pytest.raises(BudgetExhaustedError):
        run_local(manifest(tiny), storage, progress=False)
    assert server.batches == {}  # nothing was submitted
    records = [ledgers.load(storage, key) for key in request_files(storage)]
    bounds = [upper_bound(r.input_tokens, r.requests, MAX_TOKENS) for r in records if r]
    assert len(bounds) >= 4
    # A cap that two files fit under: the run must stop before the last file.
    cap_usd = PRICE.cost(bounds[0].input + bounds[1].input, bounds[0].output + bounds[1].output)
    spec = capped(tmp_path, server, {"maxUsd": cap_usd})

    with pytest.raises(BudgetExhaustedError) as stopped:
        run_local(manifest(spec), storage, progress=False)

    message = error_line(stopped.value)
    assert "judge budget reached: spent $" in message and "requests not submitted" in message
    assert "raise judge.budget" in message and "\n" not in message
    submitted = len(server.batches)
    assert 2 <= submitted < len(bounds)
    used = billed(server)
    assert PRICE.cost(used.input, used.output) <= cap_usd  # never over the cap
    # It held exactly there: the next file would not have fit.
    waiting = [r for r in (ledgers.load(storage, k) for k in request_files(storage)) if r]
    pending = [r for r in waiting if r.phase is ledgers.Phase.PENDING]
    assert len(pending) == len(bounds) - submitted
    for record in pending:
        bound = upper_bound(record.input_tokens, record.requests, MAX_TOKENS)
        assert PRICE.cost(used.input + bound.input, used.output + bound.output) > cap_usd, (
            used,
            bound,
            cap_usd,
        )

    # The operator's observer sees the same hold (and what was spent) from the ledgers alone.
    from synthpref_operator.observe import observe_judge

    observed, _ = observe_judge(spec, storage, RUN)
    assert observed.budget_hold is not None
    assert observed.budget_hold.endswith("raise spec.judge.budget to resume")
    assert observed.progress.cost_usd == pytest.approx(PRICE.cost(used.input, used.output))

    # `annotate status` says so too, without calling the API.
    from click.testing import CliRunner

    from synthpref.cli import main

    run_file = tmp_path / "run.yaml"
    run_file.write_text(manifest(spec).model_dump_json(by_alias=True))  # JSON is YAML
    shown = CliRunner().invoke(main, ["annotate", "status", str(run_file)])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["budget_hold"].startswith("judge budget reached: spent $")

    # A rerun with the same cap stops again without submitting anything.
    with pytest.raises(BudgetExhaustedError):
        run_local(manifest(spec), storage, progress=False)
    assert len(server.batches) == submitted

    # Raised: the rerun submits the rest and the dataset is the uncapped run's.
    raised = capped(tmp_path, server, {"maxUsd": cap_usd * 100})
    result = run_local(manifest(raised), storage, progress=False)
    assert len(server.batches) == len(bounds)
    assert_each_request_once(storage)
    expected = expected_dataset(raised, storage, tmp_path)
    assert result.pairs == len(expected) > 0
    assert dataset(storage) == expected
    assert result.summary["judge"]["cost_usd"] == pytest.approx(
        PRICE.cost(billed(server).input, billed(server).output)
    )


def test_estimate_of_a_mixed_run_counts_its_request_files_and_answers(
    tmp_path: Path, server: OpenAIServer
) -> None:
    from click.testing import CliRunner

    from synthpref.annotate.estimate import file_tokens
    from synthpref.cli import main

    spec = capped(tmp_path, server, None)
    storage = LocalStorage(tmp_path / "store")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(manifest(spec).model_dump_json(by_alias=True))  # JSON is YAML

    def estimate() -> dict[str, Any]:
        result = CliRunner().invoke(main, ["estimate", str(run_file), "--json"])
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.output)
        return document

    before = estimate()
    assert before["judge"]["basis"] == "prompts"
    assert [m["measured_mean"] for m in before["models"]] == [None] * 4
    run_until_mix(spec, storage)
    after = estimate()

    lines = request_lines(storage)
    assert after["judge"]["basis"] == "requests"
    assert after["judge"]["requests"] == len(lines) == before["judge"]["requests"]
    assert after["judge"]["input_tokens"] == file_tokens(line["body"] for line in lines)
    assert all(m["measured_mean"] > 0 for m in after["models"])
    assert after["judge"]["cost_usd"] == pytest.approx(
        PRICE.cost(after["judge"]["input_tokens"], after["judge"]["output_tokens"])
    )
    assert "$2 in / $8 out per 1M tokens" in after["judge"]["price"]
