"""An OpenAI-compatible HTTP server for tests: the Files, Batch and Chat Completions APIs.

Component tests start it on 127.0.0.1 (a free port, a thread) and point the official `openai`
client at `server.base_url`. It speaks the wire format of the real service (objects, error
bodies, cursor pagination, batch output/error line formats) and validates batch input files the
way the real service does, so the code under test cannot lean on a lenient fake.

What a test controls:
- time: a `ScriptedClock` that moves `tick` seconds on every request (or by `advance`), and per
  batch a `BatchScript` (seconds per status; outcome completed / failed / expired with partial
  output; cancelling time), chosen by `batch_script(BatchInfo)`;
- per-request results: `request_script(RequestInfo)` returns an outcome (a `Judgement`, a
  `ReplyText`, a `Garbled` reply, a `ContentFiltered` one, an `ErrorLine`) or None for the
  default, which is computed
  from the request (ratings from a hash of each answer's text: `default_rating`), so a test can
  compute the dataset that must come out;
- limits: requests and bytes per input file, queued tokens per model (`token_limits`; a batch over
  the cap fails with `token_limit_exceeded`; `max_queued_tokens` records the peak per model);
- faults: `fail_next` (429 with retry-after, 5xx, or any error status with the API's message
  and code, on chosen calls: `match` picks them by their request), `hooks` run before or after a
  call is handled (e.g. kill a client process right after a batch was created, or delete an
  uploaded file before its batch is created), `chat_delay_s`, and outages: `go_down()` refuses
  connections (and drops requests on kept-alive ones) until `come_back()`, on the same port and
  with the same state; `go_down_after(method, path, n)` starts one right after the n-th call.

Everything it saw is inspectable: `calls` (method, path, status), `batches`, `files`,
`max_concurrent_chat`. Run `python -m tests.support.openai_server --port N` for manual use.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

JsonObject = dict[str, Any]

DEFAULT_API_KEY = "sk-test-0123456789abcdef"
SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
EXPIRY_SECONDS = 24 * 3600
MAX_ERRORS_REPORTED = 100

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The server's token count: one per word or punctuation mark (over-counts BPE for prose)."""
    return len(_TOKEN.findall(text))


def message_text(content: Any) -> str:
    """The text of a chat message's content (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(body: JsonObject) -> int:
    """Prompt tokens of a chat request body: its messages' text plus 3 per message."""
    messages = body.get("messages") or []
    return sum(
        3 + count_tokens(message_text(m.get("content"))) for m in messages if isinstance(m, dict)
    )


