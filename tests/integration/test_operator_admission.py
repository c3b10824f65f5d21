"""What a run author may make the operator do, against the real control plane (fixtures and
helpers from `test_operator_run.py`): a run naming an endpoint, a Secret, an image or a
ServiceAccount the operator does not allow is held (condition Admitted=False, one Warning
Event per change of its problems) with no Job created and no call to the judge, and goes on
once fixed (Secret labelled, operator restarted with a wider allow-list). Deleting runs whose
batches cannot be cancelled (judge down, endpoint no longer allowed) keeps the finalizer with
Warning Events naming the batch ids, and lets go after the deadline or at once with the
override annotation, never calling a disallowed endpoint."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import pytest
from kubernetes import client

from synthpref_operator.names import ANNOTATION_SKIP_BATCH_CANCEL, LABEL_ALLOW_RUNS
from tests.integration import test_operator_run as base
from tests.support.openai_server import ACTIVE_STATUSES, BatchScript
from tests.support.polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

env = base.env  # the fixture, shared with test_operator_run.py
Env = base.Env


def condition(env: Env, name: str, kind: str) -> dict[str, Any] | None:
    conditions = (env.run(name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def wait_admitted(env: Env, name: str, status: str, reason: str | None = None) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        found = condition(env, name, "Admitted")
        if found and found["status"] == status and reason in (None, found["reason"]):
            return found
        return None

    found: dict[str, Any] = wait_for(seen, 60, f"{name}: Admitted={status} {reason or ''}")
    return found


def events(env: Env, name: str, reason: str | None = None) -> list[Any]:
    """The run's Events (oldest first), of one reason if given."""
    listed = client.CoreV1Api(env.api).list_namespaced_event(
        env.namespace, field_selector=f"involvedObject.name={name}"
    )
    found = [e for e in listed.items if reason is None or e.reason == reason]
    return sorted(found, key=lambda e: e.metadata.creation_timestamp)


def label_secret(env: Env, name: str, value: str | None) -> None:
    patch = {"metadata": {"labels": {LABEL_ALLOW_RUNS: value}}}
    client.CoreV1Api(env.api).patch_namespaced_secret(name, env.namespace, patch)


def test_disallowed_judge_endpoint_is_held_without_any_call(env: Env) -> None:
    # The same test server under another name: the key would go to a URL nobody allowed.
    elsewhere = env.server.base_url.replace("127.0.0.1", "localhost")
    manifest = env.manifest("offsite")
    manifest["spec"]["judge"]["openai"]["baseUrl"] = elsewhere
    operator = env.operator()
    try:
        env.apply(manifest)
        held = wait_admitted(env, "offsite", "False", "EndpointNotAllowed")
        # More passes (every second) change nothing and post no second Event.
        time.sleep(3)
        run = env.run("offsite")
    finally:
        operator.stop()
    assert f"spec.judge.openai.baseUrl '{elsewhere}' would receive an API key" in held["message"]
    assert f"allowed: {env.server.base_url}" in held["message"]
    assert "security.allowedEndpoints" in held["message"]
    assert run["status"]["phase"] == "Pending"
    assert run["status"]["message"] == held["message"]
    assert env.server.calls == []
    assert env.jobs() == {}
    [warning] = events(env, "offsite", "EndpointNotAllowed")
    assert warning.type == "Warning" and warning.message == held["message"]


def test_unopted_secrets_are_held_until_opted_in(env: Env) -> None:
    label_secret(env, "openai", None)  # created opted in by the fixture: take it back
    manifest = env.manifest("optin")
    manifest["spec"]["workers"]["secretEnv"] = [
        {"name": "HF_TOKEN", "secret": {"name": "hf-token", "key": "token"}}
    ]
    operator = env.operator()
    try:
        env.apply(manifest)
        held = wait_admitted(env, "optin", "False", "SecretNotAllowed")
        message = held["message"]
        assert "spec.judge.openai.apiKeySecret names Secret 'openai'" in message
        assert "spec.models[0].openai.apiKeySecret names Secret 'openai'" in message
        assert f"kubectl label secret openai -n {env.namespace} {LABEL_ALLOW_RUNS}=true" in message
        assert "spec.workers.secretEnv[0].secret names Secret 'hf-token'" in message
        assert "does not exist" in message
        assert env.jobs() == {} and env.server.calls == []

        label_secret(env, "openai", "true")
        # Still held, for the missing Secret only: the problems changed, a new Warning.
        held = wait_admitted(env, "optin", "False", "SecretNotFound")
        assert "'openai'" not in held["message"] and "'hf-token'" in held["message"]
        assert env.jobs() == {}
        meta = client.V1ObjectMeta(name="hf-token", labels={LABEL_ALLOW_RUNS: "true"})
        secret = client.V1Secret(metadata=meta, string_data={"token": "hf-test"})
        client.CoreV1Api(env.api).create_namespaced_secret(env.namespace, secret)
        admitted = wait_admitted(env, "optin", "True", "Admitted")
        wait_for(lambda: "optin-prepare" in env.jobs(), 60, "the prepare Job")
    finally:
        operator.stop()
    assert admitted["lastTransitionTime"] >= held["lastTransitionTime"]
    assert [e.type for e in events(env, "optin", "SecretNotAllowed")] == ["Warning"]
    assert [e.type for e in events(env, "optin", "SecretNotFound")] == ["Warning"]


