"""Run etcd, kube-apiserver and kube-controller-manager as local processes.

`ControlPlane` picks free loopback ports, generates a CA, serving and client certificates and
a service-account signing key in a work directory, starts the three components there, waits
for them to be healthy and writes an admin kubeconfig (a client certificate in group
``system:masters``). Each component logs to ``<work_dir>/logs/<name>.log``; `log_tail` returns
the last lines of them for test failure reports. `stop` terminates the components in reverse
order (SIGTERM, wait, SIGKILL).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from synthpref_operator.devcluster.pki import CertificateAuthority, CertPair, write_signing_key_pair

# Controllers of kube-controller-manager that the local cluster runs. Enough for Jobs,
# CronJobs, Deployments, garbage collection, namespace deletion, default ServiceAccounts and
# ResourceQuotas.
DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "resourcequota-controller",
)

SERVICE_CIDR = "10.96.0.0/16"
# How long the API server keeps Events (its default, 1h, and the 10m this once used, lose a
# run's story over a lunch break; a dev cluster's Events are few).
EVENT_TTL = "24h"
PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """A component failed to start or became unhealthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    """Ask Linux to SIGTERM this child when the process that started it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    args: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start ``args`` in its own process group with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if os.name == "posix" else None,  # noqa: PLW1509
        )
    except BaseException:
        log.close()
        raise
    return proc, log


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it. Returns the code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    # Reap anything left in the group (children of the component).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def tail_file(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 200 * max(lines, 1) - 4096))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass
class _Component:
    name: str
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]
    log_path: Path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback ports in ``work_dir``.

    Use as a context manager or call `start` / `stop`. After `start`, `kubeconfig` is an admin
    kubeconfig and `server` the apiserver URL.
    """

    def __init__(
        self,
        bin_dir: Path,
        work_dir: Path | None = None,
        *,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        terminated_pod_gc_threshold: int = 1000,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        start_timeout: float = 180.0,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self._own_work_dir = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="synthpref-cp-")) if work_dir is None else Path(work_dir)
        )
        self.controllers = tuple(controllers)
        self.terminated_pod_gc_threshold = terminated_pod_gc_threshold
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.extra_controller_manager_args = tuple(extra_controller_manager_args)
        self.start_timeout = start_timeout
        self.pki_dir = self.work_dir / "pki"
        self.log_dir = self.work_dir / "logs"
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.etcd_port = 0
        self.apiserver_port = 0
        self.controller_manager_port = 0
        self.startup_seconds: float | None = None
        self._components: list[_Component] = []
        self._ca: CertificateAuthority | None = None
        self._admin: CertPair | None = None

    # ------------------------------------------------------------------ properties
    @property
    def server(self) -> str:
        """The apiserver's URL."""
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_path(self) -> Path:
        """Path of the cluster CA certificate."""
        return self.pki_dir / "ca.crt"

    @property
    def running(self) -> bool:
        """True while every started component is alive."""
        return bool(self._components) and all(c.proc.poll() is None for c in self._components)

    def pids(self) -> dict[str, int]:
        """Process ids of the components, by name."""
        return {c.name: c.proc.pid for c in self._components}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start all components and wait until they are healthy (raises `ControlPlaneError`)."""
        if self._components:
            raise ControlPlaneError("control plane already started")
        for binary in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if not os.access(self.bin_dir / binary, os.X_OK):
                raise ControlPlaneError(f"missing binary {self.bin_dir / binary}")
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._make_pki()
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self.write_kubeconfig(self.kubeconfig)
            self._start_controller_manager(deadline)
        except BaseException:
            tail = self.log_tail(40)
            self.stop(remove_work_dir=False)
            if isinstance(tail, str) and tail:
                raise ControlPlaneError(
                    f"control plane failed to start; logs in {self.log_dir}\n{tail}"
                ) from None
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self, *, remove_work_dir: bool | None = None) -> None:
        """Stop the components in reverse start order; remove a temp work dir we created."""
        for comp in reversed(self._components):
            terminate(comp.proc, timeout=10.0)
            comp.log_file.close()
        self._components.clear()
        if remove_work_dir is None:
            remove_work_dir = self._own_work_dir and not os.environ.get("SYNTHPREF_KEEP_CLUSTER")
        if remove_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise `ControlPlaneError` if a component has exited."""
        for comp in self._components:
            code = comp.proc.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{comp.name} exited with code {code}\n{tail_file(comp.log_path, 40)}"
                )

    # ------------------------------------------------------------------ logs
    def log_paths(self) -> dict[str, Path]:
        """Log file of each component, by name."""
        return {
            name: self.log_dir / f"{name}.log"
            for name in ("etcd", "kube-apiserver", "kube-controller-manager")
        }

    def log_tail(self, lines: int = 50, components: Sequence[str] | None = None) -> str:
        """The last ``lines`` lines of each component's log, with a header per component."""
        parts = []
        for name, path in self.log_paths().items():
            if components is not None and name not in components:
                continue
            text = tail_file(path, lines)
            if text:
                parts.append(f"----- {name} ({path}) -----\n{text}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ kubeconfigs
    def write_kubeconfig(
        self,
        path: Path,
        *,
        user: str = "admin",
        groups: Sequence[str] = ("system:masters",),
        token: str | None = None,
        namespace: str | None = None,
    ) -> Path:
        """Write a kubeconfig for ``user`` (client cert in ``groups``) or for a bearer ``token``.

        The admin kubeconfig is written by `start`; call this for other users, e.g. to test
        RBAC: ``cp.write_kubeconfig(p, user="alice", groups=())``.
        """
        if self._ca is None:
            raise ControlPlaneError("control plane not started")
        user_entry: dict[str, Any]
        if token is not None:
            user_entry = {"token": token}
        else:
            if user == "admin" and tuple(groups) == ("system:masters",) and self._admin:
                pair = self._admin
            else:
                stem = "user-" + "".join(ch if ch.isalnum() else "-" for ch in user)
                pair = self._ca.issue(stem, user, organizations=tuple(groups))
            user_entry = {
                "client-certificate-data": _b64(pair.cert_pem),
                "client-key-data": _b64(pair.key_pem),
            }
        return write_kubeconfig_file(
            path, self.server, self.ca_path.read_bytes(), user, user_entry, namespace
        )

    def write_service_account_kubeconfig(
        self, path: Path, namespace: str, name: str, expiration_seconds: int = 3600
    ) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        Uses the TokenRequest API; the ServiceAccount must exist.
        """
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        url = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        reply = self.request("POST", url, body)
        token = str(reply["status"]["token"])
        return self.write_kubeconfig(
            path, user=f"system:serviceaccount:{namespace}:{name}", token=token, namespace=namespace
        )

    def api_client(self) -> Any:
        """A new `kubernetes.client.ApiClient` for the admin kubeconfig."""
        from kubernetes import config

        load: Any = config.new_client_from_config
        return load(config_file=str(self.kubeconfig))

    # ------------------------------------------------------------------ raw HTTP
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if self._admin is not None:
            ctx.load_cert_chain(str(self._admin.cert_path), str(self._admin.key_path))
        return ctx

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """An admin request to the apiserver; returns the decoded JSON reply."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as resp:
            return json.loads(resp.read() or b"null")

    # ------------------------------------------------------------------ internals
    def _make_pki(self) -> None:
        self._ca = CertificateAuthority(self.pki_dir)
        self._ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
        )
        self._admin = self._ca.issue("admin", "admin", organizations=("system:masters",))
        write_signing_key_pair(self.pki_dir, "sa")

    def _spawn(self, name: str, args: Sequence[str]) -> _Component:
        log_path = self.log_dir / f"{name}.log"
        proc, log = spawn(args, log_path, cwd=self.work_dir)
        comp = _Component(name, proc, log, log_path)
        self._components.append(comp)
        return comp

    def _wait(
        self, comp: _Component, url: str, deadline: float, ctx: ssl.SSLContext | None
    ) -> None:
        last = ""
        while time.monotonic() < deadline:
            code = comp.proc.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{comp.name} exited with code {code} during start-up\n"
                    f"{tail_file(comp.log_path, 40)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[-300:]!r}"
            except (OSError, ssl.SSLError) as e:
                last = repr(e)
            time.sleep(0.2)
        raise ControlPlaneError(f"{comp.name} not healthy at {url} in time (last: {last})")

    def _start_etcd(self, deadline: float) -> None:
        self.etcd_port = free_port()
        peer_port = free_port()
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        comp = self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=synthpref",
                f"--data-dir={self.work_dir / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=synthpref={peer_url}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--snapshot-count=10000",
                "--log-level=warn",
            ],
        )
        self._wait(comp, f"{client_url}/health", deadline, None)

    def _start_apiserver(self, deadline: float) -> None:
        self.apiserver_port = free_port()
        pki = self.pki_dir
        comp = self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--endpoint-reconciler-type=none",
                # The test kubelet's node names no resolvable host: reach it by its address.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--event-ttl={EVENT_TTL}",
                "--v=1",
                *self.extra_apiserver_args,
            ],
        )
        self._wait(comp, f"{self.server}/readyz", deadline, self._ssl_context())

    def _start_controller_manager(self, deadline: float) -> None:
        self.controller_manager_port = free_port()
        pki = self.pki_dir
        kubeconfig = str(self.kubeconfig)
        comp = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.work_dir / 'kcm-certs'}",
                f"--controllers={','.join(self.controllers)}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--terminated-pod-gc-threshold={self.terminated_pod_gc_threshold}",
                "--concurrent-job-syncs=10",
                "--concurrent-gc-syncs=10",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
                "--v=2",
                *self.extra_controller_manager_args,
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            comp, f"https://127.0.0.1:{self.controller_manager_port}/healthz", deadline, insecure
        )


def write_kubeconfig_file(
    path: Path,
    server: str,
    ca_pem: bytes | None,
    user: str,
    credentials: dict[str, Any],
    namespace: str | None = None,
) -> Path:
    """Write a one-context kubeconfig (mode 0600): ``user`` with ``credentials`` (a token, or
    client certificate data) at ``server``, trusting ``ca_pem``."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = _b64(ca_pem)
    context: dict[str, Any] = {"cluster": "synthpref-dev", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "synthpref-dev", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "synthpref-dev", "context": context}],
        "current-context": "synthpref-dev",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
