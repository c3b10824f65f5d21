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


def test_readme_embeds_the_gpu_cluster_example_verbatim() -> None:
    """The README's complete PreferenceRun is examples/gpu-cluster.yaml, byte for byte (that
    file is validated with the other examples in test_examples.py)."""
    example = (ROOT / "examples" / "gpu-cluster.yaml").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert example in blocks, "README: paste examples/gpu-cluster.yaml into its yaml block"
    assert load_run(ROOT / "examples" / "gpu-cluster.yaml").spec.mix.on_policy_model


def test_readme_names_files_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    for path in set(re.findall(r"\]\(((?:examples|charts|images)/[\w./-]+)\)", text)):
        assert (ROOT / path).exists(), path


def test_stage_commands_listed_in_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ["prepare", "generate", "mix", "judge", "parse", "run", "annotate", "dev"]:
        assert re.search(rf"^\s+{command}\b", result.output, re.M), command


def test_readme_sample_dataset_row_is_a_preference_row() -> None:
    """The row shown in "Using the dataset" is what parse writes (extra fields refused)."""
    from synthpref.rows import PreferenceRow

    text = README.read_text(encoding="utf-8")
    section = text.split("### Using the dataset", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    row = PreferenceRow.model_validate_json(block.strip())
    assert row.chosen[-1].role == "assistant" and row.chosen_rating > row.rejected_rating
    from synthpref.stages.prepare import prompt_id

    assert row.prompt_id == prompt_id(row.prompt)
