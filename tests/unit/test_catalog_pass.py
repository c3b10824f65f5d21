"""The operator's catalog step: a run's models taken once from its ModelCatalog, then frozen."""

from __future__ import annotations

from typing import Any

import pytest

from synthpref.spec import PreferenceRunSpec
from synthpref_operator.catalogs import CatalogFacts, catalog_pass
from synthpref_operator.planner import Artifacts, Observed, plan
from synthpref_operator.status import CatalogStatus, Reason, RunStatus


def entry(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "path": f"org/{name}", **fields}


def run_spec(**selection: Any) -> PreferenceRunSpec:
    return PreferenceRunSpec.model_validate(
        {
            "prompts": {"uri": "/p"},
            "storage": {"uri": "/s"},
            "modelCatalog": {"name": "tulu3", **selection},
            "models": [entry("mine")],
            "mix": {"responsesPerPrompt": 2},
        }
    )


def catalog(generation: int, *names: str, **fields: Any) -> CatalogFacts:
    return CatalogFacts(True, generation, {"models": [entry(n, **fields) for n in names]})


def test_first_pass_freezes_the_resolved_models_and_ends() -> None:
    outcome = catalog_pass(run_spec(exclude=["b"]), RunStatus(), catalog(3, "a", "b"), "ns")
    assert outcome.spec is None  # the pass ends with the status write: Jobs come after it
    taken = outcome.status.catalog
    assert taken is not None
    assert (taken.name, taken.generation, taken.seen_generation) == ("tulu3", 3, 3)
    assert taken.names() == ["a", "mine"]
    (event,) = outcome.events
    assert (event.type, event.reason) == ("Normal", "CatalogResolved")
    assert "a, mine" in event.message and "generation 3" in event.message


def test_later_passes_use_the_frozen_models_whatever_the_catalog_says() -> None:
    first = catalog_pass(run_spec(), RunStatus(), catalog(1, "a", "b", gpus=2), "ns").status
    # Same generation: the frozen models, no event, status unchanged.
    same = catalog_pass(run_spec(), first, catalog(1, "x", "y"), "ns")
    assert same.spec is not None and same.events == [] and same.status == first
    assert [m.name for m in same.spec.models] == ["a", "b", "mine"]
    assert same.spec.model_catalog is None and same.spec.model("a").gpus == 2
    # An edit: still the frozen models, one Event, and seenGeneration moves (no repeat).
    edited = catalog_pass(run_spec(), first, catalog(2, "x", "y"), "ns")
    assert edited.spec == same.spec
    (event,) = edited.events
    assert event.reason == "CatalogChanged" and "keeps them: a, b, mine" in event.message
    assert edited.status.catalog == first.catalog.model_copy(update={"seen_generation": 2})  # type: ignore[union-attr]
    again = catalog_pass(run_spec(), edited.status, catalog(2, "x", "y"), "ns")
    assert again.events == [] and again.spec == same.spec
    # Deleted: the run carries on.
    gone = catalog_pass(run_spec(), edited.status, CatalogFacts(False), "ns")
    assert gone.spec == same.spec and gone.events == []


@pytest.mark.parametrize(
    ("selection", "facts", "reason", "needles"),
    [
        ({}, CatalogFacts(False), Reason.CATALOG_NOT_FOUND, ["'tulu3'", "does not exist", "ns"]),
        ({}, CatalogFacts(False, error="HTTP 403"), Reason.CATALOG_NOT_FOUND, ["HTTP 403"]),
        (
            {"include": ["a", "zz"]},
            catalog(1, "a", "b"),
            Reason.CATALOG_INVALID,
            ["include", "['zz']", "it has: a, b"],
        ),
        ({}, CatalogFacts(True, 1, {"models": []}), Reason.CATALOG_INVALID, ["invalid"]),
        ({}, catalog(1, "a", "mine"), Reason.CATALOG_INVALID, ["'mine'", "exclude"]),
    ],
)
def test_a_run_is_held_until_its_catalog_resolves(
    selection: dict[str, Any], facts: CatalogFacts, reason: Reason, needles: list[str]
) -> None:
    outcome = catalog_pass(run_spec(**selection), RunStatus(), facts, "ns")
    assert outcome.spec is None and outcome.status == RunStatus() and outcome.events == []
    assert outcome.problem is not None
    assert outcome.problem.reason is reason and outcome.problem.path == "spec.modelCatalog"
    for needle in needles:
        assert needle in outcome.problem.message


def test_frozen_models_that_no_longer_fit_the_spec_hold_the_run() -> None:
    frozen = CatalogStatus(name="tulu3", generation=1, seen_generation=1)
    status = RunStatus(catalog=frozen.model_copy(update={"models": []}))
    outcome = catalog_pass(run_spec(), status, catalog(1, "a"), "ns")
    assert outcome.spec is None and outcome.problem is not None
    assert outcome.problem.reason is Reason.CATALOG_INVALID


def test_the_planner_keeps_the_frozen_models_in_every_status() -> None:
    taken = catalog_pass(run_spec(), RunStatus(), catalog(1, "a", "b"), "ns")
    resolved = catalog_pass(run_spec(), taken.status, catalog(1, "a", "b"), "ns").spec
    assert resolved is not None
    for artifacts in (Artifacts(), Artifacts(shards=2, prompts=4)):
        observed = Observed("run", 1, taken.status, artifacts=artifacts)
        _, status = plan(resolved, observed, "2026-01-01T00:00:00Z")
        assert status.catalog == taken.status.catalog
