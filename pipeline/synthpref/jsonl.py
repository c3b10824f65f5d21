"""Streaming JSONL reads and committed JSONL writes of pydantic rows.

`write_rows` streams rows into one object and commits it with its row count, so a shard is
either complete and marked done or absent. `read_rows` reads committed objects only, validates
each line and names the object and line number of any bad one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from synthpref.errors import InputsNotReadyError, SynthprefError
from synthpref.storage import Storage

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
