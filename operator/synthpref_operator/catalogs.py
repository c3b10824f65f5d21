"""A run's models from its ModelCatalog: taken once, when the run is admitted, then frozen; pure.

The reconcile pass (`reconcile.Reconciler`) observes the ModelCatalog that `spec.modelCatalog`
names (`observe.observe_catalog`) and calls `catalog_pass` before anything else reads the
spec's models. The first time the names resolve (`synthpref.catalog.resolve_models`) the whole
model list goes into `status.catalog` and the pass ends with that status write, so every Job is
made from the frozen list, never from a catalog read later. From then on the run's models come
from its status only; an edit of the catalog moves `status.catalog.seenGeneration` and posts a
`CatalogChanged` Event, nothing more. A catalog that is missing, unreadable, or does not have
the names the run picks holds the run (the Admitted condition, as `admission.py` does) until it
is fixed; the operator watches catalogs, so a fix is seen at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from synthpref.catalog import (
    CATALOG_KIND,
    CatalogError,
    ModelCatalogSpec,
    resolve_models,
    with_models,
)
from synthpref.spec import PreferenceRunSpec, validation_problems
from synthpref_operator.admission import Problem
from synthpref_operator.planner import Event
from synthpref_operator.status import CatalogStatus, Reason, RunStatus

PATH = "spec.modelCatalog"
CATALOG_CHANGED = "CatalogChanged"
CATALOG_RESOLVED = "CatalogResolved"


@dataclass(frozen=True)
class CatalogFacts:
    """What the pass saw of the ModelCatalog a run names."""

    found: bool
    generation: int = 0
    document: object = None  # the catalog's spec as the API server returned it
    error: str | None = None  # why it could not be read (e.g. "HTTP 403"), if it could not


@dataclass(frozen=True)
class CatalogOutcome:
    """`spec`: the run's spec with its whole model list (None: not this pass); `status` and
    `events`: what to write; `problem`: why the run is held, if it is."""

    spec: PreferenceRunSpec | None
    status: RunStatus
    events: list[Event]
    problem: Problem | None = None


def _parse(document: object, name: str) -> ModelCatalogSpec:
    try:
        return ModelCatalogSpec.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(validation_problems(error))
        raise CatalogError(f"{CATALOG_KIND} {name!r} is invalid: {problems}") from None


def catalog_pass(
    spec: PreferenceRunSpec, previous: RunStatus, facts: CatalogFacts, namespace: str
) -> CatalogOutcome:
    """Resolve (first time) or reuse (afterwards) the run's models; see the module doc."""
    ref = spec.model_catalog
    assert ref is not None, "only for runs with spec.modelCatalog"
    frozen = previous.catalog
    if frozen is not None and frozen.name == ref.name:
        return _reuse(spec, previous, frozen, facts)
    if facts.error is not None or not facts.found:
        why = (
            f"cannot be read ({facts.error}); check the operator's RBAC"
            if facts.error
            else (
                f"does not exist in namespace {namespace}; create it (kubectl apply -n {namespace} "
                "-f CATALOG.yaml)"
            )
        )
        message = f"{PATH}.name: {CATALOG_KIND} {ref.name!r} {why}"
        return CatalogOutcome(None, previous, [], Problem(Reason.CATALOG_NOT_FOUND, PATH, message))
    try:
        resolved = resolve_models(spec, _parse(facts.document, ref.name))
    except CatalogError as error:
        return CatalogOutcome(None, previous, [], Problem(Reason.CATALOG_INVALID, PATH, str(error)))
    taken = CatalogStatus(
        name=ref.name,
        generation=facts.generation,
        seen_generation=facts.generation,
        models=resolved.models,
    )
    names = ", ".join(taken.names())
    event = Event(
        "Normal",
        CATALOG_RESOLVED,
        f"took {len(taken.models)} models from {CATALOG_KIND} {ref.name!r} (generation "
        f"{facts.generation}): {names}",
    )
    return CatalogOutcome(None, previous.model_copy(update={"catalog": taken}), [event])


def _reuse(
    spec: PreferenceRunSpec, previous: RunStatus, frozen: CatalogStatus, facts: CatalogFacts
) -> CatalogOutcome:
    try:
        resolved = with_models(spec, frozen.models)
    except ValidationError as error:  # e.g. mix.responsesPerPrompt raised past the models
        message = f"with the models taken from {CATALOG_KIND} {frozen.name!r}: " + "; ".join(
            validation_problems(error)
        )
        return CatalogOutcome(None, previous, [], Problem(Reason.CATALOG_INVALID, PATH, message))
    if not facts.found or facts.generation in (0, frozen.seen_generation):
        return CatalogOutcome(resolved, previous, [])
    seen = frozen.model_copy(update={"seen_generation": facts.generation})
    event = Event(
        "Normal",
        CATALOG_CHANGED,
        f"{CATALOG_KIND} {frozen.name!r} changed (generation {facts.generation}) after this run "
        f"took its models from generation {frozen.generation}; the run keeps them: "
        + ", ".join(frozen.names()),
    )
    return CatalogOutcome(resolved, previous.model_copy(update={"catalog": seen}), [event])
