"""ModelCatalog against the real control plane: the CRD takes the shipped catalog (server-side
dry run), and the operator takes a run's models from its catalog once, at admission.

A run whose catalog does not exist yet is held; creating the catalog (the operator watches
catalogs) resolves it and freezes the models into the run's status; an edit of the catalog
afterwards posts a CatalogChanged Event and changes nothing else: the run's Jobs, and the spec
its workers read, have the models it took (openai-backend models answered by the test server).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from synthpref_operator.crd import CATALOG_CRD_NAME, CATALOG_CRD_PATH
from synthpref_operator.names import MANIFEST_ENV
from tests.integration import test_operator_admission as admission
from tests.integration import test_operator_run as base
from tests.support.polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
Env = base.Env
env = base.env  # the fixture, shared with test_operator_run.py
MODELS_TAKEN = ("alpha", "beta", "gamma")  # base.MODELS less delta


def install_catalog_crd(kubectl: Callable[..., Any]) -> None:
    result = kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / CATALOG_CRD_PATH),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kubectl("wait", "--for=condition=Established", "--timeout=300s", f"crd/{CATALOG_CRD_NAME}")


def catalog(env: Env, name: str, models: dict[str, str]) -> dict[str, Any]:
    """A ModelCatalog of openai-backend models (name -> path) answered by the test server."""
    endpoint = {
        "baseUrl": env.server.base_url,
        "apiKeyEnv": "ANSWER_KEY",
        "apiKeySecret": {"name": "openai", "key": "token"},
    }
    return {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "ModelCatalog",
        "metadata": {"name": name},
        "spec": {
            "description": "test models",
            "models": [
                {
                    "name": model,
                    "backend": "openai",
                    "path": path,
                    "sampling": {"maxTokens": 16, "seed": i},
                    "openai": endpoint,
                }
                for i, (model, path) in enumerate(models.items())
            ],
        },
    }


def test_shipped_catalog_passes_server_side_dry_run(
    kubectl: Callable[..., Any], namespace: str
) -> None:
    install_catalog_crd(kubectl)
    path = ROOT / "examples" / "catalogs" / "tulu3.yaml"
    result = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    assert "modelcatalog.synthpref.dev/tulu3 created (server dry run)" in result.stdout
    # The CRD's own rules: unique names, and entries are run models (path required).
    document = {
        "apiVersion": "synthpref.dev/v1alpha1",
        "kind": "ModelCatalog",
        "metadata": {"name": "twice"},
        "spec": {"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]},
    }
    refused = kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(document),
        check=False,
    )
    assert refused.returncode != 0 and "names must be unique" in refused.stderr


def worker_models(job: Any) -> tuple[list[str], dict[str, Any]]:
    """The model names in the spec a Job's workers read, and that spec."""
    (container,) = job.spec.template.spec.containers
    manifest = json.loads(next(e.value for e in container.env if e.name == MANIFEST_ENV))
    spec: dict[str, Any] = manifest["spec"]
    return [m["name"] for m in spec["models"]], spec


def test_run_takes_models_from_catalog_once(env: Env) -> None:
    install_catalog_crd(env.kubectl)
    pool = catalog(env, "pool", {m: m for m in base.MODELS})  # alpha, beta, gamma, delta
    operator = env.operator()
    try:
        # Before the catalog exists: held, saying which catalog is missing.
        run = env.manifest("cat", models=[], modelCatalog={"name": "pool", "exclude": ["delta"]})
        run["spec"]["mix"]["responsesPerPrompt"] = 3
        env.apply(run)
        held = admission.wait_admitted(env, "cat", "False", "CatalogNotFound")
        assert "ModelCatalog 'pool' does not exist" in held["message"]
        assert env.jobs() == {}

        # A name the catalog does not have is an error naming it.
        bad = env.manifest("bad", models=[], modelCatalog={"name": "pool", "include": ["nope"]})
        env.apply(bad)
        env.apply(pool)
        invalid = admission.wait_admitted(env, "bad", "False", "CatalogInvalid")
        assert "spec.modelCatalog.include names ['nope']" in invalid["message"]

        # Created: the run takes alpha, beta, gamma and freezes them into its status.
        def taken() -> dict[str, Any] | None:
            found: dict[str, Any] | None = (env.run("cat").get("status") or {}).get("catalog")
            return found

        frozen = wait_for(taken, 60, "status.catalog of run cat")
        assert [m["name"] for m in frozen["models"]] == ["alpha", "beta", "gamma"]
        assert frozen["generation"] == frozen["seenGeneration"] == 1

        # Edited at once (gamma dropped, alpha pointed elsewhere): an Event, nothing else.
        edited = catalog(env, "pool", {"alpha": "delta", "beta": "beta", "delta": "delta"})
        env.apply(edited)
        changed = wait_for(
            lambda: admission.events(env, "cat", "CatalogChanged"), 60, "CatalogChanged Event"
        )
        assert "keeps them: alpha, beta, gamma" in changed[0].message
        done = env.wait_phase("cat", {"Succeeded", "Failed"})
    finally:
        operator.stop()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    after = done["status"]["catalog"]
    assert after["models"] == frozen["models"] and after["seenGeneration"] == 2
    jobs = env.jobs()
    assert sorted(j for j in jobs if j.startswith("cat-")) == sorted(
        ["cat-prepare", "cat-mix", "cat-parse"] + [f"cat-generate-{m}" for m in MODELS_TAKEN]
    )
    names, spec = worker_models(jobs["cat-generate-alpha"])
    assert names == list(MODELS_TAKEN) and "modelCatalog" not in spec
    assert spec["models"][0]["path"] == "alpha"  # as taken, not as edited
    assert len(admission.events(env, "cat", "CatalogResolved")) == 1
    assert len(admission.events(env, "cat", "CatalogChanged")) == 1
    table = env.kubectl("get", "mcat", "-n", env.namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "DESCRIPTION", "AGE"]
    assert table[1].split()[:3] == ["pool", "test", "models"]
