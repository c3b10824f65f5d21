"""The `generate` stage when the endpoint fails or rows fail, against the OpenAI test server.

Lost work never looks finished: a shard whose endpoint went away mid-way is not committed, the
command exits non-zero with one `Error:` line naming the model, the endpoint and the cause, and a
rerun after the endpoint is back yields the generations of an undisturbed run. Per-row outcomes
(a prompt rejected as too long, content filtered, an empty answer) are committed as row errors
while they stay within the model's `errorBudget`; beyond it the shard fails without a commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import GenerationRow, PromptRow
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.generate import ErrorBudgetExceededError, run_generate
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage, Storage
from tests.builders import manifest_dict, spec_dict
from tests.support.openai_server import (
    DEFAULT_API_KEY,
    ContentFiltered,
    ErrorLine,
    OpenAIServer,
    ReplyText,
    RequestInfo,
)

pytestmark = pytest.mark.timeout(300)

KEY_ENV = "SYNTHPREF_TEST_GENERATE_KEY"
PROMPTS = 12
SHARD_SIZE = 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, DEFAULT_API_KEY)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def spec_document(tmp_path: Path, server: OpenAIServer, store: str, **model: Any) -> dict[str, Any]:
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text(
        "".join(
            json.dumps({"text": f"Prompt {i}: tell me about rivers."}) + "\n"
            for i in range(PROMPTS)
        )
    )
    document = spec_dict(prompts_uri=str(prompt_file), storage_uri=str(tmp_path / store))
    document["prompts"]["shardSize"] = SHARD_SIZE
    # One request at a time, so an outage after the n-th call hits exactly the (n+1)-th.
    endpoint = {"baseUrl": server.base_url, "apiKeyEnv": KEY_ENV, "concurrency": 1}
    document["mix"] = {"responsesPerPrompt": 2}
    document["models"] = [
        {
            "name": name,
            "backend": "openai",
            "path": f"model-{name}",
            "openai": {**endpoint, "maxRetries": 1},
            **model,
        }
        for name in ("m0", "m1")  # only m0 is run here; mix wants two
    ]
    return document


def prepared(
    tmp_path: Path, server: OpenAIServer, store: str, **model: Any
) -> tuple[PreferenceRunSpec, LocalStorage]:
    spec = PreferenceRunSpec.model_validate(spec_document(tmp_path, server, store, **model))
    storage = LocalStorage(tmp_path / store)
    run_prepare(spec, storage)
    return spec, storage


def generations(storage: Storage, shard: int) -> list[dict[str, Any]]:
    key = layout.generation_shard("m0", shard)
    return [row.model_dump() for row in read_rows(storage, key, GenerationRow)]


def committed(storage: Storage) -> list[bool]:
    return [
        storage.committed(layout.generation_shard("m0", shard)) is not None
        for shard in range(PROMPTS // SHARD_SIZE)
    ]


def synthpref(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a worker Job runs it (a real process: exit code, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "synthpref", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "pipeline"), str(ROOT)])},
        check=False,
    )


def test_outage_mid_generation_fails_the_shard_and_a_rerun_matches_an_undisturbed_run(
    tmp_path: Path, server: OpenAIServer
) -> None:
    _, reference = prepared(tmp_path, server, "reference")
    spec, storage = prepared(tmp_path, server, "store")
    run_generate(spec, reference, "m0")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(json.dumps(manifest_dict(spec_document(tmp_path, server, "store"))))
    server.go_down_after("POST", "/v1/chat/completions", SHARD_SIZE + 2)  # within shard 1

    failed = synthpref("generate", str(run_file), "--model", "m0")

    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in failed.stderr
    assert errors[0].startswith(f"Error: model m0: endpoint {server.base_url} unreachable after")
    assert "prompt shard 1 was not committed" in errors[0]
    assert f"m0: endpoint {server.base_url} unreachable (1st try, next in" in failed.stderr
    assert DEFAULT_API_KEY not in failed.stderr
    assert committed(storage) == [True, False, False]

    server.come_back()
    rerun = synthpref("generate", str(run_file), "--model", "m0")

    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["shards_skipped"] == 1
    assert committed(storage) == [True, True, True]
    for shard in range(PROMPTS // SHARD_SIZE):
        assert generations(storage, shard) == generations(reference, shard)
        assert all(row["error"] is None for row in generations(storage, shard))


def per_row_faults(prompts: dict[str, int], per_shard: int) -> Any:
    """A request script: in every shard, its first `per_shard` prompts fail per row, in turn as
    too long for the context (400), content filtered, and an empty answer."""
    outcomes = [
        ErrorLine(
            "context_length_exceeded",
            "This model's maximum context length is 16 tokens.",
            status_code=400,
        ),
        ContentFiltered(),
        ReplyText(" \n\t "),
    ]

    def script(info: RequestInfo) -> Any:
        text = info.body["messages"][0]["content"]
        position = prompts[text] % SHARD_SIZE
        shard = prompts[text] // SHARD_SIZE
        if position < per_shard:
            return outcomes[(shard + position) % len(outcomes)]
        return None

    return script


def prompt_positions(storage: Storage) -> dict[str, int]:
    return {
        row.text: shard * SHARD_SIZE + index
        for shard in range(PROMPTS // SHARD_SIZE)
        for index, row in enumerate(read_rows(storage, layout.prompt_shard(shard), PromptRow))
    }


def test_row_errors_within_the_budget_are_committed(tmp_path: Path, server: OpenAIServer) -> None:
    spec, storage = prepared(tmp_path, server, "store", errorBudget=0.25)  # 1 of 4 rows
    server.request_script = per_row_faults(prompt_positions(storage), per_shard=1)

    summary = run_generate(spec, storage, "m0")

    assert (summary.shards_done, summary.errors) == (3, 3)
    errors = sorted(
        str(row["error"])
        for shard in range(3)
        for row in generations(storage, shard)
        if row["error"]
    )
    assert errors[0] == (
        "HTTP 400 context_length_exceeded: This model's maximum context length is 16 tokens."
    )
    assert errors[1:] == ["content filtered (finish_reason content_filter)", "empty answer"]
    for shard in range(3):
        meta = storage.committed(layout.generation_shard("m0", shard))
        assert meta is not None and meta["errors"] == 1
        assert all(
            (row["text"] is None) == bool(row["error"]) for row in generations(storage, shard)
        )


def test_row_errors_beyond_the_budget_fail_the_shard_without_a_commit(
    tmp_path: Path, server: OpenAIServer
) -> None:
    spec, storage = prepared(tmp_path, server, "store", errorBudget=0.25)
    server.request_script = per_row_faults(prompt_positions(storage), per_shard=2)

    with pytest.raises(ErrorBudgetExceededError) as caught:
        run_generate(spec, storage, "m0")

    message = str(caught.value)
    assert message.startswith("model m0: prompt shard 0 has 2 row errors in 4 rows")
    assert "errorBudget 0.25" in message
    assert "HTTP 400 context_length_exceeded: This model's maximum context length" in message
    assert "content filtered" in message
    assert committed(storage) == [False, False, False]

    server.request_script = None  # the cause is fixed: a rerun does every shard
    assert run_generate(spec, storage, "m0").shards_done == 3
    assert committed(storage) == [True, True, True]
