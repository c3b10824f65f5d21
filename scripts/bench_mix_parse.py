"""Benchmark of the mix and parse stages: rows/s and peak RSS at N prompts x M models.

Not a test: run on demand, e.g.

    .venv/bin/python scripts/bench_mix_parse.py --prompts 100000 --models 8
    .venv/bin/python scripts/bench_mix_parse.py --prompts 400000 --models 8

It writes synthetic prompt and generation shards into a scratch directory, then runs `mix` in a
fresh process, answers every judge request with a deterministic JSON judgement (as the judge
would, outside the timing), runs `parse` in a fresh process, and prints for each stage its wall
time, its CPU time (on a busy machine the steadier figure), input rows per second and the
process's peak RSS. Flat peak RSS across sizes shows that memory does not grow with the
dataset.

Beside each stage it prints its I/O floor, measured the same way (a fresh process): a plain read
of the stage's input files plus a write (with fsync, as the stage's storage does) of the same
bytes as the stage's output files, and the ratio stage / floor; then its decode floor: the same
read and write plus an untyped `msgspec.json.decode` of every input line (a nearer reference for
a stage that must decode every line it reads; for a judge result line, also the reply inside
it), and the ratio stage / decode floor. `--prepare` also runs `prepare` on N prompt lines
(every 20th a duplicate), the stage whose de-duplication set grows with N. `--profile` runs
each stage under cProfile instead and prints its top functions.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from synthpref import layout
from synthpref.jsonl import write_rows
from synthpref.rows import GenerationRow, PromptRow
from synthpref.spec import MixSpec, PreferenceRunSpec
from synthpref.storage import LocalStorage

# Answers per prompt, from distinct models (the spec's default `mix.responsesPerPrompt`).
MIX_ANSWERS = MixSpec().responses_per_prompt

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


class RequestId(msgspec.Struct):
    """What the simulated judge reads of a request line."""

    custom_id: str


def simulate_judge(root: Path, answers: int) -> None:
    """Write an OpenAI Batch output file for every request file (not timed)."""
    storage = LocalStorage(root / "store")
    decode_request = msgspec.json.Decoder(RequestId).decode
    for key in storage.list("requests/"):
        if not key.endswith(".jsonl"):
            continue
        with storage.open_writer(layout.result_for_request(key)) as stream:
            for raw in storage.read_raw_lines(key):
                line = decode_request(raw.data)
                body = {"choices": [{"message": {"content": judgement(line.custom_id, answers)}}]}
                result = {
                    "id": "r",
                    "custom_id": line.custom_id,
                    "response": {"status_code": 200, "body": body},
                    "error": None,
                }
                stream.write(json.dumps(result) + "\n")
        storage.commit(layout.result_for_request(key), {})


# The files each stage reads and writes, as globs under the store (what the I/O floor moves).
STAGE_FILES = {
    "mix": (
        ["prompts/shard-*.jsonl", "generations/*/shard-*.jsonl"],
        ["requests/*.jsonl", "mix/*.jsonl"],
    ),
    "parse": (["mix/*.jsonl", "results/*.jsonl"], ["dataset/*.jsonl"]),
}


def read_inputs(paths: list[Path], decode: bool) -> int:
    """Read the files (bytes read); with `decode`, msgspec-decode each of their lines, untyped."""
    read_bytes = 0
    for path in paths:
        pending = b""  # a line split by a chunk boundary
        with path.open("rb") as stream:
            while chunk := stream.read(1024 * 1024):
                read_bytes += len(chunk)
                if decode:
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line:
                            decode_line(line)
        if decode and pending.strip():
            decode_line(pending)
    return read_bytes


def decode_line(line: bytes) -> None:
    """Decode a line, untyped; in a judge result line, also the reply inside it (JSON text in
    JSON, which parse must decode too)."""
    document = msgspec.json.decode(line)
    try:
        reply = document["response"]["body"]["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return
    with contextlib.suppress(msgspec.DecodeError):  # a free-text reply: parse reads it as text
        msgspec.json.decode(reply)


def io_floor(stage: str, root: Path, decode: bool = False) -> dict[str, Any]:
    """Read the stage's inputs (decoding every line with `decode`), then write its outputs'
    bytes again (fsync'd) elsewhere."""
    store = root / "store"
    inputs, outputs = (
        [p for g in globs for p in sorted(store.glob(g))] for globs in STAGE_FILES[stage]
    )
    scratch = root / "floor"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    written = 0
    started = time.perf_counter()
    read_bytes = read_inputs(inputs, decode)
    read_s = time.perf_counter() - started
    write_s = 0.0
    for number, path in enumerate(outputs):
        data = path.read_bytes()  # not timed: the stage makes these bytes
        started = time.perf_counter()
        with (scratch / f"{number}.out").open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        write_s += time.perf_counter() - started
        written += len(data)
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "stage": f"{'decode-' if decode else ''}floor-{stage}",
        "seconds": round(read_s + write_s, 2),
        "read_s": round(read_s, 2),
        "write_s": round(write_s, 2),
        "read_mib": round(read_bytes / 2**20),
        "written_mib": round(written / 2**20),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def write_raw_prompts(root: Path, prompts: int) -> Path:
    """`prompts` prompt lines for `prepare`; every 20th repeats an earlier one."""
    path = root / "raw" / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as stream:
        for i in range(prompts):
            n = i - 10 if i % 20 == 19 else i
            stream.write(json.dumps({"text": f"Question {n}: {' '.join(WORDS)}?", "n": n}) + "\n")
    return path


def run_prepare(root: Path, shard_size: int) -> dict[str, Any]:
    from synthpref.stages.prepare import run_prepare as prepare

    spec = PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": str(root / "raw"), "shardSize": shard_size},
            "storage": {"uri": str(root / "prepared")},
            "models": [{"name": f"m{i}", "path": f"m{i}"} for i in range(4)],
        }
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    summary = prepare(spec, LocalStorage(root / "prepared"))
    seconds = time.perf_counter() - started
    rows = summary.prompts + summary.duplicates
    return {
        "stage": "prepare",
        "seconds": round(seconds, 2),
        "cpu_s": round(time.process_time() - cpu_started, 2),
        "input_rows": rows,
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": None,
        "duplicates": summary.duplicates,
    }


