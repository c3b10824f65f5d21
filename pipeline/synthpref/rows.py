"""Line schemas of every JSONL format the stages exchange.

Each artifact row is a pydantic model, so a stage that reads another stage's output validates it
and a format change is one edit. Request and result lines follow the OpenAI Batch API format, so
the OpenAI judge, the vLLM judge and `parse` share one format.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Row(BaseModel):
    """Base for stored rows: unknown fields are kept out, names stay snake_case."""

    model_config = ConfigDict(extra="forbid")


class PromptRow(Row):
    """One prompt after `prepare`: a stable id (content hash), the text and its metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str = Field(description="file:line the prompt was first read from")


class GenerationRow(Row):
    """One model's answer to one prompt; `error` set (and `text` None) when it failed."""

    prompt_id: str
    model: str
    text: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Candidate(Row):
    """One answer chosen for judging."""

    model: str
    text: str


class MixRow(Row):
    """One prompt with the k answers sent to the judge.

    `order[aspect]` lists candidate indices in the order the judge saw them: answer number
    n (1-based) in that aspect's request is `candidates[order[aspect][n - 1]]`.
    """

    prompt_id: str
    prompt: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    candidates: list[Candidate]
    order: dict[str, list[int]]


class ChatMessage(Row):
    role: Literal["system", "user", "assistant"]
    content: str


class BatchRequestLine(BaseModel):
    """One line of an OpenAI Batch input file."""

    model_config = ConfigDict(extra="allow")

    custom_id: str
    method: Literal["POST"] = "POST"
    url: str = "/v1/chat/completions"
    body: dict[str, Any]


class BatchResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status_code: int
    request_id: str | None = None
    body: dict[str, Any] | None = None


class BatchError(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str | None = None
    message: str | None = None


class BatchResultLine(BaseModel):
    """One line of an OpenAI Batch output or error file (vLLM run-batch writes the same)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    custom_id: str
    response: BatchResponse | None = None
    error: BatchError | None = None


class PreferenceRow(Row):
    """One row of the final dataset, ready for DPO training."""

    prompt_id: str
    prompt: str
    chosen: list[ChatMessage]
    rejected: list[ChatMessage]
    chosen_rating: float
    rejected_rating: float
    chosen_model: str
    rejected_model: str
    chosen_aspect_ratings: dict[str, float]
    rejected_aspect_ratings: dict[str, float]
    metadata: dict[str, Any] = Field(default_factory=dict)
