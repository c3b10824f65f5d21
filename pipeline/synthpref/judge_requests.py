"""Judge requests in the OpenAI Batch input format: custom ids, request lines, file splitting.

Called by `mix` to build and split the request files, and by `parse` to map a result line back
to its (shard, prompt, aspect). Pure: lines are built and encoded here; the stage writes them.
`build_request` is the readable definition of a request; `RequestEncoder` makes the same bytes
from frames rendered once per (aspect, answer count), which is what `mix` uses per line.

A custom id is `sp:<shard>:<aspect>:<prompt_id>`. The prompt id goes last so it may contain any
character (even ':'); the shard is a canonical decimal so decoding and re-encoding gives back the
same string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import NamedTuple, Protocol

import msgspec

from synthpref.rows import BatchRequestLine, MixRow
from synthpref.spec import DEFAULT_ASPECTS, JudgeSpec
from synthpref.templates import (
    SYSTEM_PROMPT,
    present,
    render_messages,
    response_format,
    show_answers,
    user_frame,
)

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
    if not prompt_id or "\n" in prompt_id or "\r" in prompt_id:
        raise CustomIdError(f"prompt id {prompt_id!r} is empty or contains a line break")
    custom_id = f"{CUSTOM_ID_PREFIX}:{shard}:{aspect}:{prompt_id}"
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise CustomIdError(
            f"custom_id for prompt {prompt_id[:40]!r}... is {len(custom_id)} characters "
            f"(limit {MAX_CUSTOM_ID_LENGTH})"
        )
    return custom_id


def _has_line_break(text: str) -> bool:
    return "\n" in text or "\r" in text


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
    if _has_line_break(prompt_id):
        raise CustomIdError(f"malformed custom_id {custom_id[:80]!r}: line break in prompt id")
    return RequestKey(shard=int(shard), prompt_id=prompt_id, aspect=aspect)


def in_shard(custom_id: str, shard: int) -> bool:
    """`decode_custom_id(custom_id).shard == shard` (CustomIdError when it is malformed), with
    neither the regular expression nor the key for a well-formed id of `shard` (what `parse`
    meets on every result line)."""
    prefix = f"{CUSTOM_ID_PREFIX}:{shard}:"
    if shard >= 0 and custom_id.startswith(prefix):
        aspect, _, prompt_id = custom_id[len(prefix) :].partition(":")
        if aspect in DEFAULT_ASPECTS and prompt_id and not _has_line_break(prompt_id):
            return True
    return decode_custom_id(custom_id).shard == shard


def build_request(row: MixRow, aspect: str, shard: int, judge: JudgeSpec) -> BatchRequestLine:
    """The chat completion request asking the judge to rate `row`'s answers for `aspect`."""
    if aspect not in row.order:
        raise ValueError(f"prompt {row.prompt_id!r}: no answer order for aspect {aspect!r}")
    answers = present([c.text for c in row.candidates], row.order[aspect])
    messages = render_messages(row.prompt, answers, aspect, structured=judge.structured_output)
    return build_request_line(
        custom_id=encode_custom_id(shard, row.prompt_id, aspect),
        aspect=aspect,
        user=messages[1]["content"],
        count=len(answers),
        judge=judge,
    )


def build_request_line(
    *, custom_id: str, aspect: str, user: str, count: int, judge: JudgeSpec
) -> BatchRequestLine:
    """The request line around a rendered user message (what `build_request` and the
    `RequestEncoder`'s frames share)."""
    body: dict[str, object] = {
        "model": judge.model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        "temperature": judge.temperature,
        "max_tokens": judge.max_tokens,
    }
    if judge.structured_output:
        body["response_format"] = response_format(count, aspect)
    return BatchRequestLine(custom_id=custom_id, body=body)


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


class EncodedRequest(NamedTuple):
    """A request line as written (newline included) and its custom_id."""

    custom_id: str
    data: bytes


def encode_request(line: BatchRequestLine) -> EncodedRequest:
    """`line` as written to a request file."""
    return EncodedRequest(line.custom_id, encode_line(line))


class MixedCandidate(Protocol):
    """What a request needs of a candidate (`rows.Candidate` or `records.CandidateRecord`)."""

    @property
    def model(self) -> str: ...
    @property
    def text(self) -> str: ...


