"""A test kubelet: runs the pods of a local control plane as local processes.

`TestKubelet` registers one fake Node (Ready, with ``nvidia.com/gpu`` capacity equal to its GPU
slots), watches pods, binds pending pods without ``nodeName`` when enough GPU slots are free
(otherwise it marks them ``PodScheduled=False/Unschedulable``), runs the first container's
``command`` + ``args`` as a subprocess with the pod's environment resolved (``value``,
``valueFrom`` field/secret/config-map refs, ``envFrom``) on top of the test process's own
environment, and writes pod status through the status subresource (Pending -> Running ->
Succeeded/Failed with a terminated container state). When a pod is deleted it stops the
process (SIGTERM, then SIGKILL after the grace period, capped at 10 s), marks the pod Failed
if it was still running and deletes it with grace period 0 (as a real kubelet does);
finalizers such as the Job controller's ``batch.kubernetes.io/job-tracking`` are left to
their owners.

Termination messages: the container's ``terminationMessagePath`` (default
``/dev/termination-log``) is "mounted" like an emptyDir: a fresh empty file per run of the
container, to which that path in ``env`` and ``command``/``args`` is rewritten. When the
container ends, its terminated state's ``message`` is that file's content, or, when the file
is empty, the container failed and its ``terminationMessagePolicy`` is ``FallbackToLogsOnError``,
the last 80 lines (at most 2 KiB) of its log, as a real kubelet reports them.

Faults for tests (`Fault`): fail with an exit code, OOM-kill (exit 137, reason ``OOMKilled``),
kill mid-run, or delay the start, for the first N pods matching a predicate.

Service-account credentials: instead of mounting a projected token at
``/var/run/secrets/kubernetes.io/serviceaccount`` (processes here share one filesystem), the
kubelet asks the TokenRequest API for a token of the pod's ServiceAccount and hands the process
a kubeconfig with it in ``$KUBECONFIG`` (unless ``automountServiceAccountToken: false``). So a
pod talks to the API server as its ServiceAccount, under the same RBAC as in a real cluster.

Volumes: each ``emptyDir`` volume becomes a directory of its own under the pod's work dir
(``volumes/<name>``, kept across container restarts, as an emptyDir lives as long as its pod).
A process has no mount namespace here, so the kubelet cannot mount it at its ``mountPath``;
instead every value of the container's own ``env`` and every ``command``/``args`` item (after
``$(VAR)`` expansion), and ``workingDir``, that is a mounted path or starts with one
(``/tmp``, ``/tmp/x``, not ``/tmpx``) is rewritten to that directory (the longest mount path
wins; ``subPath`` is honoured). The rewritten paths go through a short symlink to the pod's
``volumes`` (``<tmp>/synthpref-v-*/<uid>``): vLLM puts its ZMQ IPC sockets in $TMPDIR, and a
Unix socket's path must stay under 108 bytes, as it does with a real ``/tmp`` mount. So a
worker told ``TMPDIR=/tmp`` and ``HOME=/home/synthpref`` writes into its pod's own
directories. A path the process computes some other way, or one inside a file it reads (the
run manifest, for instance), is not rewritten, and writes outside the volumes are not
prevented. Other volume kinds are ignored.

``kubectl logs [-f]`` works: the node's ``daemonEndpoints`` name the kubelet log endpoint that
`kubelet_logs.LogServer` serves on loopback from the pods' log files.

There are no containers, images, probes or init containers here, and
``securityContext`` (user, capabilities, seccomp, read-only root filesystem) and resource
requests and limits are ignored: pods run as the test process's user, with its limits. A pod's
output is in `PodRun.log_path` (see `pod_log`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from synthpref_operator.devcluster.controlplane import spawn, tail_file, write_kubeconfig_file
from synthpref_operator.devcluster.kubelet_logs import ContainerLog, LogServer

Pod = dict[str, Any]
PodPredicate = Callable[[Pod], bool]
FaultKind = Literal["fail", "oom", "kill", "delay"]

GPU_RESOURCE = "nvidia.com/gpu"
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
MAX_GRACE_SECONDS = 10.0  # a deleted pod's SIGTERM grace period, at most
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The kubelet's limits on a termination message (kubecontainer's MaxContainerTermination*).
MAX_TERMINATION_MESSAGE_BYTES = 4096
MAX_FALLBACK_LOG_LINES = 80
MAX_FALLBACK_LOG_BYTES = 2048
_TERMINAL = ("Succeeded", "Failed")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def now_rfc3339() -> str:
    """The current time as the apiserver formats it (seconds precision, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def completion_index(pod: Pod) -> int | None:
    """The pod's Indexed-Job completion index, from its annotation or label."""
    meta = pod.get("metadata") or {}
    for source in ("annotations", "labels"):
        value = (meta.get(source) or {}).get(COMPLETION_INDEX_KEY)
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def pod_gpus(pod: Pod) -> int:
    """GPU slots a pod asks for: the sum of its containers' ``nvidia.com/gpu`` limits/requests."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        value = (res.get("limits") or {}).get(GPU_RESOURCE)
        if value is None:
            value = (res.get("requests") or {}).get(GPU_RESOURCE)
        if value is not None:
            total += int(str(value))
    return total


# ---------------------------------------------------------------------- predicates
def name_prefix(prefix: str) -> PodPredicate:
    """Match pods whose name starts with ``prefix``."""
    return lambda pod: str(pod["metadata"].get("name", "")).startswith(prefix)


def has_label(key: str, value: str | None = None) -> PodPredicate:
    """Match pods with label ``key`` (equal to ``value`` when given)."""

    def match(pod: Pod) -> bool:
        labels = pod["metadata"].get("labels") or {}
        return key in labels and (value is None or labels[key] == value)

    return match


def job_index(index: int, job_name: str | None = None) -> PodPredicate:
    """Match pods of an Indexed Job (optionally a named one) with completion ``index``."""

    def match(pod: Pod) -> bool:
        if completion_index(pod) != index:
            return False
        if job_name is None:
            return True
        labels = pod["metadata"].get("labels") or {}
        return labels.get("batch.kubernetes.io/job-name", labels.get("job-name")) == job_name

    return match


def in_namespace(namespace: str) -> PodPredicate:
    """Match pods in ``namespace``."""
    return lambda pod: pod["metadata"].get("namespace") == namespace


@dataclass
class Fault:
    """A fault the kubelet injects into the next ``count`` pods that ``match``.

    ``fail``: the container exits with ``exit_code`` (reason Error) after ``after`` seconds
    without running its command, or, with ``run_command``, after running it (whatever the
    command returned). ``oom``: like ``fail`` with exit code 137 and reason OOMKilled; with
    ``run_command`` the command runs and is SIGKILLed after ``after`` seconds (if still
    running). ``kill``: the command runs and is SIGKILLed after ``after`` seconds (exit 137,
    reason Error). ``delay``: the command starts ``after`` seconds late.
    ``count=None`` means every matching pod. ``hits`` lists the pods it was applied to.
    """

    kind: FaultKind
    match: PodPredicate
    count: int | None = 1
    exit_code: int = 1
    after: float = 0.0
    run_command: bool = False
    hits: list[str] = field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        """True when the fault has been applied ``count`` times."""
        return self.count is not None and len(self.hits) >= self.count


@dataclass
class PodRun:
    """One run of a pod's container by the kubelet."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    command: list[str]
    log_path: Path
    gpus: int
    fault: FaultKind | None
    ran_command: bool
    started_at: float
    restart: int = 0
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None

    @property
    def completion_index(self) -> int | None:
        """The Indexed-Job completion index of the pod, if any."""
        return completion_index(
            {"metadata": {"labels": self.labels, "annotations": self.annotations}}
        )

    @property
    def finished(self) -> bool:
        """True once the process has exited."""
        return self.exit_code is not None

    def log(self) -> str:
        """The run's combined stdout and stderr."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class ConfigError(Exception):
    """The container's environment cannot be resolved yet (missing secret/config map)."""


@dataclass
class _PodState:
    uid: str
    namespace: str
    name: str
    gpus: int
    bound: bool = False
    finished: bool = False
    deleting: bool = False
    decided: bool = False
    fault: Fault | None = None
    start_after: float = 0.0
    pending_written: bool = False
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    run: PodRun | None = None
    kill_at: float | None = None
    kill_reason: str | None = None
    restart_count: int = 0
    restart_at: float | None = None
    last_state: dict[str, Any] | None = None
    started_rfc: str = ""
    pod_start_rfc: str = ""
    config_error: str | None = None
    termination_file: Path | None = None


class TestKubelet:
    """Plays the kubelet (and a GPU-aware scheduler) for one fake node.

    ``api_client`` is a `kubernetes.client.ApiClient` (see `ControlPlane.api_client`).
    ``namespace`` limits it to one namespace (default: all). Start with `start` (or as a
    context manager); `stop` kills every running pod process and removes the node.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        api_client: Any,
        *,
        node_name: str = "synthpref-node",
        gpus: int = 1,
        cpu: str = "16",
        memory: str = "64Gi",
        max_pods: int = 110,
        namespace: str | None = None,
        work_dir: Path | None = None,
        node_labels: dict[str, str] | None = None,
        inherit_env: bool = True,
        extra_env: dict[str, str] | None = None,
        python_executable: str = sys.executable,
        resync_seconds: float = 0.1,
    ) -> None:
        from kubernetes import client

        self._client_mod = client
        self._configuration = api_client.configuration
        self.api = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.gpus = gpus
        self.cpu = cpu
        self.memory = memory
        self.max_pods = max_pods
        self.namespace = namespace
        self._own_work_dir = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="synthpref-kubelet-"))
            if work_dir is None
            else Path(work_dir)
        )
        self.node_labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(node_labels or {}),
        }
        self.inherit_env = inherit_env
        self.extra_env = dict(extra_env or {})
        self.python_executable = python_executable
        self.resync_seconds = resync_seconds
        self.max_gpus_in_use = 0
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cache: dict[str, Pod] = {}
        self._cache_lock = threading.Lock()
        self._synced = threading.Event()
        self._states: dict[str, _PodState] = {}
        self._runs: list[PodRun] = []
        self._faults: list[Fault] = []
        self._threads: list[threading.Thread] = []
        self._volume_links: Path | None = None  # short paths to the pods' volumes
        self._logs: LogServer | None = None  # the kubelet log endpoint (`kubectl logs`)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TestKubelet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Start the log endpoint, register the node and start the watch and sync threads."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self._logs is None:
            self._logs = LogServer(self.container_log, self.work_dir / "pki", self.node_name)
            self._logs.start()
        self._register_node()
        self._stop.clear()
        for target, name in ((self._watch_loop, "watch"), (self._sync_loop, "sync")):
            t = threading.Thread(target=target, name=f"test-kubelet-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if not self._synced.wait(timeout):
            self.stop()
            raise RuntimeError("test kubelet: initial pod list did not arrive")

    def stop(self, *, delete_node: bool = True) -> None:
        """Stop the threads, kill all pod processes and (by default) delete the node."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=15)
        self._threads.clear()
        with self._lock:
            for st in self._states.values():
                self._kill(st)
                if st.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        st.proc.wait(5)
                self._close_log(st)
        if self._logs is not None:
            self._logs.stop()
            self._logs = None
        if delete_node:
            with contextlib.suppress(Exception):
                self._call(self.api.delete_node, self.node_name)
        if self._volume_links is not None:
            shutil.rmtree(self._volume_links, ignore_errors=True)  # the links, not the volumes
            self._volume_links = None
        if self._own_work_dir and not os.environ.get("SYNTHPREF_KEEP_CLUSTER"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------------ faults
    def inject(self, fault: Fault) -> Fault:
        """Register a fault; it applies to pods whose containers start from now on."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(
        self,
        match: PodPredicate,
        exit_code: int = 1,
        *,
        count: int | None = 1,
        after: float = 0.0,
        run_command: bool = False,
    ) -> Fault:
        """Fail the next ``count`` matching pods with ``exit_code``."""
        return self.inject(Fault("fail", match, count, exit_code, after, run_command))

    def oom(
        self,
        match: PodPredicate,
        *,
        count: int | None = 1,
        after: float = 0.0,
        run_command: bool = False,
    ) -> Fault:
        """OOM-kill the next ``count`` matching pods (exit 137, reason OOMKilled)."""
        return self.inject(Fault("oom", match, count, 137, after, run_command))

    def kill(self, match: PodPredicate, *, after: float, count: int | None = 1) -> Fault:
        """SIGKILL the next ``count`` matching pods ``after`` seconds into their run."""
        return self.inject(Fault("kill", match, count, 137, after, True))

    def delay(self, match: PodPredicate, seconds: float, *, count: int | None = 1) -> Fault:
        """Start the next ``count`` matching pods ``seconds`` late."""
        return self.inject(Fault("delay", match, count, 0, seconds, True))

    def clear_faults(self) -> None:
        """Forget all registered faults."""
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------------ inspection
    @property
    def runs(self) -> list[PodRun]:
        """Every container run so far, in start order (a copy)."""
        with self._lock:
            return list(self._runs)

    def runs_in(self, namespace: str) -> list[PodRun]:
        """Runs of pods in ``namespace``."""
        return [r for r in self.runs if r.namespace == namespace]

    def gpus_in_use(self) -> int:
        """GPU slots held by bound, unfinished pods."""
        with self._lock:
            return self._gpus_in_use()

    def pod_log(self, namespace: str, name: str) -> str:
        """Output of the latest run of pod ``namespace/name`` ('' if it never ran)."""
        for run in reversed(self.runs):
            if run.namespace == namespace and run.name == name:
                return run.log()
        return ""

    def container_log(
        self, namespace: str, name: str, container: str, previous: bool
    ) -> ContainerLog | None:
        """The log of a pod's current (or previous) run, for the log endpoint."""
        with self._lock:
            runs = [r for r in self._runs if r.namespace == namespace and r.name == name]
        if previous:
            runs = runs[:-1]
        if not runs:
            return None
        run = runs[-1]
        return ContainerLog(run.log_path, lambda: not run.finished)

    def log_tail(self, namespace: str | None = None, lines: int = 20) -> str:
        """The last lines of each pod run's output (for failure reports)."""
        parts = []
        for run in self.runs:
            if namespace is not None and run.namespace != namespace:
                continue
            state = "running" if run.exit_code is None else f"exit {run.exit_code} {run.reason}"
            text = tail_file(run.log_path, lines)
            parts.append(f"----- pod {run.namespace}/{run.name} ({state}) -----\n{text}")
        if self.errors:
            parts.append("----- test kubelet errors -----\n" + "\n".join(self.errors[-20:]))
        return "\n".join(parts)

    def wait_until(
        self, condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.1
    ) -> None:
        """Poll ``condition`` until it is true; raise `TimeoutError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    # ------------------------------------------------------------------ API helpers
    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a generated API method without model (de)serialization; return the JSON."""
        resp = method(*args, _preload_content=False, **kwargs)
        try:
            return json.loads(resp.data or b"null")
        finally:
            resp.release_conn()

    def _patch_status(self, pod: Pod | _PodState, status: dict[str, Any]) -> bool:
        ns, name = (
            (pod.namespace, pod.name)
            if isinstance(pod, _PodState)
            else (pod["metadata"]["namespace"], pod["metadata"]["name"])
        )
        try:
            self._call(
                self.api.patch_namespaced_pod_status,
                name,
                ns,
                {"status": status},
                _content_type="application/strategic-merge-patch+json",
            )
        except self._client_mod.ApiException as e:
            if e.status == 404:
                return False
            self._error(f"status of {ns}/{name}: {e.status} {e.body!r:.300}")
            return False
        return True

    def _error(self, msg: str) -> None:
        self.errors.append(f"{now_rfc3339()} {msg}")
        del self.errors[:-200]

    def set_gpus(self, gpus: int) -> None:
        """Change the node's GPU slots (scheduling and the Node's capacity/allocatable)."""
        with self._lock:
            self.gpus = gpus
            self._call(
                self.api.patch_node_status,
                self.node_name,
                {
                    "status": {
                        "capacity": {GPU_RESOURCE: str(gpus)},
                        "allocatable": {GPU_RESOURCE: str(gpus)},
                    }
                },
                _content_type="application/strategic-merge-patch+json",
            )
        self._wake.set()

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self.node_labels},
        }
        client = self._client_mod
        try:
            self._call(self.api.create_node, client.V1Node.from_dict(body))
        except client.ApiException as e:
            if e.status != 409:
                raise
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.max_pods),
            GPU_RESOURCE: str(self.gpus),
        }
        now = now_rfc3339()
        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "synthpref test kubelet is ready",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            # Where the API server sends `kubectl logs` (see `kubelet_logs.py`).
            "daemonEndpoints": {
                "kubeletEndpoint": {"Port": self._logs.port if self._logs is not None else 0}
            },
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "synthpref-test-kubelet",
                "containerRuntimeVersion": "local-process://0",
                "osImage": "local",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self._call(
            self.api.patch_node_status,
            self.node_name,
            {"status": status},
            _content_type="application/strategic-merge-patch+json",
        )

    # ------------------------------------------------------------------ watch
    def _list(self) -> tuple[list[Pod], str]:
        if self.namespace:
            data = self._call(self.api.list_namespaced_pod, self.namespace)
        else:
            data = self._call(self.api.list_pod_for_all_namespaces)
        return list(data.get("items") or []), str(data["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> Any:
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": rv,
            "allow_watch_bookmarks": True,
            "timeout_seconds": 2,
            "_preload_content": False,
            "_request_timeout": (5, 10),
        }
        if self.namespace:
            return self.api.list_namespaced_pod(self.namespace, **kwargs)
        return self.api.list_pod_for_all_namespaces(**kwargs)

    @staticmethod
    def _lines(resp: Any) -> Iterator[bytes]:
        buf = b""
        for chunk in resp.stream(4096, decode_content=True):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield line
        if buf.strip():
            yield buf

    def _watch_loop(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    items, rv = self._list()
                    with self._cache_lock:
                        self._cache = {p["metadata"]["uid"]: p for p in items}
                    self._synced.set()
                    self._wake.set()
                resp = self._watch(rv)
                try:
                    for line in self._lines(resp):
                        event = json.loads(line)
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            rv = None  # e.g. 410 Gone: relist
                            break
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if kind == "BOOKMARK":
                            continue
                        uid = obj["metadata"]["uid"]
                        with self._cache_lock:
                            if kind == "DELETED":
                                self._cache.pop(uid, None)
                            else:
                                self._cache[uid] = obj
                        self._wake.set()
                        if self._stop.is_set():
                            break
                finally:
                    resp.close()
                    resp.release_conn()
            except Exception as e:
                if self._stop.is_set():
                    break
                self._error(f"watch: {e!r:.300}")
                rv = None
                self._stop.wait(0.5)

    # ------------------------------------------------------------------ sync
    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.resync_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                with self._lock:
                    self._sync()
            except Exception as e:
                self._error(f"sync: {e!r:.500}")
                self._stop.wait(0.2)

    def _gpus_in_use(self) -> int:
        return sum(s.gpus for s in self._states.values() if s.bound and not s.finished)

    def _pods_bound(self) -> int:
        return sum(1 for s in self._states.values() if s.bound and not s.finished)

    def _sync(self) -> None:
        with self._cache_lock:
            pods = list(self._cache.values())
        pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
        seen: set[str] = set()
        unbound: list[Pod] = []
        for pod in pods:
            meta, spec = pod["metadata"], pod.get("spec") or {}
            uid = meta["uid"]
            node = spec.get("nodeName") or ""
            st = self._states.get(uid)
            if node not in ("", self.node_name):
                continue
            seen.add(uid)
            if st is None:
                st = _PodState(uid, meta["namespace"], meta["name"], pod_gpus(pod))
                phase = (pod.get("status") or {}).get("phase")
                st.bound = node == self.node_name
                st.finished = phase in _TERMINAL
                self._states[uid] = st
            if node == self.node_name:
                st.bound = True
            if meta.get("deletionTimestamp"):
                self._handle_deletion(pod, st)
                continue
            if st.finished:
                continue
            if not st.bound:
                if not spec.get("schedulingGates"):
                    unbound.append(pod)
                continue
            if st.proc is None and st.restart_at is None:
                self._maybe_start(pod, st)
        # Pods that vanished (force-deleted): kill their processes, forget them.
        for uid in list(self._states):
            if uid not in seen:
                st = self._states.pop(uid)
                self._kill(st, "deleted")
                self._close_log(st)
        self._check_processes()
        self._schedule(unbound)
        self.max_gpus_in_use = max(self.max_gpus_in_use, self._gpus_in_use())

    # ---------------------------------------------------------------- scheduling
    def _schedule(self, unbound: list[Pod]) -> None:
        free = self.gpus - self._gpus_in_use()
        slots = self.max_pods - self._pods_bound()
        for pod in unbound:
            st = self._states[pod["metadata"]["uid"]]
            reason = self._unschedulable_reason(pod, st, free, slots)
            if reason is None:
                if self._bind(pod):
                    st.bound = True
                    free -= st.gpus
                    slots -= 1
                continue
            conds = (pod.get("status") or {}).get("conditions") or []
            already = any(
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("message") == reason
                for c in conds
            )
            if not already:
                self._patch_status(
                    pod,
                    {
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": reason,
                                "lastTransitionTime": now_rfc3339(),
                            }
                        ]
                    },
                )

    def _unschedulable_reason(self, pod: Pod, st: _PodState, free: int, slots: int) -> str | None:
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        if st.gpus > self.gpus:
            return f"0/1 nodes are available: 1 Insufficient {GPU_RESOURCE}."
        if st.gpus > free:
            return f"0/1 nodes are available: 1 Insufficient {GPU_RESOURCE} (all slots in use)."
        if slots <= 0:
            return "0/1 nodes are available: 1 Too many pods."
        return None

    def _bind(self, pod: Pod) -> bool:
        client = self._client_mod
        meta = pod["metadata"]
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=meta["name"], uid=meta["uid"]),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node_name),
        )
        try:
            self._call(
                self.api.create_namespaced_pod_binding, meta["name"], meta["namespace"], body
            )
        except client.ApiException as e:
            if e.status not in (404, 409):
                self._error(f"bind {meta['namespace']}/{meta['name']}: {e.status} {e.body!r:.300}")
            return False
        return True

    # ---------------------------------------------------------------- starting
    def _pick_fault(self, pod: Pod) -> Fault | None:
        for fault in self._faults:
            if fault.exhausted:
                continue
            try:
                hit = fault.match(pod)
            except Exception:
                hit = False
            if hit:
                fault.hits.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
                return fault
        return None

    def _maybe_start(self, pod: Pod, st: _PodState) -> None:
        now = time.monotonic()
        if not st.decided:
            st.decided = True
            st.fault = self._pick_fault(pod)
            st.pod_start_rfc = now_rfc3339()
            if st.fault is not None and st.fault.kind == "delay":
                st.start_after = now + st.fault.after
        if now < st.start_after:
            if not st.pending_written and st.config_error is None:
                st.pending_written = True
                self._write_waiting(pod, st, "ContainerCreating", "")
            return
        try:
            self._start(pod, st)
        except ConfigError as e:
            st.start_after = now + 1.0
            if st.config_error != str(e):
                st.config_error = str(e)
                self._write_waiting(pod, st, "CreateContainerConfigError", str(e))

    def _container(self, pod: Pod) -> dict[str, Any]:
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        first: dict[str, Any] = containers[0]
        return first

    def _write_waiting(self, pod: Pod, st: _PodState, reason: str, message: str) -> None:
        c = self._container(pod)
        status: dict[str, Any] = {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "startTime": st.pod_start_rfc or now_rfc3339(),
            "conditions": self._conditions(ready=False, ready_reason="ContainersNotReady"),
            "containerStatuses": [
                {
                    "name": c.get("name", "main"),
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": st.restart_count,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }
        self._patch_status(pod, status)

    def _conditions(self, *, ready: bool, ready_reason: str | None = None) -> list[dict[str, Any]]:
        now = now_rfc3339()
        out = []
        for ctype in ("PodReadyToStartContainers", "Initialized", "PodScheduled"):
            out.append({"type": ctype, "status": "True", "lastTransitionTime": now})
        for ctype in ("ContainersReady", "Ready"):
            cond: dict[str, Any] = {
                "type": ctype,
                "status": "True" if ready else "False",
                "lastTransitionTime": now,
            }
            if ready_reason:
                cond["reason"] = ready_reason
            out.append(cond)
        return out

    def _start(self, pod: Pod, st: _PodState) -> None:
        container = self._container(pod)
        env, defined = self._resolve_env(pod, container)
        pod_dir = self.work_dir / "pods" / st.namespace / f"{st.name}-{st.uid[:8]}"
        mounts = empty_dir_mounts(pod, container, self._volumes_link(st, pod_dir / "volumes"))
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        # The termination-message file, fresh for each run of the container, "mounted" (as
        # the emptyDirs are) at the container's terminationMessagePath.
        st.termination_file = pod_dir / f"termination-log.{st.restart_count}"
        st.termination_file.write_bytes(b"")
        mounts[termination_message_path(container)] = st.termination_file
        command = [_expand(a, defined) for a in (container.get("command") or [])]
        command += [_expand(a, defined) for a in (container.get("args") or [])]
        command = [rewrite_mounted_path(a, mounts) for a in command]
        env.update({k: rewrite_mounted_path(v, mounts) for k, v in defined.items()})
        if command and command[0] in ("python", "python3"):
            command[0] = self.python_executable
        env.update(self._service_account_env(pod, pod_dir))
        log_path = pod_dir / (
            "container.log" if st.restart_count == 0 else f"container.{st.restart_count}.log"
        )
        workdir = pod_dir / "work"
        if container.get("workingDir"):
            wd = Path(rewrite_mounted_path(container["workingDir"], mounts))
            try:
                wd.mkdir(parents=True, exist_ok=True)
                workdir = wd
            except OSError:
                self._error(f"{st.namespace}/{st.name}: cannot use workingDir {wd}")
        workdir.mkdir(parents=True, exist_ok=True)
        fault = st.fault
        real = fault is None or fault.kind in ("kill", "delay") or fault.run_command
        if not command:
            argv = ["/bin/sh", "-c", "echo 'test kubelet: container has no command' >&2; exit 127"]
            real = False
        elif real:
            argv = command
        else:
            assert fault is not None
            argv = ["/bin/sh", "-c", f"sleep {fault.after}; exit {fault.exit_code}"]
        try:
            proc, log = spawn(argv, log_path, env=env, cwd=workdir)
        except OSError as e:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(f"test kubelet: cannot start {argv[0]}: {e}\n")
            argv = ["/bin/sh", "-c", "exit 127"]
            proc, log = spawn(argv, log_path, env=env, cwd=workdir)
            real = False
        st.proc, st.log_file = proc, log
        st.config_error = None
        st.kill_reason = None
        st.kill_at = None
        if fault is not None and real and fault.kind in ("kill", "oom"):
            st.kill_at = time.monotonic() + fault.after
        meta = pod["metadata"]
        st.run = PodRun(
            namespace=st.namespace,
            name=st.name,
            uid=st.uid,
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            command=command,
            log_path=log_path,
            gpus=st.gpus,
            fault=fault.kind if fault else None,
            ran_command=real,
            started_at=time.time(),
            restart=st.restart_count,
        )
        self._runs.append(st.run)
        st.started_rfc = now_rfc3339()
        status: dict[str, Any] = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": st.pod_start_rfc or st.started_rfc,
            "conditions": self._conditions(ready=True),
            "containerStatuses": [
                self._container_status(
                    pod, st, ready=True, state={"running": {"startedAt": st.started_rfc}}
                )
            ],
        }
        self._patch_status(pod, status)

    def _volumes_link(self, st: _PodState, volumes_dir: Path) -> Path:
        """A short path to ``volumes_dir`` (see the module doc: Unix socket paths)."""
        if self._volume_links is None:
            self._volume_links = Path(tempfile.mkdtemp(prefix="synthpref-v-"))
        volumes_dir.mkdir(parents=True, exist_ok=True)
        link = self._volume_links / st.uid[:12]
        if not link.is_symlink():
            link.symlink_to(volumes_dir, target_is_directory=True)
        return link

    def _container_status(
        self, pod: Pod | None, st: _PodState, *, ready: bool, state: dict[str, Any]
    ) -> dict[str, Any]:
        c = self._container(pod) if pod is not None else {}
        full_state: dict[str, Any] = {"waiting": None, "running": None, "terminated": None}
        full_state.update(state)
        out: dict[str, Any] = {
            "name": c.get("name") or "main",
            "image": c.get("image") or "local",
            "imageID": "local://" + (c.get("image") or "local"),
            "containerID": f"local://{st.proc.pid if st.proc else 0}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": st.restart_count,
            "state": full_state,
        }
        if st.last_state:
            out["lastState"] = st.last_state
        return out

    def _resolve_env(
        self, pod: Pod, container: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(full process env, the container's own variables) for ``container``."""
        ns = pod["metadata"]["namespace"]
        defined: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            if "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._config_map(ns, ref["name"], bool(ref.get("optional")))
            elif "secretRef" in src:
                ref = src["secretRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            else:
                continue
            for k, v in (data or {}).items():
                defined[prefix + k] = v
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                defined[name] = _expand(var.get("value") or "", defined)
                continue
            value = self._value_from(pod, var["valueFrom"])
            if value is not None:
                defined[name] = value
        env = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "")}
        pybin = str(Path(self.python_executable).parent)
        env["PATH"] = pybin + os.pathsep + env.get("PATH", "/usr/bin:/bin")
        env["HOSTNAME"] = pod["metadata"]["name"]
        env.update(self.extra_env)
        env.update(defined)
        return env, defined

    def _value_from(self, pod: Pod, source: dict[str, Any]) -> str | None:
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            return self._key(data, ref, "secret")
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = self._config_map(ns, ref["name"], bool(ref.get("optional")))
            return self._key(data, ref, "configmap")
        if "resourceFieldRef" in source:
            res = self._container(pod).get("resources") or {}
            kind, _, rname = source["resourceFieldRef"]["resource"].partition(".")
            value = (res.get(kind) or {}).get(rname)
            return None if value is None else str(value)
        return None

    @staticmethod
    def _key(data: dict[str, str] | None, ref: dict[str, Any], what: str) -> str | None:
        if data is None:
            return None
        if ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {what} {ref['name']}")

    def _config_map(self, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        try:
            data = self._call(self.api.read_namespaced_config_map, name, ns)
        except self._client_mod.ApiException as e:
            if e.status == 404 and optional:
                return None
            raise ConfigError(f"configmap {name!r} not found") from e
        return dict(data.get("data") or {})

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        try:
            data = self._call(self.api.read_namespaced_secret, name, ns)
        except self._client_mod.ApiException as e:
            if e.status == 404 and optional:
                return None
            raise ConfigError(f"secret {name!r} not found") from e
        out = {k: base64.b64decode(v).decode() for k, v in (data.get("data") or {}).items()}
        out.update(data.get("stringData") or {})
        return out

    def _service_account_env(self, pod: Pod, pod_dir: Path) -> dict[str, str]:
        """$KUBECONFIG with a fresh token of the pod's ServiceAccount (see the module doc)."""
        spec = pod.get("spec") or {}
        if spec.get("automountServiceAccountToken") is False:
            return {}
        ns = pod["metadata"]["namespace"]
        account = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        }
        try:
            reply = self._call(self.api.create_namespaced_service_account_token, account, ns, body)
        except self._client_mod.ApiException as e:
            raise ConfigError(f"serviceaccount {account!r}: no token ({e.status})") from e
        server = str(self._configuration.host)
        ca_path = self._configuration.ssl_ca_cert
        path = write_kubeconfig_file(
            pod_dir / "serviceaccount" / "kubeconfig",
            server,
            Path(ca_path).read_bytes() if ca_path else None,
            f"system:serviceaccount:{ns}:{account}",
            {"token": reply["status"]["token"]},
            ns,
        )
        host, _, port = server.removeprefix("https://").rpartition(":")
        return {
            "KUBECONFIG": str(path),
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
        }

    # ---------------------------------------------------------------- running
    @staticmethod
    def _signal(st: _PodState, signum: int) -> None:
        if st.proc is not None and st.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(st.proc.pid, signum)

    def _kill(self, st: _PodState, reason: str | None = None) -> None:
        if st.proc is not None and st.proc.poll() is None:
            if reason is not None and st.kill_reason is None:
                st.kill_reason = reason
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(st.proc.pid, signal.SIGKILL)

    @staticmethod
    def _close_log(st: _PodState) -> None:
        if st.log_file is not None:
            st.log_file.close()
            st.log_file = None

    def _check_processes(self) -> None:
        now = time.monotonic()
        for st in list(self._states.values()):
            if st.restart_at is not None and now >= st.restart_at and not st.deleting:
                st.restart_at = None
                with self._cache_lock:
                    pod = self._cache.get(st.uid)
                if pod is not None:
                    st.fault = None
                    with contextlib.suppress(ConfigError):
                        self._start(pod, st)
                continue
            if st.proc is None:
                continue
            if st.kill_at is not None and now >= st.kill_at and st.proc.poll() is None:
                kind = st.fault.kind if st.fault else "kill"
                self._kill(st, "oom" if kind == "oom" else "kill")
                st.kill_at = None
            code = st.proc.poll()
            if code is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                st.proc.wait(1)
            self._finish(st, code)

    def _finish(self, st: _PodState, returncode: int) -> None:
        """Record the exit of ``st``'s process and write the resulting pod status."""
        code = 128 - returncode if returncode < 0 else returncode
        fault = st.fault
        reason = "Completed" if code == 0 else "Error"
        if st.kill_reason == "oom" or (fault is not None and fault.kind == "oom"):
            code, reason = 137, "OOMKilled"
        elif fault is not None and fault.kind == "fail" and fault.run_command:
            code, reason = fault.exit_code, "Error"
        elif st.kill_reason in ("kill", "deleted"):
            code, reason = (code or 137), "Error"
        self._close_log(st)
        run = st.run
        if run is not None:
            run.finished_at = time.time()
            run.exit_code = code
            run.reason = reason
        finished_rfc = now_rfc3339()
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": st.started_rfc,
            "finishedAt": finished_rfc,
            "containerID": f"local://{st.proc.pid if st.proc else 0}",
        }
        with self._cache_lock:
            pod = self._cache.get(st.uid)
        message = termination_message(
            self._container(pod) if pod is not None else {},
            st.termination_file,
            run.log_path if run is not None else None,
            failed=code != 0,
        )
        if message:
            terminated["message"] = message
        restart_policy = ((pod or {}).get("spec") or {}).get("restartPolicy", "Always")
        restart = (
            not st.deleting
            and st.kill_reason != "deleted"
            and (restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0))
        )
        if restart:
            st.last_state = {"terminated": terminated}
            st.restart_count += 1
            st.restart_at = time.monotonic() + 1.0
            status: dict[str, Any] = {
                "conditions": self._conditions(ready=False, ready_reason="ContainersNotReady"),
                "containerStatuses": [
                    self._container_status(
                        pod,
                        st,
                        ready=False,
                        state={"waiting": {"reason": "CrashLoopBackOff", "message": ""}},
                    )
                ],
            }
            st.proc = None
            self._patch_status(st, status)
            return
        st.proc = None
        st.finished = True
        phase = "Succeeded" if code == 0 else "Failed"
        status = {
            "phase": phase,
            "conditions": self._conditions(
                ready=False, ready_reason="PodCompleted" if code == 0 else "PodFailed"
            ),
            "containerStatuses": [
                self._container_status(pod, st, ready=False, state={"terminated": terminated})
            ],
        }
        if reason == "OOMKilled":
            status["reason"] = "OOMKilled"
        self._patch_status(st, status)

    # ---------------------------------------------------------------- deletion
    def _handle_deletion(self, pod: Pod, st: _PodState) -> None:
        if st.deleting:
            return
        if st.proc is not None:
            # As a real kubelet: SIGTERM, the grace period (capped here), then SIGKILL.
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            self._signal(st, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                st.proc.wait(min(float(grace), MAX_GRACE_SECONDS))
            self._kill(st, "deleted")
            with contextlib.suppress(subprocess.TimeoutExpired):
                st.proc.wait(5)
            self._finish(st, st.proc.returncode if st.proc.returncode is not None else -9)
        st.restart_at = None
        phase = (pod.get("status") or {}).get("phase")
        if st.bound and phase not in _TERMINAL and not st.finished:
            # Never started (or restarting): the pod fails as a real kubelet would do it.
            self._patch_status(
                pod,
                {
                    "phase": "Failed",
                    "reason": "Terminated",
                    "message": "pod deleted before its container finished",
                    "conditions": self._conditions(ready=False, ready_reason="PodFailed"),
                },
            )
        st.finished = True
        st.deleting = True
        if st.bound:
            meta = pod["metadata"]
            try:
                self._call(
                    self.api.delete_namespaced_pod,
                    meta["name"],
                    meta["namespace"],
                    grace_period_seconds=0,
                )
            except self._client_mod.ApiException as e:
                if e.status != 404:
                    self._error(f"delete {meta['namespace']}/{meta['name']}: {e.status}")


def termination_message_path(container: dict[str, Any]) -> str:
    return str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)


def termination_message(
    container: dict[str, Any], message_file: Path | None, log_path: Path | None, *, failed: bool
) -> str:
    """The terminated state's ``message``, as a real kubelet makes it: the termination-message
    file (at most 4096 bytes); if that is empty, the container failed and its
    ``terminationMessagePolicy`` is ``FallbackToLogsOnError``, the last 80 lines (at most
    2048 bytes) of its log."""
    text = b""
    if message_file is not None:
        with contextlib.suppress(OSError):
            text = message_file.read_bytes()[:MAX_TERMINATION_MESSAGE_BYTES]
    fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
    if not text.strip() and failed and fallback and log_path is not None:
        with contextlib.suppress(OSError):
            lines = log_path.read_bytes().splitlines(keepends=True)[-MAX_FALLBACK_LOG_LINES:]
            text = b"".join(lines)[-MAX_FALLBACK_LOG_BYTES:]
    return text.decode(errors="replace")


def empty_dir_mounts(pod: Pod, container: dict[str, Any], volumes_dir: Path) -> dict[str, Path]:
    """``mountPath`` -> local directory for each of ``container``'s emptyDir mounts (see the
    module doc): ``volumes_dir/<volume name>[/<subPath>]``."""
    empty_dirs = {
        v["name"]
        for v in (pod.get("spec") or {}).get("volumes") or []
        if isinstance(v, dict) and "emptyDir" in v
    }
    result: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount.get("name") not in empty_dirs:
            continue
        mount_path = str(mount["mountPath"]).rstrip("/")
        if not mount_path:
            continue  # a volume over the root: nothing sensible to rewrite
        local = volumes_dir / mount["name"]
        if mount.get("subPath"):
            local = local / mount["subPath"]
        result[mount_path] = local
    return result


def rewrite_mounted_path(value: str, mounts: dict[str, Path]) -> str:
    """``value`` with a leading mount path replaced by its local directory (the longest
    mount path that ``value`` equals or starts with, followed by ``/``); others unchanged."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(mounts[mount_path]) + value[len(mount_path) :]
    return value


def _field(pod: Pod, path: str) -> str | None:
    meta = pod.get("metadata") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        value = simple[path]
        return None if value is None else str(value)
    m = _FIELD_REF.match(path)
    if m:
        value = (meta.get(m.group(1)) or {}).get(m.group(2))
        return "" if value is None else str(value)
    return None


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes; unknown references stay as they are)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)