def test_disallowed_image_and_service_account_held_until_allowed(env: Env) -> None:
    manifest = env.manifest("elsewhere")
    manifest["spec"]["workers"].update(
        {"cpuImage": "registry.example/ml/worker-cpu:1", "serviceAccountName": "s3-reader"}
    )
    first = env.operator()
    try:
        env.apply(manifest)
        held = wait_admitted(env, "elsewhere", "False", "ImageNotAllowed")
    finally:
        first.stop()
    assert "spec.workers.cpuImage 'registry.example/ml/worker-cpu:1'" in held["message"]
    assert "spec.workers.serviceAccountName 's3-reader'" in held["message"]
    assert env.jobs() == {}
    # An admin widens the allow-lists: the restarted operator lets the run go on.
    second = env.operator(
        allowed_image_prefixes=["registry.example/ml/"], allowed_service_accounts=["s3-reader"]
    )
    try:
        wait_admitted(env, "elsewhere", "True", "Admitted")
        job = wait_for(lambda: env.jobs().get("elsewhere-prepare"), 60, "the prepare Job")
    finally:
        second.stop()
    pod = job.spec.template.spec
    assert pod.containers[0].image == "registry.example/ml/worker-cpu:1"
    assert pod.service_account_name == "s3-reader"


def small_run(env: Env, name: str, judge_url: str) -> dict[str, Any]:
    """Two models, one worker each, own storage: a cheap run up to its judge batches."""
    manifest = env.manifest(name, mix={"responsesPerPrompt": 2, "seed": 1})
    spec = manifest["spec"]
    spec["models"] = [{**m, "replicas": 1} for m in spec["models"][:2]]
    spec["storage"] = {**spec["storage"], "uri": f"{env.s3_uri}-{name}"}
    spec["judge"]["openai"]["baseUrl"] = judge_url
    return manifest


def run_batches(env: Env, name: str) -> set[str]:
    with env.server._lock:
        return {
            batch_id
            for batch_id, batch in env.server.batches.items()
            if (batch.metadata or {}).get("synthpref_run") == name
        }


def statuses(env: Env, ids: set[str]) -> set[str]:
    with env.server._lock:
        return {env.server.get_batch(i).status for i in ids}


def in_flight(env: Env, name: str) -> set[str] | None:
    """The run's batch ids once its 3 batches are all in progress."""
    ids = run_batches(env, name)
    return ids if len(ids) == 3 and statuses(env, ids) <= set(ACTIVE_STATUSES) else None


def gone(env: Env, name: str) -> bool:
    try:
        env.run(name)
    except client.ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def test_delete_while_batches_cannot_be_cancelled(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """stuck: the judge answers 503 to every cancel (released at the deadline); skipped: the
    same, released at once by the annotation; moved: its judge URL is no longer allowed after
    an operator restart (never called, released at the deadline)."""
    env.server.batch_script = lambda info: BatchScript(in_progress_s=1e9)
    moved_url = env.server.base_url.replace("127.0.0.1", "localhost")
    names = {"stuck": env.server.base_url, "skipped": env.server.base_url, "moved": moved_url}
    first = env.operator(allowed_endpoints=[env.server.base_url, env.s3_endpoint, moved_url])
    try:
        for name, url in names.items():
            env.apply(small_run(env, name, url))
        for name in names:
            env.wait_phase(name, {"Annotating"}, timeout=180)
        batches = {
            name: wait_for(partial(in_flight, env, name), 60, f"{name}: 3 batches in progress")
            for name in names
        }
    finally:
        first.stop()
    # The judge is down for cancels; the operator now allows only the 127.0.0.1 URL.
    env.server.fail_next("POST", "/v1/batches/", 503, count=10**6)
    second = env.operator(deletion_timeout_seconds=20)
    caplog.set_level(logging.WARNING, logger="synthpref_operator")
    try:
        for name in names:
            env.kubectl("delete", "prun", name, "-n", env.namespace, "--wait=false")

        def retrying(name: str) -> list[Any]:
            found = events(env, name, "BatchCancelRetrying")
            return found if found and all(i in found[-1].message for i in batches[name]) else []

        for name in names:  # the finalizer holds each run while its batches run
            wait_for(partial(retrying, name), 60, f"{name}: BatchCancelRetrying")
        env.kubectl(
            "annotate",
            "prun",
            "skipped",
            "-n",
            env.namespace,
            f"{ANNOTATION_SKIP_BATCH_CANCEL}=true",
        )
        wait_for(lambda: gone(env, "skipped"), 60, "skipped: released")
        for name in ("stuck", "moved"):
            wait_for(partial(gone, env, name), 120, f"{name}: released at the deadline")
    finally:
        second.stop()
    # Each run retried with backoff, then one last Event names the batches left running, as
    # does the log.
    logged = [r.getMessage() for r in caplog.records]
    for name, reason in (
        ("stuck", "BatchCancelAbandoned"),
        ("skipped", "BatchCancelSkipped"),
        ("moved", "BatchCancelAbandoned"),
    ):
        [last] = events(env, name, reason)
        assert last.type == "Warning"
        assert all(i in last.message for i in batches[name]), last.message
        assert any(all(i in line for i in batches[name]) for line in logged), logged
    assert len(events(env, "stuck", "BatchCancelRetrying")) >= 2
    assert "HTTP 503" in events(env, "stuck", "BatchCancelRetrying")[-1].message
    moved = events(env, "moved", "BatchCancelRetrying")[-1].message
    assert f"spec.judge.openai.baseUrl '{moved_url}'" in moved
    # No key went to the disallowed URL: none of moved's batches saw a cancel call.
    cancels = [c.path for c in env.server.calls_to("POST", "/v1/batches/")]
    assert not [p for p in cancels if any(i in p for i in batches["moved"])]
    assert [p for p in cancels if any(i in p for i in batches["stuck"])]
    assert statuses(env, set().union(*batches.values())) == {"in_progress"}
