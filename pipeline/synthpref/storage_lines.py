"""Lines of a stored text object, from its bytes as they stream in.

`Storage.read_raw_lines` and `Storage.read_lines` (synthpref.storage) split the chunks of an
object (a local file, an S3 body re-fetched after a broken connection) here, so both backends
agree on line numbers and endings. A line ends at "\\n", "\\r\\n" or a lone "\\r" (as Python's
text files with `newline=""` split them); the ending is not part of the line. Each line keeps
its number and the byte offset where it starts, so an undecodable line is reported as
`URI:line` with the offset of its first bad byte. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from synthpref.storage_errors import NotUtf8Error


class RawLine(NamedTuple):
    """One line's bytes (without its ending), its 1-based number and its starting byte offset.

    A named tuple rather than a dataclass: one is made per stored line, and a tuple is the
    cheapest object to make (the mix and parse stages read millions of lines)."""

    number: int
    offset: int
    data: bytes

    def text(self, url: str) -> str:
        """The line as text; NotUtf8Error (naming `url:number` and the byte offset) if it is
        not valid UTF-8."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise NotUtf8Error(url, self.number, self.offset + error.start, error.reason) from None


def _ended(piece: bytes) -> bool:
    return piece.endswith((b"\n", b"\r"))


def _has_ending(chunk: bytes) -> bool:
    return b"\n" in chunk or b"\r" in chunk


class LineBlock(NamedTuple):
    """Consecutive lines, as `bytes.splitlines(keepends=True)` gives them (each with its ending,
    when it has one), and the number and starting byte offset of the first. A reader that
    handles most lines alike (`jsonl.read_records`) takes a block at a time and makes a
    `RawLine` only for the line it must report."""

    number: int
    offset: int
    pieces: list[bytes]

    def lines(self) -> Iterator[RawLine]:
        """The block's lines as `RawLine`s (endings removed)."""
        number, offset = self.number, self.offset
        for piece in self.pieces:
            # A piece holds one ending and its text cannot end in "\r" or "\n" (it would
            # have been split there), so stripping them removes exactly the ending.
            yield RawLine(number, offset, piece.rstrip(b"\r\n"))
            number += 1
            offset += len(piece)


def split_line_blocks(chunks: Iterable[bytes]) -> Iterator[LineBlock]:
    """The lines of the byte stream `chunks`, a block per chunk that ends at least one line;
    memory grows with the chunk size and the longest line only.

    `bytes.splitlines` splits on exactly these endings ("\\n", "\\r\\n", "\\r"), in C."""
    pending: list[bytes] = []  # the start of a line whose end has not arrived yet
    number = 1  # of the pending line
    offset = 0  # of the pending line's first byte
    for chunk in chunks:
        if not chunk:
            continue
        if pending and not pending[-1].endswith(b"\r") and not _has_ending(chunk):
            pending.append(chunk)  # the middle of a long line: no copying
            continue
        data = b"".join([*pending, chunk]) if pending else chunk
        pieces = data.splitlines(keepends=True)
        last = pieces[-1]
        # A line without its ending, or ending in a "\r" that may be the first half of
        # "\r\n", waits for the next chunk.
        pending = [pieces.pop()] if last.endswith(b"\r") or not _ended(last) else []
        if pieces:
            yield LineBlock(number, offset, pieces)
            number += len(pieces)
            offset += sum(map(len, pieces))
    if pending:
        yield LineBlock(number, offset, [b"".join(pending)])


def split_lines(chunks: Iterable[bytes]) -> Iterator[RawLine]:
    """The lines of the byte stream `chunks`; memory grows with the longest line only."""
    for block in split_line_blocks(chunks):
        yield from block.lines()
