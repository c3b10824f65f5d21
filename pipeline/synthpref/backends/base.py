"""The interface every chat backend implements, and the plain data it exchanges.

`generate` and the vLLM judge hand a backend a list of ChatRequests and get one ChatResult per
request back, in the same order. A per-request failure (prompt too long for the context, a
request the server rejects as bad, a template failure) is a ChatResult with `error` set, never an
exception: one bad row does not kill a shard. A failure of what every row depends on (the
endpoint unreachable, 5xx or 429 after all retries, a timeout) raises `EndpointUnavailableError`
instead: the shard is not done, nothing of it is committed, and a rerun redoes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from synthpref.errors import ShardFailedError


class EndpointUnavailableError(ShardFailedError):
    """The endpoint a shard's rows depend on kept failing (unreachable, timeout, 5xx, 429) after
    every retry; the message names the model, the endpoint URL and the cause."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to run."""

    key: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # structured output: reply must match it


@dataclass(frozen=True)
class ChatResult:
    """The answer to one ChatRequest; exactly one of `text` and `error` is set."""

    key: str
    text: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def count_finish_reasons(counts: dict[str, int], reasons: Iterable[str | None]) -> None:
    """Add each finish reason ("stop", "length", ...) to `counts`; None (a request that never
    ran, e.g. too long for the context) is not counted."""
    for reason in reasons:
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1


class ChatBackend(Protocol):
    """Loaded once per process, then called once per shard."""

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...
