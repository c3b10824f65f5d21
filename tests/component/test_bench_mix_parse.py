"""The mix and parse benchmark (`scripts/bench_mix_parse.py`) at a small size, as CI runs it: it
must run end to end and what it measures must be a real run of the stages (every prompt mixed,
every request judged and parsed, the dataset written), not only figures. The figures themselves
are not checked: timing belongs to the benchmark run on demand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench_mix_parse.py"
PROMPTS, MODELS, SHARD_SIZE, ASPECTS = 300, 5, 100, 4

pytestmark = pytest.mark.timeout(300)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(BENCH), *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=240)


def figures(output: str, stage: str) -> dict[str, str]:
    """The input rows and the extras (pairs, duplicates) of a stage's line of the table."""
    line = next(line for line in output.splitlines() if line.startswith(f"{stage} "))
    found = dict(re.findall(r"(pairs|duplicates) (\d+)", line))
    found["rows"] = line.split()[1]
    return found


def test_a_small_run_mixes_judges_and_parses_every_prompt(tmp_path: Path) -> None:
    done = bench(
        *("--prompts", str(PROMPTS), "--models", str(MODELS), "--shard-size", str(SHARD_SIZE)),
        *("--workdir", str(tmp_path), "--prepare"),
    )
    assert done.returncode == 0, done.stderr
    assert figures(done.stdout, "prepare") == {"rows": str(PROMPTS), "duplicates": "15"}
    assert figures(done.stdout, "mix")["rows"] == str(PROMPTS * MODELS)
    parse = figures(done.stdout, "parse")
    assert parse["rows"] == str(PROMPTS * ASPECTS)  # a request per prompt and aspect
    assert "floor" in done.stdout and "decode floor" in done.stdout
    dataset = sorted((tmp_path / "store" / "dataset").glob("part-*.jsonl"))
    assert len(dataset) == PROMPTS // SHARD_SIZE
    rows = [json.loads(line) for part in dataset for line in part.read_text().splitlines()]
    assert len(rows) == int(parse["pairs"]) > PROMPTS // 2
    assert all(row["chosen_rating"] > row["rejected_rating"] for row in rows)
    summary = json.loads((tmp_path / "store" / "dataset" / "summary.json").read_text())
    assert summary["prompts"] == PROMPTS and summary["requests"] == PROMPTS * ASPECTS


def test_too_few_models_is_refused_with_the_reason() -> None:
    done = bench("--prompts", "10", "--models", "3")
    assert done.returncode == 2
    assert "--models must be at least 4" in done.stderr
