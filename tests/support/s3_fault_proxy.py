"""A fault-injecting HTTP reverse proxy for tests, in front of an S3 server (moto, `s3.py`).

Tests point boto3 at `proxy.endpoint` instead of the S3 server's; every request is forwarded
as it came (headers, signature and all) and the answer sent back, except where a fault is due:

- `slowdown_fraction`: that share of requests (seeded, so runs repeat) is answered
  `503 SlowDown` with S3's XML error body, without reaching the server;
- `outage(mode, seconds)` (now) or `schedule_outage(after_requests, mode, seconds)`: for a
  window, every request fails: `Outage.REFUSE` closes the listening socket (connections are
  refused) and resets those already open; `Outage.RESET` accepts and resets; `Outage.UNAVAILABLE`
  answers `503 ServiceUnavailable`. `recover()` ends a window early;
- `cut_gets(after_bytes, count)`: the next `count` GETs whose body is longer announce the full
  Content-Length, send `after_bytes` of it and drop the connection (a stream broken mid-read).

Counters (`requests`, `slowdowns`, `failed_in_outage`, `cuts`) say what was injected;
`operations` counts every request by S3 operation (LIST, GET, HEAD, PUT, DELETE, POST; see
`s3_operation`), so a benchmark can count what one client asks of S3. It is one threaded
`ThreadingHTTPServer` on 127.0.0.1 speaking real HTTP/1.1, started and stopped as a context
manager.
"""

from __future__ import annotations

import enum
import http.client
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

# Headers that belong to one hop, not to the request or response they travel with.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "te"}
)


class Outage(enum.Enum):
    REFUSE = "refuse"
    RESET = "reset"
    UNAVAILABLE = "unavailable"


@dataclass
class _Window:
    mode: Outage
    until: float  # time.monotonic(); inf: until recover()


def s3_error_xml(code: str, message: str) -> bytes:
    """An S3 error response body, as S3 sends it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


def s3_operation(method: str, path: str) -> str:
    """The S3 operation of a path-style request: a GET of the bucket itself is a LIST."""
    bucket_only = urlsplit(path).path.strip("/").count("/") == 0
    if method == "GET" and bucket_only:
        return "LIST"
    return method


class S3FaultProxy:
    """The proxy's knobs and counters; see the module docstring."""

    def __init__(self, upstream: str, *, slowdown_fraction: float = 0.0, seed: int = 0) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.slowdown_fraction = slowdown_fraction
        self.requests = 0
        self.slowdowns = 0
        self.failed_in_outage = 0
        self.cuts = 0
        self.operations: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._window: _Window | None = None
        self._scheduled: tuple[int, Outage, float] | None = None
        self._cut: tuple[int, int] | None = None  # (after_bytes, GETs left to cut)
        self._timer: threading.Timer | None = None
        self._closing: threading.Thread | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    # ---- lifecycle

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.daemon_threads = True
        httpd.proxy = self  # type: ignore[attr-defined]
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="s3-fault-proxy", daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        httpd = self._httpd
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self._httpd = None

    def __enter__(self) -> S3FaultProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
        self._close_listener()

    # ---- faults

    def outage(self, mode: Outage, seconds: float | None = None) -> None:
        """Fail every request from now on, for `seconds` (None: until `recover()`)."""
        with self._lock:
            self._start_outage(mode, seconds)

    def _start_outage(self, mode: Outage, seconds: float | None) -> None:
        """With the lock held."""
        until = float("inf") if seconds is None else time.monotonic() + seconds
        self._window = _Window(mode, until)
        if mode is Outage.REFUSE:
            # Close the listener from another thread: this may run in a request handler.
            self._closing = threading.Thread(target=self._close_listener, daemon=True)
            self._closing.start()
        if seconds is not None:
            self._timer = threading.Timer(seconds, self.recover)
            self._timer.daemon = True
            self._timer.start()

    def schedule_outage(self, after_requests: int, mode: Outage, seconds: float) -> None:
        """Start an outage of `seconds` when `after_requests` more requests have come in."""
        with self._lock:
            self._scheduled = (self.requests + after_requests, mode, seconds)

    def recover(self) -> None:
        """End the outage now (the listener is back if it was closed)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            window, self._window = self._window, None
        if window is not None and window.mode is Outage.REFUSE:
            if self._closing is not None:
                self._closing.join()
            self._listen()

    @property
    def in_outage(self) -> bool:
        with self._lock:
            return self._window is not None

    def cut_gets(self, after_bytes: int, count: int = 1) -> None:
        """Break the next `count` GETs with a body longer than `after_bytes` after that many
        bytes (the full Content-Length is announced)."""
        with self._lock:
            self._cut = (after_bytes, count)

    # ---- what the handler asks

    def _admit(self, method: str, path: str) -> str:
        """What to do with a request that just came in: 'outage', 'slowdown' or 'forward'."""
        with self._lock:
            self.requests += 1
            self.operations[s3_operation(method, path)] += 1
            if self._scheduled is not None and self.requests > self._scheduled[0]:
                _, mode, seconds = self._scheduled
                self._scheduled = None
                self._start_outage(mode, seconds)
            if self._window is not None:
                self.failed_in_outage += 1
                return "outage"
            if self._rng.random() < self.slowdown_fraction:
                self.slowdowns += 1
                return "slowdown"
            return "forward"

    def _take_cut(self, size: int) -> int | None:
        with self._lock:
            if self._cut is None or size <= self._cut[0]:
                return None
            after_bytes, left = self._cut
            self._cut = (after_bytes, left - 1) if left > 1 else None
            self.cuts += 1
            return after_bytes

    def _outage_mode(self) -> Outage:
        with self._lock:
            return self._window.mode if self._window is not None else Outage.UNAVAILABLE


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "s3-fault-proxy/1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    @property
    def proxy(self) -> S3FaultProxy:
        proxy: S3FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        return proxy

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        """Drop the connection with a TCP reset."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = s3_error_xml(code, message)
        self._send(status, [("Content-Type", "application/xml")], body, len(body))

    def _serve(self) -> None:
        proxy = self.proxy
        decision = proxy._admit(self.command, self.path)
        if decision == "outage":
            if proxy._outage_mode() is Outage.UNAVAILABLE:
                self._read_body()
                self._error(503, "ServiceUnavailable", "Service is unable to handle request.")
            else:
                self._reset()
            return
        body = self._read_body()
        if decision == "slowdown":
            self._error(503, "SlowDown", "Please reduce your request rate.")
            return
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            headers = [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP_BY_HOP]
            length = int(response.getheader("Content-Length") or 0)
            status = response.status
        finally:
            upstream.close()
        if self.command != "HEAD":
            length = len(data)
        cut = proxy._take_cut(length) if self.command == "GET" and status < 300 else None
        if cut is None:
            self._send(status, headers, data, length)
            return
        self._send(status, headers, data[:cut], length)
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    do_GET = _serve  # noqa: N815 (BaseHTTPRequestHandler's naming)
    do_HEAD = _serve  # noqa: N815
    do_PUT = _serve  # noqa: N815
    do_POST = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
