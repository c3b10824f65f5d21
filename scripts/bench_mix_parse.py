"""Benchmark of the mix and parse stages: rows/s and peak RSS at N prompts x M models.

Not a test: run on demand, e.g.

    .venv/bin/python scripts/bench_mix_parse.py --prompts 100000 --models 8
    .venv/bin/python scripts/bench_mix_parse.py --prompts 400000 --models 8

It writes synthetic prompt and generation shards into a scratch directory, then runs `mix` in a
fresh process, answers every judge request with a deterministic JSON judgement (as the judge
would, outside the timing), runs `parse` in a fresh process, and prints for each stage its wall
time, input rows per second and the process's peak RSS. Flat peak RSS across sizes shows that
memory does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synthpref import layout
from synthpref.jsonl import read_rows, write_rows
from synthpref.rows import BatchRequestLine, GenerationRow, PromptRow
from synthpref.spec import PreferenceRunSpec
from synthpref.storage import LocalStorage

WORDS = (
    "the", "model", "answers", "each", "question", "with", "care", "and", "a", "few", "extra",
)  # fmt: skip


def bench_spec(root: Path, models: int, shard_size: int) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": str(root / "unused"), "shardSize": shard_size},
            "storage": {"uri": str(root / "store")},
            "models": [{"name": f"m{i}", "path": f"m{i}"} for i in range(models)],
            "judge": {"structuredOutput": True},
        }
    )


def answer_text(prompt: int, model: int) -> str:
    start = (prompt * 7 + model * 3) % len(WORDS)
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(40))


def build(root: Path, prompts: int, models: int, shard_size: int) -> None:
    """Synthetic prompt shards, generation shards and the prepare manifest."""
    storage = LocalStorage(root / "store")
    shards = (prompts + shard_size - 1) // shard_size
    for shard in range(shards):
        ids = range(shard * shard_size, min(prompts, (shard + 1) * shard_size))
        rows = [
            PromptRow(id=f"{i:016x}", text=f"Question {i}: {' '.join(WORDS[:12])}?", source="b:1")
            for i in ids
        ]
        write_rows(storage, layout.prompt_shard(shard), rows)
        for model in range(models):
            generations = (
                GenerationRow(
                    prompt_id=row.id,
                    model=f"m{model}",
                    text=answer_text(i, model),
                    finish_reason="stop",
                    completion_tokens=40,
                )
                for i, row in zip(ids, rows, strict=True)
            )
            write_rows(storage, layout.generation_shard(f"m{model}", shard), generations)
    storage.write_json(layout.PROMPTS_MANIFEST, {"shards": shards, "prompts": prompts})


def judgement(custom_id: str, answers: int) -> str:
    ratings = {}
    for n in range(1, answers + 1):
        digest = hashlib.sha256(f"{custom_id}/{n}".encode()).digest()
        ratings[str(n)] = {"rationale": "ok", "rating": 1 + digest[0] % 5}
    return json.dumps(ratings)


def simulate_judge(root: Path, answers: int) -> None:
    """Write an OpenAI Batch output file for every request file (not timed)."""
    storage = LocalStorage(root / "store")
    for key in storage.list("requests/"):
        if not key.endswith(".jsonl"):
            continue
        with storage.open_writer(layout.result_for_request(key)) as stream:
            for line in read_rows(storage, key, BatchRequestLine):
                body = {"choices": [{"message": {"content": judgement(line.custom_id, answers)}}]}
                result = {
                    "id": "r",
                    "custom_id": line.custom_id,
                    "response": {"status_code": 200, "body": body},
                    "error": None,
                }
                stream.write(json.dumps(result) + "\n")
        storage.commit(layout.result_for_request(key), {})


def run_stage(stage: str, root: Path, models: int, shard_size: int) -> dict[str, Any]:
    """Run one stage in this (fresh) process and return its figures."""
    spec = bench_spec(root, models, shard_size)
    storage = LocalStorage(root / "store")
    started = time.perf_counter()
    summary: Any
    if stage == "mix":
        from synthpref.stages.mix import run_mix

        summary = run_mix(spec, storage)
        rows = summary.prompts * models
    else:
        from synthpref.stages.parse import run_parse

        summary = run_parse(spec, storage)
        rows = summary.requests
    seconds = time.perf_counter() - started
    return {
        "stage": stage,
        "seconds": round(seconds, 1),
        "input_rows": rows,
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": getattr(summary, "pairs", None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--stage", choices=["mix", "parse"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.workdir, args.models, args.shard_size)))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="synthpref-bench-"))
    try:
        started = time.perf_counter()
        build(root, args.prompts, args.models, args.shard_size)
        print(
            f"built {args.prompts} prompts x {args.models} models "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        for stage in ["mix", "parse"]:
            if stage == "parse":
                simulate_judge(root, answers=4)
            command = [
                sys.executable,
                __file__,
                "--stage",
                stage,
                "--workdir",
                str(root),
                "--models",
                str(args.models),
                "--shard-size",
                str(args.shard_size),
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures = json.loads(output.strip().splitlines()[-1])
            print(
                f"{stage:<5} {figures['input_rows']:>10} rows  {figures['seconds']:>7} s  "
                f"{figures['rows_per_s']:>8} rows/s  peak RSS {figures['peak_rss_mib']} MiB"
                + (f"  pairs {figures['pairs']}" if figures["pairs"] is not None else ""),
                flush=True,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
