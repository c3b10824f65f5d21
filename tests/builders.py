"""Small builders for specs and manifests used across test tiers (instead of YAML walls)."""

from __future__ import annotations

from typing import Any

from synthpref.spec import PreferenceRunSpec


def spec_dict(
    prompts_uri: str = "prompts/",
    storage_uri: str = "store/",
    models: int = 4,
    **sections: Any,
) -> dict[str, Any]:
    """A valid spec as a plain dict (camelCase, as in YAML); `sections` replace top-level keys."""
    spec: dict[str, Any] = {
        "prompts": {"uri": prompts_uri, "shardSize": 2},
        "storage": {"uri": storage_uri},
        "models": [{"name": f"m{i}", "path": f"/models/m{i}"} for i in range(models)],
    }
    spec.update(sections)
    return spec


def manifest_dict(spec: dict[str, Any] | None = None, name: str = "test-run") -> dict[str, Any]:
    return {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "PreferenceRun",
        "metadata": {"name": name},
        "spec": spec if spec is not None else spec_dict(),
    }


def make_spec(**kwargs: Any) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(spec_dict(**kwargs))
