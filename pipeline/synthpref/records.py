"""msgspec twins of the rows the mix and parse stages stream by the million.

`synthpref.rows` holds the schemas (pydantic models: documentation, validation, every other
reader). The mix and parse stages handle ~10 rows per prompt, where pydantic's per-row
validation and construction cost more than the I/O; they decode, build and encode these
`msgspec.Struct` twins instead (`jsonl.read_records`, `jsonl.write_records`). A twin has the
same fields, in the same order, with the same defaults as its model, so the JSON lines are the
same bytes either way; `tests/unit/test_records.py` pins that, and a change to a model in
`rows` fails it until the twin follows.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec


class Record(msgspec.Struct, forbid_unknown_fields=True):
    """Base of the twins of `rows.Row`: unknown fields are refused, as the models refuse them.
    Twins are keyword-only, so a required field may follow one with a default, as in the
    models."""

    schema: ClassVar[str]  # the name of the model in `rows` this one is the twin of


class PromptRecord(Record, kw_only=True):
    """`rows.PromptRow`."""

    schema: ClassVar[str] = "PromptRow"

    id: str
    text: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    source: str


class GenerationRecord(Record, kw_only=True):
    """`rows.GenerationRow`."""

    schema: ClassVar[str] = "GenerationRow"

    prompt_id: str
    model: str
    text: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CandidateRecord(Record, kw_only=True):
    """`rows.Candidate`."""

    schema: ClassVar[str] = "Candidate"

    model: str
    text: str


class MixRecord(Record, kw_only=True):
    """`rows.MixRow`."""

    schema: ClassVar[str] = "MixRow"

    prompt_id: str
    prompt: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    candidates: list[CandidateRecord]
    order: dict[str, list[int]]


class MessageRecord(Record, kw_only=True):
    """`rows.ChatMessage`."""

    schema: ClassVar[str] = "ChatMessage"

    role: Literal["system", "user", "assistant"]
    content: str


class PreferenceRecord(Record, kw_only=True):
    """`rows.PreferenceRow`."""

    schema: ClassVar[str] = "PreferenceRow"

    prompt_id: str
    prompt: str
    chosen: list[MessageRecord]
    rejected: list[MessageRecord]
    chosen_rating: float
    rejected_rating: float
    chosen_model: str
    rejected_model: str
    chosen_aspect_ratings: dict[str, float]
    rejected_aspect_ratings: dict[str, float]
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class ResultResponse(msgspec.Struct):
    """`rows.BatchResponse` (other fields are allowed and ignored)."""

    schema: ClassVar[str] = "BatchResponse"

    status_code: int
    request_id: str | None = None
    body: dict[str, Any] | None = None


class ResultError(msgspec.Struct):
    """`rows.BatchError` (other fields are allowed and ignored)."""

    schema: ClassVar[str] = "BatchError"

    code: str | None = None
    message: str | None = None


class ResultRecord(msgspec.Struct, kw_only=True):
    """`rows.BatchResultLine`, one line of an OpenAI Batch output file (other fields allowed)."""

    schema: ClassVar[str] = "BatchResultLine"

    id: str | None = None
    custom_id: str
    response: ResultResponse | None = None
    error: ResultError | None = None
