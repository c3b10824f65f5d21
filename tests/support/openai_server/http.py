"""The HTTP side of the test server: a handler that reads one request, hands it to the app's
`handle` and writes the answer (JSON or bytes)."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.openai_server.wire import digest

CUT_HEADER = "x-test-cut-body"  # internal: the app asks the handler to cut the body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-test-server/1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _serve(self) -> None:
        app: Any = self.server.app  # type: ignore[attr-defined]
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
        cut = headers.pop(CUT_HEADER, None) is not None
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{digest(self.path, time.monotonic()):016x}")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if cut:  # half the promised body, then hang up (FaultInjection.cut_next)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = _serve  # noqa: N815 (BaseHTTPRequestHandler's naming)
    do_POST = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
