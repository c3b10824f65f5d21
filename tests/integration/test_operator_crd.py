"""The generated PreferenceRun CRD against the real API server: it is accepted as a structural
schema, documents every field for `kubectl explain`, applies the models' defaults, and rejects
bad objects (schema bounds and CEL rules) with their messages."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref.spec import PreferenceRunSpec
from synthpref_operator.crd import CRD_PATH
from tests.builders import manifest_dict, spec_dict

pytestmark = pytest.mark.cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parents[2]


def install_crd(kubectl: Kubectl) -> None:
    result = kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / CRD_PATH), check=False
    )
    assert result.returncode == 0, result.stderr
    kubectl(
        "wait", "--for=condition=Established", "--timeout=300s", "crd/preferenceruns.synthpref.dev"
    )


def apply(
    kubectl: Kubectl, namespace: str, document: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document), check=False)


@pytest.fixture
def crd(kubectl: Kubectl) -> None:
    install_crd(kubectl)


def explain(kubectl: Kubectl, field: str) -> str:
    """`kubectl explain`, retried while the API server publishes the new CRD's OpenAPI."""
    deadline = time.monotonic() + 30
    while True:
        result = kubectl("explain", field, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout
        time.sleep(0.5)


def test_explain_documents_fields(crd: None, kubectl: Kubectl) -> None:
    out = explain(kubectl, "preferencerun.spec.judge")
    assert "The judge." in out
    assert "backend" in out and "openai (Batch API) or vllm" in out
    status = explain(kubectl, "prun.status.conditions")
    assert "lastTransitionTime" in status


def test_server_defaults_match_the_models(crd: None, kubectl: Kubectl, namespace: str) -> None:
    document = manifest_dict(spec_dict(models=4), name="defaults")
    result = apply(kubectl, namespace, document)
    assert result.returncode == 0, result.stderr
    stored = json.loads(kubectl("get", "prun", "defaults", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["mix"]["responsesPerPrompt"] == 4
    assert stored["spec"]["judge"]["openai"]["apiKeyEnv"] == "OPENAI_API_KEY"
    assert stored["spec"]["models"][0]["sampling"]["maxTokens"] == 512
    # What the server stored (with its defaults) is what the models make of the input.
    server_side = PreferenceRunSpec.model_validate(stored["spec"])
    assert server_side == PreferenceRunSpec.model_validate(document["spec"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompts": {"uri": "p", "shardSize": 0}}, "spec.prompts.shardSize: Invalid value"),
        ({"judge": {"backend": "claude"}}, 'spec.judge.backend: Unsupported value: "claude"'),
        ({"mix": {"onPolicyModel": "nope"}}, "spec.mix.onPolicyModel must be the name of one"),
        ({"mix": {"onPolicyModel": "m0"}, "duplicate": True}, "spec.models: names must be unique"),
        ({"mix": {"responsesPerPrompt": 5}}, "needs that many distinct models"),
        ({"storage": {"uri": "s", "secretKey": "x"}}, 'unknown field "spec.storage.secretKey"'),
        ({"models": 0}, "give at least one model, or take them from spec.modelCatalog"),
        ({"models": 0, "modelCatalog": {"name": "Bad_Name"}}, "spec.modelCatalog.name"),
    ],
)
def test_bad_objects_are_rejected_with_their_message(
    crd: None, kubectl: Kubectl, namespace: str, change: dict[str, Any], message: str
) -> None:
    duplicate = change.pop("duplicate", False)
    spec = spec_dict(**change)
    if duplicate:
        spec["models"][1]["name"] = "m0"
    document = manifest_dict(spec, name="bad")
    result = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(document), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_storage_prompts_and_models_are_immutable(
    crd: None, kubectl: Kubectl, namespace: str
) -> None:
    document = manifest_dict(spec_dict(), name="fixed")
    assert apply(kubectl, namespace, document).returncode == 0
    for section, value, message in [
        ("storage", {"uri": "elsewhere/"}, "spec.storage cannot change once the run exists"),
        ("prompts", {"uri": "other/", "shardSize": 2}, "spec.prompts cannot change"),
        ("models", spec_dict(models=5)["models"], "spec.models cannot change"),
    ]:
        changed = copy.deepcopy(document)
        changed["spec"][section] = value
        result = apply(kubectl, namespace, changed)
        assert result.returncode != 0 and message in result.stderr, result.stderr
    changed = copy.deepcopy(document)
    changed["spec"]["modelCatalog"] = {"name": "tulu3"}
    result = apply(kubectl, namespace, changed)
    assert "spec.modelCatalog cannot be added or removed" in result.stderr, result.stderr
    # A run that takes its models from a catalog keeps the same pick.
    picked = manifest_dict(spec_dict(models=0, modelCatalog={"name": "tulu3"}), name="picked")
    assert apply(kubectl, namespace, picked).returncode == 0
    picked["spec"]["modelCatalog"]["exclude"] = ["gemma-2-9b-it"]
    result = apply(kubectl, namespace, picked)
    assert "spec.modelCatalog cannot change once the run exists" in result.stderr, result.stderr
    # Other fields may change (suspend is how a run is paused).
    changed = copy.deepcopy(document)
    changed["spec"]["suspend"] = True
    result = apply(kubectl, namespace, changed)
    assert result.returncode == 0, result.stderr


def test_checked_in_crd_is_valid_yaml() -> None:
    document = yaml.safe_load((ROOT / CRD_PATH).read_text())
    assert document["spec"]["names"]["shortNames"] == ["prun"]


@pytest.mark.parametrize(
    "example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_examples_pass_server_side_validation(
    crd: None, kubectl: Kubectl, namespace: str, example: Path
) -> None:
    """Every example manifest is accepted by the API server against the CRD (schema and CEL)."""
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout
