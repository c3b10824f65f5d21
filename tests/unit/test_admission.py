"""Admission table tests: which endpoints, images, ServiceAccounts and Secrets a run may use
(`synthpref_operator.admission`), and the status a held run gets."""

from __future__ import annotations

from typing import Any

import pytest

from synthpref.spec import PreferenceRunSpec, Toleration, TolerationOperator
from synthpref_operator.admission import (
    SecretFacts,
    admission_problems,
    admission_status,
    endpoint_allowed,
    image_allowed,
    secret_uses,
    secrets_to_observe,
    shard_limit_problem,
    spec_problems,
    touching,
)
from synthpref_operator.names import LABEL_ALLOW_RUNS
from synthpref_operator.settings import OperatorSettings, SettingsError, parse_settings
from synthpref_operator.status import ConditionStatus, ConditionType, Phase, Reason, RunStatus
from tests.builders import spec_dict

OPENAI = ["https://api.openai.com/v1"]
GATEWAY = ["https://gw.example.com:8443/team-a/v1", "http://10.0.0.5/v1"]
OPTED_IN = SecretFacts(found=True, labels={LABEL_ALLOW_RUNS: "true"})
NOW = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("https://api.openai.com/v1", OPENAI, True),
        ("https://api.openai.com/v1/", OPENAI, True),
        ("https://API.OpenAI.com/v1", OPENAI, True),  # host names are case-insensitive
        ("https://api.openai.com:443/v1", OPENAI, True),  # the default port, spelled out
        ("https://api.openai.com/v1/batches", OPENAI, True),  # below the prefix
        ("https://api.openai.com/v10", OPENAI, False),  # not on a segment boundary
        ("https://api.openai.com/", OPENAI, False),  # above the prefix
        ("https://api.openai.com", OPENAI, False),
        ("http://api.openai.com/v1", OPENAI, False),  # another scheme
        ("https://api.openai.com:8443/v1", OPENAI, False),  # another port
        ("https://api.openai.com.evil.example/v1", OPENAI, False),
        ("https://evil.example/api.openai.com/v1", OPENAI, False),
        ("https://api.openai.com@evil.example/v1", OPENAI, False),  # user info: host is evil
        ("https://user:pw@api.openai.com/v1", OPENAI, False),  # no user info at all
        ("https://evil.example#@api.openai.com/v1", OPENAI, False),
        ("https://evil.example?@api.openai.com/v1", OPENAI, False),
        ("https://api.openai.com/v1?x=1", OPENAI, False),
        ("https://api.openai.com\\@evil.example/v1", OPENAI, False),
        ("https://api.openai.com/v1/../../evil", OPENAI, False),  # dot segments
        ("https://api.openai.com/v1/%2e%2e/evil", OPENAI, False),
        ("https://api.openai.com/v1%2F..%2Fevil", OPENAI, False),
        ("https://api.openai.com./v1", OPENAI, False),  # trailing dot: another name
        ("https://api.openai.com:99999/v1", OPENAI, False),  # a port that cannot be
        (" https://api.openai.com/v1", OPENAI, False),
        ("ftp://api.openai.com/v1", OPENAI, False),
        ("api.openai.com/v1", OPENAI, False),  # no scheme
        ("", OPENAI, False),
        ("https://gw.example.com:8443/team-a/v1", GATEWAY, True),
        ("https://gw.example.com:8443/team-a/v1/x", GATEWAY, True),
        ("https://gw.example.com:8443/team-b/v1", GATEWAY, False),  # another tenant's path
        ("https://gw.example.com/team-a/v1", GATEWAY, False),  # default port 443 != 8443
        ("http://10.0.0.5:80/v1", GATEWAY, True),
        ("http://10.0.0.50/v1", GATEWAY, False),
        ("http://[::1]:8000/v1", ["http://[::1]:8000"], True),
        ("https://anything.example/v1", ["*"], True),
        ("https://api.openai.com/v1", [], False),
    ],
)
def test_endpoint_allowed(url: str, allowed: list[str], ok: bool) -> None:
    assert endpoint_allowed(url, allowed) is ok


