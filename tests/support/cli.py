"""The `synthpref` console script as users run it, for tests: run it, read its one Error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SYNTHPREF = Path(sys.executable).parent / "synthpref"  # the console script of this venv


def synthpref(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `synthpref ARGS` (the environment: this process's, updated with `env`)."""
    return subprocess.run(
        [str(SYNTHPREF), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The `Error: ...` lines on stderr, without the prefix."""
    return [
        line.removeprefix("Error: ")
        for line in result.stderr.splitlines()
        if line.startswith("Error: ")
    ]


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error of a failed command: its `Error: ` line and the indented detail lines
    after it (a spec's problems, one per line); fails when there is none, several, or a
    traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result)) == 1, f"expected one Error line:\n{result.stderr}"
    lines = result.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Error: "))
    details = [line for line in lines[start + 1 :] if line.startswith(" ")]
    return "\n".join([lines[start].removeprefix("Error: "), *details])
