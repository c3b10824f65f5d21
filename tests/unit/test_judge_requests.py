"""Unit tests of synthpref.judge_requests: custom ids, request lines, file splitting."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from synthpref.judge_requests import (
    CustomIdError,
    EncodedRequest,
    OversizeRequestError,
    RequestKey,
    assign_parts,
    build_request,
    build_requests,
    decode_custom_id,
    encode_custom_id,
    encode_line,
    encode_request,
    in_shard,
    split_parts,
)
from synthpref.rows import BatchRequestLine, Candidate, MixRow
from synthpref.spec import DEFAULT_ASPECTS, JudgeSpec


@pytest.mark.parametrize(
    ("shard", "prompt_id", "aspect"),
    [
        (0, "abc123", "helpfulness"),
        (7, "e3b0c44298fc1c149afbf4c8996fb924", "honesty"),
        (12345, "id:with:colons", "instruction_following"),
        (99999, "spaces and ünïcode", "truthfulness"),
        (1, "sp:3:honesty:nested", "helpfulness"),
    ],
)
def test_custom_id_round_trips_exactly(shard: int, prompt_id: str, aspect: str) -> None:
    custom_id = encode_custom_id(shard, prompt_id, aspect)
    assert decode_custom_id(custom_id) == RequestKey(shard, prompt_id, aspect)
    key = decode_custom_id(custom_id)
    assert encode_custom_id(key.shard, key.prompt_id, key.aspect) == custom_id


def test_custom_ids_are_unique_across_shards_prompts_and_aspects() -> None:
    ids = {
        encode_custom_id(s, p, a)
        for s in (0, 1, 10)
        for p in ("p", "p1", "1:p")
        for a in DEFAULT_ASPECTS
    }
    assert len(ids) == 3 * 3 * len(DEFAULT_ASPECTS)


@pytest.mark.parametrize(
    "custom_id",
    [
        "",
        "request-1",
        "sp:1:helpfulness",
        "sp:1:helpfulness:",
        "sp:-1:helpfulness:p",
        "sp:01:helpfulness:p",
        "sp:x:helpfulness:p",
        "sp:1:style:p",
        "xx:1:honesty:p",
        "sp:1:honesty:line\nbreak",
    ],
)
def test_malformed_custom_id_is_rejected(custom_id: str) -> None:
    with pytest.raises(CustomIdError, match="malformed custom_id"):
        decode_custom_id(custom_id)


@pytest.mark.parametrize(
    ("shard", "prompt_id", "aspect"),
    [
        (-1, "p", "honesty"),
        (0, "", "honesty"),
        (0, "a\nb", "honesty"),
        (0, "p", "style"),
        (0, "x" * 600, "honesty"),
    ],
)
def test_encode_rejects_what_cannot_round_trip(shard: int, prompt_id: str, aspect: str) -> None:
    with pytest.raises(CustomIdError):
        encode_custom_id(shard, prompt_id, aspect)


def shard_by_decoding(custom_id: str, shard: int) -> bool | str:
    try:
        return decode_custom_id(custom_id).shard == shard
    except CustomIdError as error:
        return f"CustomIdError: {error}"


@pytest.mark.parametrize("shard", [-1, 0, 1, 12])
@pytest.mark.parametrize(
    "custom_id",
    [
        "sp:0:helpfulness:p",
        "sp:1:honesty:id:with:colons",
        "sp:12:truthfulness:x",
        "sp:1:instruction_following:sp:3:honesty:nested",
        "sp:1:honesty:",
        "sp:1:honesty",
        "sp:1:style:p",
        "sp:1:Honesty:p",
        "sp:01:honesty:p",
        "sp:-1:honesty:p",
        "sp:1:honesty:line\nbreak",
        "sp:1:honesty:trailing\n",
        "sp:1:honesty:carriage\rreturn",
        "sp:1::p",
        "sp:1:honesty::",
        "xx:1:honesty:p",
        "",
    ],
)
def test_in_shard_is_what_decoding_says(custom_id: str, shard: int) -> None:
    try:
        fast: bool | str = in_shard(custom_id, shard)
    except CustomIdError as error:
        fast = f"CustomIdError: {error}"
    assert fast == shard_by_decoding(custom_id, shard)


def mix_row(
    k: int = 3, *, prompt_id: str = "p1", order: dict[str, list[int]] | None = None
) -> MixRow:
    return MixRow(
        prompt_id=prompt_id,
        prompt="Explain tides.",
        metadata={"source": "t"},
        candidates=[Candidate(model=f"m{i}", text=f"CANDIDATE-{i}") for i in range(k)],
        order=order or {a: list(range(k)) for a in DEFAULT_ASPECTS},
    )


@pytest.mark.parametrize("structured", [False, True])
def test_request_line_carries_judge_settings(structured: bool) -> None:
    judge = JudgeSpec(
        model="judge-x", temperature=0.3, max_tokens=777, structured_output=structured
    )
    line = build_request(mix_row(), "honesty", 4, judge)
    assert decode_custom_id(line.custom_id) == RequestKey(4, "p1", "honesty")
    assert (line.method, line.url) == ("POST", "/v1/chat/completions")
    body = line.body
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-x", 0.3, 777)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert ("response_format" in body) is structured
    if structured:
        assert body["response_format"]["json_schema"]["schema"]["required"] == ["1", "2", "3"]
    # Round trip through the wire format.
    again = BatchRequestLine.model_validate_json(encode_line(line))
    assert again == line


def test_request_shows_candidates_in_the_recorded_order() -> None:
    order = {a: [0, 1, 2] for a in DEFAULT_ASPECTS} | {"truthfulness": [2, 0, 1]}
    line = build_request(mix_row(order=order), "truthfulness", 0, JudgeSpec())
    user = line.body["messages"][1]["content"]
    assert '<answer number="1">\nCANDIDATE-2\n' in user
    assert '<answer number="2">\nCANDIDATE-0\n' in user
    assert '<answer number="3">\nCANDIDATE-1\n' in user


def test_build_requests_is_one_per_prompt_and_aspect() -> None:
    rows = [mix_row(prompt_id=f"p{i}") for i in range(3)]
    lines = list(build_requests(rows, ["honesty", "helpfulness"], 2, JudgeSpec()))
    keys = [decode_custom_id(line.custom_id) for line in lines]
    assert [(k.prompt_id, k.aspect) for k in keys] == [
        (p, a) for p in ("p0", "p1", "p2") for a in ("honesty", "helpfulness")
    ]
    assert len({line.custom_id for line in lines}) == 6


def fake_lines(sizes: list[int]) -> Iterator[EncodedRequest]:
    """Request lines whose encoded size (newline included) is exactly sizes[i] bytes."""
    for i, size in enumerate(sizes):
        line = BatchRequestLine(custom_id=f"r{i:04d}", body={"pad": ""})
        overhead = len(encode_line(line))
        assert size >= overhead, "test asks for a line smaller than its fixed part"
        line = BatchRequestLine(custom_id=f"r{i:04d}", body={"pad": "x" * (size - overhead)})
        yield encode_request(line)


@pytest.mark.parametrize(
    ("sizes", "max_requests", "max_bytes", "expected_parts"),
    [
        ([100] * 10, 3, 10_000, [3, 3, 3, 1]),
        ([100] * 6, 6, 10_000, [6]),
        ([100] * 10, 100, 300, [3, 3, 3, 1]),
        ([100] * 10, 100, 299, [2, 2, 2, 2, 2]),
        ([100, 200, 100, 90, 90], 100, 300, [2, 3]),
        ([300, 300], 100, 300, [1, 1]),
        ([100] * 7, 2, 250, [2, 2, 2, 1]),
        ([], 10, 1000, []),
    ],
)
def test_split_respects_count_and_byte_limits(
    sizes: list[int], max_requests: int, max_bytes: int, expected_parts: list[int]
) -> None:
    parts: list[list[bytes]] = []
    for index, lines in split_parts(
        fake_lines(sizes), max_requests=max_requests, max_bytes=max_bytes
    ):
        data = [line.data for line in lines]
        assert index == len(parts)
        assert len(data) <= max_requests
        assert sum(len(d) for d in data) <= max_bytes
        parts.append(data)
    assert [len(p) for p in parts] == expected_parts
    flat = [d for part in parts for d in part]
    assert [len(d) for d in flat] == sizes  # every line once, in order
    assert all(d.endswith(b"\n") and json.loads(d)["custom_id"] for d in flat)


def test_oversize_line_is_an_error_naming_it() -> None:
    with pytest.raises(OversizeRequestError, match=r"'r0001' is 301 bytes.*300"):
        list(assign_parts(fake_lines([100, 301, 100]), max_requests=10, max_bytes=300))


def test_split_is_streaming() -> None:
    consumed = 0

    def lines() -> Iterator[EncodedRequest]:
        nonlocal consumed
        for line in fake_lines([100] * 1000):
            consumed += 1
            yield line

    parts = split_parts(lines(), max_requests=10, max_bytes=10_000)
    index, first = next(parts)
    assert index == 0
    next(first)
    assert consumed <= 2