OWN = OperatorSettings(
    image="ghcr.io/synthpref/worker:0.1.0",
    cpu_image="ghcr.io/synthpref/worker-cpu:0.1.0",
    allowed_image_prefixes=["registry.corp/ml", "ghcr.io/team/"],
)


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("ghcr.io/synthpref/worker:0.1.0", True),  # the operator's own
        ("ghcr.io/synthpref/worker-cpu:0.1.0", True),
        ("ghcr.io/synthpref/worker:latest", False),  # own repository, another tag: no
        ("registry.corp/ml", True),
        ("registry.corp/ml/worker:1", True),
        ("registry.corp/ml:2", True),
        ("registry.corp/ml@sha256:abc", True),
        ("registry.corp/ml-evil/worker:1", False),  # not at a separator
        ("registry.corp/mlx", False),
        ("ghcr.io/team/worker:1", True),
        ("ghcr.io/team-b/worker:1", False),
        ("docker.io/library/python:3.11", False),
        ("", False),
    ],
)
def test_image_allowed(image: str, ok: bool) -> None:
    assert image_allowed(image, OWN) is ok
    assert image_allowed(image, OperatorSettings(allowed_image_prefixes=["*"]))


def openai_model(name: str, **endpoint: Any) -> dict[str, Any]:
    return {"name": name, "backend": "openai", "path": name, "gpus": 0, "openai": endpoint}


def key(name: str) -> dict[str, str]:
    return {"name": name, "key": "k"}


def full_spec(**sections: Any) -> PreferenceRunSpec:
    """Every kind of Secret reference: storage, judge key, a model key, secretEnv."""
    spec = {
        "storage": {
            "uri": "s3://bucket/run",
            "credentials": {"accessKeyId": key("s3"), "secretAccessKey": key("s3")},
        },
        "models": [
            openai_model("a", apiKeySecret=key("models")),
            {"name": "b", "path": "/m/b"},
            {"name": "c", "path": "/m/c"},
            {"name": "d", "path": "/m/d"},
        ],
        "judge": {"openai": {"apiKeySecret": key("judge")}},
        "workers": {"secretEnv": [{"name": "HF_TOKEN", "secret": key("hf")}]},
    }
    spec.update(sections)
    return PreferenceRunSpec.model_validate({**spec_dict("s3://bucket/prompts/"), **spec})


def test_secret_uses_names_every_reference_with_its_path() -> None:
    uses = [(u.path, u.name, u.operator_reads) for u in secret_uses(full_spec())]
    assert uses == [
        ("spec.storage.credentials.accessKeyId", "s3", True),
        ("spec.storage.credentials.secretAccessKey", "s3", True),
        ("spec.judge.openai.apiKeySecret", "judge", True),
        ("spec.models[0].openai.apiKeySecret", "models", False),
        ("spec.workers.secretEnv[0].secret", "hf", False),
    ]


def test_unused_references_are_not_uses() -> None:
    # A vLLM judge never sends the judge key; a vLLM model never gets an endpoint key.
    spec = full_spec(
        judge={"backend": "vllm", "openai": {"apiKeySecret": key("judge")}},
        models=[
            {"name": n, "path": n, "openai": {"apiKeySecret": key("x"), "baseUrl": "http://e/"}}
            for n in "abcd"
        ],
        workers={},
    )
    assert [u.name for u in secret_uses(spec)] == ["s3", "s3"]
    assert spec_problems(spec, OperatorSettings()) == []


def facts_all(found: SecretFacts) -> dict[str, SecretFacts]:
    return dict.fromkeys(["s3", "judge", "models", "hf"], found)


def reasons(problems: list[Any]) -> list[tuple[str, str]]:
    return [(p.reason.value, p.path) for p in problems]


def test_opted_in_secrets_and_default_endpoints_are_admitted() -> None:
    assert admission_problems(full_spec(), OperatorSettings(), "ns", facts_all(OPTED_IN)) == []


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (SecretFacts(found=True), "SecretNotAllowed"),  # no label
        (SecretFacts(found=True, labels={LABEL_ALLOW_RUNS: "yes"}), "SecretNotAllowed"),
        (SecretFacts(found=False), "SecretNotFound"),
        (SecretFacts(found=False, error="HTTP 403"), "SecretNotAllowed"),
    ],
)
def test_secret_problems_name_each_field(facts: SecretFacts, reason: str) -> None:
    secrets = {**facts_all(OPTED_IN), "judge": facts, "hf": facts}
    problems = admission_problems(full_spec(), OperatorSettings(), "team", secrets)
    assert reasons(problems) == [
        (reason, "spec.judge.openai.apiKeySecret"),
        (reason, "spec.workers.secretEnv[0].secret"),
    ]
    judge = problems[0].message
    assert judge.startswith("spec.judge.openai.apiKeySecret names Secret 'judge'")
    if reason == "SecretNotFound":
        assert "does not exist in namespace team" in judge
    elif facts.error:
        assert "HTTP 403" in judge
    else:
        assert f"kubectl label secret judge -n team {LABEL_ALLOW_RUNS}=true" in judge


