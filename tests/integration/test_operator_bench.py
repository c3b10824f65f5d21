"""The operator benchmark (`scripts/bench_operator.py`) end to end at a tiny size, as CI's
correctness check of the harness: every run Succeeded, every stage hop was seen, and the
figures are well-formed and positive. No timings are asserted (the benchmark measures them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.stage_simulator import HOPS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def bench(kube_bin_dir: Path, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run the benchmark script; returns its JSON line (the table follows it)."""
    env = os.environ | {"SYNTHPREF_KUBE_BIN_DIR": str(kube_bin_dir)}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_operator.py"),
            "--work-dir",
            str(tmp_path / "bench"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    first, _, table = done.stdout.partition("\n")
    assert "[PASS]" in table
    document: dict[str, Any] = json.loads(first)
    return document


def well_formed(window: dict[str, Any]) -> None:
    assert window["seconds"] > 0
    # A quiet window (finished runs, which cost nothing now) can use less than a clock tick.
    assert window["cpu_s"] >= 0
    assert window["peak_rss_mib"] > 0
    assert isinstance(window["passes"], int) and window["passes"] >= 0


def test_concurrent_runs_succeed_and_every_hop_is_measured(
    kube_bin_dir: Path, tmp_path: Path
) -> None:
    result = bench(
        kube_bin_dir, tmp_path, "--scenario", "concurrent", "--runs", "3", "--models", "2",
        "--shards", "5", "--shard-size", "4", "--interval", "2", "--shard-seconds", "0.1",
        "--timeout", "240", "--job-creations", "4",
    )  # fmt: skip
    assert result["all_succeeded"] is True
    assert result["phases"] == {"Succeeded": 3}
    for hop in HOPS:
        assert result["hops"][hop]["n"] == 3, hop
        assert result["hops"][hop]["max"] >= 0
    # Hops end at the API server's creation times; the simulator's sightings are shown beside.
    assert result["hops"]["all (simulator's watch)"]["n"] == result["hops"]["all"]["n"] == 18
    totals = result["totals"]
    well_formed(totals)
    assert totals["passes"] > 0
    # What every process of the bench used of the machine's cores, beside the operator.
    by_process = totals["cpu_s_by_process"]
    assert abs(by_process["operator"] - totals["cpu_s"]) <= 0.1  # the same, to one decimal
    assert {"etcd", "kube-apiserver", "S3 server", "bench (simulator, S3 proxy)"} <= set(by_process)
    assert by_process["kube-apiserver"] > 0 and by_process["bench (simulator, S3 proxy)"] > 0
    # The native S3 server by default: every object above went through it.
    assert result["s3_server"] == "native" and by_process["S3 server"] > 0
    # The operator creates 3 runs x (prepare + 2 models + mix + judge + parse) Jobs.
    assert totals["api_by_verb"]["create jobs"] == 18
    assert totals["api_per_pass"] > 0
    assert {"LIST", "GET", "HEAD"} <= set(totals["s3_by_op"])
    assert "PUT" not in totals["s3_by_op"]  # the simulator's writes bypass the counting proxy
    assert result["max_status_bytes"] > 0
    # The floor under the largest burst (every run's generation Jobs) is measured beside it.
    floor = result["creation_floor"]
    assert (floor["jobs"], floor["concurrency"]) == (3 * 2, 4)  # --job-creations
    assert result["job_creations"] == 4
    assert floor["seconds"] > 0 and floor["per_s"] > 0
    # prepare 5 prompt shards, 2 x 5 generations, 5 x (mix + request), 5 results, 5 parts.
    assert result["simulated_commits"] == 3 * (5 + 10 + 10 + 5 + 5)
    assert {g["goal"].split(" (")[0] for g in result["goals"]} >= {
        "operator peak RSS <= 300 MiB",
        "every run Succeeded, every hop seen",
    }


def test_steady_state_measures_terminal_and_stalled_runs(
    kube_bin_dir: Path, tmp_path: Path
) -> None:
    result = bench(
        kube_bin_dir, tmp_path, "--scenario", "steady", "--runs", "2", "--models", "2",
        "--small-shards", "4", "--shards", "8", "--shard-size", "2", "--finished", "2",
        "--window", "3", "--interval", "1", "--shard-seconds", "0.05", "--timeout", "240",
        "--s3-server", "moto",
    )  # fmt: skip
    assert result["s3_server"] == "moto"  # the other S3 server serves the same scenarios
    for key in ("terminal", "stalled_small", "stalled_large"):
        well_formed(result[key])
    assert result["stalled_small"]["shards"] == 4
    assert result["stalled_large"]["shards"] == 8
    # Finished runs get no pass at all (the operator before issue 15 made one per interval).
    assert result["terminal"]["passes"] == 0 and result["terminal"]["s3_requests"] == 0
    # The stalled runs are still generating when their windows are measured, and get passes.
    for key in ("stalled_small", "stalled_large"):
        assert result[key]["phases"] == {"Generating": 2}, key
        assert result[key]["passes"] > 0, key
    goals = {g["goal"].split(" (")[0]: g for g in result["goals"]}
    assert "S3 per pass O(1) in shards" in goals
    assert goals["terminal runs cost nothing"]["pass"] is True
