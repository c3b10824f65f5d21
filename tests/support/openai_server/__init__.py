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
  with the same state; `go_down_after(method, path, n)` starts one right after the n-th call;
  `cut_next` sends half a body and hangs up (a download that breaks mid-transfer);
- paging: `files_page_limit` (the file listing's default page size, 10,000 as the service's).

Everything it saw is inspectable: `calls` (method, path, status), `route_counts()` (calls per
route, ids folded; also at `GET /_test/calls` for a server in another process), `batches`,
`files`, `max_concurrent_chat`. Run `python -m tests.support.openai_server --port N` for manual use.

Modules: `wire` (constants, errors, pages, bodies), `judging` (outcomes and replies),
`records` (files, batches, calls, scripts, clocks), `core` (state and lifecycle), `files`,
`batches`, `chat`, `faults`, `http` and `app` (`OpenAIServer`, the routes).
"""

from tests.support.openai_server.app import OpenAIServer
from tests.support.openai_server.judging import (
    ContentFiltered,
    ErrorLine,
    Garbled,
    Judgement,
    Outcome,
    ReplyText,
    RequestInfo,
    default_rating,
    default_reply,
    extract_answers,
    judgement_json,
    judgement_text,
    request_answers,
)
from tests.support.openai_server.records import (
    BatchInfo,
    BatchScript,
    BatchState,
    Call,
    Fault,
    Hook,
    ScriptedClock,
    StoredFile,
    WallClock,
)
from tests.support.openai_server.wire import (
    ACTIVE_STATUSES,
    DEFAULT_API_KEY,
    EXPIRY_SECONDS,
    MAX_ERRORS_REPORTED,
    SUPPORTED_ENDPOINTS,
    TERMINAL_STATUSES,
    ApiError,
    JsonObject,
    closed_base_url,
    count_tokens,
    message_text,
    prompt_tokens,
)

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_API_KEY",
    "EXPIRY_SECONDS",
    "MAX_ERRORS_REPORTED",
    "SUPPORTED_ENDPOINTS",
    "TERMINAL_STATUSES",
    "ApiError",
    "BatchInfo",
    "BatchScript",
    "BatchState",
    "Call",
    "ContentFiltered",
    "ErrorLine",
    "Fault",
    "Garbled",
    "Hook",
    "JsonObject",
    "Judgement",
    "OpenAIServer",
    "Outcome",
    "ReplyText",
    "RequestInfo",
    "ScriptedClock",
    "StoredFile",
    "WallClock",
    "closed_base_url",
    "count_tokens",
    "default_rating",
    "default_reply",
    "extract_answers",
    "judgement_json",
    "judgement_text",
    "message_text",
    "prompt_tokens",
    "request_answers",
]
