"""The OpenAI Batch judge engine: advance every request file of a run one step at a time.

Called by `synthpref annotate ...`, by the local run (`annotate.local`) and, later, by the
operator's controller loop. `Annotator.step()` makes at most one API move per request file and
records it in that file's ledger before returning, so a process may die anywhere and the next
step carries on from storage. `run_until_done()` repeats steps with the spec's poll interval;
`cancel()` stops the run and keeps what finished.

Per request file (see `ledger.Phase`): pending → upload → uploaded → create batch → submitted →
poll until the batch ends → ended → fetch output and error files into the attempt's result file
(`layout.result_for_request(request_key, attempt)`, committed) → done, or a resubmission file of
the failed and missing requests → pending (next attempt) while attempts remain. A batch that
fails with `token_limit_exceeded` is created again later (same attempt, not counted as failed).

Cost per step, flat in the number and size of the files: every batch in flight is polled from
one paged listing (`BatchClient.batches`), not a retrieve each; uploads go from a spooled copy on
disk; output and error files are downloaded in chunks to temp files and the result file is
written line by line. The ledgers are read once per process; an Annotator of the whole run keeps
them all in one state document too (`annotate.state`), which a fresh Annotator (the operator
builds one per pass) reads instead of every ledger.

Exactly once: an upload is recorded as intended before it happens and looked up by its file name
after a crash; a batch carries metadata naming the run, request file, attempt and submission, and
the engine looks for such a batch before it creates one; each custom_id appears in exactly one
result line over all result files of its request file (200 lines as they come; failures only in
the last attempt's file, so `parse` reports them).

Limits: an optional budget of estimated queued tokens (files wait to be uploaded while the
budget is taken; a file larger than the budget goes alone), and at most
`max_creations_per_hour` batch creations (2,000 for the Batch API) in any hour. With
`judge.budget`, a file is submitted only when it cannot take the run over the spending cap
(`synthpref.budget`); files that could wait, `budget_hold()` says so, and `run_until_done` stops
with `BudgetExhaustedError` once nothing is in flight any more (a rerun with a raised cap
resumes; the operator holds the run instead).

API errors never escape a step. A 4xx answer (`ApiRequestError`) on upload, batch create,
retrieve or download is recorded on the file's ledger (`api_errors`) and repaired: the upload is
tried again, or the attempt is submitted again with a fresh upload and a new batch (input file
gone, batch or output file vanished), at most `MAX_REPAIRS_PER_ATTEMPT` times per attempt; past
that the file ends FAILED with the API's message and its open requests are written as failure
result lines (reason `api_error_http_<status>[_<code>]`), so every request still ends as exactly
one result line and the other files carry on. Only `model_not_found` stops the judge
(`FatalAnnotateError`), as a bad key does.

An unreachable or failing endpoint (transport errors, 5xx, 429 after the client's retries) ends
the step early (the other files wait) and is tracked as an outage: `failing_since` (since when no
call got an answer) and `last_error`, on the Annotator and on every StepReport.
`run_until_done` gives up with `JudgeUnavailableError` after `judge.giveUpAfterSeconds` of
continuous failure; everything fetched so far stays committed and a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from synthpref import layout
from synthpref.annotate import ledger as ledgers
from synthpref.annotate import state as judge_state
from synthpref.annotate.client import ApiRequestError, BatchClient, FatalApiError, TransientApiError
from synthpref.annotate.estimate import request_tokens
from synthpref.annotate.ledger import ApiErrorRecord, FileLedger, Phase, Submission
from synthpref.annotate.outcomes import MISSING, SortedResults, failure_line, sort_results
from synthpref.budget import BudgetHold, Cap, Spending, Tokens, upper_bound
from synthpref.errors import InputsNotReadyError, SynthprefError
from synthpref.retrying import seconds
from synthpref.spec import PreferenceRunSpec
from synthpref.stages.judge import committed_request_files
from synthpref.stages.prepare import shard_count
from synthpref.storage import Storage
from synthpref.timing import TIMING_KEY, span

log = logging.getLogger(__name__)

MAX_CREATIONS_PER_HOUR = 2000
TOKEN_LIMIT = "token_limit_exceeded"
# Batch failures that mean the judge model itself is unusable: stop, naming the cause.
FATAL_BATCH_ERRORS = frozenset({"model_not_found"})
ENDED_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# How far back (service clock) a batch search looks before the upload it belongs to.
SEARCH_MARGIN_S = 300.0
# API error answers (4xx) repaired per attempt of a file before the file ends FAILED.
MAX_REPAIRS_PER_ATTEMPT = 3


class FatalAnnotateError(SynthprefError, RuntimeError):
    """The judge cannot go on (bad key, unknown model); the message names the cause."""


class BudgetExhaustedError(SynthprefError, RuntimeError):
    """The judge's spending cap (judge.budget) stops further batches; everything fetched is
    kept, and a rerun with a raised cap resumes."""


class JudgeUnavailableError(SynthprefError, RuntimeError):
    """The judge endpoint kept failing for `judge.giveUpAfterSeconds`; what was fetched is kept
    and a rerun resumes."""


@dataclass
class StepReport:
    """What one step did: the moves made, what waits and why, and whether all files are done.

    For a caller that steps the judge once per pass (the operator), the endpoint's health:
    `reached` (some API call got an answer in this step), `failing_since` (the Annotator's clock
    since when every call failed, carried over from earlier steps; None while the endpoint
    answers), `last_error` (the last transport error while failing) and `endpoint` (the base URL
    the messages name). `api_errors` are the 4xx answers recorded on ledgers in this step, with
    what was done about each (repaired, or the file failed).
    """

    actions: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    transient_errors: list[str] = field(default_factory=list)
    api_errors: list[str] = field(default_factory=list)
    done: bool = False
    endpoint: str = ""
    reached: bool = False
    failing_since: float | None = None
    last_error: str | None = None

    @property
    def progressed(self) -> bool:
        return bool(self.actions)


@dataclass
class AnnotateSummary:
    """Counts over the run's request files; requests = done + failed + still open."""

    files: int = 0
    files_done: int = 0
    requests: int = 0
    done: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    resubmitted: int = 0
    token_limit_retries: int = 0
    tokens_used: int = 0
    input_tokens_used: int = 0
    output_tokens_used: int = 0
    cost_usd: float | None = None  # of the tokens used, at Batch API prices (None: no price)
    phases: dict[str, int] = field(default_factory=dict)
    cancelled: bool = False