def closed_base_url() -> str:
    """The base URL of a loopback port nobody listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _digest(*parts: object) -> int:
    data = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def default_rating(answer_text: str) -> int:
    """The rating 1..5 the server gives an answer by default: a hash of its stripped text."""
    return 1 + _digest("rating", answer_text.strip()) % 5


# `<text 3> ...` (UltraFeedback), `Answer 3:` / `### Answer 3` / `[Answer 3]` style markers.
_ANSWER_MARKER = re.compile(
    r"(?im)^[ \t]*(?:#+[ \t]*)?"
    r"(?:<text[ \t]+(\d+)>|\[?(?:answer|response|text)[ \t]+(\d+)\]?[ \t]*:?)"
)
_SECTION_END = re.compile(r"(?m)^[ \t]*(?:#{2,}|</?texts?>\s*$|</answers?>)")


_ANSWER_TAG = re.compile(r'<answer number="(\d+)">\n?(.*?)\n?</answer>', re.DOTALL)


def extract_answers(text: str) -> dict[int, str]:
    """The numbered answers in a judge prompt: number -> answer text (empty if none found).

    `<answer number="N">...</answer>` blocks (synthpref's templates) win. Otherwise an answer
    runs from its marker (`<text N>`, `Answer N:`) to its closing tag (`</text N>`), the next
    marker, or the next heading, whichever comes first.
    """
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return {int(number): body.strip() for number, body in tagged}
    markers = list(_ANSWER_MARKER.finditer(text))
    answers: dict[int, str] = {}
    for position, match in enumerate(markers):
        number = int(match.group(1) or match.group(2))
        start = match.end()
        end = markers[position + 1].start() if position + 1 < len(markers) else len(text)
        chunk = text[start:end]
        closing = re.search(rf"</text[ \t]+{number}>", chunk, re.IGNORECASE)
        if closing:
            chunk = chunk[: closing.start()]
        else:
            section = _SECTION_END.search(chunk)
            if section:
                chunk = chunk[: section.start()]
        answers.setdefault(number, chunk.strip())
    return answers


def request_answers(body: JsonObject) -> dict[int, str]:
    """The numbered answers of a judge request (searched in the last user message)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return extract_answers(message_text(message.get("content")))
    return {}


# ----------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Judgement:
    """Judge ratings per answer number (an int 1..5, or a string such as "N/A")."""

    ratings: dict[int, int | str]
    rationale: str = "Scripted judgement."


@dataclass(frozen=True)
class ReplyText:
    """A reply with exactly this text."""

    text: str


@dataclass(frozen=True)
class Garbled:
    """A reply that is neither valid JSON nor the rubric format."""

    text: str = "I would rather not rate these answers; they are all lovely in their own way."


@dataclass(frozen=True)
class ContentFiltered:
    """A reply the content filter stopped: `finish_reason` "content_filter", content so far."""

    text: str = ""


@dataclass(frozen=True)
class ErrorLine:
    """A failed request: `status_code` None puts `error` on the line (response null), as the
    service does for `batch_expired` / `request_timeout`; otherwise a non-2xx response."""

    code: str = "request_timeout"
    message: str = "The request timed out."
    status_code: int | None = None


Outcome = Judgement | ReplyText | Garbled | ContentFiltered | ErrorLine


@dataclass(frozen=True)
class RequestInfo:
    """What a request script sees: custom_id (None for sync chat), body, batch and attempt."""

    custom_id: str | None
    body: JsonObject
    batch_id: str | None
    seen_before: int  # how many earlier batches already processed this custom_id


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
    requests: list[JsonObject]  # parsed input lines (empty when validation failed)
    model: str | None
    tokens: int
    errors: list[JsonObject] = field(default_factory=list)  # validation errors → failed
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    done: int = 0  # requests processed so far (input order)
    results: list[tuple[str, JsonObject]] = field(default_factory=list)  # ("ok"|"error", line)
    output_file_id: str | None = None
    error_file_id: str | None = None
    accepted: bool = True  # counted against the queued-token limit

    def view(self) -> JsonObject:
        completed = sum(1 for kind, _ in self.results if kind == "ok")
        failed = sum(1 for kind, _ in self.results if kind == "error")
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


class ApiError(Exception):
    """An API error answered as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


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


# --------------------------------------------------------------------------------- judgements


def _resolve(schema: JsonObject, root: JsonObject) -> JsonObject:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return _resolve(target, root)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return _resolve(non_null[0] if non_null else options[0], root)
    return schema


def _fill(
    schema: JsonObject,
    root: JsonObject,
    name: str,
    answer: int | None,
    judgement: Judgement,
) -> Any:
    schema = _resolve(schema, root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    lowered = name.lower()
    rating = judgement.ratings.get(answer) if answer is not None else None
    if "enum" in schema:
        choices = list(schema["enum"])
        for candidate in (rating, str(rating)):
            if candidate in choices:
                return candidate
        return choices[0]
    if kind == "object" or "properties" in schema:
        properties: JsonObject = schema.get("properties", {})
        result: JsonObject = {}
        for prop, sub in properties.items():
            numbered = re.search(r"(\d+)$", prop)
            if answer is None and numbered and int(numbered.group(1)) in judgement.ratings:
                result[prop] = _fill(sub, root, prop, int(numbered.group(1)), judgement)
            else:
                result[prop] = _fill(sub, root, prop, answer, judgement)
        return result
    if kind == "array":
        items = schema.get("items", {})
        if answer is None:
            return [_fill(items, root, name, n, judgement) for n in sorted(judgement.ratings)]
        return [_fill(items, root, name, answer, judgement)]
    is_rating = "rating" in lowered or "score" in lowered
    is_number = lowered in ("answer", "index", "number", "answer_number", "id", "text", "n")
    if answer is None and is_rating and len(judgement.ratings) == 1:
        answer = next(iter(judgement.ratings))
        rating = judgement.ratings[answer]
    if kind in ("integer", "number"):
        if is_rating and isinstance(rating, int):
            return rating
        if is_number and answer is not None:
            return answer
        return 0
    if kind == "boolean":
        return False
    if is_rating and rating is not None:
        return str(rating)
    if is_number and answer is not None:
        return str(answer)
    if "rationale" in lowered or "reason" in lowered or "explanation" in lowered:
        return f"{judgement.rationale} (answer {answer})" if answer else judgement.rationale
    return ""


def judgement_json(judgement: Judgement, response_format: JsonObject) -> str:
    """A JSON reply for a judgement that matches the request's `json_schema` response format."""
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return json.dumps(
            {"ratings": [{"answer": n, "rating": r} for n, r in sorted(judgement.ratings.items())]}
        )
    return json.dumps(_fill(schema, schema, "", None, judgement))


def judgement_text(judgement: Judgement) -> str:
    """The rubric reply: per answer `Answer N` / `Rating: R` / `Rationale: ...` (the templates'
    format)."""
    blocks = [
        f"Answer {n}\nRating: {r}\nRationale: {judgement.rationale}"
        for n, r in sorted(judgement.ratings.items())
    ]
    return "\n\n".join(blocks)


_WORDS = _TOKEN.findall(
    "the answer depends on context and careful reasoning about each step we take consider data "
    "model prompt result value system method example question clear simple first then finally "
    "because therefore however also indeed likely"
)


def default_reply(body: JsonObject) -> str:
    """A deterministic plain reply from the model name, seed and messages (20..60 words)."""
    model = body.get("model")
    seed = body.get("seed")
    messages = json.dumps(body.get("messages"), sort_keys=True)
    rng = random.Random(_digest("reply", model, seed, messages))
    words = [rng.choice(_WORDS) for _ in range(rng.randint(20, 60))]
    return f"[{model}] " + " ".join(words) + "."


# ------------------------------------------------------------------------------------- server


class OpenAIServer:
    """The server's state and knobs; use as a context manager (`with OpenAIServer() as s:`)."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        clock: ScriptedClock | None = None,
        models: set[str] | None = None,
        request_script: Callable[[RequestInfo], Outcome | None] | None = None,
        batch_script: Callable[[BatchInfo], BatchScript] | None = None,
        token_limits: dict[str, int] | None = None,
        max_requests_per_file: int = 50_000,
        max_file_bytes: int = 200 * 1024 * 1024,
        chat_delay_s: float = 0.0,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.clock = clock or ScriptedClock()
        self.models = models  # None: every model name exists
        self.request_script = request_script
        self.batch_script = batch_script or (lambda info: BatchScript())
        self.token_limits = token_limits or {}
        self.max_requests_per_file = max_requests_per_file
        self.max_file_bytes = max_file_bytes
        self.chat_delay_s = chat_delay_s
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, BatchState] = {}
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.hooks: list[Hook] = []
        self.max_queued_tokens: dict[str, int] = defaultdict(int)
        self.processed: dict[str, int] = defaultdict(int)  # custom_id -> times processed
        self.max_concurrent_chat = 0
        self._in_flight = 0
        self._ids: dict[str, int] = defaultdict(int)
        self._lock = threading.RLock()
        self.down = False  # an outage (go_down / come_back)
        self._httpd = self._listen(port)
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="openai-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_listening()

    def _listen(self, port: int) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _Handler)  # reuses a closed port
        httpd.daemon_threads = True
        httpd.app = self  # type: ignore[attr-defined]
        return httpd

    def _stop_listening(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test controls

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        *,
        message: str = "Injected fault.",
        code: str | None = None,
        match: Callable[[Call], bool] | None = None,
    ) -> None:
        """Answer the next `count` calls of `method` to paths starting with `path` (and, with
        `match`, for which `match(call)` is true) with `status`, `message` and `code`."""
        with self._lock:
            self.faults.append(
                Fault(
                    method.upper(),
                    path,
                    status,
                    count,
                    retry_after,
                    message=message,
                    code=code,
                    match=match,
                )
            )

    def go_down(self) -> None:
        """An outage: connections are refused and requests on kept-alive connections are
        dropped without an answer, until `come_back()`. Safe to call from a hook."""
        with self._lock:
            if self.down:
                return
            self.down = True
        self._stop_listening()

    def come_back(self) -> None:
        """End an outage: listen again on the same port, with every file and batch kept."""
        with self._lock:
            if not self.down:
                return
            self._httpd = self._listen(self.port)
            self.down = False
        self.start()

    def go_down_after(self, method: str, path: str, count: int) -> None:
        """Start an outage right after the `count`-th matching call was answered."""
        seen = [0]

        def maybe_go_down(call: Call) -> None:
            seen[0] += 1
            if seen[0] == count:
                self.go_down()

        self.hook(method, path, maybe_go_down, when="after", times=None)

    def fail_after_next(self, method: str, path: str, status: int, count: int = 1) -> None:
        """Handle the next `count` matching calls, then answer them with `status` anyway (a
        gateway error after the work was done: the client cannot tell that it succeeded)."""
        with self._lock:
            self.faults.append(Fault(method.upper(), path, status, count, after=True))

    def hook(
        self,
        method: str,
        path: str,
        callback: Callable[[Call], None],
        when: Literal["before", "after"] = "after",
        times: int | None = 1,
    ) -> None:
        """Run `callback(call)` before a matching call is handled, or after it was handled and
        before its response is sent (a crash point: the client never sees the answer)."""
        with self._lock:
            self.hooks.append(Hook(method.upper(), path, when, callback, times))

    def calls_to(self, method: str, path: str) -> list[Call]:
        """Calls of `method` whose path starts with `path` (the path without the query)."""
        with self._lock:
            return [c for c in self.calls if c.method == method.upper() and c.path.startswith(path)]

    def queued_tokens(self, model: str) -> int:
        """Tokens now queued for `model` in accepted, unfinished batches."""
        with self._lock:
            self._refresh_all()
            return self._queued(model)

    # ---- internals

    def _new_id(self, prefix: str) -> str:
        self._ids[prefix] += 1
        suffix = hashlib.sha256(f"{prefix}{self._ids[prefix]}".encode()).hexdigest()[:24]
        return f"{prefix}{suffix}"

    def _queued(self, model: str, exclude: str | None = None) -> int:
        return sum(
            b.tokens
            for b in self.batches.values()
            if b.accepted and b.model == model and b.status in ACTIVE_STATUSES and b.id != exclude
        )

    def _take_fault(self, call: Call, *, after: bool = False) -> Fault | None:
        for fault in self.faults:
            if (
                fault.remaining > 0
                and fault.after == after
                and fault.method == call.method
                and call.path.startswith(fault.path)
                and (fault.match is None or fault.match(call))
            ):
                fault.remaining -= 1
                return fault
        return None

    def _run_hooks(self, when: str, call: Call) -> None:
        with self._lock:
            due = [
                h
                for h in self.hooks
                if h.when == when
                and h.method == call.method
                and call.path.startswith(h.path)
                and (h.remaining is None or h.remaining > 0)
            ]
            for hook in due:
                if hook.remaining is not None:
                    hook.remaining -= 1
        for hook in due:
            hook.callback(call)

    def _check_auth(self, header: str | None) -> None:
        if not header or not header.startswith("Bearer "):
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        key = header[len("Bearer ") :]
        if key != self.api_key:
            masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else "***"
            raise ApiError(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _check_model(self, model: Any) -> None:
        if not isinstance(model, str) or not model:
            raise ApiError(400, "you must provide a model parameter", param="model")
        if self.models is not None and model not in self.models:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )

    # ---- chat

    def _outcome(self, custom_id: str | None, body: JsonObject, batch_id: str | None) -> Outcome:
        seen = self.processed[custom_id] if custom_id is not None else 0
        if custom_id is not None:
            self.processed[custom_id] += 1
        if self.request_script is not None:
            scripted = self.request_script(RequestInfo(custom_id, body, batch_id, seen))
            if scripted is not None:
                return scripted
        answers = request_answers(body)
        if answers:
            return Judgement(
                {n: default_rating(text) for n, text in answers.items()},
                "Default judgement (a hash of the answer text).",
            )
        return ReplyText(default_reply(body))

    def _completion(self, body: JsonObject, outcome: Outcome) -> JsonObject:
        """A chat.completion object for a non-error outcome."""
        response_format = body.get("response_format")
        if isinstance(outcome, Judgement):
            if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
                text = judgement_json(outcome, response_format)
            else:
                text = judgement_text(outcome)
        elif isinstance(outcome, ReplyText | Garbled | ContentFiltered):
            text = outcome.text
        else:
            raise AssertionError(outcome)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish_reason = "stop"
        tokens = _TOKEN.findall(text)
        if isinstance(limit, int) and len(tokens) > limit:
            # Truncate at the limit-th token (keeps the original spacing before it).
            cut = list(_TOKEN.finditer(text))[limit - 1].end()
            text = text[:cut]
            finish_reason = "length"
        content: str | None = text
        if isinstance(outcome, ContentFiltered):
            finish_reason = "content_filter"
            content = text or None  # stopped before any text: no content at all
        completion_tokens = count_tokens(text)
        prompt = prompt_tokens(body)
        return {
            "id": self._new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(self.clock.now()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
            },
            "system_fingerprint": "fp_test",
        }

    def _validate_chat_body(self, body: JsonObject) -> None:
        self._check_model(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                raise ApiError(
                    400, f"Invalid 'messages[{index}]': missing 'role'.", param="messages"
                )
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ApiError(
                    400,
                    "Missing required parameter: 'response_format.json_schema.name'.",
                    param="response_format.json_schema.name",
                    code="missing_required_parameter",
                )

    def chat(self, body: JsonObject) -> JsonObject:
        with self._lock:
            self._validate_chat_body(body)
            outcome = self._outcome(None, body, None)
            if isinstance(outcome, ErrorLine):
                raise ApiError(
                    outcome.status_code or 500,
                    outcome.message,
                    type_="server_error",
                    code=outcome.code,
                )
            return self._completion(body, outcome)

    @contextmanager
    def chat_in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.max_concurrent_chat = max(self.max_concurrent_chat, self._in_flight)
        try:
            if self.chat_delay_s:
                time.sleep(self.chat_delay_s)
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    # ---- files

    def upload(self, filename: str, purpose: str, data: bytes) -> JsonObject:
        allowed = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
        if purpose not in allowed:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        stored = StoredFile(self._new_id("file-"), filename, purpose, data, int(self.clock.now()))
        self.files[stored.id] = stored
        return stored.object()

    def get_file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None or stored.deleted:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def list_files(self, query: dict[str, str]) -> JsonObject:
        items = [f for f in self.files.values() if not f.deleted]
        if "purpose" in query:
            items = [f for f in items if f.purpose == query["purpose"]]
        order = query.get("order", "desc")
        items.sort(key=lambda f: (f.created_at, f.id), reverse=order == "desc")
        return _page(items, query, default_limit=10_000, max_limit=10_000, view=StoredFile.object)

    def delete_file(self, file_id: str) -> JsonObject:
        self.get_file(file_id).deleted = True
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- batches

    def _validate_input(
        self, data: bytes, endpoint: str
    ) -> tuple[list[JsonObject], str | None, list[JsonObject]]:
        """Parse and check an input file: (requests, model, errors)."""
        errors: list[JsonObject] = []

        def error(
            code: str, message: str, line: int | None = None, param: str | None = None
        ) -> None:
            if len(errors) < MAX_ERRORS_REPORTED:
                errors.append({"code": code, "message": message, "param": param, "line": line})

        if len(data) > self.max_file_bytes:
            error(
                "file_too_large",
                f"The input file is larger than the {self.max_file_bytes} byte limit.",
            )
            return [], None, errors
        requests: list[JsonObject] = []
        seen_ids: set[str] = set()
        models: set[str] = set()
        lines = data.decode("utf-8", errors="replace").splitlines()
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                error("invalid_json_line", "This line is not parseable as valid JSON.", number)
                continue
            if not isinstance(line, dict):
                error("invalid_json_line", "This line is not a JSON object.", number)
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                error("missing_required_parameter", "Missing 'custom_id'.", number, "custom_id")
                continue
            if custom_id in seen_ids:
                error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. The "
                    "custom_id parameter must be unique for each request in a batch.",
                    number,
                    "custom_id",
                )
                continue
            seen_ids.add(custom_id)
            if line.get("method") != "POST":
                error("invalid_method", "The method must be POST.", number, "method")
                continue
            if line.get("url") != endpoint:
                error(
                    "invalid_url",
                    f"The url {line.get('url')!r} does not match the batch endpoint {endpoint!r}.",
                    number,
                    "url",
                )
                continue
            body = line.get("body")
            if not isinstance(body, dict):
                error("missing_required_parameter", "Missing 'body'.", number, "body")
                continue
            model = body.get("model")
            if not isinstance(model, str) or not model:
                error("missing_required_parameter", "Missing 'body.model'.", number, "body.model")
                continue
            if models and model not in models:
                error(
                    "mismatched_model",
                    "The provided model is not identical across all requests in the batch; "
                    "a batch input file may use one model only.",
                    number,
                    "body.model",
                )
                continue
            models.add(model)
            requests.append(line)
        if not requests and not errors:
            error("empty_file", "The batch input file is empty.")
        if len(requests) > self.max_requests_per_file:
            error(
                "too_many_requests",
                f"The batch input file has {len(requests)} requests; the maximum is "
                f"{self.max_requests_per_file}.",
            )
        model = next(iter(models)) if models else None
        if model is not None and self.models is not None and model not in self.models:
            error(
                "model_not_found",
                f"The model `{model}` does not exist or you do not have access to it.",
                param="body.model",
            )
        return (requests if not errors else []), model, errors

    def create_batch(self, body: JsonObject) -> JsonObject:
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if not isinstance(input_file_id, str):
            raise ApiError(
                400, "Missing required parameter: 'input_file_id'.", param="input_file_id"
            )
        if endpoint not in SUPPORTED_ENDPOINTS:
            raise ApiError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: {SUPPORTED_ENDPOINTS}.",
                param="endpoint",
            )
        if window != "24h":
            raise ApiError(
                400,
                f"Invalid value for 'completion_window': {window!r}. Supported: '24h'.",
                param="completion_window",
            )
        if metadata is not None:
            _check_metadata(metadata)
        stored = self.files.get(input_file_id)
        if stored is None or stored.deleted:
            raise ApiError(
                400,
                f"Invalid 'input_file_id': {input_file_id!r}: no such file.",
                param="input_file_id",
            )
        if stored.purpose != "batch":
            raise ApiError(
                400,
                f"File {input_file_id} has purpose {stored.purpose!r}; a batch needs 'batch'.",
                param="input_file_id",
            )
        requests, model, errors = self._validate_input(stored.data, str(endpoint))
        tokens = sum(prompt_tokens(r["body"]) for r in requests)
        seq = len(self.batches)
        script = self.batch_script(
            BatchInfo(seq, input_file_id, stored.filename, dict(metadata or {}), len(requests))
        )
        batch = BatchState(
            id=self._new_id("batch_"),
            seq=seq,
            input_file_id=input_file_id,
            endpoint=str(endpoint),
            metadata=dict(metadata) if metadata is not None else None,
            created_at=self.clock.now(),
            script=script,
            requests=requests,
            model=model,
            tokens=tokens,
            errors=errors,
        )
        self._refresh_all()
        if not errors and model is not None:
            limit = self.token_limits.get(model)
            queued = self._queued(model)
            if limit is not None and queued + tokens > limit:
                batch.accepted = False
                batch.errors = [
                    {
                        "code": "token_limit_exceeded",
                        "message": f"Enqueued token limit reached for {model} in organization "
                        f"org-test. Limit: {limit} enqueued tokens. Please try submitting "
                        "fewer tasks or wait for existing batches to complete.",
                        "param": None,
                        "line": None,
                    }
                ]
            else:
                self.max_queued_tokens[model] = max(self.max_queued_tokens[model], queued + tokens)
        if not errors and script.outcome == "failed" and batch.accepted:
            code, message = script.fail_error
            batch.errors = [{"code": code, "message": message, "param": None, "line": None}]
        self.batches[batch.id] = batch
        return batch.view()

    def get_batch(self, batch_id: str) -> BatchState:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.")
        self._refresh(batch)
        return batch

    def list_batches(self, query: dict[str, str]) -> JsonObject:
        self._refresh_all()
        items = sorted(self.batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True)
        return _page(items, query, default_limit=20, max_limit=100, view=BatchState.view)

    def cancel_batch(self, batch_id: str) -> JsonObject:
        batch = self.get_batch(batch_id)
        if batch.status in ("cancelling", "cancelled"):
            return batch.view()
        if batch.status not in ("validating", "in_progress", "finalizing"):
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
        now = self.clock.now()
        self._process_until(batch, now)
        batch.status = "cancelling"
        batch.times["cancelling"] = now
        return batch.view()

    def _refresh_all(self) -> None:
        for batch in self.batches.values():
            self._refresh(batch)

    def _process_until(self, batch: BatchState, now: float) -> None:
        """Run requests up to the share of the in_progress time that has passed by `now`."""
        if batch.status != "in_progress" or batch.errors:
            return
        started = batch.times["in_progress"]
        share = (
            1.0 if batch.script.in_progress_s <= 0 else (now - started) / batch.script.in_progress_s
        )
        target = min(len(batch.requests), math.floor(len(batch.requests) * max(0.0, share)))
        if batch.script.outcome == "expired":
            target = min(target, batch.script.expire_done)
        self._process(batch, target)

    def _process(self, batch: BatchState, target: int) -> None:
        while batch.done < target:
            line = batch.requests[batch.done]
            batch.done += 1
            custom_id = line["custom_id"]
            outcome = self._outcome(custom_id, line["body"], batch.id)
            request_id = self._new_id("req_")
            result: JsonObject = {"id": self._new_id("batch_req_"), "custom_id": custom_id}
            if isinstance(outcome, ErrorLine):
                if outcome.status_code is None:
                    result["response"] = None
                    result["error"] = {"code": outcome.code, "message": outcome.message}
                else:
                    result["response"] = {
                        "status_code": outcome.status_code,
                        "request_id": request_id,
                        "body": {
                            "error": {
                                "message": outcome.message,
                                "type": "server_error",
                                "param": None,
                                "code": outcome.code,
                            }
                        },
                    }
                    result["error"] = None
                batch.results.append(("error", result))
            else:
                result["response"] = {
                    "status_code": 200,
                    "request_id": request_id,
                    "body": self._completion(line["body"], outcome),
                }
                result["error"] = None
                batch.results.append(("ok", result))

    def _write_outputs(self, batch: BatchState, now: float, unfinished_code: str | None) -> None:
        """Store the output and error files of a finished batch (output order is shuffled)."""
        ok = [line for kind, line in batch.results if kind == "ok"]
        failed = [line for kind, line in batch.results if kind == "error"]
        if unfinished_code is not None:
            for line in batch.requests[batch.done :]:
                failed.append(
                    {
                        "id": self._new_id("batch_req_"),
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {
                            "code": unfinished_code,
                            "message": "This request could not be executed before the "
                            "completion window expired.",
                        },
                    }
                )
        rng = random.Random(batch.seq)
        rng.shuffle(ok)
        for lines, attr, suffix in (
            (ok, "output_file_id", "output"),
            (failed, "error_file_id", "error"),
        ):
            if not lines:
                continue
            data = "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")
            stored = StoredFile(
                self._new_id("file-"),
                f"batch_{batch.id}_{suffix}.jsonl",
                "batch_output",
                data,
                int(now),
            )
            self.files[stored.id] = stored
            setattr(batch, attr, stored.id)

    def _refresh(self, batch: BatchState) -> None:
        """Move a batch along its script up to the clock's now (several steps at once if due)."""
        now = self.clock.now()
        script = batch.script
        while True:
            status = batch.status
            if status == "validating":
                due = batch.created_at + script.validating_s
                if now < due:
                    return
                if batch.errors:
                    batch.status = "failed"
                    batch.times["failed"] = due
                    return
                batch.status = "in_progress"
                batch.times["in_progress"] = due
            elif status == "in_progress":
                started = batch.times["in_progress"]
                due = started + script.in_progress_s
                # A scripted expiry ends the in_progress time; otherwise the 24 h window does.
                expires = due if script.outcome == "expired" else batch.created_at + EXPIRY_SECONDS
                if now >= expires and expires <= due:
                    self._process_until(batch, expires)
                    batch.status = "expired"
                    batch.times["expired"] = expires
                    self._write_outputs(batch, expires, "batch_expired")
                    return
                if now < due:
                    self._process_until(batch, now)
                    return
                self._process(batch, len(batch.requests))
                batch.status = "finalizing"
                batch.times["finalizing"] = due
            elif status == "finalizing":
                due = batch.times["finalizing"] + script.finalizing_s
                if now < due:
                    return
                batch.status = "completed"
                batch.times["completed"] = due
                self._write_outputs(batch, due, None)
                return
            elif status == "cancelling":
                due = batch.times["cancelling"] + script.cancelling_s
                if now < due:
                    return
                batch.status = "cancelled"
                batch.times["cancelled"] = due
                self._write_outputs(batch, due, None)
                return
            else:
                return

    # ---- dispatch

    def handle(
        self, method: str, target: str, headers: Any, raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """Answer one HTTP call: (status, JSON object or bytes, extra headers)."""
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        call = Call(method, path, at=self.clock.now())
        if raw and "json" in (headers.get("Content-Type") or ""):
            try:
                parsed = json.loads(raw)
                call.body = parsed if isinstance(parsed, dict) else None
            except json.JSONDecodeError:
                call.body = None
        with self._lock:
            self.calls.append(call)
            self.clock.on_request()
        try:
            self._run_hooks("before", call)
            with self._lock:
                fault = self._take_fault(call)
            if fault is not None:
                extra = {}
                if fault.retry_after is not None:
                    extra["retry-after"] = f"{fault.retry_after:g}"
                    extra["retry-after-ms"] = f"{int(fault.retry_after * 1000)}"
                if fault.status == 429:
                    kind = "rate_limit_exceeded"
                elif fault.status >= 500:
                    kind = "server_error"
                else:
                    kind = "invalid_request_error"  # the service's 4xx carry no code by default
                code = fault.code
                if code is None and kind != "invalid_request_error":
                    code = kind
                raise ApiError(fault.status, fault.message, type_=kind, code=code, headers=extra)
            self._check_auth(headers.get("Authorization"))
            status, payload = self._route(method, path, query, headers, raw)
            extra_headers: dict[str, str] = {}
            with self._lock:
                lost = self._take_fault(call, after=True)
            if lost is not None:
                raise ApiError(lost.status, lost.message, type_="server_error", code="server_error")
        except ApiError as error:
            status, payload, extra_headers = error.status, error.body, error.headers
        call.status = status
        if isinstance(payload, dict):
            call.response = payload
        self._run_hooks("after", call)
        return status, payload, extra_headers

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Any, raw: bytes
    ) -> tuple[int, Any]:
        segments = [s for s in path.split("/") if s]
        if segments[:1] != ["v1"]:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        route = segments[1:]
        if route == ["chat", "completions"] and method == "POST":
            body = _json_body(raw)
            with self.chat_in_flight():
                return 200, self.chat(body)
        with self._lock:
            if route == ["files"] and method == "POST":
                fields = _multipart(headers.get("Content-Type") or "", raw)
                upload = fields.get("file")
                purpose = fields.get("purpose")
                if upload is None or upload[1] is None:
                    raise ApiError(400, "Missing required parameter: 'file'.", param="file")
                if purpose is None:
                    raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
                return 200, self.upload(upload[1], purpose[0].decode("utf-8"), upload[0])
            if route == ["files"] and method == "GET":
                return 200, self.list_files(query)
            if len(route) == 2 and route[0] == "files" and method == "GET":
                return 200, self.get_file(route[1]).object()
            if len(route) == 2 and route[0] == "files" and method == "DELETE":
                return 200, self.delete_file(route[1])
            if (
                len(route) == 3
                and route[0] == "files"
                and route[2] == "content"
                and method == "GET"
            ):
                return 200, self.get_file(route[1]).data
            if route == ["batches"] and method == "POST":
                return 200, self.create_batch(_json_body(raw))
            if route == ["batches"] and method == "GET":
                return 200, self.list_batches(query)
            if len(route) == 2 and route[0] == "batches" and method == "GET":
                return 200, self.get_batch(route[1]).view()
            if (
                len(route) == 3
                and route[0] == "batches"
                and route[2] == "cancel"
                and method == "POST"
            ):
                return 200, self.cancel_batch(route[1])
        raise ApiError(404, f"Invalid URL ({method} {path})")


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ApiError(400, "'metadata' must be an object.", param="metadata")
    if len(metadata) > 16:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many properties ({len(metadata)} > 16).",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(
                400, f"Invalid 'metadata': key {key[:20]!r}... longer than 64.", param="metadata"
            )
        if not isinstance(value, str) or len(value) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': values must be strings of at most 512 characters.",
                param=f"metadata.{key}",
            )


