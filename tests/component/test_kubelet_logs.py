"""The test kubelet's log endpoint on its own, over HTTPS on loopback as the API server calls
it: a container's log, its tail, its previous run, 404s, and `follow` streaming until the
container ends (`kubectl logs` through the real API server: tests/integration)."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthpref_operator.devcluster.kubelet_logs import ContainerLog, LogServer


class Pod:
    def __init__(self, directory: Path) -> None:
        self.current = directory / "container.1.log"
        self.previous = directory / "container.log"
        self.previous.write_text("old run\n")
        self.current.write_text("a\nb\nc\n")
        self.running = True

    def lookup(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> ContainerLog | None:
        if (namespace, pod) != ("ns", "p"):
            return None
        return ContainerLog(self.previous if previous else self.current, lambda: self.running)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Pod, str]]:
    pod = Pod(tmp_path)
    server = LogServer(pod.lookup, tmp_path / "pki", "node")
    server.start()
    try:
        yield pod, f"https://127.0.0.1:{server.port}/containerLogs/ns"
    finally:
        pod.running = False
        server.stop()


def get(url: str) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as the API server without --kubelet-certificate-authority
    try:
        with urllib.request.urlopen(url, context=context, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_log_tail_previous_and_missing(served: tuple[Pod, str]) -> None:
    _, base = served
    assert get(f"{base}/p/main") == (200, "a\nb\nc\n")
    assert get(f"{base}/p/main?tailLines=2") == (200, "b\nc\n")
    assert get(f"{base}/p/main?limitBytes=3") == (200, "a\nb")
    assert get(f"{base}/p/main?previous=true") == (200, "old run\n")
    assert get(f"{base}/other/main")[0] == 404
    assert get(base.replace("/containerLogs/ns", "/pods"))[0] == 404


def test_follow_streams_until_the_container_ends(served: tuple[Pod, str]) -> None:
    pod, base = served

    def grow() -> None:
        for line in ("d\n", "e\n"):
            time.sleep(0.5)
            with pod.current.open("a") as log:
                log.write(line)
        time.sleep(0.5)
        pod.running = False

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        assert get(f"{base}/p/main?follow=true") == (200, "a\nb\nc\nd\ne\n")
    finally:
        writer.join()