def run_stage(stage: str, root: Path, models: int, shard_size: int) -> dict[str, Any]:
    """Run one stage (or its I/O floor) in this (fresh) process and return its figures."""
    if stage.startswith("floor-"):
        return io_floor(stage.removeprefix("floor-"), root)
    if stage.startswith("decode-floor-"):
        return io_floor(stage.removeprefix("decode-floor-"), root, decode=True)
    if stage == "prepare":
        return run_prepare(root, shard_size)
    from synthpref.stages.mix import run_mix
    from synthpref.stages.parse import run_parse

    spec = bench_spec(root, models, shard_size)
    storage = LocalStorage(root / "store")
    cpu_started = time.process_time()
    started = time.perf_counter()  # imports done: they are not the stage's work
    summary: Any
    if stage == "mix":
        summary = run_mix(spec, storage)
        rows = summary.prompts * models
    else:
        summary = run_parse(spec, storage)
        rows = summary.requests
    seconds = time.perf_counter() - started
    return {
        "stage": stage,
        "seconds": round(seconds, 2),
        "cpu_s": round(time.process_time() - cpu_started, 2),
        "input_rows": rows,
        "rows_per_s": round(rows / seconds),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": getattr(summary, "pairs", None),
    }


def profile_stage(stage: str, root: Path, models: int, shard_size: int) -> None:
    """Run one stage under cProfile and print its top functions (own time, then cumulative)."""
    profiler = cProfile.Profile()
    profiler.enable()
    figures = run_stage(stage, root, models, shard_size)
    profiler.disable()
    print(json.dumps(figures))
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(order).print_stats(25)


def in_fresh_process(stage: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--stage", stage, "--workdir", str(root)]
    command += ["--models", str(args.models), "--shard-size", str(args.shard_size)]
    if args.profile:
        command.append("--profile")
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:  # the stage's own error, not a CalledProcessError about it
        sys.exit(f"{stage} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    output = done.stdout
    if args.profile:
        print(output, flush=True)
        return dict(json.loads(output.strip().splitlines()[0]))
    return dict(json.loads(output.strip().splitlines()[-1]))


def show(
    figures: dict[str, Any], floor: dict[str, Any] | None, decode_floor: dict[str, Any] | None
) -> None:
    line = (
        f"{figures['stage']:<7} {figures['input_rows']:>10} rows  {figures['seconds']:>8} s "
        f"(CPU {figures['cpu_s']} s)  "
        f"{figures['rows_per_s']:>8} rows/s  peak RSS {figures['peak_rss_mib']:>4} MiB"
    )
    if floor is not None:
        line += (
            f"  | floor {floor['seconds']} s (read {floor['read_mib']} MiB {floor['read_s']} s, "
            f"write {floor['written_mib']} MiB {floor['write_s']} s)  "
            f"stage/floor {figures['seconds'] / max(floor['seconds'], 0.01):.1f}"
        )
    if decode_floor is not None:
        line += (
            f"  | decode floor {decode_floor['seconds']} s "
            f"(read+decode {decode_floor['read_s']} s)  "
            f"stage/decode-floor {figures['seconds'] / max(decode_floor['seconds'], 0.01):.1f}"
        )
    if figures.get("pairs") is not None:
        line += f"  pairs {figures['pairs']}"
    if figures.get("duplicates") is not None:
        line += f"  duplicates {figures['duplicates']}"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--prepare", action="store_true", help="also measure prepare")
    parser.add_argument("--no-floor", action="store_true", help="skip the floors")
    parser.add_argument("--profile", action="store_true", help="cProfile each stage")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.models < MIX_ANSWERS:
        parser.error(f"--models must be at least {MIX_ANSWERS} (the answers mix picks per prompt)")
    if args.stage:
        if args.profile:
            profile_stage(args.stage, args.workdir, args.models, args.shard_size)
        else:
            print(json.dumps(run_stage(args.stage, args.workdir, args.models, args.shard_size)))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="synthpref-bench-"))
    try:
        if args.prepare:
            write_raw_prompts(root, args.prompts)
            show(in_fresh_process("prepare", args, root), None, None)
            shutil.rmtree(root / "prepared", ignore_errors=True)
        started = time.perf_counter()
        build(root, args.prompts, args.models, args.shard_size)
        print(
            f"built {args.prompts} prompts x {args.models} models "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        for stage in ["mix", "parse"]:
            if stage == "parse":
                simulate_judge(root, answers=MIX_ANSWERS)
            figures = in_fresh_process(stage, args, root)
            floor = decode_floor = None
            if not (args.no_floor or args.profile):
                floor = in_fresh_process(f"floor-{stage}", args, root)
                decode_floor = in_fresh_process(f"decode-floor-{stage}", args, root)
            show(figures, floor, decode_floor)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
