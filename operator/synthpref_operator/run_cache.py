"""What the reconcile passes of one run keep between passes: the Secret values it read, its
storage (with the S3 client built from those values), its `ArtifactMemory`, and whether its
last pass deleted Jobs.

Used by `reconcile.Reconciler`, which forgets a run's entry when the run is deleted. Every
pass reads the metadata of the Secrets a run names (admission, `observe.observe_secrets`);
their `resourceVersion` changes with any edit of the Secret, so a value is cached under the
version it was read at and read again once the version differs; the storage is rebuilt when
anything it is built from changes (URI, endpoint, region, credential Secrets' versions). A
Secret whose version is unknown is read on every pass, as is the storage built from it. Values
stay in memory only (never logged). Passes of one run never overlap (`Reconciler.request`), so
an entry is used by one thread at a time; the table of entries is locked.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from synthpref.spec import PreferenceRunSpec
from synthpref.storage import S3Storage
from synthpref.storage_bounds import BoundedStorage
from synthpref_operator.admission import SecretFacts
from synthpref_operator.artifact_memory import RELIST_SECONDS, ArtifactMemory, Basis
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.observe import open_run_storage, secret_value
from synthpref_operator.settings import OperatorSettings

_StorageKey = tuple[Any, ...]


@dataclass
class _Entry:
    memory: ArtifactMemory
    values: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    storage_key: _StorageKey | None = None
    storage: BoundedStorage | None = None
    jobs_deleted: bool = False  # a pass deleted Jobs: the next one lists them consistently


class RunCache:
    """Per run (namespace, name): cached Secret values, storage and artifact memory."""

    def __init__(
        self,
        metrics: OperatorMetrics | None = None,
        relist_seconds: float = RELIST_SECONDS,
        settings: OperatorSettings | None = None,
    ) -> None:
        self._settings = settings if settings is not None else OperatorSettings()
        self._metrics = metrics
        self._relist_seconds = relist_seconds
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()

    def _entry(self, namespace: str, run: str) -> _Entry:
        with self._lock:
            entry = self._entries.get((namespace, run))
            if entry is None:
                entry = _Entry(ArtifactMemory(relist_seconds=self._relist_seconds))
                self._entries[(namespace, run)] = entry
            return entry

    def forget(self, namespace: str, run: str) -> None:
        with self._lock:
            self._entries.pop((namespace, run), None)

    def secret(
        self,
        core_api: Any,
        namespace: str,
        run: str,
        name: str,
        key: str,
        version: str,
    ) -> str:
        """One key of a Secret, read again only when its `version` (resourceVersion) changed
        since it was cached ("" : unknown, read every time); unless the operator's list of
        Secret names decides (`secret_names`), only while the Secret read carries the opt-in
        label (a label change changes the version)."""
        entry = self._entry(namespace, run)
        cached = entry.values.get((name, key))
        if version and cached is not None and cached[0] == version:
            return cached[1]
        require_opt_in = not self._settings.secret_names
        value = secret_value(core_api, namespace, name, key, require_opt_in=require_opt_in)
        if version:
            entry.values[(name, key)] = (version, value)
        return value

    def storage(
        self,
        spec: PreferenceRunSpec,
        core_api: Any,
        namespace: str,
        run: str,
        secrets: Mapping[str, SecretFacts],
    ) -> BoundedStorage:
        """The run's storage (reads and listings bounded by the operator's limits), built
        again only when what it is built from changed."""
        entry = self._entry(namespace, run)
        settings = spec.storage
        versions: tuple[tuple[str, str, str], ...] = ()
        if settings.credentials is not None:
            refs = (settings.credentials.access_key_id, settings.credentials.secret_access_key)
            versions = tuple(
                (r.name, r.key, (secrets.get(r.name) or SecretFacts(False)).resource_version)
                for r in refs
            )
        key: _StorageKey | None = (settings.uri, settings.endpoint_url, settings.region, versions)
        if any(not version for _, _, version in versions):
            key = None  # a Secret's version unknown: build (and read) afresh every pass
        if key is not None and entry.storage_key == key and entry.storage is not None:
            return entry.storage
        by_version = {name: version for name, _, version in versions}

        def read(name: str, secret_key: str) -> str:
            return self.secret(core_api, namespace, run, name, secret_key, by_version.get(name, ""))

        storage = open_run_storage(
            spec, core_api, namespace, read_secret=read, limits=self._settings.storage_limits()
        )
        if self._metrics is not None and isinstance(storage.inner, S3Storage):
            self._metrics.count_storage_requests(storage.inner.client)
        entry.storage_key, entry.storage = key, storage
        return storage

    def jobs_deleted(self, namespace: str, run: str) -> None:
        """A pass deleted some of the run's Jobs (a retry): the API server's cache may still
        show them for a moment, failed, which would fail the retried run again."""
        self._entry(namespace, run).jobs_deleted = True

    def fresh_jobs_needed(self, namespace: str, run: str) -> bool:
        """Whether this pass must list the run's Jobs consistently (once after a deletion)."""
        entry = self._entry(namespace, run)
        needed, entry.jobs_deleted = entry.jobs_deleted, False
        return needed

    def artifact_memory(self, namespace: str, run: str, basis: Basis) -> ArtifactMemory:
        """The run's artifact memory, forgotten first when `basis` (the run's uid, generation
        and retry annotation) changed since the last pass."""
        memory = self._entry(namespace, run).memory
        memory.rebase(basis)
        return memory
