"""A quiet local console: what an engine prints goes to the run's logs/, not between the
progress bars, unless --verbose; a failing engine's last lines come just before the `Error:`
line; a stage command off a terminal (a Job's pod) prints it as before.

With a stand-in for the engine (tests/support/fake_engine.py) that writes the ways vLLM, torch
and vLLM's engine process do, so no vLLM is loaded; the real engine: test_quickstart.py.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from synthpref import layout
from synthpref.console import TAIL_LINES, VERBOSE_ENV, tail
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.prepare import run_prepare
from synthpref.storage import LocalStorage
from tests.builders import manifest_dict, spec_dict
from tests.support.fake_engine import (
    CRASH,
    ENGINE_LINES,
    FAIL_ENV,
    MARK,
    OWN_WARNING,
    ROOT_CAUSE,
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
FAKE_SYNTHPREF = [sys.executable, "-m", "tests.support.fake_engine"]
# Every way the stand-in writes: its child process (both streams), the library logger on
# stdout, a Python warning and a C-level write to fd 2.
EVERY_SOURCE = ("start line 00", "start line 29", "starting an engine", "FutureWarning", "NUMA")


def environment(extra: dict[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != VERBOSE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **(extra or {})}


def fake_synthpref(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`synthpref ARGS` with the stand-in engine, stdout and stderr on pipes."""
    return subprocess.run(
        [*FAKE_SYNTHPREF, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        env=environment(env),
    )


def on_terminal(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """`synthpref ARGS` with the stand-in engine and stderr on a pseudo-terminal, as a user
    runs it by hand: the result (its stdout) and what the terminal showed."""
    master, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*FAKE_SYNTHPREF, *args],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            cwd=tmp_path,
            env=environment(None),
        )
    finally:
        os.close(terminal)
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process writing to the terminal has exited
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=90)
    finally:
        reader.join(timeout=10)
        os.close(master)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, "")
    return result, shown.decode(errors="replace").replace("\r\n", "\n")


def run_file(tmp_path: Path) -> Path:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.jsonl").write_text(
        "".join(json.dumps({"text": f"Question {i}?"}) + "\n" for i in range(4))
    )
    weights = tmp_path / "model"
    weights.mkdir()  # `run --local` checks that a local model path exists
    spec = spec_dict(
        prompts_uri=str(tmp_path / "prompts"),
        storage_uri=str(tmp_path / "store"),
        models=0,
        mix={"responsesPerPrompt": 2},
        judge={"backend": "vllm", "model": str(weights)},
    )
    spec["models"] = [{"name": name, "path": str(weights)} for name in ("a", "b")]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest_dict(spec)))
    return path


def marked(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if MARK in line]


def test_a_failing_engine_prints_its_last_lines_just_before_the_error(tmp_path: Path) -> None:
    run = run_file(tmp_path)

    result = fake_synthpref(
        "run", str(run), "--local", "--no-progress", tmp_path=tmp_path, env={FAIL_ENV: "1"}
    )

    assert result.returncode == 1, result.stderr
    log = LocalStorage(tmp_path / "store").read_bytes(layout.engine_log("generate", "a"))
    text = log.decode()
    for source in (*EVERY_SOURCE, ROOT_CAUSE, "crash line 00", "crash line 29"):
        assert source in text, source
    assert OWN_WARNING not in text  # synthpref's own record stays on the console
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("Error: ") and CRASH in lines[-1], result.stderr
    last = tail(log)
    assert len(last) == TAIL_LINES and last[-1].endswith(f"crash line {ENGINE_LINES - 1:02d}")
    header = lines[-2 - TAIL_LINES]
    assert header.startswith(f"The engine's last {TAIL_LINES} lines"), result.stderr
    assert str(tmp_path / "store" / "logs" / "generate-a.log") in header
    assert lines[-1 - TAIL_LINES : -1] == [f"  {line}" for line in last]
    # Above them, the root cause that the last lines only point at.
    cause_header, cause = lines[-4 - TAIL_LINES : -2 - TAIL_LINES]
    number = text.split("\n").index(ROOT_CAUSE) + 1
    assert cause_header.startswith(f"The engine's first exception (line {number} of "), cause_header
    assert cause == f"  {ROOT_CAUSE}"
    # Nothing else of the engine reached the console; synthpref's own warning did.
    assert marked(result.stdout + result.stderr) == [ROOT_CAUSE, *(line.strip() for line in last)]
    assert OWN_WARNING in result.stderr


@pytest.mark.parametrize("how", ["--verbose", VERBOSE_ENV])
def test_verbose_prints_the_engine_output_and_keeps_no_log(tmp_path: Path, how: str) -> None:
    run = run_file(tmp_path)
    flags = ["--verbose"] if how == "--verbose" else []
    env = {FAIL_ENV: "1"} if flags else {FAIL_ENV: "1", VERBOSE_ENV: "1"}

    result = fake_synthpref(
        "run", str(run), "--local", "--no-progress", *flags, tmp_path=tmp_path, env=env
    )

    assert result.returncode == 1
    console = result.stdout + result.stderr
    for source in (*EVERY_SOURCE, ROOT_CAUSE, "crash line 29", OWN_WARNING):
        assert source in console, source
    assert "The engine's last" not in console
    assert not (tmp_path / "store" / "logs").exists()


def test_a_stage_command_is_quiet_on_a_terminal_and_prints_in_a_pod(tmp_path: Path) -> None:
    run = run_file(tmp_path)
    store = LocalStorage(tmp_path / "store")
    spec = PreferenceRunSpec.model_validate(yaml.safe_load(run.read_text())["spec"])
    run_prepare(spec, store)

    by_hand, terminal = on_terminal("generate", str(run), "--model", "a", tmp_path=tmp_path)

    assert by_hand.returncode == 0, terminal
    assert json.loads(by_hand.stdout)["rows"] == 4  # the summary, and nothing of the engine
    assert OWN_WARNING in terminal
    assert not marked(terminal), terminal
    text = store.read_bytes(layout.engine_log("generate", "a")).decode()
    for source in EVERY_SOURCE:
        assert source in text, source

    # In a Job's pod stderr is no terminal: the engine's output stays in the pod log.
    in_pod = fake_synthpref("generate", str(run), "--model", "b", tmp_path=tmp_path)

    assert in_pod.returncode == 0, in_pod.stderr
    for source in EVERY_SOURCE:
        assert source in in_pod.stdout + in_pod.stderr, source
    assert not store.exists(layout.engine_log("generate", "b"))
