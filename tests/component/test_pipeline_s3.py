"""Every stage against a real S3 server: prompts read from S3, answers from an
OpenAI-compatible endpoint (the `openai` generation backend), a vLLM judge on CPU, and the
dataset written back to S3. The stage functions are the ones the cluster Jobs call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import GenerationRow, PreferenceRow
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.generate import run_generate
from synthpref.stages.judge import run_judge
from synthpref.stages.mix import run_mix
from synthpref.stages.parse import run_parse
from synthpref.stages.prepare import run_prepare
from synthpref.storage import S3Storage, s3_client
from synthpref.tinymodels import build_tiny_models
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer

pytestmark = pytest.mark.vllm
MODELS = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv("ANSWER_KEY", DEFAULT_API_KEY)
    with OpenAIServer(models=set(MODELS)) as running:
        yield running


def test_all_stages_on_s3(
    s3_uri: str, s3_endpoint: str, server: OpenAIServer, tmp_path: Path
) -> None:
    client = s3_client(s3_endpoint, "us-east-1")
    inputs = S3Storage(s3_uri + "-in", client)
    inputs.write_bytes(
        "prompts/a.jsonl",
        b"".join(b'{"text": "Question %d?", "n": %d}\n' % (i, i) for i in range(9)),
    )
    judge = build_tiny_models(tmp_path, ["judge"])["judge"]
    spec = PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": inputs.url("prompts/"), "shardSize": 4},
            "storage": {"uri": s3_uri, "endpointUrl": s3_endpoint, "region": "us-east-1"},
            "models": [
                {
                    "name": name,
                    "backend": "openai",
                    "path": name,
                    "sampling": {"maxTokens": 24, "seed": i},
                    "openai": {"baseUrl": server.base_url, "apiKeyEnv": "ANSWER_KEY"},
                }
                for i, name in enumerate(MODELS)
            ],
            "mix": {"responsesPerPrompt": 3, "seed": 5},
            "judge": {
                "backend": "vllm",
                "model": str(judge),
                "gpus": 0,
                "maxModelLen": 4096,
                "maxTokens": 400,
                "temperature": 1.0,  # random weights: at 0 every answer gets the same rating
                "rationaleMaxChars": 24,
                "engineArgs": {"dtype": "float32", "enforce_eager": True},
            },
        }
    )
    storage = S3Storage(s3_uri, client)

    assert run_prepare(spec, storage).shards == 3
    for name in MODELS:  # two workers per model, as an Indexed Job with 2 completions
        done = [run_generate(spec, storage, name, worker=w, workers=2) for w in (0, 1)]
        assert [d.shards_done for d in done] == [2, 1]
    answers = list(read_rows(storage, layout.generation_shard("beta", 2), GenerationRow))
    assert [a.model for a in answers] == ["beta"] and answers[0].text
    mixed = run_mix(spec, storage)
    assert mixed.prompts_mixed == 9 and mixed.requests == 9 * 4
    judged = run_judge(spec, storage)
    assert judged.requests == 36 and judged.request_files == 3
    parsed = run_parse(spec, storage)

    summary = storage.read_json(layout.SUMMARY)
    rows = [r for s in range(3) for r in read_rows(storage, layout.dataset_shard(s), PreferenceRow)]
    assert summary["pairs"] == parsed.pairs == len(rows) > 0
    assert {r.chosen_model for r in rows} | {r.rejected_model for r in rows} <= set(MODELS)
    assert storage.committed(layout.dataset_shard(0)) is not None
    # A second pass finds every shard committed and redoes nothing.
    assert run_judge(spec, storage).request_files == 0
    assert run_mix(spec, storage).shards_done == 0