def _store_tag(storage: Storage) -> str:
    return hashlib.sha256(storage.uri.encode()).hexdigest()[:16]


class Annotator:
    """Drives the OpenAI judge of one run over `storage`; see the module docstring."""

    def __init__(
        self,
        spec: PreferenceRunSpec,
        storage: Storage,
        run_name: str,
        client: BatchClient | None,
        *,
        shards: Iterable[int] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_creations_per_hour: int = MAX_CREATIONS_PER_HOUR,
        failing_since: float | None = None,
    ) -> None:
        self.spec = spec
        self.judge = spec.judge
        self.storage = storage
        self.run_name = run_name
        self._client = client
        self.clock = clock
        self.sleep = sleep
        self.max_creations_per_hour = max_creations_per_hour
        self._shards = list(shards) if shards is not None else None
        # Only an Annotator of every shard keeps the state document (annotate.state).
        self._whole_run = shards is None
        self._ledgers: dict[str, FileLedger] | None = None
        self._state_clean: bool | None = None  # the stored document: clean, open, unknown
        self._state_changed = False  # a change only the document records (batch progress)
        self._tag = _store_tag(storage)
        self._in_flight = 0
        self._spending = Spending()
        self._recent_creations = 0
        self._listed: dict[str, Any] = {}  # this step's listing of submitted batches, by id
        # The endpoint's outage, in this Annotator's clock; a caller that builds a fresh
        # Annotator per step (the operator) passes the `failing_since` it last saw.
        self.failing_since = failing_since
        self.last_error: str | None = None

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            raise RuntimeError("this Annotator has no API client (it was built for status only)")
        return self._client

    # ---- state

    @property
    def shards(self) -> list[int]:
        if self._shards is None:
            self._shards = list(range(shard_count(self.storage)))
        return self._shards

    def ledgers(self) -> list[FileLedger]:
        """The ledger of every committed request file of the shards (created on first sight):
        from the state document when it is clean and covers the same shards (one read), else
        from the ledgers themselves (the document is then written again at the step's end)."""
        if self._ledgers is None:
            state = judge_state.load(self.storage)
            if (
                state is not None
                and state.clean
                and (self._shards is None or sorted(self._shards) == state.shards)
            ):
                self._shards = list(state.shards)
                self._ledgers = {r.request_key: r for r in state.ledgers}
                self._state_clean = True
                return [self._ledgers[k] for k in sorted(self._ledgers)]
            found: dict[str, FileLedger] = {}
            for shard in self.shards:
                for key in committed_request_files(self.storage, shard):
                    existing = ledgers.load(self.storage, key)
                    found[key] = existing or self._new_ledger(shard, key)
            self._ledgers = found
        return [self._ledgers[k] for k in sorted(self._ledgers)]

    def _new_ledger(self, shard: int, key: str) -> FileLedger:
        count, tokens, models = 0, 0, set()
        for line in self._input_lines(key):
            body = line.get("body") or {}
            count += 1
            tokens += request_tokens(body)
            models.add(str(body.get("model")))
        if len(models) > 1:
            raise FatalAnnotateError(
                f"{self.storage.url(key)}: requests name several models {sorted(models)}; "
                "a batch input file may use one model only"
            )
        record = FileLedger(
            request_key=key,
            shard=shard,
            model=models.pop() if models else self.judge.model,
            requests=count,
            input_key=key,
            input_requests=count,
            input_tokens=tokens,
        )
        self._save(record)
        return record

    def _input_lines(self, key: str) -> Iterable[dict[str, Any]]:
        if self.storage.committed(key) is None:
            raise InputsNotReadyError(f"{self.storage.url(key)}: request file not committed")
        for number, text in enumerate(self.storage.read_lines(key), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as error:
                raise FatalAnnotateError(
                    f"{self.storage.url(key)}:{number}: not JSON: {error.msg}"
                ) from None
            yield line

    def cancelled(self) -> bool:
        return self.storage.exists(layout.JUDGE_CANCEL_MARKER)

    def _metadata(self, record: FileLedger, submission: Submission) -> dict[str, str]:
        return {
            "synthpref_run": self.run_name[:512],
            "synthpref_store": self._tag,
            "synthpref_file": record.request_key[:512],
            "synthpref_attempt": str(submission.attempt),
            "synthpref_submission": str(submission.submission),
        }

    def _filename(self, record: FileLedger) -> str:
        stem = record.request_key.removeprefix("requests/").removesuffix(".jsonl")
        name = f"synthpref-{self._tag}-{self.run_name}-{stem}-attempt-{record.attempt:02d}"
        submission = record.current.submission if record.current is not None else 1
        # A repair uploads again: its own name, so the crash lookup never finds the old file.
        return f"{name}-s{submission:02d}.jsonl" if submission > 1 else f"{name}.jsonl"

    def _tokens_in_flight(self) -> int:
        return sum(r.input_tokens for r in self.ledgers() if r.holds_tokens())

    # ---- the spending cap (judge.budget)

    def cap(self) -> Cap | None:
        budget = self.judge.budget
        if budget is None:
            return None
        return Cap(budget.max_usd, budget.max_tokens, self.judge.price())

    def _bound(self, record: FileLedger) -> Tokens:
        """The most the file's current attempt may use once submitted."""
        return upper_bound(record.input_tokens, record.input_requests, self.judge.max_tokens)

    def spending(self) -> Spending:
        """Actual usage of fetched results and the bound of every batch in flight."""
        spent = in_flight = Tokens()
        for record in self.ledgers():
            spent += record.used()
            if record.holds_tokens():
                in_flight += self._bound(record)
        return Spending(spent, in_flight)

    def budget_hold(self) -> BudgetHold | None:
        """The files the cap holds back now (pending files whose batch does not fit), if any.
        Reads the ledgers only: the operator's observer calls it without an API client."""
        cap = self.cap()
        if cap is None or self.cancelled():
            return None
        spending = self.spending()
        held = [
            self._bound(r)
            for r in self.ledgers()
            if r.phase is Phase.PENDING and not spending.may_submit(cap, self._bound(r))
        ]
        if not held:
            return None
        pending = sum(r.input_requests for r in self.ledgers() if r.phase is Phase.PENDING)
        return BudgetHold(cap, spending, pending, min(held, key=lambda t: t.total))

    def _creations_last_hour(self, now: float) -> int:
        return sum(
            1
            for record in self.ledgers()
            for sub in record.submissions()
            if sub.created_at is not None and now - sub.created_at < 3600
        )

    def _save(self, record: FileLedger) -> None:
        self._open_state()
        ledgers.save(self.storage, record)

    # ---- the state document (annotate.state): one read of every ledger

    def _open_state(self) -> None:
        """Before the first ledger save since the document was last written clean: mark it
        open (or, for an Annotator of some shards only, or while the ledgers load, delete it),
        so no reader trusts it until it is written clean again."""
        if self._state_clean is False:
            return
        if self._whole_run and self._ledgers is not None:
            self._write_state(clean=False)
        else:
            self.storage.delete(layout.JUDGE_STATE)
            self._state_clean = False

    def _close_state(self) -> None:
        """At the end of a step: write the document clean when it is open, was never written
        by this Annotator (rebuilt from the ledgers), or records new batch progress."""
        if not (self._whole_run and self._ledgers is not None):
            return
        if self._state_clean is not True or self._state_changed:
            self._write_state(clean=True)
            self._state_changed = False

    def _write_state(self, *, clean: bool) -> None:
        state = judge_state.JudgeState(clean=clean, shards=self.shards, ledgers=self.ledgers())
        judge_state.save(self.storage, state)
        self._state_clean = clean

    # ---- one step

    def step(self, only: Collection[Phase] | None = None) -> StepReport:
        """Make at most one API move per request file (only files in `only` phases, if given);
        every move is recorded in the file's ledger before this returns. No API error escapes
        (see the module docstring); a bad key or unknown model raises FatalAnnotateError."""
        report = StepReport(endpoint=self.client.where)
        started = self.clock()
        answered = self.client.answered
        # The client's retries stop at the moment this run gives up on the endpoint.
        since = self.failing_since if self.failing_since is not None else started
        self.client.clock = self.clock
        self.client.give_up_at = since + self.judge.give_up_after_seconds
        cancelled = self.cancelled()
        # Counted once per step and kept up to date by _upload/_create (not once per file).
        self._in_flight = self._tokens_in_flight()
        self._spending = self.spending()
        self._recent_creations = self._creations_last_hour(self.clock())
        down = False
        try:
            self._listed = self._list_submitted(only)
        except TransientApiError as error:
            self._listed = {}
            report.transient_errors.append(f"poll: {error}")
            down = self.client.last_failure is not None
        except ApiRequestError as error:  # the listing refused: each file is retrieved instead
            self._listed = {}
            log.warning("judge: %s; retrieving each batch instead", error)
        except FatalApiError as error:
            raise FatalAnnotateError(str(error)) from None
        for record in self.ledgers():
            if down:
                break  # the endpoint is down: the files wait for the next step
            if record.phase in ledgers.TERMINAL_PHASES:
                continue
            if only is not None and record.phase not in only:
                continue
            try:
                self._advance(record, report, cancelled)
            except TransientApiError as error:
                report.transient_errors.append(f"{record.request_key}: {error}")
                down = self.client.last_failure is not None
            except ApiRequestError as error:
                self._api_error(record, error, report)
            except FatalApiError as error:
                raise FatalAnnotateError(str(error)) from None
        self._track_outage(report, started, answered)
        report.done = all(r.phase in ledgers.TERMINAL_PHASES for r in self.ledgers())
        self._close_state()
        return report

    def _track_outage(self, report: StepReport, started: float, answered: int) -> None:
        report.reached = self.client.answered > answered
        if self.client.last_failure is not None:
            if self.failing_since is None:
                self.failing_since = started
            self.last_error = self.client.last_failure
        elif report.reached:
            self.failing_since = None
            self.last_error = None
        report.failing_since = self.failing_since
        report.last_error = self.last_error

    def _advance(self, record: FileLedger, report: StepReport, cancelled: bool) -> None:
        now = self.clock()
        if record.phase is Phase.PENDING:
            if cancelled:
                self._finish_unsubmitted(record, report)
            elif record.not_before > now:
                report.waiting.append(f"{record.request_key}: waiting to retry")
            elif not self._budget_allows(record):
                report.waiting.append(f"{record.request_key}: queued-token budget is taken")
            elif not self._spending.may_submit(self.cap(), self._bound(record)):
                report.waiting.append(f"{record.request_key}: judge budget (judge.budget) reached")
            else:
                self._upload(record, report)
        elif record.phase is Phase.UPLOADED:
            if cancelled:
                self._cancel_unrecorded(record, report)
            elif record.not_before > now:
                report.waiting.append(f"{record.request_key}: token limit, retrying later")
            elif self._recent_creations >= self.max_creations_per_hour:
                report.waiting.append(f"{record.request_key}: batch creation rate limit")
            else:
                self._create(record, report)
        elif record.phase is Phase.SUBMITTED:
            self._poll(record, report)
        elif record.phase is Phase.ENDED:
            self._fetch(record, report, cancelled)
            self._spending = self.spending()  # its bound became its actual usage

    def _budget_allows(self, record: FileLedger) -> bool:
        budget = self.judge.queued_token_budget
        if budget is None:
            return True
        return self._in_flight == 0 or self._in_flight + record.input_tokens <= budget

    def _upload(self, record: FileLedger, report: StepReport) -> None:
        with tempfile.TemporaryFile() as data:  # on disk: memory stays flat in the file's size
            for chunk in self.storage.read_chunks(record.input_key):
                data.write(chunk)
            data.flush()  # the upload sizes the file by its length on disk
            size = data.tell()
            filename = self._filename(record)
            existing = None
            if record.current is not None and record.current.file_id is None:
                # An upload was intended before a crash: it may have happened.
                existing = self.client.find_file(filename, size)
            else:
                record.current = Submission(attempt=record.attempt, input_key=record.input_key)
                self._save(record)
            uploaded = existing or self.client.upload(filename, data)
        assert record.current is not None
        record.current.file_id = uploaded.id
        record.current.uploaded_at = float(uploaded.created_at)
        record.phase = Phase.UPLOADED
        self._save(record)
        self._in_flight += record.input_tokens
        spending = self._spending
        self._spending = Spending(spending.spent, spending.in_flight + self._bound(record))
        report.actions.append(f"{record.request_key}: uploaded {uploaded.id}")

    def _find_batch(self, record: FileLedger) -> Any | None:
        assert record.current is not None
        since = (record.current.uploaded_at or 0.0) - SEARCH_MARGIN_S
        return self.client.find_batch(self._metadata(record, record.current), since)

    def _create(self, record: FileLedger, report: StepReport) -> None:
        current = record.current
        assert current is not None and current.file_id is not None
        batch = self._find_batch(record)
        verb = "found"
        if batch is None:
            try:
                batch = self.client.create_batch(current.file_id, self._metadata(record, current))
            except ApiRequestError as error:
                if error.status == 409:
                    raise TransientApiError(str(error)) from None  # look it up next step
                raise
            verb = "created"
            self._recent_creations += 1
        current.created_at = self.clock()
        self._record_batch(current, batch)
        record.phase = Phase.SUBMITTED
        self._save(record)
        report.actions.append(f"{record.request_key}: {verb} batch {batch.id}")

    @staticmethod
    def _record_batch(current: Submission, batch: Any) -> None:
        current.batch_id = batch.id
        current.status = batch.status
        counts = batch.request_counts
        if counts is not None:
            current.request_counts = {
                "total": counts.total,
                "completed": counts.completed,
                "failed": counts.failed,
            }
        current.output_file_id = batch.output_file_id
        current.error_file_id = batch.error_file_id
        errors = batch.errors.data if batch.errors is not None and batch.errors.data else []
        current.errors = [
            {"code": e.code, "message": e.message, "line": e.line, "param": e.param} for e in errors
        ]

    def _list_submitted(self, only: Collection[Phase] | None) -> dict[str, Any]:
        """The batches of every submitted file, by id, from one paged listing (`client.batches`)
        that reaches back to the oldest upload among them; {} when none is in flight."""
        if only is not None and Phase.SUBMITTED not in only:
            return {}
        submitted = [
            r.current
            for r in self.ledgers()
            if r.phase is Phase.SUBMITTED and r.current is not None and r.current.batch_id
        ]
        if not submitted:
            return {}
        since = min(s.uploaded_at or 0.0 for s in submitted) - SEARCH_MARGIN_S
        return self.client.batches([str(s.batch_id) for s in submitted], since)

    def _poll(self, record: FileLedger, report: StepReport) -> None:
        current = record.current
        assert current is not None and current.batch_id is not None
        # The step's listing; a batch it did not show (e.g. gone) is retrieved on its own, so
        # its 404 is repaired as before.
        batch = self._listed.get(current.batch_id) or self.client.retrieve(current.batch_id)
        before = (current.status, current.request_counts)
        self._record_batch(current, batch)
        if batch.status not in ENDED_STATUSES:
            if current.status != before[0]:
                self._save(record)
            elif current.request_counts != before[1]:
                # Progress only: kept in the state document (one write per step for every
                # file), not a ledger write per file per step; the ledger gets it with its
                # next change.
                self._state_changed = True
            return
        codes = {str(e["code"]) for e in current.errors}
        if batch.status == "failed" and TOKEN_LIMIT in codes:
            self._retry_after_token_limit(record)
            report.actions.append(f"{record.request_key}: {TOKEN_LIMIT}, will retry")
            return
        if batch.status == "failed" and codes & FATAL_BATCH_ERRORS:
            message = "; ".join(str(e["message"]) for e in current.errors)
            reason = "batch_failed_" + "_".join(sorted(codes))
            self._fail_file(record, reason, f"batch {batch.id} failed: {message}")
            raise FatalAnnotateError(
                f"{self.storage.url(record.request_key)}: the judge model {record.model!r} "
                f"cannot be used: {message}"
            )
        record.phase = Phase.ENDED
        self._save(record)
        report.actions.append(f"{record.request_key}: batch {batch.id} {batch.status}")

    @staticmethod
    def _next_submission(record: FileLedger, *, keep_file: bool) -> None:
        """The current attempt again, as a new submission (its own batch metadata)."""
        current = record.current or Submission(attempt=record.attempt, input_key=record.input_key)
        record.history.append(current)
        record.current = Submission(
            attempt=current.attempt,
            submission=current.submission + 1,
            input_key=current.input_key,
            file_id=current.file_id if keep_file else None,
            uploaded_at=current.uploaded_at if keep_file else None,
        )
        record.phase = Phase.UPLOADED if keep_file else Phase.PENDING

    def _retry_after_token_limit(self, record: FileLedger) -> None:
        self._next_submission(record, keep_file=True)
        record.token_limit_retries += 1
        exponent = min(record.token_limit_retries - 1, 6)
        record.not_before = self.clock() + self.judge.poll_interval_seconds * 2**exponent
        self._save(record)

    def _fetch(self, record: FileLedger, report: StepReport, cancelled: bool) -> None:
        """Download the batch's output and error files (streamed to temp files) and write the
        attempt's result file line by line as they are read: memory stays flat in their size."""
        current = record.current
        assert current is not None
        missing = MISSING
        if current.status == "cancelled":
            missing = "cancelled"
        elif current.status == "failed":
            codes = sorted({str(e["code"]) for e in current.errors}) or ["unknown"]
            missing = "batch_failed_" + "_".join(codes)
        stopped = cancelled or current.status == "cancelled"
        ids = [str(line["custom_id"]) for line in self._input_lines(record.input_key)]
        with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
            self._download(current.output_file_id, output)
            self._download(current.error_file_id, errors)
            with self._result_writer(record, current) as write:
                results = sort_results(ids, _lines(output), _lines(errors), missing, sink=write)
                resubmit = bool(results.failed) and record.attempt < self.judge.max_attempts
                resubmit = resubmit and not stopped
                if not resubmit:
                    for custom_id in sorted(results.failed):
                        write(results.failure_lines[custom_id])
            self._commit_results(record, current, results, final=not resubmit)
        record.done += len(results.ok)
        record.tokens_used += results.tokens
        record.input_tokens_used += results.prompt_tokens
        record.output_tokens_used += results.completion_tokens
        record.history.append(current)
        record.current = None
        if resubmit:
            self._resubmit(record, set(results.failed))
            report.actions.append(
                f"{record.request_key}: fetched {len(results.ok)}, resubmitting "
                f"{len(results.failed)} (attempt {record.attempt})"
            )
        else:
            record.failed = dict(Counter(record.failed) + Counter(results.failed.values()))
            record.phase = Phase.CANCELLED if stopped else Phase.DONE
            report.actions.append(
                f"{record.request_key}: fetched {len(results.ok)}, {len(results.failed)} failed"
            )
        self._save(record)

    def _download(self, file_id: str | None, into: IO[bytes]) -> None:
        if file_id is not None:
            self.client.download(file_id, into)
        into.seek(0)

    @contextmanager
    def _result_writer(
        self, record: FileLedger, current: Submission
    ) -> Iterator[Callable[[str], None]]:
        """A writer of the attempt's result file, one line per call; the file is in place when
        this ends (not yet committed: `_commit_results` does that)."""
        key = layout.result_for_request(record.request_key, record.attempt)
        with self.storage.open_writer(key) as stream:
            yield lambda line: stream.write(line.strip() + "\n")
        current.result_key = key

    def _commit_results(
        self, record: FileLedger, current: Submission, results: SortedResults, *, final: bool
    ) -> None:
        key = layout.result_for_request(record.request_key, record.attempt)
        started = current.created_at if current.created_at is not None else self.clock()
        self.storage.commit(
            key,
            {
                "rows": len(results.ok) + (len(results.failed) if final else 0),
                "batch_id": current.batch_id,
                "ok": len(results.ok),
                "failed": len(results.failed) if final else 0,
                "resubmitted": 0 if final else len(results.failed),
                "unknown": results.unknown,
                # From batch creation to this fetch, by this Annotator's clock.
                TIMING_KEY: span(started, self.clock() - started),
            },
        )

    def _write_results(
        self, record: FileLedger, current: Submission, results: SortedResults, *, final: bool
    ) -> None:
        """Write and commit results sorted in memory (a file that ends without a fetch)."""
        with self._result_writer(record, current) as write:
            for line in results.ok.values():
                write(line)
            if final:
                for custom_id in sorted(results.failed):
                    write(results.failure_lines[custom_id])
        self._commit_results(record, current, results, final=final)

    def _resubmit(self, record: FileLedger, failed: set[str]) -> None:
        attempt = record.attempt + 1
        key = layout.judge_resubmit(record.request_key, attempt)
        count = tokens = 0
        with self.storage.open_writer(key) as stream:
            for line in self._input_lines(record.input_key):
                if line["custom_id"] in failed:
                    stream.write(json.dumps(line, ensure_ascii=False) + "\n")
                    count += 1
                    tokens += request_tokens(line.get("body") or {})
        self.storage.commit(key, {"rows": count})
        record.attempt = attempt
        record.input_key = key
        record.input_requests = count
        record.input_tokens = tokens
        record.resubmitted += count
        record.not_before = 0.0
        record.repairs = 0
        record.phase = Phase.PENDING

    # ---- API error answers

    def _api_error(self, record: FileLedger, error: ApiRequestError, report: StepReport) -> None:
        """Record a 4xx answer on the file's ledger, then repair or (past the bound) fail it."""
        current = record.current
        entry = ApiErrorRecord(
            call=error.call or str(error),
            status=error.status,
            code=error.code,
            message=error.api_message,
            at=self.clock(),
            attempt=record.attempt,
            submission=current.submission if current is not None else 1,
        )
        record.api_errors.append(entry)
        fatal = error.code in FATAL_BATCH_ERRORS
        if fatal or record.repairs >= MAX_REPAIRS_PER_ATTEMPT:
            entry.outcome = "file failed"
            reason = f"api_error_http_{error.status}" + (f"_{error.code}" if error.code else "")
            self._fail_file(record, reason, str(error))
        else:
            record.repairs += 1
            entry.outcome = self._repair(record)
            self._save(record)
        line = f"{record.request_key}: {error}; {entry.outcome}"
        log.warning("judge: %s", line)
        report.api_errors.append(line)
        if fatal:
            raise FatalAnnotateError(
                f"{self.storage.url(record.request_key)}: the judge model {record.model!r} "
                f"cannot be used: {error}"
            )

    def _repair(self, record: FileLedger) -> str:
        """Undo the move that failed so the next step makes it again; says what will happen."""
        bound = f"(repair {record.repairs} of {MAX_REPAIRS_PER_ATTEMPT})"
        if record.phase is Phase.PENDING:
            return f"uploading again {bound}"  # the lookup by file name comes first
        # Input file gone or rejected, batch or output file vanished: the attempt again.
        self._next_submission(record, keep_file=False)
        return f"uploading again and creating a new batch {bound}"

    def _fail_file(self, record: FileLedger, reason: str, message: str) -> None:
        """End the file FAILED: the current attempt's requests become failure result lines."""
        ids = [str(line["custom_id"]) for line in self._input_lines(record.input_key)]
        results = SortedResults(
            failed=dict.fromkeys(ids, reason),
            failure_lines={i: failure_line(i, reason, message) for i in ids},
        )
        self._end_file(record, results, Phase.FAILED)
        record.error = message
        self._save(record)

    def _end_file(self, record: FileLedger, results: SortedResults, phase: Phase) -> None:
        """Write `results` as the current attempt's final ones and end the file in `phase`."""
        current = record.current or Submission(attempt=record.attempt, input_key=record.input_key)
        self._write_results(record, current, results, final=True)
        record.history.append(current)
        record.current = None
        record.failed = dict(Counter(record.failed) + Counter(results.failed.values()))
        record.phase = phase

    def _finish_unsubmitted(self, record: FileLedger, report: StepReport) -> None:
        """A cancelled run: report the current attempt's requests as failed ('cancelled')."""
        ids = [str(line["custom_id"]) for line in self._input_lines(record.input_key)]
        self._end_file(record, sort_results(ids, [], [], "cancelled"), Phase.CANCELLED)
        self._save(record)
        report.actions.append(f"{record.request_key}: cancelled before submission")

    def _cancel_unrecorded(self, record: FileLedger, report: StepReport) -> None:
        """Cancelled while uploaded: a batch created just before a crash may exist; cancel it."""
        batch = self._find_batch(record)
        if batch is None:
            self._finish_unsubmitted(record, report)
            return
        assert record.current is not None
        record.current.created_at = self.clock()
        self._record_batch(record.current, self.client.cancel(batch.id))
        record.phase = Phase.SUBMITTED
        self._save(record)
        report.actions.append(f"{record.request_key}: cancelling unrecorded batch {batch.id}")

    # ---- whole runs

    def run_until_done(self, on_shard: Callable[[int], None] | None = None) -> AnnotateSummary:
        """Step until every request file is done; sleeps the poll interval when nothing moved.
        Raises JudgeUnavailableError once the endpoint has failed for
        `judge.giveUpAfterSeconds` without one answer."""
        reported: set[int] = set()
        while True:
            report = self.step()
            self._report_shards(on_shard, reported)
            if report.done:
                return self.summary()
            unavailable = self.unavailable_error()
            if unavailable is not None:
                raise unavailable
            hold = None if report.progressed else self.budget_hold()
            if hold is not None and not hold.in_flight:
                raise BudgetExhaustedError(
                    f"{self.storage.uri}: "
                    + hold.message("raise judge.budget in the run's spec and rerun to resume")
                )
            if report.failing_since is not None:
                log.warning(
                    "judge endpoint %s failing for %s (last error: %s); next step in %s, "
                    "giving up after %s",
                    report.endpoint,
                    seconds(self.clock() - report.failing_since),
                    report.last_error,
                    seconds(self.judge.poll_interval_seconds),
                    seconds(self.judge.give_up_after_seconds),
                )
            if not report.progressed:
                wait = self.judge.poll_interval_seconds
                if self.failing_since is not None:  # never sleep past giving up
                    give_up = self.failing_since + self.judge.give_up_after_seconds
                    wait = max(0.0, min(wait, give_up - self.clock()))
                self.sleep(wait)

    def unavailable_error(self, resume: str = "rerun to resume") -> JudgeUnavailableError | None:
        """The error to stop with when the endpoint has failed for `judge.giveUpAfterSeconds`
        (by this Annotator's clock), else None; `resume` says how to carry on afterwards."""
        if self.failing_since is None:
            return None
        failing = self.clock() - self.failing_since
        if failing < self.judge.give_up_after_seconds:
            return None
        return JudgeUnavailableError(
            f"judge endpoint {self.client.where} unreachable for {failing:.0f} s (last error: "
            f"{self.last_error}); gave up; results fetched so far are kept in "
            f"{self.storage.uri}; {resume}"
        )

    def _report_shards(self, on_shard: Callable[[int], None] | None, reported: set[int]) -> None:
        if on_shard is None:
            return
        by_shard: dict[int, list[FileLedger]] = {s: [] for s in self.shards}
        for record in self.ledgers():
            by_shard.setdefault(record.shard, []).append(record)
        for shard, records in sorted(by_shard.items()):
            if shard not in reported and all(r.phase in ledgers.TERMINAL_PHASES for r in records):
                reported.add(shard)
                on_shard(shard)

    def cancel(self, *, wait: bool = True, delete_files: bool = False) -> AnnotateSummary:
        """Stop the run: no new batches; cancel every batch in flight; with `wait`, wait for
        `cancelled` and fetch what finished. `delete_files` removes the uploaded input files."""
        if not self.cancelled():
            self.storage.write_json(layout.JUDGE_CANCEL_MARKER, {"cancelled_at": self.clock()})
        for record in self.ledgers():
            current = record.current
            if (
                record.phase is Phase.SUBMITTED
                and current is not None
                and current.batch_id
                and current.status not in (*ENDED_STATUSES, "cancelling")
            ):
                try:
                    self._record_batch(current, self.client.cancel(current.batch_id))
                except ApiRequestError as error:  # e.g. the batch vanished: repaired, then
                    self._api_error(record, error, StepReport())  # finished as cancelled
                    continue
                self._save(record)
        if wait:
            while not self.step().done:
                unavailable = self.unavailable_error()
                if unavailable is not None:
                    raise unavailable
                self.sleep(self.judge.poll_interval_seconds)
        if delete_files:
            for record in self.ledgers():
                for sub in record.submissions():
                    if sub.file_id is not None:
                        self.client.delete_file(sub.file_id)
        self._close_state()
        return self.summary()

    def summary(self) -> AnnotateSummary:
        result = AnnotateSummary(cancelled=self.cancelled())
        reasons: Counter[str] = Counter()
        phases: Counter[str] = Counter()
        for record in self.ledgers():
            result.files += 1
            result.files_done += record.phase in ledgers.TERMINAL_PHASES
            result.requests += record.requests
            result.done += record.done
            reasons.update(record.failed)
            result.batches += sum(1 for s in record.submissions() if s.batch_id is not None)
            result.resubmitted += record.resubmitted
            result.token_limit_retries += record.token_limit_retries
            result.tokens_used += record.tokens_used
            used = record.used()
            result.input_tokens_used += used.input
            result.output_tokens_used += used.output
            phases[record.phase.value] += 1
        price = self.judge.price()
        if price is not None:
            result.cost_usd = price.cost(result.input_tokens_used, result.output_tokens_used)
        result.failed = sum(reasons.values())
        result.failed_by_reason = dict(sorted(reasons.items()))
        result.phases = dict(sorted(phases.items()))
        return result


def _lines(spool: IO[bytes]) -> Iterator[str]:
    """The lines of a downloaded file, read one at a time."""
    for raw in spool:
        yield raw.decode("utf-8")
