"""Benchmark of the operator at scale: many concurrent runs, one very large run, steady state.

Not a test: run on demand (it starts its own control plane, S3 server and operator process),
one heavy thing at a time, e.g.

    .venv/bin/python scripts/bench_operator.py --scenario concurrent            # 50 x 20 x 20
    .venv/bin/python scripts/bench_operator.py --scenario big-run               # 1M prompts
    .venv/bin/python scripts/bench_operator.py --scenario steady
    .venv/bin/python scripts/bench_operator.py --scenario concurrent --runs 3 --models 2 --shards 5

The operator measured is whatever `synthpref_operator` $PYTHONPATH resolves to (the operator
process inherits it). Stage workers and the Job controller are simulated
(`tests/support/stage_simulator.py`): each Job's indexes commit what the stage's worker
commits (keys, markers, manifests, the run summary) after `--shard-seconds` per shard, and the
Job's status is written as the Job controller writes it; the judge is the vLLM backend (one
Job). So the figures are the operator's own: API requests from the apiserver's audit log (the
operator's user only), S3 requests by operation through a counting proxy (the simulator writes
to S3 directly), pass durations from the operator's reconcile histogram, CPU and peak RSS from
/proc, stage hops from the simulator's last commit of a stage to the next stage's Jobs created
(the API server's time, from the audit log: the simulator's own watch lags when its workers are
busy), and from parse's summary to the run seen Succeeded. Beside the hops, the floor under the
largest burst of creations (every run's generation Jobs at once): as many Jobs of the same
shape created by a plain client at the operator's concurrency, after the runs, with nothing
else running. And the CPU seconds of every process of the bench (the control plane's, the S3
server's, the simulator's): on a machine of few cores they compete with the operator and the
API server, which on a real cluster the workers and the object store do not; `--isolate-workers`
keeps them apart (half the cores each). The S3 server is a native one (`tests/support/s3_server`,
built by `scripts/build-s3-server.sh`) unless `--s3-server moto`: moto's server, in Python, used
more CPU than the control plane and the operator together on 2 cores.

Scenarios:
- concurrent: `--runs` runs of `--models` models x `--shards` shards, all at once, to Succeeded;
- big-run: one run of `--shards` x `--shard-size` prompts (default 1,000 x 1,000) to Succeeded;
- steady: `--finished` runs taken to Succeeded, then a `--window` of seconds with only them
  (terminal runs should cost nothing); then `--runs` runs stalled half-way through generation
  at `--small-shards` shards, a window; then as many at `--shards`, a window: S3 requests per
  pass per run should not grow with the shards (goal: ratio <= 1.5).

Prints one JSON line (all figures) and a table with each goal's PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.support` (the harness lives beside the tests)

from tests.support.operator_bench import (  # noqa: E402
    Harness,
    RunSize,
    figures,
    harness,
    run_names,
)
from tests.support.s3 import S3_SERVERS  # noqa: E402
from tests.support.stage_simulator import HOPS  # noqa: E402

from synthpref_operator.devcluster.binaries import build_binaries  # noqa: E402
from synthpref_operator.settings import DEFAULT_JOB_CREATIONS  # noqa: E402

GOAL_HOP_P95_S = 1.0
GOAL_RSS_MIB = 300.0
GOAL_STATUS_BYTES = 64 * 1024
GOAL_O1_RATIO = 1.5

DEFAULTS: dict[str, dict[str, Any]] = {
    "concurrent": {"runs": 50, "models": 20, "shards": 20, "shard_size": 100, "replicas": 20},
    "big-run": {"runs": 1, "models": 20, "shards": 1000, "shard_size": 1000, "replicas": 20},
    "steady": {"runs": 2, "models": 4, "shards": 1000, "shard_size": 10, "replicas": 20},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(DEFAULTS), default="concurrent")
    parser.add_argument("--runs", type=int, help="runs (concurrent, big-run) or stalled runs")
    parser.add_argument("--models", type=int)
    parser.add_argument("--shards", type=int)
    parser.add_argument("--shard-size", type=int, help="prompts per shard")
    parser.add_argument("--replicas", type=int, help="indexes of each generation Job")
    parser.add_argument("--interval", type=float, default=10.0, help="operator --interval")
    parser.add_argument(
        "--shard-seconds", type=float, default=0.5, help="simulated work per shard and index"
    )
    parser.add_argument("--object-bytes", type=int, default=1024, help="size of data objects")
    parser.add_argument("--sim-workers", type=int, default=8, help="simulator threads")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to Succeeded")
    parser.add_argument("--finished", type=int, default=10, help="steady: terminal runs")
    parser.add_argument("--small-shards", type=int, default=20, help="steady: the small size")
    parser.add_argument("--window", type=float, default=30.0, help="steady: seconds measured")
    parser.add_argument("--work-dir", type=Path, help="keep the logs there")
    parser.add_argument(
        "--isolate-workers",
        action="store_true",
        help="control plane and operator on half the cores, simulated workers and S3 on the rest",
    )
    parser.add_argument(
        "--job-creations",
        type=int,
        default=DEFAULT_JOB_CREATIONS,
        help="operator --job-creations, and the creation floor's concurrency",
    )
    parser.add_argument(
        "--s3-server",
        choices=S3_SERVERS,
        default="native",
        help="the S3 protocol server: native (gofakes3, Go) or moto (Python)",
    )
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="one more `synthpref operator run` argument (repeatable): --operator-arg=--workers=64",
    )
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.scenario].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def size_of(args: argparse.Namespace, shards: int | None = None) -> RunSize:
    shards = shards or args.shards
    return RunSize(args.models, shards, args.shard_size, min(args.replicas, shards))


def to_succeeded(h: Harness, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """Create the runs at once and measure until all Succeeded."""
    assert h.sim is not None
    names = run_names(prefix, args.runs)
    before = h.snapshot()
    started = time.monotonic()
    for name in names:
        h.create_run(name, size_of(args))
    done = h.wait_succeeded(names, args.timeout)
    wall = time.monotonic() - started
    after = h.snapshot()
    result = {
        "wall_s": round(wall, 1),
        "all_succeeded": done,
        "phases": _count(h.phases().values()),
        "totals": figures(before, after, args.runs, args.interval),
        "hops": h.hop_figures(),
        "max_status_bytes": h.sim.max_status_bytes,
        "simulated_commits": h.sim.commits,
        # The largest burst of creations: every run starting generation at once.
        "creation_floor": h.creation_floor(args.runs * args.models, args.job_creations),
    }
    return result


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def window(h: Harness, args: argparse.Namespace, runs: int) -> dict[str, Any]:
    time.sleep(2 * args.interval)  # let the passes that the last events brought finish
    before = h.snapshot()
    time.sleep(args.window)
    return figures(before, h.snapshot(), runs, args.interval)


def steady(h: Harness, args: argparse.Namespace) -> dict[str, Any]:
    assert h.sim is not None
    finished = run_names("done", args.finished)
    small = RunSize(args.models, args.small_shards, args.shard_size, args.replicas)
    for name in finished:
        h.create_run(name, small)
    if not h.wait_succeeded(finished, args.timeout):
        raise SystemExit("steady: the finished runs did not succeed in time")
    result: dict[str, Any] = {"terminal": window(h, args, args.finished)}
    result["max_status_bytes_terminal"] = h.sim.max_status_bytes
    h.delete_runs(finished)
    for label, shards in (("small", args.small_shards), ("large", args.shards)):
        names = run_names(f"stall-{label}", args.runs)
        half = max(1, shards // 2)
        for name in names:
            h.create_run(name, size_of(args, shards), stall_generation_at=half)
        h.wait_generated(names, half, args.timeout)
        measured = window(h, args, args.runs)
        phases = h.phases()
        result[f"stalled_{label}"] = {
            "shards": shards,
            **measured,
            "phases": _count(phases[n] for n in names),  # stalled runs must still be Generating
        }
        h.delete_runs(names)
    result["max_status_bytes"] = h.sim.max_status_bytes
    return result


def goals(scenario: str, result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each goal the scenario can judge: what, the figure, PASS/FAIL."""
    found: list[dict[str, Any]] = []

    def goal(what: str, value: Any, ok: bool | None) -> None:
        found.append({"goal": what, "value": value, "pass": None if ok is None else bool(ok)})

    windows = [result["totals"]] if "totals" in result else []
    windows += [result[k] for k in ("terminal", "stalled_small", "stalled_large") if k in result]
    rss = max(w["peak_rss_mib"] for w in windows)
    goal(f"operator peak RSS <= {GOAL_RSS_MIB:.0f} MiB", rss, rss <= GOAL_RSS_MIB)
    over = sum(w["passes_over_interval"] for w in windows)
    goal(f"no pass slower than the interval ({args.interval:g} s)", over, over == 0)
    if "hops" in result:
        p95 = result["hops"]["all"]["p95"]
        goal(
            f"stage hop p95 <= {GOAL_HOP_P95_S:g} s ({args.runs} runs)",
            _r(p95),
            p95 is not None and p95 <= GOAL_HOP_P95_S,
        )
        goal(
            "every run Succeeded, every hop seen", result["all_succeeded"], _all_hops(result, args)
        )
    status = result.get("max_status_bytes", 0)
    goal(
        f"status < 64 KiB ({args.models} models x {args.shards} shards)",
        status,
        status < GOAL_STATUS_BYTES,
    )
    if scenario == "steady":
        terminal = result["terminal"]
        goal(
            f"terminal runs cost nothing ({args.finished} Succeeded runs, {args.window:g} s)",
            f"{terminal['passes']} passes, {terminal['s3_requests']} S3, "
            f"{terminal['api_requests']} API",
            terminal["passes"] == 0 and terminal["s3_requests"] == 0,
        )
        small, large = (
            result["stalled_small"]["s3_per_pass"],
            result["stalled_large"]["s3_per_pass"],
        )
        what = (
            f"S3 per pass O(1) in shards ({args.small_shards} -> {args.shards}: ratio <= "
            f"{GOAL_O1_RATIO:g})"
        )
        stalled = [result[k]["phases"] for k in ("stalled_small", "stalled_large")]
        if any(set(p) != {"Generating"} for p in stalled):
            goal(what, f"stalled runs not all Generating ({stalled}): not judged", None)
        elif small is None or large is None:  # a window without passes: nothing to divide
            goal(what, f"{small} -> {large} (a window had no passes: not judged)", None)
        else:
            # No storage requests at all in steady state is the best case, not a failure.
            flat = large == 0 or (small > 0 and large / small <= GOAL_O1_RATIO)
            goal(what, f"{small} -> {large}", flat)
    return found


