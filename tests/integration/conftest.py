"""Fixtures for tests against a real local Kubernetes control plane.

When any collected test is marked ``cluster``, the binaries are built (or found in the cache)
once, right after collection, outside any test's timeout. A build failure makes every cluster
test fail with the build error; nothing is skipped. The session shares one control plane and
one test kubelet; each test gets a fresh namespace, deleted afterwards. When a test fails,
the tail of the control-plane logs and of the pod logs is attached to its report.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from synthpref_operator.devcluster.binaries import BinariesError, build_binaries
from synthpref_operator.devcluster.controlplane import ControlPlane
from synthpref_operator.devcluster.kubelet import TestKubelet

_BIN_DIR_KEY = pytest.StashKey[Path]()
_BUILD_ERROR_KEY = pytest.StashKey[str]()
_CP_KEY = pytest.StashKey[ControlPlane]()
_KUBELET_KEY = pytest.StashKey[TestKubelet]()
_NS_KEY = pytest.StashKey[str]()

SESSION_GPUS = int(os.environ.get("SYNTHPREF_TEST_GPUS", "2"))

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
Helm = Callable[..., subprocess.CompletedProcess[str]]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or reuse) the binaries once, before any test's timeout starts."""
    if not any(item.get_closest_marker("cluster") for item in session.items):
        return
    config = session.config
    capman: Any = config.pluginmanager.getplugin("capturemanager")
    reporter: Any = config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("cluster tests: building or reusing kube binaries ...")
    try:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                config.stash[_BIN_DIR_KEY] = build_binaries()
        else:
            config.stash[_BIN_DIR_KEY] = build_binaries()
    except BinariesError as e:
        config.stash[_BUILD_ERROR_KEY] = str(e)


@pytest.fixture(scope="session")
def kube_bin_dir(pytestconfig: pytest.Config) -> Path:
    """Directory with etcd, kube-apiserver, kube-controller-manager, kubectl and helm."""
    error = pytestconfig.stash.get(_BUILD_ERROR_KEY, None)
    if error is not None:
        pytest.fail(f"kube binaries could not be built: {error}", pytrace=False)
    bin_dir = pytestconfig.stash.get(_BIN_DIR_KEY, None)
    if bin_dir is None:
        try:
            bin_dir = build_binaries()
        except BinariesError as e:
            pytest.fail(f"kube binaries could not be built: {e}", pytrace=False)
        pytestconfig.stash[_BIN_DIR_KEY] = bin_dir
    return bin_dir


@pytest.fixture(scope="session")
def control_plane(
    kube_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver + kube-controller-manager for the session."""
    cp = ControlPlane(
        kube_bin_dir,
        tmp_path_factory.mktemp("controlplane"),
        terminated_pod_gc_threshold=50,
    )
    cp.start()
    pytestconfig.stash[_CP_KEY] = cp
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """Path of the admin kubeconfig."""
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def k8s_api_client(control_plane: ControlPlane) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` authenticated as cluster admin."""
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def test_kubelet(
    control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[TestKubelet]:
    """The session's test kubelet (``SYNTHPREF_TEST_GPUS`` GPU slots, default 2)."""
    kubelet = TestKubelet(
        control_plane.api_client(), gpus=SESSION_GPUS, work_dir=tmp_path_factory.mktemp("kubelet")
    )
    kubelet.start()
    pytestconfig.stash[_KUBELET_KEY] = kubelet
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, k8s_api_client: Any, test_kubelet: TestKubelet
) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted after the test."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_api_client)
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_sa_exists() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    test_kubelet.wait_until(default_sa_exists, timeout=30)
    request.node.stash[_NS_KEY] = name
    try:
        yield name
    finally:
        test_kubelet.clear_faults()
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def kubectl(kube_bin_dir: Path, kubeconfig: Path) -> Kubectl:
    """Run kubectl against the cluster: ``kubectl("get", "ns")`` -> CompletedProcess."""

    def run(
        *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kube_bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            check=check,
            timeout=60,
        )

    return run


@pytest.fixture(scope="session")
def helm(kube_bin_dir: Path, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Run helm against the cluster: ``helm("list", "-A")`` -> CompletedProcess.

    Helm's cache, config and data directories are the session's own (nothing of the user's
    is read or written), and no HELM_* or KUBECONFIG setting of the caller leaks in.
    """
    home = tmp_path_factory.mktemp("helm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
    env |= {f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}

    def run(
        *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(kube_bin_dir / "helm"), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            check=check,
            timeout=timeout,
            env=env,
        )

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach control-plane and pod log tails to the report of a failed cluster test."""
    report = yield
    if report.failed and item.get_closest_marker("cluster") is not None:
        cp = item.config.stash.get(_CP_KEY, None)
        if cp is not None:
            report.sections.append(("control plane logs (tail)", cp.log_tail(40)))
        kubelet = item.config.stash.get(_KUBELET_KEY, None)
        if kubelet is not None:
            ns = item.stash.get(_NS_KEY, None)
            report.sections.append(("test kubelet pod logs (tail)", kubelet.log_tail(ns, 20)))
    return report
