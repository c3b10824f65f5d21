"""docs/failure-modes.md stays true: every case of the failure-mode table is in it, and every
test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.component.test_failure_modes import CASES

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "failure-modes.md").read_text(encoding="utf-8")


def test_every_case_of_the_table_is_documented_and_no_other() -> None:
    documented = set(re.findall(r"`modes\[([a-z0-9-]+)\]`", DOC))
    assert documented == {case.id for case in CASES}


def defines(path: Path, name: str) -> bool:
    return re.search(rf"^def {name}\b", path.read_text(encoding="utf-8"), re.M) is not None


def test_every_test_the_page_names_exists() -> None:
    files = {p.name: p for p in (ROOT / "tests").rglob("test_*.py")}
    paths = re.findall(r"(tests/[\w/]+\.py)", DOC)
    assert paths and all((ROOT / path).is_file() for path in paths), paths
    named = re.findall(r"(test_\w+\.py)::(\w+)", DOC)
    assert named
    for file, name in named:
        assert file in files and defines(files[file], name), f"{file}::{name}"
    # `::name` after a file named earlier in the same cell
    for name in re.findall(r"`::(\w+)`", DOC):
        assert any(defines(path, name) for path in files.values()), name


def test_the_readme_links_the_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/failure-modes.md)" in readme
