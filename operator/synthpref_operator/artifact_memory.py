"""What one run's storage showed at earlier passes, so that a pass looks again only where
something can have changed; pure (no I/O, no clock: the caller passes the time).

`observe.observe_artifacts` keeps one `ArtifactMemory` per run (`run_cache.RunCache`). Storage
is divided into parts, one per stage Job that writes it: `generations/<model>/` (that model's
generation Job), `mix/`, the vLLM judge's `requests/` and `results/`, and `dataset/` with the
summary and report (the parse Job). Only a stage's workers commit into its part, and a worker
commits before its pod ends, so a part can only have changed when its Job's observed state
(`JobMark`: succeeded count, completion, failure, failed indexes) changed since the part was
last looked at. A part is looked at again at once when its Job completed or failed (what the
next stage waits for) and when it was never looked at; at most every `progress_seconds` while
its Job only makes progress (the status's shard counts; a big run's twenty generation Jobs
change every second, and listing a part of 1,000 shards on each change made passes slower than
the reconcile interval); and every `relist_seconds` as a safety net (it also shows shards
committed by a worker still running). Those routine looks are capped per pass, oldest first,
so that no pass lists a big run's whole storage at once; a part with every shard committed
gets none. The pipeline never undoes a commit except when a run is retried (a Failed run's
Jobs are recreated and redo what is missing) or its spec changes, so a change of either, or a
run deleted and made again under the same name (`Basis`), forgets everything. A fresh memory
looks at everything: the first pass of a process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from synthpref_operator.names import Stage
from synthpref_operator.planner import JobState, ReportWarning

# Each unfinished part of a run's storage is looked at least this often, seconds.
RELIST_SECONDS = 120.0
# A part whose Job only made progress (more indexes succeeded) is looked at again at most this
# often, seconds.
PROGRESS_SECONDS = 15.0
# Routine looks (progress, safety net) per pass at most: a big run has twenty generation parts
# of two listing pages each, and all of them at once made a pass slower than the interval.
ROUTINE_PARTS_PER_PASS = 2

MIX = "mix/"
JUDGE = "judge"  # the vLLM judge's requests/ and results/
PARSE = "dataset/"  # with the summary and the report


def generation_part(model: str) -> str:
    return f"generations/{model}/"


# The run object's uid, generation and retry annotation: what the memory holds for.
Basis = tuple[str, int, str | None]

# What of a Job's state tells that its workers committed something since.
JobMark = tuple[tuple[str, int, bool, bool, tuple[int, ...]], ...]


def job_part(job: JobState) -> str | None:
    """The part of storage a stage Job's workers commit into (None: prepare)."""
    if job.stage is Stage.GENERATE and job.model is not None:
        return generation_part(job.model)
    return {Stage.MIX: MIX, Stage.JUDGE: JUDGE, Stage.PARSE: PARSE}.get(job.stage)


def job_marks(jobs: Iterable[JobState]) -> dict[str, JobMark]:
    """Per part, the state of the Jobs that write it (sorted, so equal states compare equal)."""
    marks: dict[str, list[tuple[str, int, bool, bool, tuple[int, ...]]]] = {}
    for job in jobs:
        part = job_part(job)
        if part is not None:
            entry = (job.name, job.succeeded, job.complete, job.failed, job.failed_indexes)
            marks.setdefault(part, []).append(entry)
    return {part: tuple(sorted(entries)) for part, entries in marks.items()}


@dataclass
class ArtifactMemory:
    """One run's storage as last seen: counts per part, the manifest, summary and report."""

    relist_seconds: float = RELIST_SECONDS
    progress_seconds: float = PROGRESS_SECONDS
    routine_per_pass: int = ROUTINE_PARTS_PER_PASS
    basis: Basis | None = None
    manifest: tuple[int, int] | None = None  # (shards, prompts)
    prompt_tokens: int | None = None  # the manifest's estimate, for the judge's cost estimate
    counts: dict[str, int] = field(default_factory=dict)
    marks: dict[str, JobMark] = field(default_factory=dict)
    looked_at: dict[str, float] = field(default_factory=dict)  # per part
    summary: dict[str, Any] | None = None
    report_uri: str | None = None
    report_error: str | None = None
    report_warnings: tuple[ReportWarning, ...] | None = None

    def rebase(self, basis: Basis) -> None:
        """Forget everything when the run's spec or retry annotation changed."""
        if self.basis != basis:
            self.forget()
            self.basis = basis

    def forget(self) -> None:
        self.manifest = None
        self.counts.clear()
        self.marks.clear()
        self.looked_at.clear()
        self.summary = None
        self.report_uri = self.report_error = self.report_warnings = None

    def due(self, parts: Iterable[str], marks: Mapping[str, JobMark], now: float) -> set[str]:
        """The parts to look at now.

        Always: parts never looked at, and parts whose Jobs completed or failed since (what
        the next stage waits for). Then at most `routine_per_pass` routine looks, oldest look
        first: parts whose Jobs made progress and were last looked at `progress_seconds` ago,
        before parts last looked at `relist_seconds` ago (the safety net). A final part (every
        shard committed: nothing can change there) has no routine looks.
        """
        urgent: set[str] = set()
        progress: list[tuple[float, str]] = []
        safety: list[tuple[float, str]] = []
        for part in parts:
            mark = marks.get(part, ())
            if part not in self.counts or _outcome(mark) != _outcome(self.marks.get(part, ())):
                urgent.add(part)
                continue
            if self.final(part):
                continue
            last = self.looked_at.get(part, float("-inf"))
            if mark != self.marks.get(part, ()) and now - last >= self.progress_seconds:
                progress.append((last, part))
            elif now - last >= self.relist_seconds:
                safety.append((last, part))
        oldest_first = sorted(progress, key=_when) + sorted(safety, key=_when)  # stable
        routine = [part for _, part in oldest_first]
        return urgent | set(routine[: self.routine_per_pass])

    def final(self, part: str) -> bool:
        """Every shard of the part is committed (and, for the parse part, the run summary
        written): the pipeline never undoes a commit within one basis, so it cannot change."""
        if self.manifest is None or self.counts.get(part, -1) < self.manifest[0]:
            return False
        return part != PARSE or self.summary is not None

    def saw(self, part: str, count: int, marks: Mapping[str, JobMark], now: float = 0.0) -> None:
        """Record a look at `part` at `now`, under the Job state the pass observed before it."""
        self.counts[part] = count
        self.marks[part] = marks.get(part, ())
        self.looked_at[part] = now


def _when(look: tuple[float, str]) -> float:
    return look[0]


def _outcome(mark: JobMark) -> tuple[tuple[str, bool, bool, tuple[int, ...]], ...]:
    """A part's Jobs without their succeeded counts: which Jobs, and whether they completed,
    failed, or lost indexes."""
    return tuple((name, complete, failed, lost) for name, _, complete, failed, lost in mark)
