"""`synthpref report`: the run file and --catalog given the wrong way round say what to pass;
`report RUN.yaml` still writes (the group's default command) next to `report open`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from synthpref.cli import main
from synthpref.errors import SynthprefError
from tests.builders import manifest_dict, spec_dict

ROOT = Path(__file__).resolve().parents[2]
RUN = "examples/catalog-run.yaml"
CATALOG = "examples/catalogs/tulu3.yaml"


def error_of(*args: str) -> str:
    """The one error the command stops with (a click error's line, or the SynthprefError that
    the console script prints as that line)."""
    result = CliRunner().invoke(main, list(args), prog_name="synthpref")
    assert result.exit_code != 0, result.output
    if isinstance(result.exception, SynthprefError):
        return str(result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0].removeprefix("Error: ")


@pytest.fixture(autouse=True)
def in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SYNTHPREF_RUN_MANIFEST", raising=False)


def test_catalog_that_swallowed_the_run_file_says_the_order() -> None:
    message = error_of("report", "--catalog", RUN)
    assert message == (
        f"no RUN.yaml: --catalog took {RUN} (it has: PreferenceRun 'tulu3-catalog-v1') and "
        "nothing was left for the run; give the run's file first, then the file of the "
        "ModelCatalog its spec.modelCatalog names: synthpref report RUN.yaml --catalog "
        "CATALOG.yaml"
    )
    assert "it has: ModelCatalog 'tulu3'" in error_of("report", "--catalog", CATALOG)


def test_a_run_file_given_as_the_catalog_says_what_the_catalog_is() -> None:
    assert error_of("report", RUN, "--catalog", RUN) == (
        f"{RUN}: no ModelCatalog in this file (it has: PreferenceRun 'tulu3-catalog-v1'): "
        "--catalog takes the file that defines ModelCatalog 'tulu3' (the run's "
        "spec.modelCatalog.name), and the run's own file comes first: RUN.yaml --catalog FILE"
    )


def test_a_catalog_given_as_the_run_says_where_it_goes() -> None:
    assert error_of("report", CATALOG) == (
        f"{CATALOG}: no document with kind: PreferenceRun (the file has: ModelCatalog "
        "'tulu3'); a ModelCatalog file goes to --catalog FILE, after the run's own file: "
        "RUN.yaml --catalog CATALOG.yaml"
    )


def test_a_missing_catalog_names_the_option() -> None:
    assert "give the file that defines it with --catalog FILE" in error_of("report", RUN)


def test_report_writes_by_default_and_opens_by_subcommand(tmp_path: Path) -> None:
    help_text = CliRunner().invoke(main, ["report", "--help"]).output
    assert "open" in help_text and "write" in help_text
    run = tmp_path / "run.yaml"
    store = tmp_path / "store"
    run.write_text(yaml.safe_dump(manifest_dict(spec_dict(storage_uri=str(store)), name="r")))
    # `report RUN.yaml` is `report write RUN.yaml`: it reads the run, which has not finished.
    assert error_of("report", str(run)) == (
        f"{store / 'dataset/summary.json'}: not found: the run has not finished its parse "
        "stage; run it (or the whole run) first"
    )
    assert error_of("report", "open", str(run)).startswith(
        f"{store / 'report/index.html'}: not found: run r has no report yet"
    )
    (store / "report").mkdir(parents=True)
    (store / "report" / "index.html").write_text("<html></html>")
    opened = CliRunner().invoke(main, ["report", "open", str(run)])
    assert opened.exit_code == 0, opened.output
    assert f"report: {store / 'report' / 'index.html'}" in opened.output  # local: nothing to copy
