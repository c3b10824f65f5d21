"""The errors of run storage, and what a local filesystem error means to a user.

Raised by `synthpref.storage` (and its helpers `storage_lines`, `storage_retry`); re-exported
there, so callers import `StorageError` from `synthpref.storage`. Pure: no I/O.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from synthpref.errors import SynthprefError


class StorageError(SynthprefError, RuntimeError):
    """A storage operation failed; the message names the full URI and the cause."""


class StorageUnavailableError(StorageError):
    """Storage stayed unreachable (or kept failing transiently) past the retry deadline."""


class NotUtf8Error(StorageError):
    """A text object has a line that is not valid UTF-8; names `URI:line` and the byte offset."""

    def __init__(self, url: str, line: int, offset: int, reason: str) -> None:
        super().__init__(f"{url}:{line}: not valid UTF-8 at byte offset {offset} ({reason})")
        self.url = url
        self.line = line
        self.offset = offset


class LeaseHeldError(SynthprefError):
    """Another live writer holds the run's lease (`synthpref.run_lease`)."""


class LeaseLostError(SynthprefError):
    """The run's lease expired unrenewed and another writer took it over."""


class StorageLimitError(StorageError):
    """An object or a listing is larger than the reader's limit (`StorageLimits`)."""


@dataclass(frozen=True)
class StorageLimits:
    """The most one reader takes from storage per call: a whole object read at once (JSON, a
    commit marker) or one line of a streamed object; an object streamed through (a judge
    request file on its way to the Batch API); the keys of one listing."""

    max_object_bytes: int = 8 * 1024 * 1024
    max_stream_bytes: int = 512 * 1024 * 1024
    max_listed_keys: int = 500_000


# errno values that mean "this user may not write (or read) here".
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error_cause(error: OSError) -> str:
    """The cause of a filesystem error in a few words: 'permission denied', 'disk full', ..."""
    if error.errno in _DENIED:
        return "permission denied" if error.errno != errno.EROFS else "read-only file system"
    if error.errno in _FULL:
        return "disk full (no space left on device)"
    return (error.strerror or type(error).__name__).lower()
