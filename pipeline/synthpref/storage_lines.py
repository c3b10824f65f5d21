"""Lines of a stored text object, from its bytes as they stream in.

`Storage.read_raw_lines` and `Storage.read_lines` (synthpref.storage) split the chunks of an
object (a local file, an S3 body re-fetched after a broken connection) here, so both backends
agree on line numbers and endings. A line ends at "\\n", "\\r\\n" or a lone "\\r" (as Python's
text files with `newline=""` split them); the ending is not part of the line. Each line keeps
its number and the byte offset where it starts, so an undecodable line is reported as
`URI:line` with the offset of its first bad byte. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from synthpref.storage_errors import NotUtf8Error

_ENDING = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class RawLine:
    """One line's bytes (without its ending), its 1-based number and its starting byte offset."""

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


def split_lines(chunks: Iterable[bytes]) -> Iterator[RawLine]:
    """The lines of the byte stream `chunks`; memory grows with the longest line only."""
    pending: list[bytes] = []  # the start of a line whose end has not arrived yet
    number = 0
    offset = 0  # of the pending line's first byte
    for chunk in chunks:
        if not chunk:
            continue
        if pending and not pending[-1].endswith(b"\r") and _ENDING.search(chunk) is None:
            pending.append(chunk)  # the middle of a long line: no copying
            continue
        data = b"".join([*pending, chunk]) if pending else chunk
        pending = []
        start = 0
        for match in _ENDING.finditer(data):
            if match.group() == b"\r" and match.end() == len(data):
                break  # a "\r" at the end of a chunk may be the first half of "\r\n"
            number += 1
            yield RawLine(number, offset, data[start : match.start()])
            offset += match.end() - start
            start = match.end()
        if start < len(data):
            pending.append(data[start:])
    if pending:
        last = b"".join(pending)
        if last.endswith(b"\r"):
            last = last[:-1]
        number += 1
        yield RawLine(number, offset, last)