class MixedRow(Protocol):
    """What a request needs of a mix row (`rows.MixRow` or its twin `records.MixRecord`)."""

    @property
    def prompt_id(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def candidates(self) -> Sequence[MixedCandidate]: ...
    @property
    def order(self) -> dict[str, list[int]]: ...


# Stand-ins for the parts of a request that change from line to line (`RequestEncoder`).
_CUSTOM_ID_SLOT = "\x00custom_id\x00"
_PROMPT_SLOT = "\x00prompt\x00"


def _answer_slot(number: int) -> str:
    return f"\x00answer {number}\x00"


class RequestEncoder:
    """`encode_line(build_request(...))` without building or serializing the request per line.

    Everything in a request but the custom_id, the prompt and the answers is the same for every
    (aspect, answer count): the system prompt, the rubric, the response format. The encoder
    serializes that once per (aspect, count) with `build_request_line` itself, stand-ins in
    place of the custom_id, the prompt and each answer, and cuts it there (the frame); a line is
    then the frame's pieces joined with those parts JSON-escaped (escaping a string is escaping
    its parts one after the other), and a row's prompt and answers are escaped once for all its
    aspects. So the bytes are exactly `encode_line(build_request(...))`'s
    (tests/unit/test_records.py)."""

    def __init__(self, judge: JudgeSpec, shard: int) -> None:
        self.judge = judge
        self.shard = shard
        self._frames: dict[tuple[str, int], list[bytes]] = {}
        self._encode = msgspec.json.Encoder().encode

    def _frame(self, aspect: str, count: int) -> list[bytes]:
        """The fixed pieces around the custom_id, the prompt and answers 1..count."""
        frame = self._frames.get((aspect, count))
        if frame is None:
            before, between = user_frame(aspect, count, structured=self.judge.structured_output)
            answers = [_answer_slot(n) for n in range(1, count + 1)]
            line = build_request_line(
                custom_id=_CUSTOM_ID_SLOT,
                aspect=aspect,
                user=before + _PROMPT_SLOT + between + show_answers(answers),
                count=count,
                judge=self.judge,
            )
            data = encode_line(line)
            frame = []
            for slot in [_CUSTOM_ID_SLOT, _PROMPT_SLOT, *answers]:
                marker = self._escaped(slot)
                head, found, data = data.partition(marker)
                if not found or marker in data:
                    raise AssertionError(f"request template for {aspect!r} lacks one {slot!r}")
                frame.append(head)
            frame.append(data)
            self._frames[aspect, count] = frame
        return frame

    def _escaped(self, text: str) -> bytes:
        """`text` as inside a JSON string (without the quotes)."""
        return self._encode(text)[1:-1]

    def encode(self, row: MixedRow, aspect: str) -> EncodedRequest:
        """The request line asking the judge to rate `row`'s answers for `aspect`."""
        return next(iter(self.encode_row(row, [aspect])))

    def encode_row(self, row: MixedRow, aspects: Iterable[str]) -> Iterator[EncodedRequest]:
        """The request lines of one row, one per aspect in the given order."""
        prompt = self._escaped(row.prompt)
        texts = [self._escaped(c.text) for c in row.candidates]
        for aspect in aspects:
            order = row.order.get(aspect)
            if order is None:
                raise ValueError(f"prompt {row.prompt_id!r}: no answer order for aspect {aspect!r}")
            answers = present(texts, order)
            custom_id = encode_custom_id(self.shard, row.prompt_id, aspect)
            frame = self._frame(aspect, len(answers))
            pieces = [frame[0], self._escaped(custom_id), frame[1], prompt]
            for piece, answer in zip(frame[2:], answers, strict=False):
                pieces += (piece, answer)
            pieces.append(frame[-1])
            yield EncodedRequest(custom_id, b"".join(pieces))

    def encode_all(
        self, rows: Iterable[MixedRow], aspects: Iterable[str]
    ) -> Iterator[EncodedRequest]:
        """One request per (row, aspect), rows in order, aspects in the given order."""
        aspect_list = list(aspects)
        for row in rows:
            yield from self.encode_row(row, aspect_list)


class OversizeRequestError(ValueError):
    """A single request line larger than the per-file byte limit."""


class PartLine(NamedTuple):
    """An encoded request line and the 0-based file part it belongs to (a named tuple: one is
    made per request, and a tuple is the cheapest object to make)."""

    part: int
    custom_id: str
    data: bytes


def assign_parts(
    lines: Iterable[EncodedRequest], *, max_requests: int, max_bytes: int
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
        data = line.data
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
    lines: Iterable[EncodedRequest], *, max_requests: int, max_bytes: int
) -> Iterator[tuple[int, Iterator[PartLine]]]:
    """Lazily grouped parts: (part index, its lines). Consume each part before the next."""
    assigned = assign_parts(lines, max_requests=max_requests, max_bytes=max_bytes)
    return groupby(assigned, key=lambda line: line.part)
