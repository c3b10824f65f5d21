"""Unit tests of synthpref.storage_lines: lines split the same whatever the chunking, with their
numbers and byte offsets; non-UTF-8 bytes are named by URI, line and offset."""

from __future__ import annotations

import io

import pytest

from synthpref.storage_errors import NotUtf8Error, StorageError
from synthpref.storage_lines import RawLine, split_line_blocks, split_lines

SAMPLE = b'{"a": 1}\r\n\r\nsecond\rthird\n\xc3\xa9t\xc3\xa9\nlast'


def lines_of(chunks: list[bytes]) -> list[RawLine]:
    return list(split_lines(chunks))


def test_endings_numbers_and_offsets() -> None:
    assert lines_of([SAMPLE]) == [
        RawLine(1, 0, b'{"a": 1}'),
        RawLine(2, 10, b""),
        RawLine(3, 12, b"second"),
        RawLine(4, 19, b"third"),
        RawLine(5, 25, "été".encode()),
        RawLine(6, 31, b"last"),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_any_chunking_gives_the_same_lines(size: int) -> None:
    chunks = [SAMPLE[i : i + size] for i in range(0, len(SAMPLE), size)]
    assert lines_of(chunks) == lines_of([SAMPLE])


@pytest.mark.parametrize("cut", range(1, len(SAMPLE)))
def test_every_two_chunk_split_gives_the_same_lines(cut: int) -> None:
    assert lines_of([SAMPLE[:cut], b"", SAMPLE[cut:]]) == lines_of([SAMPLE])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"a\n", [b"a"]),
        (b"a\n\n", [b"a", b""]),
        (b"a\r", [b"a"]),
        (b"a\n\r", [b"a", b""]),
        (b"a\r\nb", [b"a", b"b"]),
    ],
)
def test_trailing_endings(data: bytes, expected: list[bytes]) -> None:
    # As Python's text files with newline="" split them (the old local reader).
    assert [line.data for line in lines_of([data])] == expected
    python = [line.rstrip("\r\n") for line in io.StringIO(data.decode(), newline="")]
    assert [line.encode() for line in python] == expected


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_blocks_hold_every_line_with_its_ending(size: int) -> None:
    chunks = [SAMPLE[i : i + size] for i in range(0, len(SAMPLE), size)]
    blocks = list(split_line_blocks(chunks))
    assert all(block.pieces for block in blocks)
    assert b"".join(piece for block in blocks for piece in block.pieces) == SAMPLE
    assert [line for block in blocks for line in block.lines()] == lines_of([SAMPLE])


def test_long_line_over_many_chunks() -> None:
    chunks = [b"x" * 1000] * 50 + [b"\nnext"]
    assert [(line.offset, len(line.data)) for line in lines_of(chunks)] == [
        (0, 50_000),
        (50_001, 4),
    ]


def test_undecodable_line_names_uri_line_and_byte_offset() -> None:
    line = lines_of([b"ok\nab\xffcd\n"])[1]
    with pytest.raises(NotUtf8Error) as caught:
        line.text("s3://b/run/in.jsonl")
    assert str(caught.value) == (
        "s3://b/run/in.jsonl:2: not valid UTF-8 at byte offset 5 (invalid start byte)"
    )
    assert isinstance(caught.value, StorageError)
    assert (caught.value.line, caught.value.offset) == (2, 5)
