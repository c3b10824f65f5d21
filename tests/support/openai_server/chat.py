"""Chat Completions for the test server: `POST /v1/chat/completions` (sync) and the completion
objects batch requests get; the reply comes from `judging` (a script's outcome or the
default)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.openai_server.core import ServerCore
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
    judgement_json,
    judgement_text,
    request_answers,
)
from tests.support.openai_server.wire import (
    TOKEN,
    ApiError,
    JsonObject,
    count_tokens,
    prompt_tokens,
)


class ChatCompletions(ServerCore):
    """The chat route and the completion object of one request."""

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
        tokens = TOKEN.findall(text)
        if isinstance(limit, int) and len(tokens) > limit:
            # Truncate at the limit-th token (keeps the original spacing before it).
            cut = list(TOKEN.finditer(text))[limit - 1].end()
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