def _page(
    items: list[Any],
    query: dict[str, str],
    *,
    default_limit: int,
    max_limit: int,
    view: Callable[[Any], JsonObject],
) -> JsonObject:
    """A cursor page of `items` (already ordered): `after` an id, at most `limit`."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        raise ApiError(400, "Invalid 'limit': must be an integer.", param="limit") from None
    if not 1 <= limit <= max_limit:
        raise ApiError(400, f"Invalid 'limit': must be between 1 and {max_limit}.", param="limit")
    after = query.get("after")
    start = 0
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise ApiError(400, f"Invalid 'after': no object with id {after!r}.", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    data = [view(item) for item in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }


def _json_body(raw: bytes) -> JsonObject:
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as error:
        raise ApiError(400, f"We could not parse the JSON body of your request: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[bytes, str | None]]:
    """Fields of a multipart/form-data body: name -> (data, filename)."""
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "Uploads must be multipart/form-data.")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        fields[name] = (payload if isinstance(payload, bytes) else b"", part.get_filename())
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-test-server/1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _serve(self) -> None:
        app: OpenAIServer = self.server.app  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if app.down:  # a kept-alive connection during an outage: hang up without an answer
            self.close_connection = True
            return
        status, payload, headers = app.handle(self.command, self.path, self.headers, raw)
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode("utf-8"), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{_digest(self.path, time.monotonic()):016x}")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve  # noqa: N815 (BaseHTTPRequestHandler's naming)
    do_POST = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server (manual use)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--tick", type=float, default=None, help="scripted seconds per request")
    args = parser.parse_args()
    clock = WallClock() if args.tick is None else ScriptedClock(tick=args.tick)
    server = OpenAIServer(api_key=args.api_key, clock=clock, port=args.port).start()
    print(f"serving {server.base_url} (API key {args.api_key!r}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
