"""The Helm chart's files without helm: Chart.yaml matches the package version, values.yaml and
values.schema.json describe the same values (every value typed, documented by a comment, and
closed to unknown keys), and the worker defaults equal the operator's own defaults."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from synthpref_operator.settings import DEFAULT_JOB_CREATIONS, DEFAULT_WORKERS, OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "synthpref"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):")


def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text()))


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (#/definitions/NAME)."""
    while "$ref" in node:
        ref = str(node["$ref"])
        assert ref.startswith("#/definitions/"), ref
        node = root["definitions"][ref.removeprefix("#/definitions/")]
    return node


def defined_nodes(
    node: dict[str, Any], root: dict[str, Any], prefix: str = ""
) -> dict[str, dict[str, Any]]:
    """Dotted path -> schema of every property the schema names (not map entries)."""
    out: dict[str, dict[str, Any]] = {}
    for key, child in resolve(node, root).get("properties", {}).items():
        path = f"{prefix}{key}"
        out[path] = resolve(child, root)
        out |= defined_nodes(child, root, f"{path}.")
    return out


def closed_objects(node: dict[str, Any], root: dict[str, Any], path: str = "") -> list[str]:
    """Paths of objects with named properties that still accept unknown keys."""
    node = resolve(node, root)
    out = []
    if "properties" in node and node.get("additionalProperties") is not False:
        out.append(path or "<top>")
    for key, child in node.get("properties", {}).items():
        out += closed_objects(child, root, f"{path}.{key}".lstrip("."))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += closed_objects(node[key], root, f"{path}[{key}]")
    return out


def commented_paths(text: str) -> dict[str, bool]:
    """Dotted path of every key in values.yaml -> whether a comment line is right above it."""
    out: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            out[".".join(k for _, k in stack)] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    return out


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "synthpref"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == project["version"]


def test_every_value_is_typed_and_every_typed_value_has_a_default() -> None:
    root = schema()
    typed = defined_nodes(root, root)
    objects = {path for path, node in typed.items() if "properties" in node}
    in_values = set(commented_paths((CHART / "values.yaml").read_text()))
    # Keys of objects the schema spells out (not free-form maps or Kubernetes objects).
    governed = {p for p in in_values if "." not in p or p.rsplit(".", 1)[0] in objects}
    assert governed - set(typed) == set()  # a value the schema does not know
    assert set(typed) - in_values == set()  # a typed value without a default


def test_every_value_is_documented() -> None:
    root = schema()
    documented = commented_paths((CHART / "values.yaml").read_text())
    missing = sorted(p for p in defined_nodes(root, root) if not documented.get(p))
    assert missing == []


def test_schema_objects_reject_unknown_keys() -> None:
    root = schema()
    assert root["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert closed_objects(root, root) == []


def test_schema_enums_and_bounds() -> None:
    props = schema()["properties"]
    operator = props["operator"]["properties"]
    assert operator["logLevel"]["enum"] == ["debug", "info", "warning", "error"]
    assert operator["logFormat"]["enum"] == ["json", "text"]
    port = props["metrics"]["properties"]["port"]
    assert (port["type"], port["minimum"], port["maximum"]) == ("integer", 1, 65535)
    limits = props["security"]["properties"]["limits"]["properties"]
    # The operator's own lower bounds (OperatorSettings' ge=), so a schema-valid value parses.
    assert {k: (v["type"], v["minimum"]) for k, v in limits.items()} == {
        "maxModels": ("integer", 1),
        "maxReplicas": ("integer", 1),
        "maxShards": ("integer", 1),
        "maxStorageObjectBytes": ("integer", 1024),
        "maxListedKeys": ("integer", 1000),
    }
    assert props["replicaCount"] == {**props["replicaCount"], "type": "integer", "minimum": 0}


def test_worker_defaults_are_the_operators() -> None:
    workers = values()["workers"]
    defaults = OperatorSettings()
    assert workers["image"] == defaults.image
    assert workers["cpuImage"] == defaults.cpu_image
    assert workers["imagePullPolicy"] == defaults.image_pull_policy
    assert workers["gpuResource"] == defaults.gpu_resource
    assert workers["gpuNodeSelector"] == defaults.gpu_node_selector
    assert workers["gpuTolerations"] == defaults.gpu_tolerations
    assert workers["env"] == defaults.extra_env
    assert workers["runAsUser"] == defaults.worker_user_id


def test_security_defaults_are_the_operators() -> None:
    v = values()
    defaults = OperatorSettings()
    assert v["security"] == {
        "allowedEndpoints": defaults.allowed_endpoints,
        "allowedImagePrefixes": defaults.allowed_image_prefixes,
        "allowedServiceAccounts": defaults.allowed_service_accounts,
        "operatorApiKeyNamespaces": defaults.operator_api_key_namespaces,
        "operatorStorage": defaults.operator_storage,
        "allowLocalPaths": defaults.allow_local_paths,
        "allowedPriorityClasses": defaults.allowed_priority_classes,
        "allowedTolerations": defaults.allowed_tolerations,
        "allowedNodeLabels": defaults.allowed_node_labels,
        "limits": {
            "maxModels": defaults.max_models,
            "maxReplicas": defaults.max_replicas,
            "maxShards": defaults.max_shards,
            "maxStorageObjectBytes": defaults.max_storage_object_bytes,
            "maxListedKeys": defaults.max_listed_keys,
        },
    }
    assert v["security"]["allowedEndpoints"] == ["https://api.openai.com/v1"]
    # Nothing widened by default: no operator credentials for runs, no local paths.
    security = v["security"]
    assert security["operatorApiKeyNamespaces"] == [] and security["operatorStorage"] == {}
    assert security["allowLocalPaths"] is False
    assert v["rbac"]["secretNames"] == defaults.secret_names
    assert v["operator"]["deletionTimeoutSeconds"] == defaults.deletion_timeout_seconds == 600


def test_concurrency_defaults_are_the_operators() -> None:
    operator = values()["operator"]
    assert operator["workers"] == DEFAULT_WORKERS
    assert operator["jobCreations"] == DEFAULT_JOB_CREATIONS


def test_documented_defaults() -> None:
    v = values()
    assert v["replicaCount"] == 1
    assert v["leaderElection"] == {
        "enabled": True,
        "leaseDurationSeconds": 15,
        "renewDeadlineSeconds": 10,
        "retryPeriodSeconds": 2,
    }
    assert v["clusterWide"] is False and v["watchNamespaces"] == []
    assert v["image"] == {
        "repository": "ghcr.io/synthpref/operator",
        "tag": "",
        "pullPolicy": "IfNotPresent",
    }
    assert v["operator"] == {
        "reconcileIntervalSeconds": 10,
        "workers": 64,
        "jobCreations": 64,
        "logLevel": "info",
        "logFormat": "json",
        "env": [],
        "deletionTimeoutSeconds": 600,
    }
    assert v["metrics"]["enabled"] is True and v["metrics"]["port"] == 8080
    assert v["metrics"]["bindAddress"] == "0.0.0.0"
    assert v["metrics"]["networkPolicy"] == {"enabled": False, "from": []}
    assert v["rbac"] == {"create": True, "secretNames": []}
    assert v["serviceAccount"]["create"] is True
