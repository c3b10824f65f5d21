"""Spec validation: good manifests load, bad ones name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref.spec import SpecError, load_run, parse_manifest
from tests.builders import manifest_dict, spec_dict


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_defaults_and_camel_case(tmp_path: Path) -> None:
    run = load_run(write(tmp_path, manifest_dict()))
    spec = run.spec
    assert spec.prompts.shard_size == 2
    assert spec.mix.responses_per_prompt == 4
    assert spec.mix.aspects == ["helpfulness", "honesty", "instruction_following", "truthfulness"]
    assert spec.judge.backend == "openai" and spec.judge.structured_output
    assert spec.binarization.strategy == "best-vs-random"
    assert spec.models[0].sampling.max_tokens == 512


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mix": {"responsesPerPrompt": 1}}, "mix.responsesPerPrompt: Input should be greater"),
        ({"mix": {"onPolicyModel": "nope"}}, "mix.onPolicyModel: 'nope' is not one of models"),
        ({"mix": {"aspects": ["style"]}}, "mix.aspects: unknown aspect"),
        ({"judge": {"backend": "claude"}}, "judge.backend: Input should be 'openai' or 'vllm'"),
        ({"prompts": {"uri": "p", "shardSize": 0}}, "prompts.shardSize: Input should be greater"),
        ({"storage": {"uri": "s", "secretKey": "x"}}, "storage.secretKey: Extra inputs"),
        ({"binarization": {"ties": "maybe"}}, "binarization.ties: Input should be"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    path = write(tmp_path, manifest_dict(spec_dict(**change)))
    with pytest.raises(SpecError) as caught:
        load_run(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_too_few_models_for_k() -> None:
    with pytest.raises(SpecError, match="needs 4 distinct models, spec has 3"):
        parse_manifest(manifest_dict(spec_dict(models=3)))


def test_on_policy_needs_only_two_models() -> None:
    spec = spec_dict(models=2, mix={"onPolicyModel": "m0"})
    assert parse_manifest(manifest_dict(spec)).spec.mix.on_policy_model == "m0"


def test_model_names_must_be_dns_labels_and_unique() -> None:
    bad = spec_dict()
    bad["models"][0]["name"] = "Big_Model"
    with pytest.raises(SpecError, match=r"models\.0\.name: must be lowercase"):
        parse_manifest(manifest_dict(bad))
    dup = spec_dict()
    dup["models"][1]["name"] = "m0"
    with pytest.raises(SpecError, match=r"names must be unique, repeated: \['m0'\]"):
        parse_manifest(manifest_dict(dup))


def test_wrong_kind_or_version(tmp_path: Path) -> None:
    document = manifest_dict()
    document["apiVersion"] = "synthpref.dev/v1"
    with pytest.raises(SpecError, match=r"apiVersion: must be 'synthpref\.dev/v1alpha1'"):
        load_run(write(tmp_path, document))
    document["kind"] = "Job"
    with pytest.raises(SpecError, match="no document with kind: PreferenceRun"):
        load_run(write(tmp_path, document))


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_run(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_run(bad)


def test_multi_document_file_picks_the_run(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}}
    path.write_text(yaml.safe_dump_all([secret, manifest_dict(name="second")]))
    assert load_run(path).metadata.name == "second"


def vllm_judge_spec(max_tokens: int, **judge: Any) -> dict[str, Any]:
    settings = {"backend": "vllm", "model": "/models/j", "rationaleMaxChars": 40}
    return spec_dict(judge={**settings, **judge, "maxTokens": max_tokens})


def test_judge_max_tokens_must_cover_the_longest_structured_reply() -> None:
    """4 answers with N/A ratings and 40-character rationales: 305 characters of JSON plus the
    end of turn (templates.structured_reply_max_tokens)."""
    assert parse_manifest(manifest_dict(vllm_judge_spec(306))).spec.judge.max_tokens == 306
    with pytest.raises(SpecError) as caught:
        parse_manifest(manifest_dict(vllm_judge_spec(305)))
    assert "judge.maxTokens: 305 may cut off a structured reply" in str(caught.value)
    assert "a reply can take 306 tokens" in str(caught.value)
    # Free-text replies, unbounded rationales and the OpenAI judge are not sized by this rule.
    for judge in ({"structuredOutput": False}, {"rationaleMaxChars": None}, {"backend": "openai"}):
        parse_manifest(manifest_dict(vllm_judge_spec(100, **judge)))


def test_gpus_default_to_one_for_vllm_and_to_none_shown_for_openai() -> None:
    """An API-backed model loads nothing: `kubectl describe` must not show it `Gpus: 1` (the
    CRD has no default for gpus), while a vLLM model (or judge) without gpus still gets 1."""
    from synthpref.spec import JudgeSpec, ModelSpec
    from synthpref_operator.crd import crd

    api = ModelSpec(name="api", backend="openai", path="gpt")
    vllm = ModelSpec(name="local", path="/models/a")
    assert (api.gpus, api.gpu_count) == (None, 0)
    assert (vllm.gpus, vllm.gpu_count) == (None, 1)
    assert ModelSpec(name="tp", path="/m", gpus=4).gpu_count == 4
    assert ModelSpec(name="cpu", path="/m", gpus=0).gpu_count == 0
    assert "gpus" not in api.model_dump(by_alias=True, exclude_none=True)
    assert (JudgeSpec().gpu_count, JudgeSpec(backend="vllm", model="/j").gpu_count) == (0, 1)
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model = spec["properties"]["models"]["items"]["properties"]["gpus"]
    judge = spec["properties"]["judge"]["properties"]["gpus"]
    assert "default" not in model and "default" not in judge
    assert model["type"] == judge["type"] == "integer"
