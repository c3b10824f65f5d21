"""What a newcomer sees when a run is stuck or fails, against the real control plane (fixtures
and helpers from `test_operator_run.py`): a run whose Secret lacks its key, or whose storage
cannot be reached, is Pending with `Blocked` and one Warning Event naming the cause, in
`kubectl get prun -o wide`, and goes on once fixed; a failed worker's `Error:` line reaches
the run's message and `kubectl describe`; a Failed run retried with the `synthpref.dev/retry`
annotation after a fix reaches Succeeded reusing every committed shard."""

from __future__ import annotations

import base64
import re
import socket
from typing import Any

import pytest
from kubernetes import client

from synthpref import layout
from synthpref_operator.names import ANNOTATION_RETRY
from tests.integration import test_operator_run as base
from tests.integration.test_operator_admission import condition, events
from tests.support.polling import wait_for
from tests.support.s3 import FAKE_CREDENTIALS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]

env = base.env  # the fixture, shared with test_operator_run.py
Env = base.Env


def wide_row(env: Env, name: str) -> dict[str, str]:
    """The run's row of `kubectl get prun -o wide`, by column header."""
    table = env.kubectl("get", "prun", name, "-n", env.namespace, "-o", "wide").stdout
    header, line = table.splitlines()[:2]
    # Cut the row where the (left-aligned) headers start: cells may be empty or hold spaces.
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    heads = header.split()
    return {h: line[a:b].strip() for h, a, b in zip(heads, starts, ends, strict=True)}


def wait_blocked(env: Env, name: str, reason: str) -> dict[str, str]:
    def seen() -> dict[str, str] | None:
        row = wide_row(env, name)
        return row if row.get("BLOCKED") == reason else None

    found: dict[str, str] = wait_for(seen, 120, f"{name}: BLOCKED {reason}")
    return found


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def warned_once(env: Env, name: str, reason: str) -> bool:
    """One Warning Event for `reason`: the operator posts it just after the status that shows
    the cause, so wait for it rather than read the events at once."""
    kinds: list[str] = wait_for(
        lambda: [e.type for e in events(env, name, reason)] or None, 60, f"{name}: {reason} Event"
    )
    return kinds == ["Warning"]


def test_missing_secret_key_and_unreachable_storage_say_why(env: Env) -> None:
    core = client.CoreV1Api(env.api)
    secret = core.read_namespaced_secret("s3", env.namespace)
    secret.data = {"secret": base64.b64encode(b"x").decode()}  # no "id"
    core.replace_namespaced_secret("s3", env.namespace, secret)
    dead = f"http://127.0.0.1:{closed_port()}"
    operator = env.operator(
        allowed_endpoints=[env.server.base_url, env.s3_endpoint, dead],
        # The second run uses the operator's own S3 identity: granted for this prefix.
        operator_storage={env.namespace: [env.s3_uri]},
    )
    try:
        env.apply(env.manifest("nokey"))
        row = wait_blocked(env, "nokey", "SecretKeyMissing")
        assert row["PHASE"] == "Pending"
        assert row["MESSAGE"].startswith(
            f"blocked: Secret {env.namespace}/s3 has no key 'id' (its keys: secret)"
        )
        assert warned_once(env, "nokey", "SecretKeyMissing")
        assert env.jobs() == {}
        storage = env.manifest("nos3")
        storage["spec"]["storage"]["endpointUrl"] = dead
        del storage["spec"]["storage"]["credentials"]  # the operator's own (no Secret to read)
        env.apply(storage)
        row = wait_blocked(env, "nos3", "StorageUnreachable")
        assert row["PHASE"] == "Pending" and dead in row["MESSAGE"]
        assert warned_once(env, "nos3", "StorageUnreachable")
        # Fixed: the run goes on by itself, Blocked back to False.
        secret = core.read_namespaced_secret("s3", env.namespace)
        key_id = base64.b64encode(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"].encode()).decode()
        secret.data = {**(secret.data or {}), "id": key_id}
        core.replace_namespaced_secret("s3", env.namespace, secret)
        wait_for(lambda: "nokey-prepare" in env.jobs(), 120, "the prepare Job")
        blocked = wait_for(
            lambda: (c := condition(env, "nokey", "Blocked")) and c["status"] == "False" and c,
            60,
            "nokey: Blocked=False",
        )
        assert blocked["reason"] == "NotBlocked"
        # Still one Warning for the one cause, however many passes saw it.
        assert len(events(env, "nokey", "SecretKeyMissing")) == 1
    finally:
        operator.stop()


def test_worker_error_reaches_the_run_and_retry_reuses_committed_shards(env: Env) -> None:
    document = env.manifest("typo")
    document["spec"]["models"][2]["path"] = "gamma-typo"  # the server serves no such model yet
    operator = env.operator()
    try:
        env.apply(document)
        failed = env.wait_phase("typo", {"Failed", "Succeeded"}, timeout=240)["status"]
        assert failed["phase"] == "Failed", failed
        # The model, its shards and the worker's own error line, from its termination message.
        message = failed["message"]
        assert message.startswith("model gamma: shard(s) "), message
        assert "does not serve model 'gamma-typo'" in message, message
        described = env.kubectl("describe", "prun", "typo", "-n", env.namespace).stdout
        assert "does not serve model 'gamma-typo'" in described
        storage = env.storage()

        def markers() -> dict[str, list[Any]]:
            return {
                m: [storage.committed(layout.generation_shard(m, s)) for s in range(3)]
                for m in ("alpha", "beta", "delta")
            }

        # The other models' Jobs run on after the run failed, and commit their shards.
        def all_committed() -> dict[str, list[Any]] | None:
            seen = markers()
            return seen if all(all(m) for m in seen.values()) else None

        committed = wait_for(all_committed, 120, "alpha, beta and delta committed")
        wait_for(
            lambda: all(r.finished for r in env.kubelet.runs_in(env.namespace)), 60, "pods done"
        )
        before = {r.name for r in env.kubelet.runs_in(env.namespace)}
        # Fix what was broken (the endpoint now serves the model), then retry.
        assert env.server.models is not None
        env.server.models.add("gamma-typo")
        env.kubectl("annotate", "prun", "typo", "-n", env.namespace, f"{ANNOTATION_RETRY}=1")
        done = env.wait_phase("typo", {"Succeeded"}, timeout=240)["status"]
    finally:
        operator.stop()
    assert done["retryToken"] == "1"
    assert [e.type for e in events(env, "typo", "Retried")] == ["Normal"]
    # Only gamma was generated again; every other shard committed before was reused.
    again = [r for r in env.kubelet.runs_in(env.namespace) if r.name not in before]
    generated = {r.labels.get("synthpref.dev/model") for r in again if "-generate-" in r.name}
    assert generated == {"gamma"}
    assert markers() == committed
