"""The wire format shared by every route of the test server: constants, the API's error
answer, token counting, cursor pages and request bodies (JSON, multipart uploads)."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import socket
from collections.abc import Callable
from typing import Any

JsonObject = dict[str, Any]

DEFAULT_API_KEY = "sk-test-0123456789abcdef"
SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
EXPIRY_SECONDS = 24 * 3600
MAX_ERRORS_REPORTED = 100

TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """The server's token count: one per word or punctuation mark (over-counts BPE for prose)."""
    return len(TOKEN.findall(text))


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


def digest(*parts: object) -> int:
    data = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


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


def cursor_page(
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


def json_body(raw: bytes) -> JsonObject:
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as error:
        raise ApiError(400, f"We could not parse the JSON body of your request: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def multipart_fields(content_type: str, raw: bytes) -> dict[str, tuple[bytes, str | None]]:
    """Fields of a multipart/form-data body: name -> (data, filename). Only each part's
    headers go through the email parser; a part's data is one slice of the body (a 200 MB
    upload is not copied part by part)."""
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "Uploads must be multipart/form-data.")
    header = email.parser.Parser(policy=email.policy.HTTP).parsestr(
        f"Content-Type: {content_type}\r\n\r\n"
    )
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ApiError(400, "Uploads must name their multipart boundary.")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, tuple[bytes, str | None]] = {}
    position = raw.find(delimiter)
    while position >= 0:
        start = position + len(delimiter)
        if raw[start : start + 2] == b"--":
            break  # the closing delimiter
        head_end = raw.find(b"\r\n\r\n", start)
        following = raw.find(b"\r\n" + delimiter, start)
        if head_end < 0 or following < 0 or head_end > following:
            raise ApiError(400, "The multipart body is malformed.")
        part = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            raw[start:head_end].lstrip(b"\r\n") + b"\r\n\r\n", headersonly=True
        )
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (raw[head_end + 4 : following], part.get_filename())
        position = following + 2
    return fields