def test_secret_names_list_replaces_the_label() -> None:
    settings = OperatorSettings(secret_names=["s3", "judge", "models"])
    spec = full_spec()
    # Only listed names are looked up: the operator's RBAC allows no other.
    assert secrets_to_observe(spec, settings) == ["judge", "models", "s3"]
    assert secrets_to_observe(spec, OperatorSettings()) == ["hf", "judge", "models", "s3"]
    unlabelled = facts_all(SecretFacts(found=True))
    problems = admission_problems(spec, settings, "ns", unlabelled)
    assert reasons(problems) == [("SecretNotAllowed", "spec.workers.secretEnv[0].secret")]
    assert "rbac.secretNames" in problems[0].message
    missing = {**unlabelled, "judge": SecretFacts(found=False)}
    problems = admission_problems(spec, settings, "ns", missing)
    assert ("SecretNotFound", "spec.judge.openai.apiKeySecret") in reasons(problems)


def test_endpoint_problems() -> None:
    spec = full_spec(
        models=[
            openai_model("a", baseUrl="https://api.openai.com.evil.example/v1"),
            openai_model("b"),  # unset: the workers' own OPENAI_BASE_URL, always allowed
            openai_model("c", baseUrl="https://api.openai.com/v1"),
            {"name": "d", "path": "/m/d", "openai": {"baseUrl": "http://ignored/v1"}},  # vllm
        ],
        judge={"openai": {"baseUrl": "http://127.0.0.1:9/v1"}},  # no key Secret: still sent
    )
    problems = spec_problems(spec, OperatorSettings())
    assert reasons(problems) == [
        ("EndpointNotAllowed", "spec.judge.openai.baseUrl"),
        ("EndpointNotAllowed", "spec.models[0].openai.baseUrl"),
    ]
    assert "'http://127.0.0.1:9/v1'" in problems[0].message
    assert "allowed: https://api.openai.com/v1" in problems[0].message
    assert "security.allowedEndpoints" in problems[0].message
    wider = OperatorSettings(allowed_endpoints=[*OPENAI, "http://127.0.0.1:9/v1"])
    assert reasons(spec_problems(spec, wider)) == [
        ("EndpointNotAllowed", "spec.models[0].openai.baseUrl")
    ]


@pytest.mark.parametrize("credentials", [True, False])
def test_an_s3_endpoint_gets_signed_requests_so_it_must_be_allowed(credentials: bool) -> None:
    storage: dict[str, Any] = {"uri": "s3://bucket/run", "endpointUrl": "http://minio.evil:9000"}
    if credentials:  # the Secrets the spec names; without them, the operator's own
        storage["credentials"] = {"accessKeyId": key("s3"), "secretAccessKey": key("s3")}
    problems = spec_problems(full_spec(storage=storage), OperatorSettings())
    assert reasons(problems) == [("EndpointNotAllowed", "spec.storage.endpointUrl")]
    assert "'http://minio.evil:9000' would receive S3 credentials" in problems[0].message
    allowed = OperatorSettings(allowed_endpoints=[*OPENAI, "http://minio.evil:9000"])
    assert spec_problems(full_spec(storage=storage), allowed) == []
    unset = {k: v for k, v in storage.items() if k != "endpointUrl"}  # the operator's own
    assert spec_problems(full_spec(storage=unset), OperatorSettings()) == []


def test_image_and_service_account_problems() -> None:
    spec = full_spec(
        workers={
            "image": "evil.example/miner:1",
            "cpuImage": "ghcr.io/synthpref/worker-cpu:0.1.0",
            "serviceAccountName": "cluster-admin",
        }
    )
    problems = spec_problems(spec, OperatorSettings())
    assert reasons(problems) == [
        ("ImageNotAllowed", "spec.workers.image"),
        ("ServiceAccountNotAllowed", "spec.workers.serviceAccountName"),
    ]
    assert "'evil.example/miner:1'" in problems[0].message
    assert "security.allowedImagePrefixes" in problems[0].message
    assert "'cluster-admin'" in problems[1].message
    assert "security.allowedServiceAccounts" in problems[1].message
    allowed = OperatorSettings(
        allowed_image_prefixes=["evil.example/"], allowed_service_accounts=["cluster-admin"]
    )
    assert spec_problems(spec, allowed) == []
    default = full_spec(workers={"serviceAccountName": "default"})
    assert spec_problems(default, OperatorSettings()) == []


