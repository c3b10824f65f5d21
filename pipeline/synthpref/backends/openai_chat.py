"""The `openai` chat backend: answers through any OpenAI-compatible chat completions endpoint.

`generate` uses it for models with `backend: openai` (a hosted model, or a vLLM server someone
already runs). It implements the ChatBackend protocol of backends/base.py with the official
`openai` client:

- at most `concurrency` requests in flight (asyncio + a semaphore inside `complete`);
- retries with exponential backoff and jitter on 429, 408/409, 5xx, timeouts and connection
  errors, honouring the server's `retry-after`; the client's own retries are off so this policy
  is the only one (and testable). Failed tries are logged at WARNING at once, throttled
  (`retrylog.RetryLog`), naming the model and the endpoint URL;
- a request the server rejects as a bad request (400/413/422, e.g. a prompt longer than the
  context) is a ChatResult with `error` set: a per-row outcome;
- a request that still fails after every retry raises `EndpointUnavailableError` (the other
  requests in flight are cancelled): the shard is not done, and a rerun redoes it;
- an error no request of the shard can recover from (401/403 bad key, 404 unknown model) raises
  `FatalBackendError` naming the cause. The API key is read from the environment variable the
  spec names and never appears in logs or errors.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import openai

from synthpref.backends.base import ChatRequest, ChatResult, EndpointUnavailableError
from synthpref.backends.retrylog import RetryLog
from synthpref.errors import SynthprefError
from synthpref.retrying import backoff_delay
from synthpref.spec import ModelSpec, OpenAIEndpoint

log = logging.getLogger(__name__)

# The statuses the official client itself retries: timeout, conflict, rate limit, server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
FATAL_STATUSES = frozenset({401, 403, 404})
# A request the server refuses for what it is (bad parameter, too long, too large): a row error.
ROW_ERROR_STATUSES = frozenset({400, 413, 422})


class FatalBackendError(SynthprefError, RuntimeError):
    """An error that no request of the shard can recover from (bad key, unknown model)."""


def retry_after_seconds(headers: Any) -> float | None:
    """The delay a server asks for: `retry-after-ms`, or `retry-after` (seconds or HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def transport_cause(error: openai.APIConnectionError) -> str:
    """`ConnectError: [Errno 111] Connection refused`: the transport error under the client's
    generic `Connection error.` (a timeout says `APITimeoutError: Request timed out.`), with the
    operating system's reason when the transport's own message hides it."""
    cause = error.__cause__
    if isinstance(error, openai.APITimeoutError) or cause is None:
        return f"{type(error).__name__}: {error}"
    text = f"{type(cause).__name__}: {cause}"
    inner: BaseException | None = cause
    for _ in range(8):  # a chain is short; never follow a cycle forever
        if inner is None:
            break
        if isinstance(inner, OSError) and inner.errno:
            reason = os.strerror(inner.errno)
            return text if reason in text else f"{text} ({reason})"
        inner = inner.__cause__ or inner.__context__
    return text


def _describe(error: openai.APIStatusError) -> str:
    """`HTTP <status> <code>: <message>` from an API error body (the request is not included)."""
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("message")
    text = f"HTTP {error.status_code}"
    if error.code:
        text += f" {error.code}"
    return f"{text}: {message}" if isinstance(message, str) and message else text


class OpenAIChatBackend:
    """ChatBackend over an OpenAI-compatible endpoint; see the module docstring for the policy."""

    def __init__(
        self,
        model: str,
        endpoint: OpenAIEndpoint,
        *,
        api_key: str | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.name = name or model  # the spec's model name, for messages
        self.endpoint = endpoint
        if api_key is None:
            api_key = os.environ.get(endpoint.api_key_env)
        if not api_key:
            raise FatalBackendError(
                f"no API key for model {model!r}: environment variable "
                f"{endpoint.api_key_env} is not set"
            )
        self._api_key = api_key
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = random.Random(seed)
        self.retry_log = RetryLog(
            f"model {self.name}: endpoint {self.where}", log, last_try="the shard stops"
        )

    @classmethod
    def from_model_spec(cls, spec: ModelSpec, **kwargs: Any) -> OpenAIChatBackend:
        """A backend for an answering model with `backend: openai` (`path` is the model name)."""
        return cls(spec.path, spec.openai or OpenAIEndpoint(), name=spec.name, **kwargs)

    @property
    def where(self) -> str:
        return self.endpoint.base_url or os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Answer every request (same order); runs its own event loop, so call it from sync code."""
        if not requests:
            return []
        return asyncio.run(self._complete_all(requests))

    def close(self) -> None:
        """Nothing to release: each `complete` call opens and closes its own HTTP client."""

    async def _complete_all(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        semaphore = asyncio.Semaphore(self.endpoint.concurrency)
        client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.endpoint.base_url,
            max_retries=0,
            timeout=self.endpoint.timeout_seconds,
            # A redirect would carry the key to wherever the endpoint points: never followed.
            http_client=openai.DefaultAsyncHttpxClient(follow_redirects=False),
        )
        async with client:

            async def bounded(request: ChatRequest) -> ChatResult:
                async with semaphore:
                    return await self._one(client, request)

            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(bounded(r)) for r in requests]
            except* (FatalBackendError, EndpointUnavailableError) as stopped:
                # The first such error stops the shard; the group cancelled the other requests.
                raise stopped.exceptions[0] from None
            return [task.result() for task in tasks]

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.json_schema, "strict": True},
            }
        return kwargs

    def _fatal(self, error: openai.APIStatusError) -> FatalBackendError:
        status = error.status_code
        if status in (401, 403):
            code = f" {error.code}" if error.code else ""
            # The server's message may echo part of the key; only the status and code are kept.
            return FatalBackendError(
                f"{self.where} rejected the API key from ${self.endpoint.api_key_env} "
                f"(HTTP {status}{code}): authentication failed"
            )
        return FatalBackendError(
            f"{self.where} does not serve model {self.model!r}: {_describe(error)}"
        )

    async def _one(self, client: openai.AsyncOpenAI, request: ChatRequest) -> ChatResult:
        attempts = self.endpoint.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                response = await client.chat.completions.create(**self._kwargs(request))
            except openai.APIStatusError as error:
                status = error.status_code
                if status in FATAL_STATUSES:
                    raise self._fatal(error) from None
                if status in ROW_ERROR_STATUSES:
                    return ChatResult(
                        key=request.key, error=_describe(error), extra={"attempts": attempt}
                    )
                cause, unreachable = _describe(error), False
                if status not in RETRYABLE_STATUSES and status < 500:
                    raise self._unavailable(f"answered {cause}") from None
                retry_after = retry_after_seconds(error.response.headers)
            except openai.APIConnectionError as error:  # APITimeoutError included
                cause, unreachable = transport_cause(error), True
            else:
                return self._result(request, response, attempt)
            if attempt == attempts:
                self.retry_log.failed(attempt, None, cause, unreachable=unreachable)
                state = "unreachable" if unreachable else "failing"
                tries = "1 try" if attempt == 1 else f"{attempt} tries"
                raise self._unavailable(f"{state} after {tries}: {cause}")
            delay = backoff_delay(
                attempt, self.backoff_base_s, self.backoff_max_s, self._rng, retry_after
            )
            self.retry_log.failed(attempt, delay, cause, unreachable=unreachable)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _unavailable(self, what: str) -> EndpointUnavailableError:
        return EndpointUnavailableError(f"model {self.name}: endpoint {self.where} {what}")

    def _result(self, request: ChatRequest, response: Any, attempt: int) -> ChatResult:
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        if not response.choices:
            return ChatResult(key=request.key, error="the reply has no choices")
        choice = response.choices[0]
        text = choice.message.content
        if text is None:
            refusal = getattr(choice.message, "refusal", None)
            return ChatResult(
                key=request.key,
                error=f"no reply text (refusal: {refusal})" if refusal else "no reply text",
                finish_reason=choice.finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        return ChatResult(
            key=request.key,
            text=text,
            finish_reason=choice.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            extra={"attempts": attempt},
        )
