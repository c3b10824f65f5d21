"""The CRD generated from the models: checked-in copy current, structural, documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from synthpref_operator.cli import operator_command
from synthpref_operator.crd import CHECKED_IN, catalog_crd, crd, crd_yaml, structural

ROOT = Path(__file__).resolve().parents[2]


def version(definition: dict[str, Any] | None = None) -> dict[str, Any]:
    versions: list[dict[str, Any]] = (definition or crd())["spec"]["versions"]
    return versions[0]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, sub in (node.get("properties") or {}).items():
            yield from walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("path", CHECKED_IN)
def test_checked_in_crd_is_current(path: str) -> None:
    """Every copy (crds/ and the Helm chart's crds/, of each CRD) equals the generated CRD."""
    text = (ROOT / path).read_text(encoding="utf-8")
    assert text == CHECKED_IN[path](), f"{path} is stale: run `synthpref operator crd --sync`"
    assert len(CHECKED_IN) == 4


def test_check_flag_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd_yaml().replace("Prompt source.", "Prompts."))
    result = CliRunner().invoke(operator_command, ["crd", "--check", str(stale)])
    assert result.exit_code == 1 and "stale" in result.output
    stale.write_text(crd_yaml())
    assert CliRunner().invoke(operator_command, ["crd", "--check", str(stale)]).exit_code == 0
    # A file that is not there is missing, not stale.
    missing = tmp_path / "nowhere.yaml"
    result = CliRunner().invoke(operator_command, ["crd", "--check", str(missing)])
    assert result.exit_code == 1 and "stale" not in result.output
    assert f"{missing} does not exist: write it with --write {missing}" in result.output


@pytest.mark.parametrize("make", [crd, catalog_crd], ids=["PreferenceRun", "ModelCatalog"])
def test_every_field_has_a_description_and_the_schema_is_structural(make: Any) -> None:
    root = version(make())["schema"]["openAPIV3Schema"]
    undocumented = []
    for path, node in walk(root):
        for forbidden in ("$ref", "anyOf", "oneOf", "title", "const", "$defs"):
            assert forbidden not in node, f"{path}: {forbidden}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        documented = bool(node.get("description")) or path.endswith("[]")
        if path.startswith((".spec", ".status")) and not documented:
            undocumented.append(path)
    assert undocumented == []


def test_defaults_bounds_and_rules() -> None:
    spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    mix = spec["properties"]["mix"]
    assert mix["default"] == {}  # nested defaults are applied by the server
    assert mix["properties"]["responsesPerPrompt"] == {
        "default": 4,
        "description": "Answers from distinct models per prompt (k).",
        "maximum": 16,
        "minimum": 2,
        "type": "integer",
    }
    poll = spec["properties"]["judge"]["properties"]["pollIntervalSeconds"]
    assert poll["minimum"] == 0 and poll["exclusiveMinimum"] is True
    engine_args = spec["properties"]["models"]["items"]["properties"]["engineArgs"]
    assert engine_args["x-kubernetes-preserve-unknown-fields"] is True
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("onPolicyModel" in r for r in rules)
    assert "self == oldSelf" in [
        r["rule"] for r in spec["properties"]["storage"]["x-kubernetes-validations"]
    ]
    # Optional fields are plain types (absent means unset), never null defaults.
    revision = spec["properties"]["models"]["items"]["properties"]["revision"]
    assert revision == {"type": "string", "description": "Model revision (vllm)."}


def test_printer_columns_and_names() -> None:
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns) == [
        "Phase",
        "Progress",
        "Pairs",
        "Age",
        "Judge",
        "Cost",
        "Blocked",
        "Message",
    ]
    assert columns["Progress"]["jsonPath"] == ".status.progress"
    assert columns["Cost"] == {
        "name": "Cost",
        "type": "string",
        "jsonPath": ".status.cost",
        "priority": 1,
    }
    assert columns["Blocked"]["jsonPath"] == '.status.conditions[?(@.type=="Blocked")].reason'
    assert columns["Judge"]["priority"] == columns["Blocked"]["priority"] == 1
    assert columns["Message"]["priority"] == 1
    assert "priority" not in columns["Phase"]
    assert version()["subresources"] == {"status": {}}
    assert crd()["spec"]["names"]["shortNames"] == ["prun"]


def test_structural_rewrites_unions_and_consts() -> None:
    node = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None}
    assert structural(node, {}) == {"type": "integer", "minimum": 1}
    assert structural({"const": "x", "type": "string"}, {}) == {"enum": ["x"], "type": "string"}
    ref = {"$ref": "#/$defs/A", "description": "mine"}
    defs = {"A": {"type": "object", "description": "theirs", "additionalProperties": False}}
    assert structural(ref, defs) == {"type": "object", "description": "mine"}


def test_catalog_crd_columns_names_and_rules() -> None:
    definition = catalog_crd()
    columns = {c["name"]: c["jsonPath"] for c in version(definition)["additionalPrinterColumns"]}
    assert columns == {"Description": ".spec.description", "Age": ".metadata.creationTimestamp"}
    assert definition["spec"]["names"]["shortNames"] == ["mcat"]
    assert "subresources" not in version(definition)
    spec = version(definition)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # The entries are exactly a run's spec.models[] entries.
    run_models = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["properties"]["models"]["items"] == run_models["models"]["items"]
    assert "unique" in spec["x-kubernetes-validations"][0]["message"]
    ref = run_models["modelCatalog"]
    assert ref["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