def test_touching_selects_problems_by_field() -> None:
    secrets = {**facts_all(OPTED_IN), "s3": SecretFacts(found=False)}
    judge = {"baseUrl": "https://evil.example/v1", "apiKeySecret": key("judge")}
    spec = full_spec(judge={"openai": judge})
    problems = admission_problems(spec, OperatorSettings(), "ns", secrets)
    assert [p.path for p in touching(problems, "spec.storage.")] == [
        "spec.storage.credentials.accessKeyId",
        "spec.storage.credentials.secretAccessKey",
    ]
    assert [p.path for p in touching(problems, "spec.judge.")] == ["spec.judge.openai.baseUrl"]


@pytest.mark.parametrize(
    "bad", ["https://x/v1?a=1", "https://u@x/v1", "x.example/v1", "https://x/../v1", ""]
)
def test_settings_reject_allowed_endpoints_that_are_not_base_urls(bad: str) -> None:
    with pytest.raises(SettingsError, match="allowedEndpoints"):
        parse_settings(f'{{"allowedEndpoints": ["{bad}"]}}')
    assert parse_settings('{"allowedEndpoints": ["*", "http://h:1/v1"]}').allowed_endpoints


# ------------------------------------------------------------------ status


def held(
    previous: RunStatus, spec: PreferenceRunSpec, generation: int = 1
) -> tuple[RunStatus, list[Any]]:
    problems = spec_problems(spec, OperatorSettings())
    return admission_status(previous, problems, generation, NOW)


def test_held_run_keeps_its_phase_with_a_condition_and_one_warning() -> None:
    spec = full_spec(judge={"openai": {"baseUrl": "https://evil.example/v1"}})
    status, events = held(RunStatus(), spec)
    assert status.phase is Phase.PENDING
    condition = status.condition(ConditionType.ADMITTED)
    assert condition is not None
    assert (condition.status, condition.reason) == (
        ConditionStatus.FALSE,
        Reason.ENDPOINT_NOT_ALLOWED,
    )
    assert status.message == condition.message
    assert "spec.judge.openai.baseUrl 'https://evil.example/v1'" in condition.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "EndpointNotAllowed")]
    # The same problems on the next pass: no second Event, the time does not move.
    again, events = admission_status(
        status, spec_problems(spec, OperatorSettings()), 1, "2026-01-02T00:00:00Z"
    )
    assert events == [] and again == status
    # Other problems: a new Warning.
    worse = full_spec(
        judge={"openai": {"baseUrl": "https://evil.example/v1"}},
        workers={"image": "evil.example/x:1"},
    )
    changed, events = held(status, worse, generation=2)
    assert [e.reason for e in events] == ["EndpointNotAllowed"]
    assert "spec.workers.image" in events[0].message
    assert changed.observed_generation == 2
    # A run that was further along holds in its phase.
    generating = RunStatus(phase=Phase.GENERATING)
    assert held(generating, spec)[0].phase is Phase.GENERATING


def test_fixed_run_turns_admitted_true_without_an_event() -> None:
    spec = full_spec(judge={"openai": {"baseUrl": "https://evil.example/v1"}})
    status, _ = held(RunStatus(), spec)
    admitted, events = admission_status(status, [], 2, "2026-01-02T00:00:00Z")
    condition = admitted.condition(ConditionType.ADMITTED)
    assert condition is not None
    assert (condition.status, condition.reason) == (ConditionStatus.TRUE, Reason.ADMITTED)
    assert condition.last_transition_time == "2026-01-02T00:00:00Z"
    assert condition.observed_generation == 2
    assert events == []


# ------------------------------------------------------------------ the operator's own authority


def test_on_a_cluster_prompts_and_storage_are_s3_unless_an_admin_allows_local_paths() -> None:
    spec = full_spec(prompts={"uri": "/etc/"}, storage={"uri": "/var/run/secrets/"})
    problems = admission_problems(spec, OperatorSettings(), "ns", facts_all(OPTED_IN))
    assert reasons(problems) == [
        ("PathNotAllowed", "spec.prompts.uri"),
        ("PathNotAllowed", "spec.storage.uri"),
    ]
    assert "'/etc/' is not an s3:// URI" in problems[0].message
    assert "security.allowLocalPaths" in problems[0].message
    local = OperatorSettings(allow_local_paths=True)
    assert admission_problems(spec, local, "ns", facts_all(OPTED_IN)) == []


