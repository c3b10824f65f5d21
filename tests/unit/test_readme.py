"""README.md stays true: the field reference matches the models; the commands it names exist."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from synthpref.cli import main
from synthpref.reference import with_reference
from synthpref.spec import load_run

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_field_reference_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert with_reference(text) == text, (
        "README field reference is stale: run `synthpref dev field-reference --write README.md`"
    )


def test_every_spec_field_documented() -> None:
    text = README.read_text(encoding="utf-8")
    assert "`spec.judge.structuredOutput`" in text
    assert "`spec.mix.onPolicyModel`" in text


def test_named_scripts_exist_and_ci_calls_the_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    for script in set(re.findall(r"scripts/[\w.-]+\.sh", text)):
        assert (ROOT / script).is_file(), script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_examples_are_valid_runs() -> None:
    assert load_run(ROOT / "examples" / "quickstart.yaml").metadata.name == "quickstart"
    block = re.search(r"```yaml\n(apiVersion: synthpref.dev.*?)```", README.read_text(), re.S)
    assert block is not None
    path = ROOT / ".pytest-readme-example.yaml"
    try:
        path.write_text(block.group(1))
        run = load_run(path)
    finally:
        path.unlink(missing_ok=True)
    assert run.spec.mix.on_policy_model == "my-policy"


def test_stage_commands_listed_in_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ["prepare", "generate", "mix", "judge", "parse", "run", "annotate", "dev"]:
        assert re.search(rf"^\s+{command}\b", result.output, re.M), command
