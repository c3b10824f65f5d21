"""The CRD generated from the models: checked-in copy current, structural, documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from synthpref_operator.cli import operator_command
from synthpref_operator.crd import CRD_PATHS, crd, crd_yaml, structural

ROOT = Path(__file__).resolve().parents[2]


def version() -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd()["spec"]["versions"]
    return versions[0]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, sub in (node.get("properties") or {}).items():
            yield from walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("path", CRD_PATHS)
def test_checked_in_crd_is_current(path: str) -> None:
    """Both copies (crds/ and the Helm chart's crds/) equal the generated CRD."""
    text = (ROOT / path).read_text(encoding="utf-8")
    assert text == crd_yaml(), f"{path} is stale: run `synthpref operator crd --sync`"


def test_check_flag_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd_yaml().replace("Prompt source.", "Prompts."))
    result = CliRunner().invoke(operator_command, ["crd", "--check", str(stale)])
    assert result.exit_code == 1 and "stale" in result.output
    stale.write_text(crd_yaml())
    assert CliRunner().invoke(operator_command, ["crd", "--check", str(stale)]).exit_code == 0


def test_every_field_has_a_description_and_the_schema_is_structural() -> None:
    root = version()["schema"]["openAPIV3Schema"]
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
    assert list(columns) == ["Phase", "Progress", "Pairs", "Age", "Judge", "Blocked", "Message"]
    assert columns["Progress"]["jsonPath"] == ".status.progress"
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
