"""ModelCatalog: a shared list of answering models that runs pick from (`spec.modelCatalog`).

The pydantic models here are the one source of the ModelCatalog CRD (`synthpref_operator.crd`).
`resolve_models` is the one place a run's catalog reference becomes its list of models: the
operator calls it when it admits a run (and freezes the result into the run's status), the CLI
(`synthpref.cli.load`, `--catalog FILE`) before any stage runs. Every stage then sees a plain
spec whose `models` is the whole resolved list and whose `modelCatalog` is unset, so no stage
knows about catalogs. Pure: no I/O besides `load_catalog` reading one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthpref.errors import SynthprefError
from synthpref.spec import (
    API_GROUP,
    API_VERSION,
    ModelSpec,
    ObjectMeta,
    PreferenceRunSpec,
    SpecModel,
    describe_documents,
    validation_problems,
)

CATALOG_KIND = "ModelCatalog"


class CatalogError(SynthprefError, ValueError):
    """A catalog that cannot be read, or a run's catalog reference that cannot be resolved; the
    message names the catalog, the run's field and the offending names."""


class ModelCatalogSpec(SpecModel):
    """Models runs may pick by name; each entry is what a run's spec.models[] entry is."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.models.all(m, self.models.exists_one(n, n.name == m.name))",
                    "message": "spec.models: names must be unique",
                }
            ]
        }
    )

    description: str | None = Field(
        default=None, max_length=1024, description="What the catalog is for."
    )
    models: list[ModelSpec] = Field(
        min_length=1, max_length=256, description="The catalog's models, each under its name."
    )

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"names must be unique, repeated: {duplicates}")
        return value

    def names(self) -> list[str]:
        return [m.name for m in self.models]


class ModelCatalogManifest(BaseModel):
    """A ModelCatalog manifest, as a user would `kubectl apply` it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: Literal["ModelCatalog"]
    metadata: ObjectMeta
    spec: ModelCatalogSpec

    @field_validator("api_version")
    @classmethod
    def _known_version(cls, value: str) -> str:
        expected = f"{API_GROUP}/{API_VERSION}"
        if value != expected:
            raise ValueError(f"must be {expected!r} (got {value!r})")
        return value


def parse_catalog(document: Any, source: str) -> ModelCatalogManifest:
    """Validate one parsed YAML/JSON document as a ModelCatalog manifest."""
    try:
        return ModelCatalogManifest.model_validate(document)
    except ValidationError as error:
        problems = "\n".join(f"  {p}" for p in validation_problems(error))
        raise CatalogError(f"{source}: invalid {CATALOG_KIND}:\n{problems}") from None


def load_catalog(path: str | Path, name: str) -> ModelCatalogSpec:
    """The ModelCatalog called `name` in a YAML file (which may hold other documents)."""
    source = str(path)
    try:
        documents = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
    except OSError as error:
        raise CatalogError(f"{source}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise CatalogError(f"{source}: not valid YAML: {error}") from None
    catalogs = [
        parse_catalog(d, source)
        for d in documents
        if isinstance(d, dict) and d.get("kind") == CATALOG_KIND
    ]
    for catalog in catalogs:
        if catalog.metadata.name == name:
            return catalog.spec
    if catalogs:
        found = ", ".join(c.metadata.name for c in catalogs)
        raise CatalogError(
            f"{source}: no {CATALOG_KIND} named {name!r} (the run's spec.modelCatalog.name); "
            f"the file has: {found}"
        )
    raise CatalogError(
        f"{source}: no {CATALOG_KIND} in this file (it has: {describe_documents(documents)}): "
        f"--catalog takes the file that defines {CATALOG_KIND} {name!r} (the run's "
        "spec.modelCatalog.name), and the run's own file comes first: RUN.yaml --catalog FILE"
    )


def _unknown(names: Sequence[str], known: Sequence[str]) -> list[str]:
    return [n for n in names if n not in known]


def with_models(spec: PreferenceRunSpec, models: Sequence[ModelSpec]) -> PreferenceRunSpec:
    """The spec with `models` as its whole model list and no catalog reference, validated as a
    spec written that way would be (unique names, enough models, onPolicyModel among them)."""
    document = spec.model_dump(by_alias=True, exclude={"model_catalog"})
    document["models"] = [m.model_dump(by_alias=True) for m in models]
    return PreferenceRunSpec.model_validate(document)


def resolve_models(spec: PreferenceRunSpec, catalog: ModelCatalogSpec) -> PreferenceRunSpec:
    """The run's spec with the models it picks from `catalog` (spec.modelCatalog: every entry,
    or those in `include`, less those in `exclude`, in the catalog's order) followed by its
    inline spec.models. A spec without a catalog reference is returned as it is."""
    ref = spec.model_catalog
    if ref is None:
        return spec
    where = f"{CATALOG_KIND} {ref.name!r}"
    known = catalog.names()
    problems = [
        f"spec.modelCatalog.{field} names {unknown} that {where} does not have"
        for field, unknown in (
            ("include", _unknown(ref.include, known)),
            ("exclude", _unknown(ref.exclude, known)),
        )
        if unknown
    ]
    if problems:
        raise CatalogError(f"{'; '.join(problems)} (it has: {', '.join(known)})")
    chosen = [
        m
        for m in catalog.models
        if (not ref.include or m.name in ref.include) and m.name not in ref.exclude
    ]
    clashes = [m.name for m in spec.models if m.name in {c.name for c in chosen}]
    if clashes:
        raise CatalogError(
            f"spec.models: {clashes} also picked from {where}; rename the inline model or add "
            "it to spec.modelCatalog.exclude"
        )
    models = [*chosen, *spec.models]
    if not models:
        raise CatalogError(f"spec.modelCatalog picks no model from {where} (it has: {known})")
    try:
        return with_models(spec, models)
    except ValidationError as error:
        names = ", ".join(m.name for m in models)
        raise CatalogError(
            f"with the models picked from {where} ({names}): "
            + "; ".join(validation_problems(error))
        ) from None
