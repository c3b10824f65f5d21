"""Judge requests in the OpenAI Batch input format: custom ids, request lines, file splitting.

Called by `mix` to build and split the request files, and by `parse` to map a result line back
to its (shard, prompt, aspect). Pure: lines are built and encoded here; the stage writes them.

A custom id is `sp:<shard>:<aspect>:<prompt_id>`. The prompt id goes last so it may contain any
character (even ':'); the shard is a canonical decimal so decoding and re-encoding gives back the
same string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

from synthpref.rows import BatchRequestLine, MixRow
from synthpref.spec import DEFAULT_ASPECTS, JudgeSpec
from synthpref.templates import present, render_messages, response_format

CUSTOM_ID_PREFIX = "sp"
# OpenAI does not document a length limit for custom_id; stay well inside what it accepts.
MAX_CUSTOM_ID_LENGTH = 512
_CUSTOM_ID = re.compile(r"^sp:(0|[1-9][0-9]*):([a-z_]+):(.+)$", re.DOTALL)


class CustomIdError(ValueError):
    """A custom_id that was not made by `encode_custom_id`."""


@dataclass(frozen=True)
class RequestKey:
    """What one judge request is about."""

    shard: int
    prompt_id: str
    aspect: str


def encode_custom_id(shard: int, prompt_id: str, aspect: str) -> str:
    if shard < 0:
        raise CustomIdError(f"shard must be >= 0 (got {shard})")
    if aspect not in DEFAULT_ASPECTS:
        raise CustomIdError(f"unknown aspect {aspect!r}")
    if not prompt_id or any(c in prompt_id for c in "\r\n"):
        raise CustomIdError(f"prompt id {prompt_id!r} is empty or contains a line break")
    custom_id = f"{CUSTOM_ID_PREFIX}:{shard}:{aspect}:{prompt_id}"
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise CustomIdError(
            f"custom_id for prompt {prompt_id[:40]!r}... is {len(custom_id)} characters "
            f"(limit {MAX_CUSTOM_ID_LENGTH})"
        )
    return custom_id


def decode_custom_id(custom_id: str) -> RequestKey:
    """The (shard, prompt_id, aspect) of a custom id; CustomIdError when it is malformed."""
    match = _CUSTOM_ID.match(custom_id)
    if match is None:
        raise CustomIdError(
            f"malformed custom_id {custom_id[:80]!r}: expected 'sp:<shard>:<aspect>:<prompt_id>'"
        )
    shard, aspect, prompt_id = match.groups()
    if aspect not in DEFAULT_ASPECTS:
        raise CustomIdError(f"malformed custom_id {custom_id[:80]!r}: unknown aspect {aspect!r}")
    if any(c in prompt_id for c in "\r\n"):
        raise CustomIdError(f"malformed custom_id {custom_id[:80]!r}: line break in prompt id")
    return RequestKey(shard=int(shard), prompt_id=prompt_id, aspect=aspect)


def build_request(row: MixRow, aspect: str, shard: int, judge: JudgeSpec) -> BatchRequestLine:
    """The chat completion request asking the judge to rate `row`'s answers for `aspect`."""
    if aspect not in row.order:
        raise ValueError(f"prompt {row.prompt_id!r}: no answer order for aspect {aspect!r}")
    answers = present([c.text for c in row.candidates], row.order[aspect])
    body: dict[str, object] = {
        "model": judge.model,
        "messages": render_messages(
            row.prompt, answers, aspect, structured=judge.structured_output
        ),
        "temperature": judge.temperature,
        "max_tokens": judge.max_tokens,
    }
    if judge.structured_output:
        body["response_format"] = response_format(len(answers), aspect)
    return BatchRequestLine(custom_id=encode_custom_id(shard, row.prompt_id, aspect), body=body)


def build_requests(
    rows: Iterable[MixRow], aspects: Iterable[str], shard: int, judge: JudgeSpec
) -> Iterator[BatchRequestLine]:
    """One request per (row, aspect), rows in order, aspects in the given order."""
    aspect_list = list(aspects)
    for row in rows:
        for aspect in aspect_list:
            yield build_request(row, aspect, shard, judge)


def encode_line(line: BatchRequestLine) -> bytes:
    """One JSONL line of a request file, newline included (what the byte limit counts)."""
    return line.model_dump_json().encode("utf-8") + b"\n"


class OversizeRequestError(ValueError):
    """A single request line larger than the per-file byte limit."""


@dataclass(frozen=True)
class PartLine:
    """An encoded request line and the 0-based file part it belongs to."""

    part: int
    custom_id: str
    data: bytes


def assign_parts(
    lines: Iterable[BatchRequestLine], *, max_requests: int, max_bytes: int
) -> Iterator[PartLine]:
    """Stream encoded lines, starting a new part before either limit would be exceeded.

    Parts are filled in order and never reordered, so a part holds at most `max_requests`
    lines and at most `max_bytes` bytes (JSONL, newlines included). A line that alone exceeds
    `max_bytes` raises OversizeRequestError naming its custom_id.
    """
    if max_requests < 1 or max_bytes < 1:
        raise ValueError(f"limits must be >= 1 (got {max_requests} requests, {max_bytes} bytes)")
    part, count, size = 0, 0, 0
    for line in lines:
        data = encode_line(line)
        if len(data) > max_bytes:
            raise OversizeRequestError(
                f"request {line.custom_id!r} is {len(data)} bytes, over the per-file limit of "
                f"{max_bytes} bytes"
            )
        if count and (count + 1 > max_requests or size + len(data) > max_bytes):
            part, count, size = part + 1, 0, 0
        count += 1
        size += len(data)
        yield PartLine(part=part, custom_id=line.custom_id, data=data)


def split_parts(
    lines: Iterable[BatchRequestLine], *, max_requests: int, max_bytes: int
) -> Iterator[tuple[int, Iterator[PartLine]]]:
    """Lazily grouped parts: (part index, its lines). Consume each part before the next."""
    assigned = assign_parts(lines, max_requests=max_requests, max_bytes=max_bytes)
    return groupby(assigned, key=lambda line: line.part)