def _all_hops(result: dict[str, Any], args: argparse.Namespace) -> bool:
    hops = result["hops"]
    return bool(result["all_succeeded"]) and all(hops[h]["n"] == args.runs for h in HOPS)


def _r(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def table(scenario: str, result: dict[str, Any], found: list[dict[str, Any]]) -> str:
    lines = [f"== scenario {scenario}"]
    windows = {
        k: result[k]
        for k in ("totals", "terminal", "stalled_small", "stalled_large")
        if k in result
    }
    rows = [
        ("seconds", "seconds"),
        ("passes", "passes"),
        ("passes/s", "passes_per_s"),
        ("pass p50 s", "pass_p50_s"),
        ("pass p95 s", "pass_p95_s"),
        ("pass mean s", "pass_mean_s"),
        ("API requests", "api_requests"),
        ("API / pass", "api_per_pass"),
        ("API / run", "api_per_run"),
        ("S3 requests", "s3_requests"),
        ("S3 / pass", "s3_per_pass"),
        ("S3 / run", "s3_per_run"),
        ("S3 / pass by op", "s3_per_pass_by_op"),
        ("CPU s", "cpu_s"),
        ("CPU ms / pass", "cpu_per_pass_ms"),
        ("peak RSS MiB", "peak_rss_mib"),
    ]
    header = f"{'':<18}" + "".join(f"{name:>26}" for name in windows)
    lines.append(header)
    for label, key in rows:
        cells = []
        for figures_ in windows.values():
            value = figures_.get(key)
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            cells.append(f"{value!s:>26}")
        lines.append(f"{label:<18}" + "".join(cells))
    for name, figures_ in windows.items():
        by_process = " ".join(f"{k}={v}" for k, v in figures_.get("cpu_s_by_process", {}).items())
        lines.append(f"CPU s by process ({name}): {by_process}")
    if "hops" in result:
        lines.append(f"wall s to all Succeeded: {result['wall_s']}  phases: {result['phases']}")
        lines.append(f"{'hop':<20}{'n':>6}{'p50 s':>10}{'p95 s':>10}{'max s':>10}")
        for hop, q in result["hops"].items():
            lines.append(
                f"{hop:<20}{q['n']:>6}{_fmt(q['p50']):>10}{_fmt(q['p95']):>10}{_fmt(q['max']):>10}"
            )
    if "creation_floor" in result:
        floor = result["creation_floor"]
        lines.append(
            f"Job creation floor: {floor['jobs']} Jobs in {floor['seconds']} s ({floor['per_s']}/s)"
            f" from a plain client, {floor['concurrency']} at once, nothing else running"
        )
    lines.append(f"largest status object: {result.get('max_status_bytes')} bytes")
    for row in found:
        mark = {True: "PASS", False: "FAIL", None: "N/A"}[row["pass"]]
        lines.append(f"[{mark}] {row['goal']}: {row['value']}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {
        "interval": args.interval,
        "shard_seconds": args.shard_seconds,
        "object_bytes": args.object_bytes,
        "sim_workers": args.sim_workers,
        "operator_args": ("--job-creations", str(args.job_creations), *args.operator_arg),
        "isolate_workers": args.isolate_workers,
        "s3_server": args.s3_server,
    }
    started = time.monotonic()
    with harness(build_binaries(quiet=True), args.work_dir, **options) as h:
        if args.scenario == "steady":
            result = steady(h, args)
        else:
            result = to_succeeded(h, args, "run" if args.scenario == "concurrent" else "big")
        work_dir = str(h.work_dir)
    found = goals(args.scenario, result, args)
    sizes = {k: getattr(args, k) for k in ("runs", "models", "shards", "shard_size", "replicas")}
    document = {
        "scenario": args.scenario,
        "sizes": sizes,
        "interval": args.interval,
        "shard_seconds": args.shard_seconds,
        "operator_args": args.operator_arg,
        "isolate_workers": args.isolate_workers,
        "s3_server": args.s3_server,
        "job_creations": args.job_creations,
        "bench_wall_s": round(time.monotonic() - started, 1),
        "work_dir": work_dir,
        **result,
        "goals": found,
    }
    print(json.dumps(document, separators=(",", ":")))
    print(table(args.scenario, result, found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
