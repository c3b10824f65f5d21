"""A run author cannot use the operator's own authority: an attack table on the real control
plane, with `synthpref operator run` as a process that holds credentials of its own in its
environment (an OpenAI API key, S3 keys) and listeners standing in for outside hosts (the
operator's own OpenAI and S3 endpoints among them).

Every field of the spec that reaches a URL, a credential, a file path or the pod spec is tried.
Each attack run is refused by the API server (the CRD's schema) or held with `Admitted=False`
(or `Blocked`) and a condition naming the field; afterwards no listener received a request, the
test OpenAI server got no call, no Job exists, no operator secret appears in any status, Event
or log line, and the operator is still up. Fixtures and helpers: `test_operator_run.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from synthpref import layout
from synthpref.storage import S3Storage, s3_client
from tests.integration import test_operator_run as base
from tests.support.listener import Listener
from tests.support.polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

env = base.env  # the fixture, shared with test_operator_run.py
Env = base.Env

OPERATOR_KEY = "sk-operator-own-key-never-sent"
OPERATOR_S3_SECRET = "operator-own-s3-secret-never-sent"


@dataclass
class Attack:
    """One run that tries to make the operator act with its own authority."""

    name: str
    spec: dict[str, Any]  # merged into the base manifest's spec, section by section
    reason: str  # the Admitted (or Blocked) reason it is held with
    fields: tuple[str, ...]  # the fields its message names
    condition: str = "Admitted"
    models: list[dict[str, Any]] | None = None  # replaces spec.models


def _models(env: Env, count: int, **changes: Any) -> list[dict[str, Any]]:
    models: list[dict[str, Any]] = env.manifest("x")["spec"]["models"]
    while len(models) < count:
        models.append({**models[0], "name": f"extra{len(models)}"})
    models[0] = {**models[0], **changes}
    return models[:count]


def attacks(env: Env, outside: Listener, allowed_host: Listener) -> list[Attack]:
    endpoint = env.manifest("x")["spec"]["judge"]["openai"]
    server = env.server.base_url
    port = server.split(":")[2].split("/")[0]
    return [
        # The operator's own API key: to an endpoint an admin allowed for runs' own keys.
        Attack(
            "key-to-allowed-host",
            {"judge": {"openai": {"baseUrl": f"{allowed_host.url}/v1"}}},
            "CredentialNotAllowed",
            ("spec.judge.openai.apiKeySecret", "its own endpoint"),
        ),
        # ... or to its own endpoint for a namespace not granted it; and the run cannot name
        # which of the operator's variables is the key.
        Attack(
            "key-by-variable",
            {"judge": {"openai": {"apiKeyEnv": "AWS_SECRET_ACCESS_KEY"}}},
            "CredentialNotAllowed",
            ("spec.judge.openai.apiKeySecret", "security.operatorApiKeyNamespaces"),
        ),
        # The operator's own S3 identity on another team's prefix (its own endpoint, too).
        Attack(
            "operator-s3-identity",
            {"storage": {"uri": "s3://team-b/runs/prod", "credentials": None, "endpointUrl": None}},
            "CredentialNotAllowed",
            ("spec.storage.credentials", "security.operatorStorage"),
        ),
        # Files of the operator's own machine as prompts or storage.
        Attack(
            "local-prompts",
            {"prompts": {"uri": "/etc/", "shardSize": 4}},
            "PathNotAllowed",
            ("spec.prompts.uri",),
        ),
        Attack(
            "local-storage",
            {"storage": {"uri": "/var/run/secrets/kubernetes.io/"}},
            "PathNotAllowed",
            ("spec.storage.uri",),
        ),
        # S3 credentials to an outside host: through storage.endpointUrl, whatever the URI.
        Attack(
            "s3-endpoint",
            {"storage": {"endpointUrl": outside.url}},
            "EndpointNotAllowed",
            ("spec.storage.endpointUrl",),
        ),
        Attack(
            "s3-endpoint-local-uri",
            {"storage": {"uri": "/tmp/run", "endpointUrl": outside.url}},
            "EndpointNotAllowed",
            ("spec.storage.endpointUrl", "spec.storage.uri"),
        ),
        # A run's own key to a host nobody allowed, by every URL trick.
        Attack(
            "judge-userinfo",
            {
                "judge": {
                    "openai": {
                        **endpoint,
                        "baseUrl": f"http://127.0.0.1:{port}@{outside.url[7:]}/v1",
                    }
                }
            },
            "EndpointNotAllowed",
            ("spec.judge.openai.baseUrl",),
        ),
        Attack(
            "model-endpoint",
            {},
            "EndpointNotAllowed",
            ("spec.models[0].openai.baseUrl",),
            models=_models(env, 4, openai={**endpoint, "baseUrl": f"{outside.url}/v1"}),
        ),
        # Worker variables the operator sets, or that steer where workers send credentials.
        Attack(
            "env-s3-endpoint",
            {
                "workers": {
                    "secretEnv": [
                        {
                            "name": "AWS_ENDPOINT_URL_S3",
                            "secret": {"name": "openai", "key": "token"},
                        }
                    ]
                }
            },
            "EnvNotAllowed",
            ("spec.workers.secretEnv[0].name",),
        ),
        Attack(
            "env-model-key",
            {},
            "EnvNotAllowed",
            ("spec.models[0].openai.apiKeyEnv",),
            models=_models(env, 4, openai={**endpoint, "apiKeyEnv": "AWS_SECRET_ACCESS_KEY"}),
        ),
        # Placement: preempting other teams, or landing on reserved pools.
        Attack(
            "priority",
            {"workers": {"priorityClassName": "system-cluster-critical"}},
            "PlacementNotAllowed",
            ("spec.workers.priorityClassName",),
        ),
        Attack(
            "tolerate-all",
            {"workers": {"tolerations": [{"operator": "Exists"}]}},
            "PlacementNotAllowed",
            ("spec.workers.tolerations[0]",),
        ),
        Attack(
            "node-pool",
            {"workers": {"nodeSelector": {"pool": "reserved"}}},
            "PlacementNotAllowed",
            ("spec.workers.nodeSelector[pool]",),
        ),
        Attack(
            "image",
            {"workers": {"image": "evil.example/miner:1"}},
            "ImageNotAllowed",
            ("spec.workers.image",),
        ),
        Attack(
            "service-account",
            {"workers": {"serviceAccountName": "operator-admin"}},
            "ServiceAccountNotAllowed",
            ("spec.workers.serviceAccountName",),
        ),
        # A Secret nobody opted in.
        Attack(
            "unopted-secret",
            {
                "workers": {
                    "secretEnv": [
                        {"name": "HF_TOKEN", "secret": {"name": "team-b-key", "key": "token"}}
                    ]
                }
            },
            "SecretNotAllowed",
            ("spec.workers.secretEnv[0].secret",),
        ),
        # Flooding: more models or replicas than a run may have.
        Attack("many-models", {}, "LimitExceeded", ("spec.models",), models=_models(env, 5)),
        Attack(
            "many-replicas",
            {},
            "LimitExceeded",
            ("spec.models[0].replicas",),
            models=_models(env, 4, replicas=9),
        ),
        # An object of any size in the run's own storage: read up to the limit, then held.
        Attack(
            "huge-manifest",
            {"storage": {"uri": f"{env.s3_uri}-huge"}},
            "StorageObjectTooLarge",
            ("prompts/manifest.json", "maxStorageObjectBytes"),
            condition="Blocked",
        ),
    ]


def manifest(env: Env, attack: Attack) -> dict[str, Any]:
    """The base run with the attack's sections merged in (a None value removes the key)."""
    document = env.manifest(attack.name)
    spec = document["spec"]
    for section, value in attack.spec.items():
        merged = {**spec.get(section, {}), **value}
        spec[section] = {k: v for k, v in merged.items() if v is not None}
    if attack.models is not None:
        spec["models"] = attack.models
    return document


