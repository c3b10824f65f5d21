"""The CustomResourceDefinitions (PreferenceRun, ModelCatalog), generated from the pydantic models.

`synthpref operator crd --sync` (see `cli.py`) writes the checked-in copies (`CHECKED_IN`: the
single source in `crds/` and the Helm chart's `charts/synthpref/crds/`); a unit test fails when
any differs from what the models give. Pure: models in, YAML out.

Pydantic's JSON schema is turned into a Kubernetes *structural* schema: `$ref`s inlined,
`Optional[X]` becomes X (absent means unset), `const` becomes a one-value enum, numeric
`exclusiveMinimum` takes the OpenAPI v3.0 boolean form, free-form maps keep unknown fields, and
defaults of nested objects become `{}` so the API server applies the nested defaults itself.
CEL rules come from the models' `json_schema_extra` (`x-kubernetes-validations`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from synthpref.catalog import CATALOG_KIND, ModelCatalogSpec
from synthpref.spec import API_GROUP, API_VERSION, KIND, PreferenceRunSpec
from synthpref_operator.status import RunStatus

PLURAL = "preferenceruns"
SINGULAR = "preferencerun"
SHORT_NAMES = ["prun"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"
CRD_PATH = f"crds/{CRD_NAME}.yaml"
CHART_CRD_PATH = f"charts/synthpref/crds/{CRD_NAME}.yaml"
CRD_PATHS = (CRD_PATH, CHART_CRD_PATH)  # relative to the repository root
CATALOG_PLURAL = "modelcatalogs"
CATALOG_SHORT_NAMES = ["mcat"]
CATALOG_CRD_NAME = f"{CATALOG_PLURAL}.{API_GROUP}"
CATALOG_CRD_PATH = f"crds/{CATALOG_CRD_NAME}.yaml"
CATALOG_CRD_PATHS = (CATALOG_CRD_PATH, f"charts/synthpref/crds/{CATALOG_CRD_NAME}.yaml")

_DROP_KEYS = frozenset({"title", "$defs", "additionalProperties"})


class _WithFactoryDefaults(GenerateJsonSchema):
    """Emit defaults made by `default_factory` too (objects as `{}`: see the module doc)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            value = schema["default_factory"]()  # type: ignore[call-arg]
            return {} if isinstance(value, BaseModel) else value
        return schema.get("default", NoDefault)


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic JSON-schema node as a structural OpenAPI v3 schema node."""
    if isinstance(node, list):
        return [structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # The field's own keys (description, default) win over the referenced model's.
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {options} in a structural schema")
        node = {**options[0], **node}
        if "$ref" in node:
            return structural(node, defs)
        if node.get("default", 0) is None:
            del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    if node.get("type") == "object" and node.get("additionalProperties") is True:
        out["x-kubernetes-preserve-unknown-fields"] = True
    for key, value in node.items():
        if key in _DROP_KEYS:
            if key == "additionalProperties" and isinstance(value, dict):
                out[key] = structural(value, defs)
            continue
        if key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items",):
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a pydantic model."""
    raw = _schema_of(model)
    result: dict[str, Any] = structural(raw, raw.get("$defs", {}))
    return result


def _definition(
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    properties: dict[str, Any],
    columns: list[dict[str, Any]],
    status: bool,
) -> dict[str, Any]:
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            **properties,
        },
    }
    version: dict[str, Any] = {"name": API_VERSION, "served": True, "storage": True}
    if status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["synthpref"],
            },
            "versions": [version],
        },
    }


def crd() -> dict[str, Any]:
    """The PreferenceRun CRD as a dict."""
    status_schema = model_schema(RunStatus)
    status_schema["description"] = "Observed state, written by the operator."
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Progress",
            "type": "string",
            "jsonPath": ".status.progress",
            "description": "Work units done/total: 1 for prepare, then per prompt shard one for "
            "each answering model, one for mix, one for the judge and one for parse (total = 1 + "
            "shards x (models + 3): 22/22 is 3 shards and 4 models, all done).",
        },
        {"name": "Pairs", "type": "integer", "jsonPath": ".status.result.pairs"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Judge", "type": "string", "jsonPath": ".spec.judge.backend", "priority": 1},
        {"name": "Cost", "type": "string", "jsonPath": ".status.cost", "priority": 1},
        {
            "name": "Blocked",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Blocked")].reason',
            "priority": 1,
        },
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    ]
    return _definition(
        KIND,
        PLURAL,
        SHORT_NAMES,
        "A PreferenceRun makes a preference dataset: prompts are answered by several models, "
        "the answers rated by a judge, and the ratings binarized into chosen/rejected pairs.",
        {"spec": model_schema(PreferenceRunSpec), "status": status_schema},
        columns,
        status=True,
    )


def catalog_crd() -> dict[str, Any]:
    """The ModelCatalog CRD as a dict (no status: the operator only reads catalogs)."""
    # A column shows one value (the API server's table takes a JSONPath's first result), so
    # the names of the models are not a column: `kubectl get mcat NAME -o yaml` lists them.
    columns: list[dict[str, Any]] = [
        {"name": "Description", "type": "string", "jsonPath": ".spec.description"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _definition(
        CATALOG_KIND,
        CATALOG_PLURAL,
        CATALOG_SHORT_NAMES,
        "A ModelCatalog lists answering models, each with the settings of a PreferenceRun's "
        "spec.models[] entry; runs in its namespace pick from it by name (spec.modelCatalog).",
        {"spec": model_schema(ModelCatalogSpec)},
        columns,
        status=False,
    )


HEADER = (
    "# Generated by `synthpref operator crd --sync` from the pydantic models in\n"
    "# pipeline/synthpref/spec.py and operator/synthpref_operator/status.py. Do not edit.\n"
)


def _yaml(definition: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(definition, sort_keys=False, width=100, allow_unicode=True)


def crd_yaml() -> str:
    """The PreferenceRun CRD as the YAML text checked in at `CRD_PATH`."""
    return _yaml(crd())


def catalog_crd_yaml() -> str:
    """The ModelCatalog CRD as the YAML text checked in at `CATALOG_CRD_PATH`."""
    return _yaml(catalog_crd())


# Every checked-in CRD file and the text it must hold.
CHECKED_IN: dict[str, Callable[[], str]] = {
    **dict.fromkeys(CRD_PATHS, crd_yaml),
    **dict.fromkeys(CATALOG_CRD_PATHS, catalog_crd_yaml),
}
