"""The kubelet's log endpoint for the test kubelet, so that `kubectl logs [-f]` works.

`kubectl logs` asks the API server, which proxies to the pod's node: HTTPS to the node's
address and `status.daemonEndpoints.kubeletEndpoint.Port`, path
`/containerLogs/<namespace>/<pod>/<container>` with the query parameters `follow`,
`previous`, `tailLines` and `limitBytes`. `LogServer` serves that path on loopback with a
certificate of its own (the API server verifies a kubelet only when it is given
`--kubelet-certificate-authority`, which the dev cluster does not set), reading the log file
of the container's current (or previous) run that `TestKubelet` names; with `follow`, it
streams the file until the container has ended. Started and stopped by `TestKubelet`.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from synthpref_operator.devcluster.pki import CertificateAuthority


@dataclass(frozen=True)
class ContainerLog:
    """Where a container's log is, and whether the container still runs."""

    path: Path
    running: Callable[[], bool]


# (namespace, pod, container, previous) -> the log, or None when there is none.
LogLookup = Callable[[str, str, str, bool], ContainerLog | None]

_FOLLOW_POLL_S = 0.2


def tail(data: bytes, lines: int) -> bytes:
    """The last `lines` lines of `data`."""
    if lines <= 0:
        return b""
    return b"".join(data.splitlines(keepends=True)[-lines:])


class LogServer:
    """Serves `/containerLogs/...` over HTTPS on 127.0.0.1 (`port` once started)."""

    def __init__(self, lookup: LogLookup, cert_dir: Path, node_name: str) -> None:
        self.lookup = lookup
        pair = CertificateAuthority(cert_dir, "synthpref-test-kubelet-ca").issue(
            "kubelet", node_name, server=True, dns_names=(node_name,), ip_addresses=("127.0.0.1",)
        )
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(pair.cert_path, pair.key_path)
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-kubelet-logs", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, format: str, *args: object) -> None:
                pass  # no access log on the test's stderr

            def do_GET(self) -> None:
                server._serve(self)

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            request.send_error(404, "only /containerLogs/<namespace>/<pod>/<container>")
            return
        _, namespace, pod, container = parts
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        previous = query.get("previous") == "true"
        found = self.lookup(namespace, pod, container, previous)
        if found is None:
            what = "previous terminated container" if previous else "container"
            request.send_error(404, f"{what} {container!r} of pod {namespace}/{pod} not found")
            return
        try:
            data = found.path.read_bytes()
        except FileNotFoundError:
            data = b""
        if "tailLines" in query:
            data = tail(data, int(query["tailLines"]))
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        request.send_response(200)
        request.send_header("Content-Type", "text/plain")
        request.end_headers()
        sent = self._write(request, data, limit)
        if sent is None or query.get("follow") != "true":
            return
        offset = found.path.stat().st_size if found.path.exists() else 0
        while not self._stopping.is_set() and (limit is None or sent < limit):
            running = found.running()
            try:
                with found.path.open("rb") as log:
                    log.seek(offset)
                    chunk = log.read()
            except FileNotFoundError:
                chunk = b""
            offset += len(chunk)
            if chunk:
                wrote = self._write(request, chunk, None if limit is None else limit - sent)
                if wrote is None:
                    return
                sent += wrote
            elif not running:
                return  # ended, and everything it wrote was sent
            else:
                time.sleep(_FOLLOW_POLL_S)

    @staticmethod
    def _write(request: BaseHTTPRequestHandler, data: bytes, limit: int | None) -> int | None:
        """Bytes sent; None when the client went away."""
        if limit is not None:
            data = data[:limit]
        try:
            request.wfile.write(data)
            request.wfile.flush()
        except OSError:
            return None
        return len(data)
