"""The operator's full end-to-end run on vLLM: tiny offline models answer in Indexed generation
Jobs and a vLLM judge Job rates them (all on CPU, pods run by the test kubelet), from
`kubectl apply` to Succeeded with the dataset in S3."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from synthpref import layout
from synthpref.jsonl import read_rows
from synthpref.rows import GenerationRow, PreferenceRow
from synthpref.tinymodels import build_tiny_models
from tests.integration import test_operator_run as base

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.timeout(900)]

env = base.env  # the fixture, shared with test_operator_run.py
FAST_CPU_ENGINE = {"dtype": "float32", "enforce_eager": True}


def test_vllm_run_to_succeeded(env: base.Env, tmp_path: Path) -> None:
    models = build_tiny_models(tmp_path / "models", ["tiny-a", "tiny-b", "judge"])
    manifest = env.manifest(
        "local-vllm",
        models=[
            {
                "name": name,
                "path": str(models[name]),
                "gpus": 0,
                "maxModelLen": 1024,
                "engineArgs": FAST_CPU_ENGINE,
                "sampling": {"maxTokens": 24, "temperature": 0.9, "seed": i},
                "errorBudget": 0.5,  # random weights sometimes answer nothing (a row error)
            }
            for i, name in enumerate(["tiny-a", "tiny-b"])
        ],
        mix={"responsesPerPrompt": 2, "seed": 3},
        judge={
            "backend": "vllm",
            "model": str(models["judge"]),
            "gpus": 0,
            "maxModelLen": 4096,
            "maxTokens": 400,
            "temperature": 1.0,
            "rationaleMaxChars": 24,
            "engineArgs": FAST_CPU_ENGINE,
        },
    )
    operator = env.operator()
    started = time.monotonic()
    try:
        env.apply(manifest)
        run = env.wait_phase("local-vllm", {"Succeeded", "Failed"}, timeout=800)
    finally:
        operator.stop()
    wall = time.monotonic() - started

    status = run["status"]
    assert status["phase"] == "Succeeded", status
    jobs = env.jobs()
    stages = ["prepare", "generate-tiny-a", "generate-tiny-b", "mix", "judge", "parse"]
    assert sorted(jobs) == sorted(f"local-vllm-{stage}" for stage in stages)
    assert "nvidia.com/gpu" not in str(jobs["local-vllm-judge"].spec.template.spec.containers)
    storage = env.storage()
    answers = list(read_rows(storage, layout.generation_shard("tiny-b", 0), GenerationRow))
    assert answers and all(a.model == "tiny-b" for a in answers)
    assert any(a.completion_tokens > 0 for a in answers)
    summary = storage.read_json(layout.SUMMARY)
    rows = [r for s in range(3) for r in read_rows(storage, layout.dataset_shard(s), PreferenceRow)]
    assert status["result"]["pairs"] == summary["pairs"] == len(rows)
    assert summary["requests"] == summary["replies"] > 0  # every judge request answered
    assert {r.chosen_model for r in rows} | {r.rejected_model for r in rows} <= {"tiny-a", "tiny-b"}
    # The planner moves on once a stage's artifacts are committed; a vLLM pod may still be
    # shutting its engine down, so wait for every Job's completionTime before timing the hops.
    deadline = time.monotonic() + 120
    while any(j.status.completion_time is None for j in jobs.values()):
        assert time.monotonic() < deadline, "Jobs never completed"
        time.sleep(1)
        jobs = env.jobs()
    print(f"\nvLLM end-to-end wall time {wall:.1f}s; stage hops (s): {base.stage_hops(jobs)}")