def operator_process(
    env: Env, log: Path, allowed: list[str], own_openai: Listener, own_s3: Listener
) -> subprocess.Popen[bytes]:
    """The operator as a process with credentials of its own (an API key, S3 keys) and its own
    endpoints (listeners: whatever reaches them was sent with the operator's authority)."""
    settings = {
        "allowedEndpoints": [env.server.base_url, env.s3_endpoint, *allowed],
        "maxModels": 4,
        "maxReplicas": 2,
        "maxStorageObjectBytes": 1024 * 1024,
    }
    command = [sys.executable, "-m", "synthpref", "operator", "run", "-n", env.namespace]
    command += ["--kubeconfig", str(env.kubeconfig), "--image", "local", "--cpu-image", "local"]
    command += ["--interval", "1", "--metrics-port", "0", "--log-format", "text"]
    command += ["--log-level", "debug", "--settings-json", json.dumps(settings)]
    environment = {
        **os.environ,
        "OPENAI_API_KEY": OPERATOR_KEY,
        "OPENAI_BASE_URL": f"{own_openai.url}/v1",
        "AWS_ACCESS_KEY_ID": "AKIAOPERATOROWN",
        "AWS_SECRET_ACCESS_KEY": OPERATOR_S3_SECRET,
        "AWS_ENDPOINT_URL_S3": own_s3.url,
    }
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment)


