"""The import names resolve everywhere: operator/ never shadows the standard library's module,
and a wheel ships `synthpref` and `synthpref_operator` (and no top-level `operator`)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import click

import synthpref
import synthpref_operator

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_operator_is_not_shadowed() -> None:
    # Run from the repository root, where a folder named operator/ sits on sys.path[0].
    code = "import operator, sys; print(operator.__file__); print(operator.itemgetter)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[0].startswith(sysconfig.get_paths()["stdlib"])


def test_packages_come_from_their_source_roots() -> None:
    assert Path(synthpref.__file__).parent == ROOT / "pipeline" / "synthpref"
    assert Path(synthpref_operator.__file__).parent == ROOT / "operator" / "synthpref_operator"


def test_wheel_contents(tmp_path: Path) -> None:
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = tmp_path / result.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if "/" in name and ".dist-info" not in name}
    assert top_level == {"synthpref", "synthpref_operator"}
    assert "synthpref/templates.py" in names and "synthpref/py.typed" in names
    assert "synthpref_operator/devcluster/kubelet.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "synthpref = synthpref.cli:entrypoint" in declared
    assert "[synthpref.commands]\noperator = synthpref_operator.cli:operator_command" in declared
    assert "[synthpref.dev_commands]\ncluster = synthpref_operator.devcluster" in declared


def test_the_pipeline_reaches_the_operator_only_through_entry_points() -> None:
    """The import contract sees imports; a module named in a string would slip past it."""
    for source in (ROOT / "pipeline" / "synthpref").rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert '"synthpref_operator' not in text and "'synthpref_operator" not in text, source
    names = {
        entry.name: entry.value
        for group in ("synthpref.commands", "synthpref.dev_commands")
        for entry in entry_points(group=group)
    }
    assert names == {
        "operator": "synthpref_operator.cli:operator_command",
        "cluster": "synthpref_operator.devcluster.cli:cluster_group",
    }
    from synthpref.cli import main

    assert main.get_command(click.Context(main), "operator") is not None
