"""A run's storage as a reader that must not trust it sees it: every read and listing bounded.

The operator reads objects a run's author can write (they hold the run's storage credentials),
so an object or a listing of any size may be waiting there. `BoundedStorage` wraps a `Storage`
and raises `StorageLimitError` (naming the key and the limit) instead of taking more than
`StorageLimits` allows: a whole object read at once (JSON, commit markers) or one line of a
streamed object over `max_object_bytes`, a streamed object over `max_stream_bytes`, a listing
over `max_listed_keys` (the wrapped storage stops paging there). Writes pass through.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from synthpref.storage import Storage
from synthpref.storage_errors import StorageLimitError, StorageLimits

_SETTING = "(operator settings maxStorageObjectBytes, maxListedKeys)"


class BoundedStorage(Storage):
    """`inner` with every read and listing bounded by `limits`."""

    def __init__(self, inner: Storage, limits: StorageLimits) -> None:
        self.inner = inner
        self.limits = limits
        self.uri = inner.uri

    def _too_large(self, key: str, what: str, limit: int) -> StorageLimitError:
        return StorageLimitError(
            f"{self.url(key)}: {what} is larger than the {limit} bytes the operator reads "
            f"{_SETTING}"
        )

    def _bounded(self, key: str, chunks: Iterator[bytes], whole: int) -> Iterator[bytes]:
        """`chunks` while the object stays within `whole` bytes and no line within it is
        longer than max_object_bytes."""
        line_limit = self.limits.max_object_bytes
        total = since_newline = 0
        for chunk in chunks:
            total += len(chunk)
            if total > whole:
                raise self._too_large(key, "the object", whole)
            newline = chunk.rfind(b"\n")
            if newline < 0:
                since_newline += len(chunk)
                longest = since_newline
            else:
                longest = since_newline + chunk.find(b"\n")
                since_newline = len(chunk) - newline - 1
            if max(longest, since_newline) > line_limit:
                raise self._too_large(key, "a line of the object", line_limit)
            yield chunk

    def read_chunks(self, key: str) -> Iterator[bytes]:
        return self._bounded(key, self.inner.read_chunks(key), self.limits.max_stream_bytes)

    def read_bytes(self, key: str) -> bytes:
        limit = self.limits.max_object_bytes
        return b"".join(self._bounded(key, self.inner.read_chunks(key), limit))

    def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        most = self.limits.max_listed_keys
        return self.inner.list(prefix, limit=most if limit is None else min(limit, most))

    def open_writer(self, key: str, content_type: str | None = None) -> Any:
        return self.inner.open_writer(key, content_type)

    def open_byte_writer(self, key: str) -> Any:
        return self.inner.open_byte_writer(key)

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self.inner.write_bytes(key, data, content_type)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def url(self, key: str) -> str:
        return self.inner.url(key)
