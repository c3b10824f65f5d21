"""The durable record of the OpenAI judge: one ledger per request file, in the run's storage.

Written by the annotate engine after every change it makes through the API (upload, create,
poll, fetch), read back when a step starts in a fresh process, and read by `status` and the
operator's planner. Keys live under `judge/` beside the run's other artifacts (named in `layout`):

- `judge/ledger/shard-NNNNN-part-PPP.json`: the ledger of request file
  `requests/shard-NNNNN-part-PPP.jsonl`;
- `judge/resubmit/shard-NNNNN-part-PPP-attempt-AA.jsonl`: the requests of a later attempt
  (those that failed or were missing in the attempt before);
- `judge/cancel.json`: present once the run was cancelled (no more submissions);
- `judge/state.json`: every ledger in one document, derived from them (`annotate.state`).

The custom_ids that are done are the 200 lines of the committed result files the ledger names
(`layout.result_for_request(request_key, attempt)`, one per attempt), so the ledger itself stays
small; it holds counts, ids and statuses, never an API key. Every API error answer the engine met
for the file (a 4xx on upload, batch create, retrieve or download) is kept in `api_errors`.

Fields added later have defaults, so a ledger written by an older version still loads.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from synthpref.budget import Tokens
from synthpref.layout import judge_ledger
from synthpref.storage import Storage


class Phase(StrEnum):
    """Where a request file stands; the next step follows from it."""

    PENDING = "pending"  # the current attempt's input is not uploaded yet
    UPLOADED = "uploaded"  # uploaded; a batch is to be created (or re-created)
    SUBMITTED = "submitted"  # a batch exists and has not ended
    ENDED = "ended"  # the batch ended; its output and error files are to be fetched
    DONE = "done"  # every request has a result or a reported failure
    CANCELLED = "cancelled"  # the run was cancelled; finished results were kept
    FAILED = "failed"  # stopped by an error no retry can fix (see `error`)


TERMINAL_PHASES = (Phase.DONE, Phase.CANCELLED, Phase.FAILED)
IN_FLIGHT_PHASES = (Phase.UPLOADED, Phase.SUBMITTED, Phase.ENDED)


class ApiErrorRecord(BaseModel):
    """One 4xx answer of the API for this file, and what the engine did about it."""

    model_config = ConfigDict(extra="forbid")

    call: str  # what was tried, e.g. "create a batch for file-abc"
    status: int  # HTTP status
    code: str | None = None  # the API's error code, e.g. "invalid_request_error"
    message: str = ""  # the API's message
    at: float  # when (the engine's clock)
    attempt: int
    submission: int = 1
    outcome: str = ""  # "re-upload and create a new batch", "file failed", ...


class Submission(BaseModel):
    """One upload + batch of one attempt (an attempt is re-created after token_limit_exceeded)."""

    model_config = ConfigDict(extra="forbid")

    attempt: int
    submission: int = 1
    input_key: str
    file_id: str | None = None
    uploaded_at: float | None = None  # the file's created_at, in the service's clock
    batch_id: str | None = None
    created_at: float | None = None  # when this process created or found it (local clock)
    status: str | None = None
    request_counts: dict[str, int] = Field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, str | int | None]] = Field(default_factory=list)
    result_key: str | None = None


class FileLedger(BaseModel):
    """The record of one request file across all its attempts."""

    model_config = ConfigDict(extra="forbid")

    request_key: str
    shard: int
    model: str
    requests: int
    phase: Phase = Phase.PENDING
    attempt: int = 1
    input_key: str
    input_requests: int
    input_tokens: int
    not_before: float = 0.0
    current: Submission | None = None
    history: list[Submission] = Field(default_factory=list)
    done: int = 0
    failed: dict[str, int] = Field(default_factory=dict)  # final failures by reason
    resubmitted: int = 0
    token_limit_retries: int = 0
    tokens_used: int = 0  # usage.total_tokens the service reported on fetched results
    input_tokens_used: int = 0  # its usage.prompt_tokens part
    output_tokens_used: int = 0  # its usage.completion_tokens part
    error: str | None = None
    repairs: int = 0  # API errors repaired in the current attempt (bounded)
    api_errors: list[ApiErrorRecord] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return judge_ledger(self.request_key)

    def submissions(self) -> list[Submission]:
        return [*self.history, *([self.current] if self.current else [])]

    def used(self) -> Tokens:
        """The usage of fetched results; what a ledger of an older version counted only in
        total is counted as output (the dearer kind)."""
        rest = max(0, self.tokens_used - self.input_tokens_used - self.output_tokens_used)
        return Tokens(self.input_tokens_used, self.output_tokens_used + rest)

    def holds_tokens(self) -> bool:
        """Whether this file's estimate counts against the queued-token budget now."""
        return self.phase in IN_FLIGHT_PHASES


def load(storage: Storage, request_key: str) -> FileLedger | None:
    key = judge_ledger(request_key)
    if not storage.exists(key):
        return None
    return FileLedger.model_validate(storage.read_json(key))


def save(storage: Storage, ledger: FileLedger) -> None:
    storage.write_json(ledger.key, ledger.model_dump(mode="json"))
