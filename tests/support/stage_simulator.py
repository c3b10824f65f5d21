"""Stand-in stage workers for the operator benchmark (`tests.support.operator_bench`).

At benchmark scale (thousands of Jobs, tens of thousands of Indexed-Job pods) a process per pod
cannot run on a small machine, and real workers would measure themselves, not the operator. So,
with kube-controller-manager's Job controller turned off, `StageSimulator` plays both the pods
and the Job controller:

- it watches the namespace's Jobs; for each new stage Job it schedules, per index, that
  index's shards (`layout.shards_for_worker`), each committed `shard_seconds` after the one
  before, as the stage's worker would commit it: the same keys (`synthpref.layout`), a data
  object and its commit marker with the stage's info (mix and parse markers carry the
  `MixSummary` / `ParseSummary` that the run summary merges; the run summary itself is written
  by parse's own `write_run_summary`);
- it writes the Job's status as the Job controller would: `succeeded` and `completedIndexes`
  at most every `status_period` seconds while indexes finish (the Job controller batches pod
  updates too), and at once, with `SuccessCriteriaMet` and `Complete`, when the last index ends.

Data objects are `object_bytes` long: the operator lists keys and reads markers and manifests,
never data objects, so their size does not change its cost. The judge is the vLLM backend (one
Job whose results the simulator commits), so no judge API is measured here.

It records when each run's stage became done (its last commit) and when the next stage's Jobs
were seen created, for the stage-hop latencies, and the largest run status seen. Its watch can
lag behind the API server when its workers are busy, so `hops` takes each Job's creation time
from the API server's audit log when given (`created_at`), and its own sighting otherwise.
Times are wall-clock (`time.time`), to compare with the audit log's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import heapq
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from synthpref import layout
from synthpref.spec import API_GROUP, API_VERSION, PreferenceRunSpec
from synthpref.stages.mix import MixSummary
from synthpref.stages.parse import ParseSummary, dataset_key, write_run_summary
from synthpref.stages.prepare import PrepareSummary
from synthpref.storage import Storage
from synthpref_operator.names import LABEL_MODEL, LABEL_RUN, LABEL_STAGE

log = logging.getLogger(__name__)

STAGES = ("prepare", "generate", "mix", "judge", "parse")
# Hops: from the event that ends a step to the next step's start, as the operator sees it.
HOPS = (
    "created->prepare",
    "prepare->generate",
    "generate->mix",
    "mix->judge",
    "judge->parse",
    "parse->Succeeded",
)


def index_ranges(indexes: set[int]) -> str:
    """A Job's `completedIndexes` text for a set of indexes ("0-3,5")."""
    parts: list[str] = []
    ordered = sorted(indexes)
    start = prev = None
    for i in ordered:
        if start is None:
            start = prev = i
        elif prev is not None and i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SimRun:
    """What the simulator knows of one run: its spec, storage and where to stop."""

    name: str
    spec: PreferenceRunSpec
    storage: Storage
    prompts: int
    # Commit only this many generation shards per model, then stall (steady state); None: all.
    stall_generation_at: int | None = None

    @property
    def shards(self) -> int:
        return -(-self.prompts // self.spec.prompts.shard_size)


@dataclass
class _Job:
    name: str
    run: str
    stage: str
    model: str | None
    completions: int
    left: dict[int, int] = field(default_factory=dict)  # index -> shards left to commit
    done: set[int] = field(default_factory=set)
    started: str = ""
    dirty: bool = False
    complete: bool = False


@dataclass
class _RunClock:
    """Wall times (time.time) of one run's milestones."""

    created: float | None = None
    stage_done: dict[str, float] = field(default_factory=dict)
    # stage -> (when seen, Job name) of each of its Jobs
    jobs_seen: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    succeeded: float | None = None
    generated: int = 0
    mixed: int = 0
    judged: int = 0
    parsed: int = 0


class StageSimulator:
    """See the module docstring. `start()`, then `add_run` for each run, `stop()` at the end."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        shard_seconds: float = 0.2,
        status_period: float = 1.0,
        object_bytes: int = 1024,
        workers: int = 8,
    ) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.shard_seconds = shard_seconds
        self.status_period = status_period
        self.payload = b"x" * max(0, object_bytes - 1) + b"\n"
        self.runs: dict[str, SimRun] = {}
        self.clocks: dict[str, _RunClock] = defaultdict(_RunClock)
        self.jobs: dict[str, _Job] = {}
        self.max_status_bytes = 0
        self.max_status_run = ""
        self.phases: dict[str, str] = {}
        self.commits = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, str, int, int]] = []  # (due, seq, job, index, shard)
        self._seq = 0
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers = workers

    # ---- lifecycle

    def add_run(self, run: SimRun) -> None:
        with self._lock:
            self.runs[run.name] = run
            self.clocks[run.name].created = time.time()

    def start(self) -> StageSimulator:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("sim-jobs", self._watch_jobs),
            ("sim-runs", self._watch_runs),
            ("sim-status", self._flush_statuses),
        ]
        targets += [(f"sim-worker-{i}", self._work) for i in range(self._workers)]
        for name, target in targets:
            thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=2)

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception as error:  # reported with the figures
                if not self._stop.is_set():
                    log.exception("simulator thread failed")
                    self.errors.append(f"{threading.current_thread().name}: {error!r}")

        return run

    # ---- watching

    def _watch(
        self, lister: Callable[..., Any], handle: Callable[[str, dict[str, Any]], None], **kw: Any
    ) -> None:
        from kubernetes import watch
        from kubernetes.client import ApiException

        version = ""
        while not self._stop.is_set():
            make: Any = watch.Watch
            stream = make()
            try:
                for event in stream.stream(
                    lister, self.namespace, resource_version=version, timeout_seconds=30, **kw
                ):
                    obj = event["object"]
                    if not isinstance(obj, dict):
                        obj = self.batch.api_client.sanitize_for_serialization(obj)
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    handle(str(event["type"]), obj)
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == 410:
                    version = ""
                    continue
                raise
            finally:
                stream.stop()

    def _watch_jobs(self) -> None:
        self._watch(self.batch.list_namespaced_job, self._on_job)

    def _watch_runs(self) -> None:
        def lister(namespace: str, **kw: Any) -> Any:
            return self.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "preferenceruns", **kw
            )

        self._watch(lister, self._on_run)

    def _on_run(self, kind: str, run: dict[str, Any]) -> None:
        status = run.get("status") or {}
        name = run["metadata"]["name"]
        size = len(json.dumps(status, separators=(",", ":")))
        with self._lock:
            if size > self.max_status_bytes:
                self.max_status_bytes, self.max_status_run = size, name
            self.phases[name] = str(status.get("phase") or "")
            clock = self.clocks[name]
            if status.get("phase") == "Succeeded" and clock.succeeded is None:
                clock.succeeded = time.time()

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        if kind != "ADDED":
            return
        meta = job["metadata"]
        labels = meta.get("labels") or {}
        run_name, stage = labels.get(LABEL_RUN), labels.get(LABEL_STAGE)
        seen, scheduled = time.time(), time.monotonic()
        with self._lock:
            run = self.runs.get(run_name or "")
            if run is None or stage not in STAGES or meta["name"] in self.jobs:
                return
            self.clocks[run.name].jobs_seen[stage].append((seen, meta["name"]))
            completions = int((job.get("spec") or {}).get("completions") or 1)
            sim = _Job(meta["name"], run.name, stage, labels.get(LABEL_MODEL), completions)
            sim.started = _now_rfc3339()
            self.jobs[sim.name] = sim
            for index in range(completions):
                shards = self._index_shards(run, sim, index)
                sim.left[index] = len(shards)
                for k, shard in enumerate(shards):
                    self._seq += 1
                    due = scheduled + (k + 1) * self.shard_seconds
                    heapq.heappush(self._due, (due, self._seq, sim.name, index, shard))
            self._wake.notify_all()

    def _index_shards(self, run: SimRun, job: _Job, index: int) -> list[int]:
        """The shards an index commits; prepare and the vLLM judge are one unit of work."""
        if job.stage in ("prepare", "judge"):
            return [0]
        shards = layout.shards_for_worker(run.shards, index, job.completions)
        if job.stage == "generate" and run.stall_generation_at is not None:
            shards = [s for s in shards if s < run.stall_generation_at]
        return shards

    # ---- working

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                while not self._stop.is_set():
                    wait = self._due[0][0] - time.monotonic() if self._due else 1.0
                    if self._due and wait <= 0:
                        _, _, name, index, shard = heapq.heappop(self._due)
                        job = self.jobs[name]
                        run = self.runs[job.run]
                        break
                    self._wake.wait(min(max(wait, 0.001), 1.0))
                else:
                    return
            self._commit(run, job, shard)
            with self._lock:
                job.left[index] -= 1
                finished = job.left[index] == 0
                if finished:
                    job.done.add(index)
                    job.dirty = True
                complete = len(job.done) == job.completions and not job.complete
                if complete:
                    job.complete = True
            if complete:
                self._write_job_status(job)

    def _put(
        self, storage: Storage, key: str, info: dict[str, Any], data: bytes | None = None
    ) -> None:
        storage.write_bytes(key, self.payload if data is None else data)
        storage.commit(key, info)
        with self._lock:
            self.commits += 1

    def _commit(self, run: SimRun, job: _Job, shard: int) -> None:
        """Commit what the stage's worker commits for `shard`, and note stage completions."""
        storage, spec, shards = run.storage, run.spec, run.shards
        size = spec.prompts.shard_size

        def rows(s: int) -> int:
            return min(size, run.prompts - s * size)

        clock = self.clocks[run.name]
        if job.stage == "prepare":
            for s in range(shards):
                self._put(storage, layout.prompt_shard(s), {"rows": rows(s)})
            summary = PrepareSummary(shards=shards, prompts=run.prompts)
            storage.write_json(layout.PROMPTS_MANIFEST, dataclasses.asdict(summary))
            self._done(clock, "prepare")
        elif job.stage == "generate":
            assert job.model is not None
            if shard == 0:
                storage.write_json(layout.model_record(job.model), {"model": job.model})
            key = layout.generation_shard(job.model, shard)
            self._put(storage, key, {"rows": rows(shard), "errors": 0, "completion_tokens": 0})
            if self._count(clock, "generated") == shards * len(spec.models):
                self._done(clock, "generate")
        elif job.stage == "mix":
            n = rows(shard)
            request = layout.request_file(shard, 0)
            self._put(storage, request, {"rows": n, "bytes": len(self.payload)})
            mixed = MixSummary(
                shards_done=1, prompts=n, prompts_mixed=n, requests=n, request_files=1
            )
            self._put(
                storage, layout.mix_shard(shard), {"rows": n, "summary": dataclasses.asdict(mixed)}
            )
            if self._count(clock, "mixed") == shards:
                self._done(clock, "mix")
        elif job.stage == "judge":
            storage.write_json(layout.JUDGE_RECORD, {"model": spec.judge.model})
            for s in range(shards):
                key = layout.result_for_request(layout.request_file(s, 0))
                self._put(storage, key, {"rows": rows(s)})
            self._done(clock, "judge")
        elif job.stage == "parse":
            n = rows(shard)
            aspects = len(spec.mix.aspects)
            parsed = ParseSummary(
                shards_done=1,
                prompts=n,
                prompts_with_pairs=n,
                pairs=n,
                requests=n,
                replies=n,
                valid_ratings=n * aspects,
            )
            storage.write_json(layout.parse_summary(shard), dataclasses.asdict(parsed))
            self._put(
                storage,
                dataset_key(spec, shard),
                {"rows": n, "summary": dataclasses.asdict(parsed)},
            )
            if self._count(clock, "parsed") == shards:
                # The parse stage's own function: merges the markers into dataset/summary.json.
                if not write_run_summary(spec, storage, shards):
                    raise RuntimeError(f"{run.name}: parse summary not written")
                self._done(clock, "parse")

    def _count(self, clock: _RunClock, what: str) -> int:
        with self._lock:
            value = int(getattr(clock, what)) + 1
            setattr(clock, what, value)
            return value

    def _done(self, clock: _RunClock, stage: str) -> None:
        with self._lock:
            clock.stage_done[stage] = time.time()

    # ---- the Job controller's part

    def _status_body(self, job: _Job) -> dict[str, Any]:
        with self._lock:
            done = set(job.done)
            complete = job.complete
            job.dirty = False
        status: dict[str, Any] = {
            "startTime": job.started,
            "active": 0 if complete else job.completions - len(done),
            "ready": 0 if complete else job.completions - len(done),
            "succeeded": len(done),
            "completedIndexes": index_ranges(done),
            "uncountedTerminatedPods": {},
        }
        if complete:
            now = _now_rfc3339()
            status["completionTime"] = now
            status["conditions"] = [
                {
                    "type": kind,
                    "status": "True",
                    "reason": "CompletionsReached",
                    "message": "Reached expected number of succeeded pods",
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                }
                for kind in ("SuccessCriteriaMet", "Complete")
            ]
        return status

    def _write_job_status(self, job: _Job) -> None:
        body = {"status": self._status_body(job)}
        self.batch.patch_namespaced_job_status(job.name, self.namespace, body)

    def _flush_statuses(self) -> None:
        while not self._stop.wait(self.status_period):
            with self._lock:
                dirty = [j for j in self.jobs.values() if j.dirty and not j.complete]
            for job in dirty:
                with contextlib.suppress(Exception):
                    self._write_job_status(job)

    # ---- results

    def all_succeeded(self) -> bool:
        with self._lock:
            return bool(self.runs) and all(
                self.phases.get(name) == "Succeeded" for name in self.runs
            )

    def hops(self, created_at: Mapping[str, float] | None = None) -> dict[str, list[float]]:
        """Seconds of each hop, over the runs that made it; `created_at`: Job name -> when the
        API server created it (wall clock), preferred to the simulator's sighting."""
        created_at = created_at or {}
        found: dict[str, list[float]] = {hop: [] for hop in HOPS}
        with self._lock:
            clocks = {name: self.clocks[name] for name in self.runs}
            expected = {name: len(run.spec.models) for name, run in self.runs.items()}
        for name, clock in clocks.items():
            starts = {
                "created->prepare": clock.created,
                "prepare->generate": clock.stage_done.get("prepare"),
                "generate->mix": clock.stage_done.get("generate"),
                "mix->judge": clock.stage_done.get("mix"),
                "judge->parse": clock.stage_done.get("judge"),
                "parse->Succeeded": clock.stage_done.get("parse"),
            }
            for hop, start in starts.items():
                target = hop.split("->")[1]
                if target == "Succeeded":
                    end = clock.succeeded
                else:
                    seen = clock.jobs_seen.get(target) or []
                    want = expected[name] if target == "generate" else 1
                    times = [created_at.get(job, at) for at, job in seen]
                    end = max(times) if len(times) >= want else None
                if start is not None and end is not None:
                    found[hop].append(max(0.0, end - start))
        return found