def held_as(env: Env, attack: Attack) -> dict[str, Any]:
    """The condition the run is held with, once it names the attack's reason."""
    wanted = "False" if attack.condition == "Admitted" else "True"

    def seen() -> dict[str, Any] | None:
        conditions = (env.run(attack.name).get("status") or {}).get("conditions") or []
        for found in conditions:
            if found["type"] == attack.condition and found["status"] == wanted:
                return found if found["reason"] == attack.reason else None
        return None

    found: dict[str, Any] = wait_for(seen, 120, f"{attack.name}: {attack.reason}")
    return found


# Specs the API server itself refuses (the CRD's schema): the field, and a value.
REFUSED = [
    (
        "spec.workers.secretEnv[0].name",
        {
            "workers": {
                "secretEnv": [{"name": "BAD NAME", "secret": {"name": "openai", "key": "token"}}]
            }
        },
    ),
    ("spec.models[0].replicas", {"models": [{"name": "a", "path": "a", "replicas": 5000}]}),
    ("spec.models[0].gpus", {"models": [{"name": "a", "path": "a", "gpus": 65}]}),
    ("spec.workers.tolerations[0].operator", {"workers": {"tolerations": [{"operator": "Any"}]}}),
]


def test_a_run_author_cannot_use_the_operators_authority(env: Env, tmp_path: Path) -> None:
    core = client.CoreV1Api(env.api)
    unopted = client.V1Secret(
        metadata=client.V1ObjectMeta(name="team-b-key"), string_data={"token": "team-b-secret"}
    )
    core.create_namespaced_secret(env.namespace, unopted)
    huge = S3Storage(f"{env.s3_uri}-huge", s3_client(env.s3_endpoint, "us-east-1"))
    filler = json.dumps({"shards": 1, "prompts": 1, "files": ["x" * 2 * 1024 * 1024]})
    huge.write_bytes(layout.PROMPTS_MANIFEST, filler.encode())
    log = tmp_path / "operator.log"
    with (
        Listener() as outside,
        Listener() as allowed_host,
        Listener() as own_openai,
        Listener() as own_s3,
    ):
        table = attacks(env, outside, allowed_host)
        operator = operator_process(env, log, [f"{allowed_host.url}/v1"], own_openai, own_s3)
        try:
            for attack in table:
                env.apply(manifest(env, attack))
            refusals = {}
            for path, sections in REFUSED:
                document = env.manifest("refused")
                document["spec"].update(sections)
                refusals[path] = env.kubectl(
                    "apply", "-n", env.namespace, "-f", "-", input=json.dumps(document), check=False
                )
            held = {attack.name: held_as(env, attack) for attack in table}
            time.sleep(3)  # more passes (one a second) send nothing either
            alive = operator.poll() is None
        finally:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
        received = {
            "outside": outside.received,
            "allowed host": allowed_host.received,
            "operator's OpenAI endpoint": own_openai.received,
            "operator's S3 endpoint": own_s3.received,
        }
    text = log.read_text()
    assert alive, text[-3000:]
    for attack in table:
        message = held[attack.name]["message"]
        for named in attack.fields:
            assert named in message, (attack.name, message)
    for path, result in refusals.items():
        assert (
            result.returncode != 0 and path.removeprefix("spec.").split("[")[0] in result.stderr
        ), (path, result.stderr)
    assert {where: seen for where, seen in received.items() if seen} == {}
    assert env.server.calls == []
    assert env.jobs() == {}
    # No secret of the operator's (nor a run's) in any status, Event or log line.
    statuses = json.dumps([env.run(a.name).get("status") for a in table])
    events = json.dumps([e.message for e in core.list_namespaced_event(env.namespace).items])
    for secret in (OPERATOR_KEY, OPERATOR_S3_SECRET, "team-b-secret", env.server.api_key):
        for where, seen in (("status", statuses), ("events", events), ("log", text)):
            assert secret not in seen, (secret, where)