@pytest.mark.parametrize(
    ("namespace", "uri", "grants", "ok"),
    [
        ("team-a", "s3://shared/team-a/run-1", {}, False),  # default: no grant at all
        ("team-a", "s3://shared/team-a/run-1", {"team-a": ["s3://shared/team-a/"]}, True),
        ("team-a", "s3://shared/team-a", {"team-a": ["s3://shared/team-a"]}, True),
        ("team-a", "s3://shared/team-ab/run", {"team-a": ["s3://shared/team-a"]}, False),
        ("team-b", "s3://shared/team-a/run-1", {"team-a": ["s3://shared/team-a/"]}, False),
        ("team-a", "s3://shared/team-b/run-1", {"team-a": ["s3://shared/team-a/"]}, False),
        ("team-b", "s3://scratch/x", {"*": ["s3://scratch/"]}, True),
        ("team-b", "s3://scratch-evil/x", {"*": ["s3://scratch"]}, False),
    ],
)
def test_the_operators_s3_identity_only_where_the_chart_grants_it(
    namespace: str, uri: str, grants: dict[str, list[str]], ok: bool
) -> None:
    spec = full_spec(storage={"uri": uri})  # no credentials: the operator's own identity
    settings = OperatorSettings(operator_storage=grants)
    problems = admission_problems(spec, settings, namespace, facts_all(OPTED_IN))
    if ok:
        assert problems == []
    else:
        assert reasons(problems) == [("CredentialNotAllowed", "spec.storage.credentials")]
        assert "security.operatorStorage" in problems[0].message
        assert f"namespace {namespace}" in problems[0].message
    # With the run's own keys, the operator's identity is never used: always fine.
    own = full_spec(storage={**full_spec().storage.model_dump(by_alias=True), "uri": uri})
    assert admission_problems(own, settings, namespace, facts_all(OPTED_IN)) == []


@pytest.mark.parametrize(
    ("judge", "granted", "problem"),
    [
        ({}, [], "not granted the operator's own key"),
        ({}, ["other"], "not granted the operator's own key"),
        ({}, ["ns"], None),
        ({}, ["*"], None),
        # Its own key goes to its own endpoint only, whatever the allow-list says.
        ({"baseUrl": "https://api.openai.com/v1"}, ["ns"], "goes only to its own endpoint"),
        # The run cannot pick which of the operator's variables is the key: not looked at.
        ({"apiKeyEnv": "AWS_SECRET_ACCESS_KEY"}, ["ns"], None),
        ({"apiKeySecret": key("judge")}, [], None),  # the run's own key
    ],
)
def test_the_operators_api_key_only_at_its_own_endpoint_for_granted_namespaces(
    judge: dict[str, Any], granted: list[str], problem: str | None
) -> None:
    spec = full_spec(judge={"openai": judge})
    settings = OperatorSettings(operator_api_key_namespaces=granted)
    problems = admission_problems(spec, settings, "ns", facts_all(OPTED_IN))
    if problem is None:
        assert problems == []
    else:
        assert reasons(problems) == [("CredentialNotAllowed", "spec.judge.openai.apiKeySecret")]
        assert problem in problems[0].message
    vllm = full_spec(judge={"backend": "vllm", "openai": judge})  # no API key at all
    assert admission_problems(vllm, settings, "ns", facts_all(OPTED_IN)) == []


@pytest.mark.parametrize(
    "name",
    [
        "AWS_ENDPOINT_URL_S3",  # would send the workers' signed S3 requests elsewhere
        "AWS_SECRET_ACCESS_KEY",
        "OPENAI_BASE_URL",
        "SYNTHPREF_RUN_MANIFEST",
        "SYNTHPREF_TERMINATION_LOG",
        "HOME",
        "HF_HOME",
        "TMPDIR",
        "GATEWAY_TOKEN",  # the chart's workers.env (below)
    ],
)
def test_worker_variables_the_operator_sets_cannot_be_named_by_a_run(name: str) -> None:
    settings = OperatorSettings(extra_env={"GATEWAY_TOKEN": "x"})
    secret_env = full_spec(workers={"secretEnv": [{"name": name, "secret": key("hf")}]})
    problems = admission_problems(secret_env, settings, "ns", facts_all(OPTED_IN))
    assert reasons(problems) == [("EnvNotAllowed", "spec.workers.secretEnv[0].name")]
    assert f"{name!r}" in problems[0].message
    # A model's key variable: neither set from a Secret nor read as the key without one.
    for endpoint in ({"apiKeyEnv": name, "apiKeySecret": key("models")}, {"apiKeyEnv": name}):
        spec = full_spec(models=[openai_model("a", **endpoint), *full_spec().models[1:]])
        problems = admission_problems(spec, settings, "ns", facts_all(OPTED_IN))
        assert reasons(problems) == [("EnvNotAllowed", "spec.models[0].openai.apiKeyEnv")]


