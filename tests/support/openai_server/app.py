"""`OpenAIServer`: the test server's routes over its parts (files, batches, chat, faults); the
one object tests build and use."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.openai_server.batches import BatchesApi
from tests.support.openai_server.faults import FaultInjection
from tests.support.openai_server.http import CUT_HEADER
from tests.support.openai_server.records import Call
from tests.support.openai_server.wire import ApiError, json_body, multipart_fields


class OpenAIServer(FaultInjection, BatchesApi):
    """The server's state and knobs; use as a context manager (`with OpenAIServer() as s:`)."""

    # ---- dispatch

    def handle(
        self, method: str, target: str, headers: Any, raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """Answer one HTTP call: (status, JSON object or bytes, extra headers)."""
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path == "/_test/calls" and method == "GET":  # the test's own view, not counted
            return 200, self.route_counts(), {}
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
        if status == 200 and self._take_cut(call):
            extra_headers = {**extra_headers, CUT_HEADER: "1"}
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
            body = json_body(raw)
            with self.chat_in_flight():
                return 200, self.chat(body)
        with self._lock:
            if route == ["files"] and method == "POST":
                fields = multipart_fields(headers.get("Content-Type") or "", raw)
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
                return 200, self.create_batch(json_body(raw))
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