def test_a_secret_that_loses_its_opt_in_holds_the_run_and_suspends_its_jobs(env: Env) -> None:
    from synthpref_operator.names import ANNOTATION_SUSPENDED_BY_RUN
    from tests.integration.test_operator_admission import label_secret, wait_admitted

    # The prepare pod starts late, so its Job is still running when the label goes.
    env.kubelet.delay(lambda pod: "optout-prepare" in pod["metadata"]["name"], 30)
    operator = env.operator()
    try:
        env.apply(env.manifest("optout"))
        wait_for(lambda: "optout-prepare" in env.jobs(), 120, "the prepare Job")
        label_secret(env, "s3", None)
        held = wait_admitted(env, "optout", "False", "SecretNotAllowed")
        job = wait_for(
            lambda: (j := env.jobs()["optout-prepare"]).spec.suspend and j, 120, "suspended"
        )
        label_secret(env, "s3", "true")
        wait_admitted(env, "optout", "True", "Admitted")
        resumed = wait_for(
            lambda: not (j := env.jobs()["optout-prepare"]).spec.suspend and j, 120, "resumed"
        )
        run = env.wait_phase("optout", {"Succeeded", "Failed"}, timeout=240)
    finally:
        operator.stop()
    assert "spec.storage.credentials.accessKeyId names Secret 's3'" in held["message"]
    assert job.metadata.annotations[ANNOTATION_SUSPENDED_BY_RUN] == "true"
    assert ANNOTATION_SUSPENDED_BY_RUN not in (resumed.metadata.annotations or {})
    assert run["status"]["phase"] == "Succeeded", run["status"]


def test_the_operators_judge_waits_while_another_writer_holds_the_run(env: Env) -> None:
    """One writer per run: while someone else holds the run's lease (a `synthpref annotate
    run` on the same storage, say), the operator submits no batch and says who holds it; once
    it is given up, the run goes on and each request file gets one batch."""
    from synthpref.run_lease import RunLease
    from tests.integration.test_operator_admission import condition

    env.kubelet.delay(lambda pod: "leased-mix" in pod["metadata"]["name"], 15)
    operator = env.operator()
    try:
        env.apply(env.manifest("leased"))
        env.wait_phase("leased", {"Mixing"}, timeout=180)
        other = RunLease(env.storage(), "synthpref annotate run", holder="laptop:42 (annotate)")
        other.acquire()
        blocked = wait_for(
            lambda: (
                (c := condition(env, "leased", "Blocked")) and c["reason"] == "RunLeaseHeld" and c
            ),
            180,
            "leased: Blocked RunLeaseHeld",
        )
        batches_while_held = len(env.server.batches)
        other.release()
        run = env.wait_phase("leased", {"Succeeded", "Failed"}, timeout=240)
    finally:
        operator.stop()
    assert "another writer holds this run: laptop:42 (annotate)" in blocked["message"]
    assert batches_while_held == 0
    assert run["status"]["phase"] == "Succeeded", run["status"]
    assert len(env.server.batches) == run["status"]["stages"]["judge"]["files"]
