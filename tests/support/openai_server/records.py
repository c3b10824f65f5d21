"""The test server's records: stored files, batches (`view()` is the public batch object),
calls it answered, injected faults and hooks, scripts a test hands in, and its clocks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

from tests.support.openai_server.wire import EXPIRY_SECONDS, JsonObject


@dataclass(frozen=True)
class BatchScript:
    """How one batch behaves over (scripted) time."""

    validating_s: float = 1.0
    in_progress_s: float = 2.0
    finalizing_s: float = 1.0
    cancelling_s: float = 1.0
    outcome: Literal["completed", "failed", "expired"] = "completed"
    # outcome "expired": this many requests (in input order) finish before the batch expires.
    expire_done: int = 0
    # outcome "failed": the errors reported (code, message).
    fail_error: tuple[str, str] = ("internal_error", "The batch failed (scripted).")


@dataclass(frozen=True)
class BatchInfo:
    """What a batch script sees when a batch is created."""

    ordinal: int  # 0 for the first batch this server created
    input_file_id: str
    filename: str
    metadata: dict[str, str]
    request_count: int


@dataclass
class Fault:
    method: str
    path: str  # prefix of the request path
    status: int
    remaining: int
    retry_after: float | None = None
    message: str = "Injected fault."
    after: bool = False  # the call is handled first, then its answer is replaced by the error
    code: str | None = None  # None: rate_limit_exceeded for 429, server_error for 5xx
    match: Callable[[Call], bool] | None = None  # None: every call of method and path


@dataclass
class Hook:
    method: str
    path: str  # prefix
    when: Literal["before", "after"]
    callback: Callable[[Call], None]
    remaining: int | None = None  # None: every matching call


@dataclass
class Call:
    """One HTTP call the server answered."""

    method: str
    path: str
    status: int = 0
    at: float = 0.0
    body: JsonObject | None = None  # parsed JSON request body (not for uploads)
    response: JsonObject | None = None


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    deleted: bool = False

    def object(self) -> JsonObject:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class InputLines(Sequence[JsonObject]):
    """The request lines of a batch input file, parsed when read: the file's bytes and each
    line's span are kept, not 50,000 parsed objects."""

    def __init__(self, data: bytes = b"", spans: list[tuple[int, int]] | None = None) -> None:
        self._data = data
        self._spans = spans or []

    def __len__(self) -> int:
        return len(self._spans)

    @overload
    def __getitem__(self, index: int) -> JsonObject: ...

    @overload
    def __getitem__(self, index: slice) -> list[JsonObject]: ...

    def __getitem__(self, index: int | slice) -> JsonObject | list[JsonObject]:
        if isinstance(index, slice):
            return [self._parse(span) for span in self._spans[index]]
        return self._parse(self._spans[index])

    def _parse(self, span: tuple[int, int]) -> JsonObject:
        line: JsonObject = json.loads(self._data[span[0] : span[1]])
        return line


@dataclass
class BatchState:
    """A batch as the server keeps it; `view()` is the public batch object."""

    id: str
    seq: int
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created_at: float
    script: BatchScript
    requests: InputLines  # the input's request lines (empty when validation failed)
    model: str | None
    tokens: int
    errors: list[JsonObject] = field(default_factory=list)  # validation errors → failed
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    done: int = 0  # requests processed so far (input order)
    # Result lines as JSON text (a batch of 50,000 stays small): ("ok"|"error", line).
    results: list[tuple[str, str]] = field(default_factory=list)
    completed: int = 0  # results of kind "ok"
    output_file_id: str | None = None
    error_file_id: str | None = None
    accepted: bool = True  # counted against the queued-token limit

    def view(self) -> JsonObject:
        completed = self.completed
        failed = len(self.results) - completed
        total = len(self.requests)
        if self.status == "expired":
            failed = total - completed
        stamp = {k: int(v) for k, v in self.times.items()}
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": list(self.errors)} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": stamp.get("in_progress"),
            "expires_at": int(self.created_at) + EXPIRY_SECONDS,
            "finalizing_at": stamp.get("finalizing"),
            "completed_at": stamp.get("completed"),
            "failed_at": stamp.get("failed"),
            "expired_at": stamp.get("expired"),
            "cancelling_at": stamp.get("cancelling"),
            "cancelled_at": stamp.get("cancelled"),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "metadata": self.metadata,
        }


class ScriptedClock:
    """Time under a test's control: starts at `start`, moves `tick` seconds per request."""

    def __init__(self, start: float = 1_700_000_000.0, tick: float = 1.0) -> None:
        self._now = start
        self.tick = tick
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def on_request(self) -> None:
        self.advance(self.tick)


class WallClock(ScriptedClock):
    """Real time (for manual use)."""

    def __init__(self) -> None:
        super().__init__(time.time(), 0.0)

    def now(self) -> float:
        return time.time()

    def on_request(self) -> None:
        return None
