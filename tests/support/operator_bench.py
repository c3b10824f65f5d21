"""The operator benchmark's harness: a real control plane, a real S3 server and the operator as
a real process, with stage workers simulated (`stage_simulator`). Used by
`scripts/bench_operator.py` (the scenarios and their report) and by the CI correctness test
`tests/integration/test_operator_bench.py`.

What runs:
- `ControlPlane` (etcd, kube-apiserver, kube-controller-manager) without the Job controller:
  the simulator writes Job statuses instead. The apiserver writes an audit log of the
  operator's requests only (the operator has a user of its own, `OPERATOR_USER`), which
  `AuditCounter` tallies by verb and resource, keeping when each Job was created (the hops'
  end);
- an S3 server as a process (`s3_server`: the native one by default, or moto's); the operator
  reaches it through `S3FaultProxy` (no faults), which counts its requests by operation (LIST,
  GET, HEAD, PUT), while the simulator writes to it directly;
- `synthpref operator run` as a subprocess (inheriting $PYTHONPATH, so any checkout can be
  measured), with /metrics on a loopback port; its reconcile-duration histogram gives passes
  and their durations, and /proc its CPU seconds and peak RSS.

`Snapshot`s taken before and after a stretch of time give that stretch's `figures`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from synthpref.spec import API_GROUP, API_VERSION, PreferenceRunSpec
from synthpref.storage import S3Storage, s3_client
from synthpref_operator.crd import catalog_crd_yaml, crd_yaml
from synthpref_operator.devcluster.controlplane import (
    DEFAULT_CONTROLLERS,
    ControlPlane,
    free_port,
    spawn,
    terminate,
)
from synthpref_operator.names import LABEL_STAGE
from tests.support.s3 import FAKE_CREDENTIALS, s3_server_command
from tests.support.s3_fault_proxy import S3FaultProxy
from tests.support.stage_simulator import HOPS, SimRun, StageSimulator

OPERATOR_USER = "synthpref-operator"
NAMESPACE = "bench"
BUCKET = "bench"
S3_SECRET = "s3"
# Everything but the Job controller (the simulator plays it).
CONTROLLERS = tuple(c for c in DEFAULT_CONTROLLERS if c != "job-controller")
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}
# What the API server adds to a Job's pod template (and its selector) on creation.
JOB_CONTROLLER_LABELS = (
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "job-name",
)
PROMPT_WORDS = "please explain how the tides depend on the moon and the sun in simple words"


class BenchError(RuntimeError):
    """The benchmark could not set up or a run did not finish in time."""


# ------------------------------------------------------------------ counters


class AuditCounter:
    """Requests of `OPERATOR_USER` in the apiserver's audit log, by "verb resource"; those
    answered with an error also by "verb resource (code)" (`failed_answer`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self.jobs_created_at: dict[str, float] = {}  # Job name -> when created (wall clock)
        self._offset = 0
        self._lock = threading.Lock()

    def poll(self) -> Counter[str]:
        with self._lock:
            if self.path.exists():
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
                end = data.rfind(b"\n") + 1
                self._offset += end
                for line in data[:end].splitlines():
                    event = json.loads(line)
                    if (event.get("user") or {}).get("username") != OPERATOR_USER:
                        continue
                    ref = event.get("objectRef") or {}
                    what = ref.get("resource", "?")
                    if ref.get("subresource"):
                        what += "/" + ref["subresource"]
                    self.counts[f"{event.get('verb')} {what}"] += 1
                    code = (event.get("responseStatus") or {}).get("code")
                    if code and code >= 400:  # e.g. "create jobs (409)": also counted above
                        self.counts[f"{event.get('verb')} {what} ({code})"] += 1
                    if event.get("verb") == "create" and what == "jobs" and code == 201:
                        done = dt.datetime.fromisoformat(event["stageTimestamp"])
                        self.jobs_created_at[ref.get("name", "")] = done.timestamp()
            return Counter(self.counts)


def failed_answer(key: str) -> bool:
    """An `AuditCounter` key of requests answered with an error (already counted by verb)."""
    return key.endswith(")")


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS in KiB of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return cpu, peak


def scrape(port: int) -> dict[str, Any]:
    """The operator's reconcile histogram (cumulative buckets, count, sum) and any storage or
    API request counters it exports, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    buckets: dict[float, float] = {}
    found: dict[str, Any] = {"count": 0.0, "sum": 0.0, "buckets": buckets, "counters": {}}
    for family in text_string_to_metric_families(text):
        if family.name == "synthpref_reconcile_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_count"):
                    found["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    found["sum"] = sample.value
        elif family.type == "counter" and any(
            word in family.name
            for word in ("storage", "api_", "reconcile_passes", "events_ignored")
        ):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    key = f"{family.name}{{{labels}}}"
                    found["counters"][key] = found["counters"].get(key, 0) + sample.value
    return found


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and max (nearest rank) of `values`."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"n": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": ordered[-1]}


@dataclass
class Snapshot:
    """The counters at one moment."""

    at: float
    s3: Counter[str]
    api: Counter[str]
    metrics: dict[str, Any]
    cpu_s: float
    peak_rss_kib: int
    # Every process of the bench on this machine, the operator's rivals for its cores.
    cpu_s_by_process: dict[str, float] = field(default_factory=dict)


def figures(a: Snapshot, b: Snapshot, runs: int, interval: float) -> dict[str, Any]:
    """What happened between two snapshots: per stretch, per pass and per run."""
    seconds = max(b.at - a.at, 1e-9)
    passes = int(b.metrics["count"] - a.metrics["count"])
    s3 = Counter({k: b.s3[k] - a.s3.get(k, 0) for k in b.s3})
    s3 = Counter({k: v for k, v in s3.items() if v})
    api = Counter({k: b.api[k] - a.api.get(k, 0) for k in b.api})
    api = Counter({k: v for k, v in api.items() if v})
    buckets = {
        le: count - a.metrics["buckets"].get(le, 0.0) for le, count in b.metrics["buckets"].items()
    }
    fitting = [le for le in sorted(buckets) if le >= interval]
    over = int(passes - buckets[fitting[0]]) if fitting and passes else 0
    counters = {
        k: v - a.metrics["counters"].get(k, 0.0)
        for k, v in b.metrics["counters"].items()
        if v - a.metrics["counters"].get(k, 0.0)
    }

    def per(total: float, n: float) -> float | None:
        return round(total / n, 3) if n else None

    s3_total = sum(s3.values())
    api_total = sum(v for k, v in api.items() if not failed_answer(k))
    return {
        "seconds": round(seconds, 2),
        "passes": passes,
        "passes_per_s": round(passes / seconds, 2),
        "pass_mean_s": per(b.metrics["sum"] - a.metrics["sum"], passes),
        "pass_p50_s": _round(histogram_quantile(0.5, buckets)),
        "pass_p95_s": _round(histogram_quantile(0.95, buckets)),
        "passes_over_interval": over,
        "interval_bucket_s": fitting[0] if fitting else None,
        "api_requests": api_total,
        "api_by_verb": dict(sorted(api.items())),
        "api_per_pass": per(api_total, passes),
        "api_per_run": per(api_total, runs),
        "s3_requests": s3_total,
        "s3_by_op": dict(sorted(s3.items())),
        "s3_per_pass": per(s3_total, passes),
        "s3_per_pass_by_op": {k: per(v, passes) for k, v in sorted(s3.items())},
        "s3_per_run": per(s3_total, runs),
        "operator_counters": counters,
        "cpu_s": round(b.cpu_s - a.cpu_s, 2),
        "cpu_per_pass_ms": per(1000 * (b.cpu_s - a.cpu_s), passes),
        "peak_rss_mib": round(b.peak_rss_kib / 1024, 1),
        "cpu_s_by_process": {
            name: round(cpu - a.cpu_s_by_process.get(name, 0.0), 1)
            for name, cpu in b.cpu_s_by_process.items()
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ------------------------------------------------------------------ the harness


@dataclass
class RunSize:
    """One run's shape."""

    models: int = 2
    shards: int = 5
    shard_size: int = 10
    replicas: int = 5  # indexes of each generation Job (at most `shards`)

    @property
    def prompts(self) -> int:
        return self.shards * self.shard_size


@dataclass
class Harness:
    """See the module docstring. Use as a context manager."""

    bin_dir: Path
    work_dir: Path
    interval: float = 10.0
    shard_seconds: float = 0.2
    object_bytes: int = 1024
    sim_workers: int = 8
    log_level: str = "warning"
    operator_args: tuple[str, ...] = ()  # more `synthpref operator run` flags
    # Keep the control plane and the operator off the cores of the simulated workers and S3.
    isolate_workers: bool = False
    cp: ControlPlane | None = None
    api: Any = None
    proxy: S3FaultProxy | None = None
    sim: StageSimulator | None = None
    audit: AuditCounter | None = None
    metrics_port: int = 0
    # Which S3 server (`tests.support.s3.S3_SERVERS`): the native one leaves this machine's
    # cores to the control plane and the operator; moto's costs more than they do together.
    s3_server: str = "native"
    s3_endpoint: str = ""
    operator: subprocess.Popen[bytes] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)
    _s3: subprocess.Popen[bytes] | None = None
    _prompt_sets: dict[int, str] = field(default_factory=dict)

    # ---- lifecycle

    def __enter__(self) -> Harness:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._start_s3()
        self._start_cluster()
        self.proxy = S3FaultProxy(self.s3_endpoint)
        self.sim = StageSimulator(
            self.api,
            NAMESPACE,
            shard_seconds=self.shard_seconds,
            object_bytes=self.object_bytes,
            workers=self.sim_workers,
        ).start()
        self._start_operator()
        if self.isolate_workers:
            self._isolate_workers()

    def _isolate_workers(self) -> None:
        """The first half of this machine's cores for the control plane and the operator, the
        rest for the stage simulator (this process) and the S3 server, as on a cluster whose
        workers and object store run elsewhere. Every thread is moved (a Go server has many;
        threads made later inherit their creator's cores)."""
        assert self.cp is not None and self.operator is not None and self._s3 is not None
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise BenchError("isolating the workers needs at least 2 cores")
        control, workers = set(cores[: len(cores) // 2]), set(cores[len(cores) // 2 :])
        placed = {pid: control for pid in [*self.cp.pids().values(), self.operator.pid]}
        placed |= {self._s3.pid: workers, os.getpid(): workers}
        for pid, where in placed.items():
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), where)

    def stop(self) -> None:
        if self.operator is not None:
            terminate(self.operator, timeout=15)
        if self.sim is not None:
            self.sim.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.cp is not None:
            self.cp.stop(remove_work_dir=False)
        if self._s3 is not None:
            terminate(self._s3)
        for log in self._logs:
            log.close()

    def _start_s3(self) -> None:
        port = free_port()
        proc, log = spawn(
            s3_server_command(self.s3_server, port),
            self.work_dir / "logs" / f"s3-{self.s3_server}.log",
            env={**os.environ, **FAKE_CREDENTIALS},
        )
        self._s3, self.s3_endpoint = proc, f"http://127.0.0.1:{port}"
        self._logs.append(log)
        wait_until(lambda: _port_open(port), 60, f"S3 server ({self.s3_server})")
        self.s3().create_bucket(Bucket=BUCKET)

    def s3(self) -> Any:
        keys = FAKE_CREDENTIALS
        return s3_client(
            self.s3_endpoint,
            "us-east-1",
            access_key_id=keys["AWS_ACCESS_KEY_ID"],
            secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )

    def _start_cluster(self) -> None:
        from kubernetes import client

        policy = self.work_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        audit_log = self.work_dir / "logs" / "audit.log"
        self.cp = ControlPlane(
            self.bin_dir,
            self.work_dir / "controlplane",
            controllers=CONTROLLERS,
            extra_apiserver_args=(
                f"--audit-policy-file={policy}",
                f"--audit-log-path={audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ),
        )
        self.cp.start()
        self.audit = AuditCounter(audit_log)
        self.api = self.cp.api_client()
        extensions = client.ApiextensionsV1Api(self.api)
        for text in (crd_yaml(), catalog_crd_yaml()):
            extensions.create_custom_resource_definition(yaml.safe_load(text))
        core = client.CoreV1Api(self.api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        keys = FAKE_CREDENTIALS
        core.create_namespaced_secret(
            NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(
                    name=S3_SECRET, labels={"synthpref.dev/allow-runs": "true"}
                ),
                string_data={
                    "id": keys["AWS_ACCESS_KEY_ID"],
                    "secret": keys["AWS_SECRET_ACCESS_KEY"],
                },
            ),
        )

        def established() -> bool:
            custom = client.CustomObjectsApi(self.api)
            try:
                custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, NAMESPACE, "preferenceruns"
                )
            except client.ApiException:
                return False
            return True

        wait_until(established, 60, "the PreferenceRun CRD")

    def _start_operator(self) -> None:
        assert self.cp is not None
        kubeconfig = self.cp.write_kubeconfig(
            self.work_dir / "operator.kubeconfig", user=OPERATOR_USER, groups=("system:masters",)
        )
        self.metrics_port = free_port()
        settings = {"image": "local", "cpuImage": "local", "allowedEndpoints": ["*"]}
        proc, log = spawn(
            [
                sys.executable,
                "-m",
                "synthpref",
                "operator",
                "run",
                "--namespace",
                NAMESPACE,
                "--kubeconfig",
                str(kubeconfig),
                "--interval",
                str(self.interval),
                "--metrics-port",
                str(self.metrics_port),
                "--metrics-host",
                "127.0.0.1",
                "--settings-json",
                json.dumps(settings),
                "--log-level",
                self.log_level,
                *self.operator_args,
            ],
            self.work_dir / "logs" / "operator.log",
            env=dict(os.environ),  # $PYTHONPATH picks the checkout measured
        )
        self.operator = proc
        self._logs.append(log)

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"the operator exited: {self.operator_log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5
                ) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        wait_until(ready, 120, "the operator's /readyz")

    def operator_log_tail(self, lines: int = 30) -> str:
        from synthpref_operator.devcluster.controlplane import tail_file

        return tail_file(self.work_dir / "logs" / "operator.log", lines)

    # ---- runs

    def prompt_source(self, prompts: int) -> str:
        """A prompt source of `prompts` distinct prompts (written once per size), as the
        operator's admission estimate reads it."""
        if prompts not in self._prompt_sets:
            prefix = f"prompts-in/{prompts}/"
            per_file = 100_000
            s3 = self.s3()
            for start in range(0, prompts, per_file):
                lines = (
                    json.dumps({"text": f"{i}: " + " ".join(PROMPT_WORDS.split()[: 5 + i % 9])})
                    for i in range(start, min(prompts, start + per_file))
                )
                body = ("\n".join(lines) + "\n").encode()
                s3.put_object(Bucket=BUCKET, Key=f"{prefix}part-{start:09d}.jsonl", Body=body)
            self._prompt_sets[prompts] = f"s3://{BUCKET}/{prefix}"
        return self._prompt_sets[prompts]

    def spec(self, name: str, size: RunSize) -> dict[str, Any]:
        assert self.proxy is not None
        return {
            "prompts": {"uri": self.prompt_source(size.prompts), "shardSize": size.shard_size},
            "storage": {
                "uri": f"s3://{BUCKET}/runs/{name}",
                "endpointUrl": self.proxy.endpoint,
                "region": "us-east-1",
                "credentials": {
                    "accessKeyId": {"name": S3_SECRET, "key": "id"},
                    "secretAccessKey": {"name": S3_SECRET, "key": "secret"},
                },
            },
            "models": [
                {
                    "name": f"m{i:02d}",
                    "path": f"org/model-{i:02d}",
                    "backend": "vllm",
                    "gpus": 1,
                    "replicas": min(size.replicas, size.shards),
                }
                for i in range(size.models)
            ],
            "mix": {"responsesPerPrompt": min(4, size.models)},
            "judge": {"backend": "vllm", "model": "org/judge", "gpus": 1},
        }

    def create_run(
        self, name: str, size: RunSize, *, stall_generation_at: int | None = None
    ) -> None:
        """Create a PreferenceRun (and tell the simulator, first)."""
        from kubernetes import client

        assert self.sim is not None
        spec = self.spec(name, size)
        storage = S3Storage(f"s3://{BUCKET}/runs/{name}", self.s3())
        self.sim.add_run(
            SimRun(
                name,
                PreferenceRunSpec.model_validate(spec),
                storage,
                size.prompts,
                stall_generation_at=stall_generation_at,
            )
        )
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "PreferenceRun",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }
        client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            API_GROUP, API_VERSION, NAMESPACE, "preferenceruns", body
        )

    def delete_runs(self, names: list[str], timeout: float = 300) -> None:
        """Delete runs and wait until they are gone (their finalizer released)."""
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api)
        for name in names:
            custom.delete_namespaced_custom_object(
                API_GROUP, API_VERSION, NAMESPACE, "preferenceruns", name
            )

        def gone() -> bool:
            listing: Any = custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, NAMESPACE, "preferenceruns"
            )
            left = {r["metadata"]["name"] for r in listing.get("items") or []}
            return not left & set(names)

        wait_until(gone, timeout, "the deleted runs to go")
        assert self.sim is not None
        for name in names:
            self.sim.runs.pop(name, None)

    def phases(self) -> dict[str, str]:
        from kubernetes import client

        listing: Any = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            API_GROUP, API_VERSION, NAMESPACE, "preferenceruns"
        )
        return {
            r["metadata"]["name"]: str((r.get("status") or {}).get("phase") or "")
            for r in listing.get("items") or []
        }

    def snapshot(self) -> Snapshot:
        assert self.proxy is not None and self.audit is not None and self.operator is not None
        time.sleep(1.2)  # let the audit log's batch (max wait 1 s) reach the file
        cpu, peak = proc_usage(self.operator.pid)
        return Snapshot(
            at=time.monotonic(),
            s3=Counter(self.proxy.operations),
            api=self.audit.poll(),
            metrics=scrape(self.metrics_port),
            cpu_s=cpu,
            peak_rss_kib=peak,
            cpu_s_by_process=self.cpu_by_process(),
        )

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of each process of the bench: the operator, the control plane's,
        the S3 server, and this one (the stage simulator and the S3 counting proxy)."""
        assert self.cp is not None and self.operator is not None and self._s3 is not None
        pids = {"operator": self.operator.pid, **self.cp.pids(), "S3 server": self._s3.pid}
        found = {name: proc_usage(pid)[0] for name, pid in pids.items()}
        found["bench (simulator, S3 proxy)"] = proc_usage(os.getpid())[0]
        return found

    def check(self) -> None:
        """Raise when the operator or a simulator thread died."""
        assert self.operator is not None and self.sim is not None
        if self.operator.poll() is not None:
            raise BenchError(f"the operator exited: {self.operator_log_tail()}")
        if self.sim.errors:
            raise BenchError(f"the stage simulator failed: {self.sim.errors}")

    def wait_succeeded(self, names: list[str], timeout: float) -> bool:
        """Wait until every run named is Succeeded (False on timeout); raises on a Failed one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            phases = self.phases()
            failed = {n: p for n, p in phases.items() if n in names and p == "Failed"}
            if failed:
                raise BenchError(f"runs failed: {failed}; see {self.work_dir}/logs")
            if all(phases.get(n) == "Succeeded" for n in names):
                return True
            time.sleep(1.0)
        return False

    def wait_generated(self, names: list[str], shards: int, timeout: float) -> None:
        """Wait until the simulator committed `shards` generation shards per model of each."""
        assert self.sim is not None
        sim = self.sim

        def there() -> bool:
            self.check()
            return all(
                sim.clocks[n].generated >= shards * len(sim.runs[n].spec.models) for n in names
            )

        wait_until(there, timeout, "the stalled runs' generation shards")

    def creation_floor(self, jobs: int, concurrency: int) -> dict[str, Any]:
        """How fast this API server creates `jobs` Jobs shaped as the operator's generation Jobs,
        from a plain client at `concurrency` at once with nothing else running (call it after
        the runs): the floor under a stage hop in which that many Jobs are created together.
        The Jobs go to a namespace of their own without the operator's labels, so neither the
        operator nor the simulator sees them."""
        from concurrent.futures import ThreadPoolExecutor

        from kubernetes import client

        batch: Any = client.BatchV1Api(self.api)
        listed = batch.list_namespaced_job(
            NAMESPACE, label_selector=f"{LABEL_STAGE}=generate", limit=1
        ).items
        if not listed:
            raise BenchError("no generation Job to copy for the creation floor")
        shape = self.api.sanitize_for_serialization(listed[0])
        shape.pop("status", None)
        template = shape["spec"]["template"]
        shape["spec"].pop("selector", None)  # the API server sets it, and its labels, anew
        labels = template["metadata"].get("labels") or {}
        for generated in JOB_CONTROLLER_LABELS:
            labels.pop(generated, None)
        namespace = f"{NAMESPACE}-floor-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )

        def create(index: int) -> None:
            body = {**shape, "metadata": {"name": f"floor-{index:05d}"}}
            batch.create_namespaced_job(namespace, body, _preload_content=False).drain_conn()

        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(create, range(jobs)))
        seconds = time.monotonic() - started
        return {
            "jobs": jobs,
            "concurrency": concurrency,
            "seconds": round(seconds, 2),
            "per_s": round(jobs / seconds, 1),
        }

    def hop_figures(self) -> dict[str, Any]:
        assert self.sim is not None
        # Job creation times from the API server, not the simulator's (possibly late) watch.
        assert self.audit is not None
        self.audit.poll()
        hops = self.sim.hops(self.audit.jobs_created_at)
        every = [v for hop in HOPS for v in hops[hop]]
        seen = self.sim.hops()  # as the simulator saw the Jobs: how far its watch lagged
        return {
            "all": quantiles(every),
            **{hop: quantiles(values) for hop, values in hops.items()},
            "all (simulator's watch)": quantiles([v for hop in HOPS for v in seen[hop]]),
        }


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def harness(bin_dir: Path, work_dir: Path | None = None, **options: Any) -> Iterator[Harness]:
    """A started `Harness` in `work_dir` (default: a new directory under /tmp)."""
    where = work_dir or Path("/tmp") / f"synthpref-bench-{uuid.uuid4().hex[:8]}"
    with Harness(bin_dir, where, **options) as started:
        yield started


def run_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


__all__ = [
    "AuditCounter",
    "BenchError",
    "Harness",
    "RunSize",
    "Snapshot",
    "figures",
    "harness",
    "histogram_quantile",
    "quantiles",
    "run_names",
]