def test_a_secret_env_name_given_twice_is_refused() -> None:
    twice = [{"name": "HF_TOKEN", "secret": key("hf")}, {"name": "HF_TOKEN", "secret": key("s3")}]
    spec = full_spec(workers={"secretEnv": twice})
    problems = admission_problems(spec, OperatorSettings(), "ns", facts_all(OPTED_IN))
    assert reasons(problems) == [("EnvNotAllowed", "spec.workers.secretEnv[1].name")]
    assert "already set by spec.workers.secretEnv[0].name" in problems[0].message


GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_placement_a_run_steers_is_allow_listed() -> None:
    settings = OperatorSettings(
        gpu_tolerations=[GPU_TAINT],
        gpu_node_selector={"pool": "gpu"},
        allowed_node_labels=["gpu-type=*", "zone=us-east-1a"],
    )
    fine = full_spec(
        workers={
            "tolerations": [GPU_TAINT],
            "nodeSelector": {"pool": "gpu", "gpu-type": "h100", "zone": "us-east-1a"},
        }
    )
    assert admission_problems(fine, settings, "ns", facts_all(OPTED_IN)) == []
    bad = full_spec(
        workers={
            "priorityClassName": "system-cluster-critical",
            "tolerations": [GPU_TAINT, {"operator": "Exists"}],  # tolerates every taint
            "nodeSelector": {"pool": "reserved", "zone": "us-east-1b"},
        }
    )
    problems = admission_problems(bad, settings, "ns", facts_all(OPTED_IN))
    assert reasons(problems) == [
        ("PlacementNotAllowed", "spec.workers.priorityClassName"),
        ("PlacementNotAllowed", "spec.workers.tolerations[1]"),
        ("PlacementNotAllowed", "spec.workers.nodeSelector[pool]"),
        ("PlacementNotAllowed", "spec.workers.nodeSelector[zone]"),
    ]
    assert "security.allowedPriorityClasses" in problems[0].message
    assert "security.allowedTolerations" in problems[1].message
    assert "pool=reserved" in problems[2].message
    wider = settings.model_copy(
        update={
            "allowed_priority_classes": ["system-cluster-critical"],
            "allowed_tolerations": [Toleration(operator=TolerationOperator.EXISTS)],
            "allowed_node_labels": ["*"],
        }
    )
    assert admission_problems(bad, wider, "ns", facts_all(OPTED_IN)) == []


def test_per_run_limits() -> None:
    many = [{"name": f"m{i}", "path": f"/m/{i}", "replicas": 3} for i in range(5)]
    spec = full_spec(models=many)
    settings = OperatorSettings(max_models=4, max_replicas=2)
    problems = admission_problems(spec, settings, "ns", facts_all(OPTED_IN))
    assert reasons(problems)[:2] == [
        ("LimitExceeded", "spec.models"),
        ("LimitExceeded", "spec.models[0].replicas"),
    ]
    assert len(problems) == 6 and "security.limits.maxModels" in problems[0].message
    assert shard_limit_problem(10, OperatorSettings(max_shards=10)) is None
    too_many = shard_limit_problem(11, OperatorSettings(max_shards=10))
    assert too_many is not None and too_many.reason is Reason.LIMIT_EXCEEDED
    assert "prepare cut 11 prompt shards" in too_many.message


def test_the_storage_endpoint_is_checked_whatever_storage_uri_says() -> None:
    # S3 prompts are read through storage.endpointUrl even when storage itself is local.
    spec = full_spec(storage={"uri": "/data/run", "endpointUrl": "http://evil.example:9000"})
    problems = spec_problems(spec, OperatorSettings())
    assert reasons(problems) == [("EndpointNotAllowed", "spec.storage.endpointUrl")]
