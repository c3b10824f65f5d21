"""The test server's state and lifecycle, which every API module builds on: the knobs a test
sets, what the server holds (files, batches, calls), listening on a loopback port (`start`,
`stop`, an outage with `go_down` / `come_back`), ids, and the API key and model checks."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any, Self

from tests.support.openai_server.http import Handler
from tests.support.openai_server.judging import Outcome, RequestInfo
from tests.support.openai_server.records import (
    BatchInfo,
    BatchScript,
    BatchState,
    Call,
    Fault,
    Hook,
    ScriptedClock,
    StoredFile,
)
from tests.support.openai_server.wire import DEFAULT_API_KEY, ApiError


class ServerCore:
    """State, knobs and lifecycle; `OpenAIServer` adds the API routes."""

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
        files_page_limit: int = 10_000,
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
        self.files_page_limit = files_page_limit  # a file listing's default page size
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, BatchState] = {}
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.cuts: list[Fault] = []  # bodies to cut off halfway (cut_next)
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

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="openai-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_listening()

    def _listen(self, port: int) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)  # reuses a closed port
        httpd.daemon_threads = True
        httpd.app = self  # type: ignore[attr-defined]
        return httpd

    def _stop_listening(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    def route_counts(self) -> dict[str, int]:
        """Calls answered per route, ids folded: {"GET /v1/batches/{id}": 3, ...} (also served
        at `GET /_test/calls`, for a test that runs the server in another process)."""
        with self._lock:
            counts = Counter(f"{c.method} {route_of(c.path)}" for c in self.calls)
        return dict(sorted(counts.items()))

    def calls_to(self, method: str, path: str) -> list[Call]:
        """Calls of `method` whose path starts with `path` (the path without the query)."""
        with self._lock:
            return [c for c in self.calls if c.method == method.upper() and c.path.startswith(path)]

    # ---- internals

    def _new_id(self, prefix: str) -> str:
        self._ids[prefix] += 1
        suffix = hashlib.sha256(f"{prefix}{self._ids[prefix]}".encode()).hexdigest()[:24]
        return f"{prefix}{suffix}"

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


def route_of(path: str) -> str:
    """A call's route: its path with object ids folded to `{id}`."""
    segments = path.split("/")
    return "/".join("{id}" if s.startswith(("file-", "batch_")) else s for s in segments)
