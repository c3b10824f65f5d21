"""The operator client's retries (`throttling.api_retries`) against a real HTTP peer: a 429 is
sent again, whatever the verb, after the jittered Retry-After, up to `THROTTLED_RETRIES` times;
other answers keep urllib3's rules. (`tests/integration/test_apply.py` has a real API server
throttle a pass's every kind of call.)"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest
import urllib3

from synthpref_operator.throttling import (
    THROTTLED_RETRIES,
    THROTTLED_WAIT_MAX,
    api_retries,
    throttled_wait,
)

VERBS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next (status, headers) of `script` (the last one repeats),
    and records (method, body) of every request it got."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[int, dict[str, str]]] = [(200, {})]
        self.got: list[tuple[str, bytes]] = []

    def next_answer(self) -> tuple[int, dict[str, str]]:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.got.append((self.command, body))
        status, headers = self.server.next_answer()
        reply = b'{"kind": "Status"}'
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(reply))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815 (http.server's names)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    thread = Thread(target=scripted.serve_forever, daemon=True)
    thread.start()
    yield scripted
    scripted.shutdown()
    scripted.server_close()


def send(server: ScriptedServer, verb: str, throttled: list[str]) -> urllib3.BaseHTTPResponse:
    """One request through a pool with the operator's retries, as the Kubernetes client sends
    it (the pool's default retries; the body a JSON string)."""
    pool = urllib3.PoolManager(retries=api_retries(throttled.append))
    host, port = server.server_address[:2]
    return pool.request(
        verb,
        f"http://{host!s}:{port}/apis/x",
        body=None if verb == "GET" else '{"spec": 1}',
        headers={"Content-Type": "application/json"},
        preload_content=False,
    )


@pytest.mark.parametrize("verb", VERBS)
def test_a_throttled_request_of_any_verb_is_sent_again_until_it_goes_through(
    server: ScriptedServer, verb: str
) -> None:
    server.script = [(429, {"Retry-After": "0"}), (429, {}), (201, {})]
    throttled: list[str] = []
    reply = send(server, verb, throttled)
    assert reply.status == 201
    assert [method for method, _ in server.got] == [verb] * 3
    assert len({body for _, body in server.got}) == 1  # the same request each time
    assert throttled == [verb, verb]


def test_after_its_retries_the_429_is_the_callers(server: ScriptedServer) -> None:
    server.script = [(429, {"Retry-After": "0"})]
    throttled: list[str] = []
    reply = send(server, "POST", throttled)
    assert reply.status == 429
    assert len(server.got) == THROTTLED_RETRIES + 1
    assert len(throttled) == THROTTLED_RETRIES + 1


@pytest.mark.parametrize(
    ("verb", "status", "headers", "sends"),
    [
        ("POST", 500, {}, 1),  # a server error after a write: it may have been done
        ("POST", 503, {"Retry-After": "0"}, 1),  # urllib3 leaves writes alone
        ("GET", 503, {"Retry-After": "0"}, 2),  # and sends reads again, as it did before
        ("GET", 404, {}, 1),
        ("PUT", 409, {}, 1),
    ],
)
def test_other_answers_keep_urllib3s_rules(
    server: ScriptedServer, verb: str, status: int, headers: dict[str, str], sends: int
) -> None:
    server.script = [(status, headers), (200, {})]
    throttled: list[str] = []
    send(server, verb, throttled)
    assert len(server.got) == sends
    assert throttled == []


@pytest.mark.parametrize(
    ("retry_after", "low"),
    [
        ("3", 3.0),
        (None, 1.0),  # none given: a second
        ("soon", 1.0),  # unreadable (an HTTP date is not what the API server sends)
        ("600", THROTTLED_WAIT_MAX),  # capped
        ("0", 0.1),  # never a busy loop
    ],
)
def test_a_throttled_request_waits_what_the_server_asks_jittered(
    retry_after: str | None, low: float
) -> None:
    waits = [throttled_wait(retry_after) for _ in range(200)]
    assert all(low <= wait <= low * 1.5 for wait in waits)
    assert len(set(waits)) > 1  # jittered: requests throttled together do not return together
