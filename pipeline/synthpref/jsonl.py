"""Streaming JSONL reads and committed JSONL writes of pydantic rows (and of their msgspec
twins in `synthpref.records`, which the mix and parse stages use for speed).

`write_rows` streams rows into one object and commits it with its row count, so a shard is
either complete and marked done or absent. `read_rows` reads committed objects only, validates
each line and names the object and line number of any bad one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import msgspec
from pydantic import BaseModel, ValidationError

from synthpref.errors import InputsNotReadyError, SynthprefError
from synthpref.storage import ByteSink, Storage
from synthpref.storage_lines import LineBlock

RowT = TypeVar("RowT", bound=BaseModel)


class RowError(SynthprefError, ValueError):
    """A stored line that does not match its schema: names the object URI and line."""


def dump_row(row: BaseModel) -> str:
    """One JSONL line (no newline) for a row; None fields are kept for a stable shape."""
    return row.model_dump_json()


def write_rows(
    storage: Storage,
    key: str,
    rows: Iterable[BaseModel],
    info: dict[str, Any] | None = None,
) -> int:
    """Write rows to `key`, then commit it with {"rows": n, **info}. Returns n."""
    count = 0
    with storage.open_writer(key) as stream:
        for row in rows:
            stream.write(dump_row(row))
            stream.write("\n")
            count += 1
    storage.commit(key, {"rows": count, **(info or {})})
    return count


def read_rows(storage: Storage, key: str, model: type[RowT]) -> Iterator[RowT]:
    """Stream and validate the rows of `key`, which must be committed (a reader never trusts a
    half-written or abandoned object); blank lines are ignored."""
    if storage.committed(key) is None:
        raise InputsNotReadyError(
            f"{storage.url(key)}: not committed (the stage that writes it has not finished it); "
            "run that stage again first"
        )
    for number, line in enumerate(storage.read_lines(key), start=1):
        if not line.strip():
            continue
        try:
            yield model.model_validate_json(line)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "(line)"
            raise RowError(
                f"{storage.url(key)}:{number}: not a valid {model.__name__}: "
                f"{where}: {problem['msg']}"
            ) from None


# Lines are gathered into writes of about this many bytes (one write per line costs more than
# the encoding on a busy machine, and S3's writer passes every write through to its spool).
WRITE_BATCH_BYTES = 1024 * 1024

StructT = TypeVar("StructT", bound=msgspec.Struct)


def read_records(storage: Storage, key: str, kind: type[StructT]) -> Iterator[StructT]:
    """`read_rows` for a `synthpref.records` twin: the same checks (committed objects only,
    blank lines ignored, a bad line named by URI and line number), decoded by msgspec."""
    if storage.committed(key) is None:
        raise InputsNotReadyError(
            f"{storage.url(key)}: not committed (the stage that writes it has not finished it); "
            "run that stage again first"
        )
    decode = msgspec.json.Decoder(kind, strict=False).decode
    url = storage.url(key)
    schema = getattr(kind, "schema", kind.__name__)
    for block in storage.read_line_blocks(key):
        records: Iterable[StructT]
        try:
            # A line's ending is JSON whitespace: decoding a line with it gives the same record.
            records = [decode(piece) for piece in block.pieces]
        except msgspec.DecodeError:
            records = _decode_lines(block, decode, url, schema)
        yield from records


def _decode_lines(
    block: LineBlock, decode: Callable[[bytes], StructT], url: str, schema: str
) -> Iterator[StructT]:
    """A block's records line by line: blank lines skipped, a bad line raised as RowError."""
    for raw in block.lines():
        try:
            yield decode(raw.data)
        except msgspec.DecodeError as error:
            if not raw.data.strip():
                continue
            raw.text(url)  # NotUtf8Error (naming the byte offset) when that is the cause
            raise RowError(f"{url}:{raw.number}: not a valid {schema}: {error}") from None


def write_lines(stream: ByteSink, lines: Iterable[bytes]) -> tuple[int, int]:
    """Write encoded lines (UTF-8, each with its newline) to a storage byte writer
    (`Storage.open_byte_writer`) in writes of about WRITE_BATCH_BYTES; returns (lines, bytes)
    written."""
    count = size = batched = 0
    batch: list[bytes] = []
    for line in lines:
        batch.append(line)
        batched += len(line)
        count += 1
        if batched >= WRITE_BATCH_BYTES:
            stream.write(b"".join(batch))
            size += batched
            batch, batched = [], 0
    stream.write(b"".join(batch))
    return count, size + batched


def write_records(
    storage: Storage,
    key: str,
    records: Iterable[msgspec.Struct],
    info: dict[str, Any] | None = None,
) -> int:
    """`write_rows` for `synthpref.records` twins (the same bytes as their models would give):
    write them to `key`, then commit it with {"rows": n, **info}. Returns n."""
    encode = msgspec.json.Encoder().encode
    with storage.open_byte_writer(key) as stream:
        count, _ = write_lines(stream, (encode(record) + b"\n" for record in records))
    storage.commit(key, {"rows": count, **(info or {})})
    return count
