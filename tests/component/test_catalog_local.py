"""A run that takes its models from a ModelCatalog, run locally with `--catalog FILE`.

Through the real `synthpref` console script, with openai-backend models answered by the
OpenAI-compatible test server: the catalog's picked models (and the inline one) answer, the
left-out ones never do, and every stage command resolves the catalog alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthpref import layout
from synthpref.storage import LocalStorage
from tests.support.cli import one_error, synthpref
from tests.support.openai_server import DEFAULT_API_KEY, OpenAIServer

ENV = {"ANSWER_KEY": DEFAULT_API_KEY, "JUDGE_KEY": DEFAULT_API_KEY}


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def openai_model(name: str, server: OpenAIServer, seed: int) -> dict[str, Any]:
    return {
        "name": name,
        "backend": "openai",
        "path": name,
        "sampling": {"maxTokens": 16, "seed": seed},
        "openai": {"baseUrl": server.base_url, "apiKeyEnv": "ANSWER_KEY", "maxRetries": 0},
    }


def write_files(root: Path, server: OpenAIServer, selection: dict[str, Any]) -> tuple[str, str]:
    """(run file, catalog file) of a run picking `selection` from catalog `pool` (a, b, c)."""
    (root / "prompts").mkdir()
    lines = [json.dumps({"text": f"Question {i}: why?"}) for i in range(4)]
    (root / "prompts" / "p.jsonl").write_text("\n".join(lines) + "\n")
    catalog = {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "ModelCatalog",
        "metadata": {"name": "pool"},
        "spec": {"models": [openai_model(n, server, i) for i, n in enumerate("abc")]},
    }
    run = {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "PreferenceRun",
        "metadata": {"name": "from-catalog"},
        "spec": {
            "prompts": {"uri": str(root / "prompts"), "shardSize": 2},
            "storage": {"uri": str(root / "store")},
            "modelCatalog": {"name": "pool", **selection},
            "models": [openai_model("mine", server, 9)],
            "mix": {"responsesPerPrompt": 2, "seed": 1},
            "judge": {
                "backend": "openai",
                "model": "judge-1",
                "pollIntervalSeconds": 0.01,
                "openai": {"baseUrl": server.base_url, "apiKeyEnv": "JUDGE_KEY"},
            },
        },
    }
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    return str(root / "run.yaml"), str(root / "catalog.yaml")


def test_local_run_uses_the_picked_models(tmp_path: Path, server: OpenAIServer) -> None:
    run_file, catalog_file = write_files(tmp_path, server, {"exclude": ["b"]})
    result = synthpref(
        "run", run_file, "--local", "--no-progress", "--catalog", catalog_file, env=ENV
    )
    assert result.returncode == 0, result.stderr
    store = LocalStorage(tmp_path / "store")
    for model in ("a", "c", "mine"):
        assert store.committed(layout.generation_shard(model, 0)) is not None
    assert store.list("generations/b/") == []
    pairs = [
        json.loads(line)
        for key in store.list("dataset/")
        if key.endswith(".jsonl")
        for line in store.read_bytes(key).decode().splitlines()
    ]
    assert pairs
    used = {p["chosen_model"] for p in pairs} | {p["rejected_model"] for p in pairs}
    assert used <= {"a", "c", "mine"}


def test_stage_commands_resolve_the_catalog(tmp_path: Path, server: OpenAIServer) -> None:
    run_file, catalog_file = write_files(tmp_path, server, {"include": ["a", "c"]})
    result = synthpref("prepare", run_file, "--catalog", catalog_file, env=ENV)
    assert result.returncode == 0, result.stderr
    result = synthpref("generate", run_file, "--model", "c", "--catalog", catalog_file, env=ENV)
    assert result.returncode == 0, result.stderr
    assert LocalStorage(tmp_path / "store").committed(layout.generation_shard("c", 0))
    # b is in the catalog but not picked: the run has no such model.
    result = synthpref("generate", run_file, "--model", "b", "--catalog", catalog_file, env=ENV)
    assert result.returncode != 0
    assert "no model named 'b'" in result.stderr
    assert "['a', 'c', 'mine']" in result.stderr
    # The estimate counts the run's models as resolved: the picked ones and the inline one.
    result = synthpref("estimate", run_file, "--catalog", catalog_file, "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    assert [m["name"] for m in json.loads(result.stdout)["models"]] == ["a", "c", "mine"]


@pytest.mark.parametrize(
    ("selection", "catalog_given", "needles"),
    [
        ({}, False, ["spec.modelCatalog", "'pool'", "--catalog FILE"]),
        ({"include": ["a", "zz"]}, True, ["run.yaml", "include", "['zz']", "it has: a, b, c"]),
    ],
)
def test_catalog_errors_are_one_line(
    tmp_path: Path,
    server: OpenAIServer,
    selection: dict[str, Any],
    catalog_given: bool,
    needles: list[str],
) -> None:
    run_file, catalog_file = write_files(tmp_path, server, selection)
    extra = ["--catalog", catalog_file] if catalog_given else []
    result = synthpref("mix", run_file, *extra, env=ENV)
    assert result.returncode == 1
    message = one_error(result)
    for needle in needles:
        assert needle in message
    assert not (tmp_path / "store").exists()
