"""What reconcile passes keep per run (`run_cache.py`): Secret values read again only when the
Secret's resourceVersion changed, the storage client rebuilt only when what it is built from
changed, and every request to a real S3 server (moto) counted by operation in the operator's
metrics."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from synthpref.spec import PreferenceRunSpec
from synthpref.storage import S3Storage
from synthpref_operator.admission import SecretFacts, SecretNotOptedInError
from synthpref_operator.metrics import OperatorMetrics
from synthpref_operator.names import LABEL_ALLOW_RUNS
from synthpref_operator.run_cache import RunCache
from synthpref_operator.settings import OperatorSettings
from tests.builders import spec_dict
from tests.support.s3 import FAKE_CREDENTIALS


@dataclass
class SecretsApi:
    """`CoreV1Api.read_namespaced_secret` over a dict of Secrets; records the reads."""

    secrets: dict[str, dict[str, str]]
    reads: list[str] = field(default_factory=list)
    opted_in: bool = True

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.reads.append(name)
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[name].items()}
        labels = {LABEL_ALLOW_RUNS: "true"} if self.opted_in else {"team": "a"}
        return SimpleNamespace(data=data, metadata=SimpleNamespace(labels=labels))


def s3_spec(uri: str, endpoint: str) -> PreferenceRunSpec:
    storage = {
        "uri": uri,
        "endpointUrl": endpoint,
        "region": "us-east-1",
        "credentials": {
            "accessKeyId": {"name": "s3", "key": "id"},
            "secretAccessKey": {"name": "s3", "key": "secret"},
        },
    }
    return PreferenceRunSpec.model_validate(spec_dict(storage=storage))


def seen(version: str) -> dict[str, SecretFacts]:
    return {"s3": SecretFacts(found=True, resource_version=version)}


def api() -> SecretsApi:
    return SecretsApi(
        {
            "s3": {
                "id": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            }
        }
    )


def test_the_storage_is_reused_until_a_secret_changes(s3_endpoint: str, s3_uri: str) -> None:
    spec, core, cache = s3_spec(s3_uri, s3_endpoint), api(), RunCache()
    first = cache.storage(spec, core, "ns", "r", seen("1"))
    assert cache.storage(spec, core, "ns", "r", seen("1")) is first
    assert core.reads == ["s3", "s3"]  # one read per key, once
    changed = cache.storage(spec, core, "ns", "r", seen("2"))
    assert changed is not first and core.reads == ["s3"] * 4
    # Another run has its own entry; a forgotten run starts afresh.
    assert cache.storage(spec, core, "ns", "other", seen("2")) is not changed
    cache.forget("ns", "r")
    assert cache.storage(spec, core, "ns", "r", seen("2")) is not changed
    assert len(core.reads) == 8


def test_a_secret_of_unknown_version_is_read_every_pass(s3_endpoint: str, s3_uri: str) -> None:
    spec, core, cache = s3_spec(s3_uri, s3_endpoint), api(), RunCache()
    first = cache.storage(spec, core, "ns", "r", {})
    assert cache.storage(spec, core, "ns", "r", {}) is not first
    assert len(core.reads) == 4


def test_a_secret_that_lost_its_opt_in_is_not_used(s3_endpoint: str, s3_uri: str) -> None:
    # Admission saw the label; the Secret read a moment later has lost it: its value is not
    # used, and with the operator's list of Secret names (rbac.secretNames) the list decides.
    core = api()
    core.opted_in = False
    with pytest.raises(SecretNotOptedInError, match="no longer opted in"):
        RunCache().storage(s3_spec(s3_uri, s3_endpoint), core, "ns", "r", seen("1"))
    listed = RunCache(settings=OperatorSettings(secret_names=["s3"]))
    assert listed.storage(s3_spec(s3_uri, s3_endpoint), core, "ns", "r", seen("1")) is not None


def test_storage_without_credentials_is_built_once(tmp_path: Any) -> None:
    spec = PreferenceRunSpec.model_validate(spec_dict(storage={"uri": str(tmp_path)}))
    cache = RunCache()
    assert cache.storage(spec, None, "ns", "r", {}) is cache.storage(spec, None, "ns", "r", {})


def test_storage_requests_are_counted_by_operation(s3_endpoint: str, s3_uri: str) -> None:
    metrics = OperatorMetrics()
    cache = RunCache(metrics)
    storage = cache.storage(s3_spec(s3_uri, s3_endpoint), api(), "ns", "r", seen("1"))
    assert isinstance(storage.inner, S3Storage)
    storage.write_bytes("a.txt", b"a")
    assert storage.exists("a.txt")
    assert storage.list("") == ["a.txt"]
    assert storage.read_bytes("a.txt") == b"a"
    storage.delete("a.txt")

    def count(operation: str) -> float:
        value = metrics.registry.get_sample_value(
            "synthpref_storage_requests_total", {"operation": operation}
        )
        return value or 0.0

    assert [count(op) for op in ("PUT", "HEAD", "LIST", "GET", "DELETE")] == [1, 1, 1, 1, 1]


def test_artifact_memory_is_forgotten_on_a_new_basis() -> None:
    cache = RunCache()
    memory = cache.artifact_memory("ns", "r", ("u", 1, None))
    memory.manifest = (3, 6)
    assert cache.artifact_memory("ns", "r", ("u", 1, None)).manifest == (3, 6)
    assert cache.artifact_memory("ns", "r", ("u", 2, None)).manifest is None


def test_the_pass_after_one_that_deleted_jobs_lists_them_consistently() -> None:
    cache = RunCache()
    assert cache.fresh_jobs_needed("ns", "r1") is False  # a run's passes read the cache
    cache.jobs_deleted("ns", "r1")
    assert cache.fresh_jobs_needed("ns", "r2") is False  # only the run that deleted
    assert cache.fresh_jobs_needed("ns", "r1") is True
    assert cache.fresh_jobs_needed("ns", "r1") is False  # once
