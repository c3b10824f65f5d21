"""ModelCatalog: resolving a run's spec.modelCatalog into its models, and the catalog files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from synthpref.backends.vllm_offline import engine_kwargs
from synthpref.catalog import (
    CatalogError,
    ModelCatalogSpec,
    load_catalog,
    resolve_models,
)
from synthpref.spec import GenerationBackend, PreferenceRunSpec, load_run

ROOT = Path(__file__).resolve().parents[2]
TULU3 = ROOT / "examples" / "catalogs" / "tulu3.yaml"


def entry(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "path": f"org/{name}", **fields}


CATALOG = ModelCatalogSpec.model_validate({"models": [entry(n) for n in ("a", "b", "c", "d")]})


def run_spec(
    catalog: dict[str, Any] | None, models: list[str] | None = None, **extra: Any
) -> PreferenceRunSpec:
    document: dict[str, Any] = {
        "prompts": {"uri": "/p"},
        "storage": {"uri": "/s"},
        "models": [entry(n) for n in models or []],
        "mix": {"responsesPerPrompt": 2},
        **extra,
    }
    if catalog is not None:
        document["modelCatalog"] = {"name": "tulu3", **catalog}
    return PreferenceRunSpec.model_validate(document)


@pytest.mark.parametrize(
    ("selection", "inline", "expected"),
    [
        ({}, [], ["a", "b", "c", "d"]),
        ({"include": ["c", "a"]}, [], ["a", "c"]),  # the catalog's order
        ({"exclude": ["b"]}, [], ["a", "c", "d"]),
        ({"include": ["a", "b", "c"], "exclude": ["b"]}, [], ["a", "c"]),
        ({"include": ["a"]}, ["mine"], ["a", "mine"]),  # inline models come after
    ],
)
def test_resolve_picks_names(
    selection: dict[str, Any], inline: list[str], expected: list[str]
) -> None:
    resolved = resolve_models(run_spec(selection, inline), CATALOG)
    assert [m.name for m in resolved.models] == expected
    assert resolved.model_catalog is None
    assert resolved.model("a").path == "org/a"


def test_resolve_keeps_entry_settings() -> None:
    catalog = ModelCatalogSpec.model_validate(
        {"models": [entry("big", gpus=4, maxModelLen=64000), entry("small")]}
    )
    big = resolve_models(run_spec({}), catalog).model("big")
    assert (big.gpus, big.max_model_len) == (4, 64000)


def test_a_spec_without_catalog_is_unchanged() -> None:
    spec = run_spec(None, ["a", "b"])
    assert resolve_models(spec, CATALOG) is spec


@pytest.mark.parametrize(
    ("selection", "inline", "needles"),
    [
        ({"include": ["a", "zz", "yy"]}, [], ["include", "zz", "yy", "it has: a, b, c, d"]),
        ({"exclude": ["nope"]}, [], ["exclude", "nope", "'tulu3'"]),
        ({"include": ["a"]}, ["a"], ["spec.models", "'a'", "exclude"]),
        ({"include": ["a"]}, [], ["responsesPerPrompt", "needs 2", "(a)"]),
        ({"exclude": ["a", "b", "c", "d"]}, [], ["picks no model"]),
    ],
)
def test_resolve_errors_name_the_problem(
    selection: dict[str, Any], inline: list[str], needles: list[str]
) -> None:
    with pytest.raises(CatalogError) as caught:
        resolve_models(run_spec(selection, inline), CATALOG)
    for needle in needles:
        assert needle in str(caught.value)


def test_on_policy_model_is_checked_after_resolution() -> None:
    spec = run_spec({"include": ["a", "b"]}, mix={"onPolicyModel": "c"})
    with pytest.raises(CatalogError, match="onPolicyModel"):
        resolve_models(spec, CATALOG)
    spec = run_spec({"include": ["a", "c"]}, mix={"onPolicyModel": "c"})
    assert resolve_models(spec, CATALOG).mix.on_policy_model == "c"


def test_a_spec_needs_models_or_a_catalog() -> None:
    with pytest.raises(ValidationError, match="at least one model"):
        run_spec(None, [])


def test_catalog_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="repeated"):
        ModelCatalogSpec.model_validate({"models": [entry("a"), entry("a")]})


def test_load_catalog_picks_by_name(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    documents = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        {
            "apiVersion": "synthpref.dev/v1alpha1",
            "kind": "ModelCatalog",
            "metadata": {"name": "other"},
            "spec": {"models": [entry("z")]},
        },
        {
            "apiVersion": "synthpref.dev/v1alpha1",
            "kind": "ModelCatalog",
            "metadata": {"name": "tulu3"},
            "spec": {"models": [entry("a")]},
        },
    ]
    path.write_text(yaml.safe_dump_all(documents))
    assert load_catalog(path, "tulu3").names() == ["a"]
    with pytest.raises(CatalogError, match=r"no ModelCatalog named 'missing'.*other, tulu3"):
        load_catalog(path, "missing")
    path.write_text(yaml.safe_dump({**documents[2], "spec": {"models": [{"name": "a"}]}}))
    with pytest.raises(CatalogError, match=r"invalid ModelCatalog:\n  spec.models.0.path"):
        load_catalog(path, "tulu3")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml", "tulu3")


def test_tulu3_catalog_is_the_scripts_list() -> None:
    catalog = load_catalog(TULU3, "tulu3")
    assert len(catalog.models) == 27
    gpus = {m.path: m.gpu_count for m in catalog.models}
    assert gpus["meta-llama/Llama-3.1-70B-Instruct"] == 4
    assert gpus["mistralai/Mistral-7B-Instruct-v0.2"] == 1
    assert gpus["internlm/internlm2_5-1_8b-chat"] == 2
    big = catalog.models[
        [m.path for m in catalog.models].index("meta-llama/Llama-3.1-405B-Instruct-FP8")
    ]
    assert (big.gpus, big.max_model_len) == (8, 64000)
    assert not any(m.path.startswith("Meta-Llama/") for m in catalog.models)
    for model in catalog.models:
        assert model.backend is GenerationBackend.VLLM
        # Raises when engineArgs contradicts the spec (e.g. tensor_parallel_size vs gpus).
        engine_kwargs(
            tensor_parallel_size=max(model.gpu_count, 1),
            max_model_len=model.max_model_len,
            revision=model.revision,
            seed=model.sampling.seed,
            engine_args=model.engine_args,
        )


def test_catalog_run_example_resolves_and_is_in_the_readme() -> None:
    example = ROOT / "examples" / "catalog-run.yaml"
    run = load_run(example)
    resolved = resolve_models(run.spec, load_catalog(TULU3, "tulu3"))
    assert [m.name for m in resolved.models][-1] == "my-sft"
    assert len(resolved.models) == 7
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert example.read_text(encoding="utf-8") in readme
