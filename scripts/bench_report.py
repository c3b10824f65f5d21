"""Benchmark of the report step: wall time and peak RSS at N prompts x M models.

Not a test: run on demand, e.g.

    .venv/bin/python scripts/bench_report.py --prompts 20000 100000 --models 8

For each size it builds a synthetic finished run in a scratch directory (prompt and generation
shards as `bench_mix_parse.py` makes them, `mix`, a deterministic JSON judge writing every result
file, `parse`), then runs `synthpref report` (the `write_report` step: streaming collection,
provenance, card, plots, page) in a fresh process and prints its wall time, the input rows it
read and the process's peak RSS. A flat peak RSS across sizes shows that the report's memory does
not grow with the run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_mix_parse import bench_spec, build, simulate_judge

from synthpref.spec import PreferenceRunManifest
from synthpref.storage import LocalStorage


def manifest(root: Path, models: int, shard_size: int) -> PreferenceRunManifest:
    spec = bench_spec(root, models, shard_size)
    return PreferenceRunManifest.model_validate(
        {
            "apiVersion": "synthpref.dev/v1alpha1",
            "kind": "PreferenceRun",
            "metadata": {"name": "bench"},
            "spec": spec.model_dump(mode="json", by_alias=True),
        }
    )


def prepare_run(root: Path, prompts: int, models: int, shard_size: int) -> None:
    """A finished synthetic run: prompts, answers, mix, judge results, dataset."""
    from synthpref.stages.mix import run_mix
    from synthpref.stages.parse import run_parse

    build(root, prompts, models, shard_size)
    spec = bench_spec(root, models, shard_size)
    storage = LocalStorage(root / "store")
    run_mix(spec, storage)
    simulate_judge(root, answers=4)
    run_parse(spec, storage)


def run_report(root: Path, models: int, shard_size: int) -> dict[str, Any]:
    """The report step in this (fresh) process; returns its figures."""
    from synthpref.report.writer import write_report

    run = manifest(root, models, shard_size)
    storage = LocalStorage(root / "store")
    started = time.perf_counter()
    result = write_report(run, storage)
    seconds = time.perf_counter() - started
    summary = storage.read_json("dataset/summary.json")
    return {
        "seconds": round(seconds, 1),
        "answers": summary["prepare"]["prompts"] * models,
        "requests": summary["requests"],
        "pairs": summary["pairs"],
        "figures": len(result.figures),
        "page_kib": round((storage.root / "report" / "index.html").stat().st_size / 1024),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report_only:
        print(json.dumps(run_report(args.workdir, args.models, args.shard_size)))
        return
    for prompts in args.prompts:
        root = Path(tempfile.mkdtemp(prefix="synthpref-bench-report-"))
        try:
            started = time.perf_counter()
            prepare_run(root, prompts, args.models, args.shard_size)
            print(
                f"built a finished run of {prompts} prompts x {args.models} models "
                f"in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            command = [
                sys.executable,
                __file__,
                "--report-only",
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
                f"report {prompts:>8} prompts  {figures['answers']:>9} answers  "
                f"{figures['requests']:>8} judge requests  {figures['seconds']:>7} s  "
                f"peak RSS {figures['peak_rss_mib']} MiB  ({figures['figures']} figures, "
                f"page {figures['page_kib']} KiB, {figures['pairs']} pairs)",
                flush=True,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
