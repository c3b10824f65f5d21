"""One small storage interface over local directories and S3 (or S3-compatible stores).

Every stage reads and writes run artifacts through `Storage`, so the same code runs on a laptop,
in a Job against S3, and in tests against a real S3 server on loopback. Keys are relative,
'/'-separated paths under the run's storage URI.

Writes are atomic (a reader never sees half a file) and completion is explicit: a shard is done
only when `commit()` has written its marker, so a crashed or half-written shard is redone, never
trusted.

Faults: every S3 operation rides out transient faults (see `storage_retry`), and a read whose
connection breaks continues from the byte where it stopped. What cannot be ridden out is a
`StorageError` naming the URI and the cause: a local path that is a file or not writable, a full
disk, a missing bucket, refused credentials, an outage past the retry deadline.
`check_writable()` probes a root before any work (the stage commands call it).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.client
import io
import json
import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from synthpref import layout
from synthpref.storage_errors import (
    NotUtf8Error,
    StorageError,
    StorageLimitError,
    StorageLimits,
    StorageUnavailableError,
    os_error_cause,
)
from synthpref.storage_lines import LineBlock, RawLine, split_line_blocks, split_lines
from synthpref.storage_retry import Retrier, RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "COMMIT_SUFFIX",
    "LocalStorage",
    "NotUtf8Error",
    "RawLine",
    "RetryPolicy",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageLimitError",
    "StorageLimits",
    "StorageUnavailableError",
    "open_storage",
    "s3_client",
]

T = TypeVar("T")

COMMIT_SUFFIX = ".commit"
READ_CHUNK_BYTES = 1024 * 1024


class ByteSink(Protocol):
    """Where `Storage.open_byte_writer` takes bytes."""

    def write(self, data: bytes, /) -> int: ...


class _Utf8Sink:
    """A ByteSink over a text stream: each write is decoded (UTF-8) and written as text."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes, /) -> int:
        return self.stream.write(data.decode("utf-8"))


class Storage(ABC):
    """Artifacts of one run under one root URI."""

    uri: str

    @abstractmethod
    def read_chunks(self, key: str) -> Iterator[bytes]:
        """Stream the bytes of an object in chunks."""

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.read_chunks(key))

    def read_raw_lines(self, key: str) -> Iterator[RawLine]:
        """Stream the lines of an object as bytes, with their numbers and byte offsets."""
        return split_lines(self.read_chunks(key))

    def read_line_blocks(self, key: str) -> Iterator[LineBlock]:
        """`read_raw_lines` a block of lines (with their endings) at a time."""
        return split_line_blocks(self.read_chunks(key))

    def read_lines(self, key: str) -> Iterator[str]:
        """Stream the lines of a UTF-8 text object, without their line endings; a line that is
        not UTF-8 raises NotUtf8Error naming `URI:line` and the byte offset."""
        url = self.url(key)
        for line in self.read_raw_lines(key):
            yield line.text(url)

    @abstractmethod
    def open_writer(self, key: str, content_type: str | None = None) -> Any:
        """Context manager yielding a text stream; the object appears only on clean exit.
        `content_type`: the object's Content-Type where the store keeps one (S3), so that a
        browser shows a report page instead of downloading it; a local file has none."""

    @contextmanager
    def open_byte_writer(self, key: str) -> Iterator[ByteSink]:
        """`open_writer` for text already encoded as UTF-8 (e.g. JSON lines from msgspec): the
        object has the bytes written, and each write must be whole UTF-8 characters. Here
        each write goes to `open_writer`'s stream decoded; a backend that can store the bytes
        as they are (LocalStorage) saves that decode and the stream's encode."""
        with self.open_writer(key) as stream:
            yield _Utf8Sink(stream)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Keys under `prefix` (a key prefix, not only a folder), sorted; with `limit`, a
        StorageLimitError as soon as there are more than `limit` (no more are fetched)."""

    def _over(self, prefix: str, limit: int) -> StorageLimitError:
        return StorageLimitError(
            f"{self.url(prefix)}: more than {limit} objects under this prefix, the most this "
            "reader lists (operator setting maxListedKeys)"
        )

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str:
        """The full URI of a key, for messages and status."""
        return f"{self.uri.rstrip('/')}/{key}"

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write a whole object atomically (`content_type`: as for `open_writer`)."""

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, value: Any, content_type: str | None = None) -> None:
        data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
        if content_type is None:
            self.write_bytes(key, data)
        else:
            self.write_bytes(key, data, content_type=content_type)

    def commit(self, key: str, info: dict[str, Any]) -> None:
        """Mark `key` done; `info` (row counts, summaries) is stored in the marker."""
        self.write_json(key + COMMIT_SUFFIX, info)

    def committed(self, key: str) -> dict[str, Any] | None:
        """The commit info of `key`, or None when it is not (fully) done."""
        marker = key + COMMIT_SUFFIX
        if not self.exists(marker):
            return None
        info = self.read_json(marker)
        if not isinstance(info, dict):
            raise StorageError(f"{self.url(marker)}: commit marker is not a JSON object")
        return info

    def uncommit(self, key: str) -> None:
        """Forget that `key` was done (its data will be redone)."""
        self.delete(key + COMMIT_SUFFIX)

    def check_writable(self) -> None:
        """Write and delete a small probe object under the root: a StorageError now, before
        any work, when the storage cannot be written."""
        probe = layout.write_probe(uuid.uuid4().hex)
        self.write_bytes(probe, b"synthpref write probe\n")
        self.delete(probe)


class LocalStorage(Storage):
    """A directory on the local filesystem; atomic writes via rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise StorageError(f"key {key!r} escapes storage root {self.uri}")
        return path

    def _not_a_directory(self, path: Path) -> Path | None:
        """The first of `path`'s folders (the root or one under it) that exists as a file."""
        for folder in [*reversed(path.parents), path]:
            if folder.exists() and not folder.is_dir():
                return folder
        return None

    def _error(self, error: OSError, key: str, action: str) -> StorageError:
        """A StorageError naming the path and the cause of `error`."""
        if isinstance(error, FileNotFoundError) and action == "read":
            return StorageError(f"{self.url(key)}: not found")
        path = self._path(key)
        if isinstance(error, FileExistsError | NotADirectoryError):
            blocker = self._not_a_directory(path.parent)
            if blocker == self.root:
                return StorageError(f"storage path {blocker} exists and is not a directory")
            if blocker is not None:
                return StorageError(f"storage {self.uri}: {blocker} exists and is not a directory")
        return StorageError(f"storage {self.uri}: cannot {action} {path}: {os_error_cause(error)}")

    @contextmanager
    def _os_errors(self, key: str, action: str) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise self._error(error, key, action) from None

    def read_chunks(self, key: str) -> Iterator[bytes]:
        with self._os_errors(key, "read"):
            stream = self._path(key).open("rb")
        with stream:
            while True:
                with self._os_errors(key, "read"):
                    chunk = stream.read(READ_CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk

    @contextmanager
    def _atomic_file(self, key: str, binary: bool) -> Iterator[IO[Any]]:
        """Write to a temp file beside the target, then rename it into place."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with self._os_errors(key, "write"):
                path.parent.mkdir(parents=True, exist_ok=True)
                stream = tmp.open("wb") if binary else tmp.open("w", encoding="utf-8", newline="\n")
            with stream:
                try:
                    yield stream
                except OSError as error:
                    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    # The disk filled up under the caller's writes to `stream`.
                    raise self._error(error, key, "write") from None
                with self._os_errors(key, "write"):
                    stream.flush()
                    os.fsync(stream.fileno())
            with self._os_errors(key, "write"):
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):  # e.g. its folder could not be made
                tmp.unlink(missing_ok=True)

    @contextmanager
    def open_writer(self, key: str, content_type: str | None = None) -> Iterator[IO[str]]:
        with self._atomic_file(key, binary=False) as stream:  # a file has no Content-Type
            yield stream

    @contextmanager
    def open_byte_writer(self, key: str) -> Iterator[ByteSink]:
        with self._atomic_file(key, binary=True) as stream:
            yield stream

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with self._atomic_file(key, binary=True) as stream:  # a file has no Content-Type
            stream.write(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        folder, _, start = prefix.rpartition("/")
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = []
        with self._os_errors(folder, "list"):
            # Only the folder's entries whose name starts as the prefix's last part does are
            # looked into: a stage lists one shard's files (`requests/shard-00042-`) once per
            # shard, and walking the whole folder each time made a run quadratic in its shards.
            for entry in os.scandir(base):
                if not entry.name.startswith(start):
                    continue
                path = Path(entry.path)
                for item in path.rglob("*") if entry.is_dir() else [path]:
                    if item.is_file() and not item.name.endswith(".tmp"):
                        keys.append(item.relative_to(self.root).as_posix())
                        if limit is not None and len(keys) > limit:
                            raise self._over(prefix, limit)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._os_errors(key, "delete"):
            self._path(key).unlink(missing_ok=True)


class S3Storage(Storage):
    """A prefix in an S3 bucket (boto3; any S3-compatible endpoint). Every operation rides out
    transient faults (`storage_retry`); reads resume where a broken connection stopped them."""

    # Writers spool to memory up to this size, then to a temp file; boto3 switches to
    # multipart upload for large objects on its own.
    SPOOL_BYTES = 32 * 1024 * 1024
    # Objects from this size up are sent as a multipart upload, in parts of this size.
    MULTIPART_BYTES = 8 * 1024 * 1024
    LIST_PAGE_SIZE = 1000

    def __init__(self, uri: str, client: S3Client, retry: RetryPolicy | None = None) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket in S3 URI")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.retry = retry if retry is not None else RetryPolicy.from_env()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retrier(self) -> Retrier:
        return Retrier(self.uri, self.bucket, self.retry)

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        return self._retrier().call(what, operation)

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """`operation()` (a call of `client`) with this storage's retries and error messages:
        for requests the methods above do not make (e.g. the run lease's conditional writes)."""
        return self._call(what, operation)

    def _get(self, key: str, offset: int = 0, etag: str | None = None) -> Any:
        """GET the object from byte `offset` on; `etag` guards a resumed read against an
        object that was replaced meanwhile (412, a StorageError)."""
        extra: dict[str, Any] = {}
        if offset:
            extra["Range"] = f"bytes={offset}-"
        if etag is not None:
            extra["IfMatch"] = etag
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)
        except self.client.exceptions.NoSuchKey:
            raise StorageError(f"{self.url(key)}: not found") from None

    def read_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes; when the connection breaks mid-read, the rest is fetched again
        from the byte where it stopped (the same version of the object: guarded by its ETag)."""
        retrier = self._retrier()
        what = f"read {key}"
        response = retrier.call(what, lambda: self._get(key))
        size: int = response["ContentLength"]
        etag: str = response["ETag"]
        body = response["Body"]
        offset = 0
        try:
            while offset < size:
                try:
                    chunk: bytes = body.read(min(READ_CHUNK_BYTES, size - offset))
                    if not chunk:
                        raise http.client.IncompleteRead(b"", size - offset)
                except StorageError:
                    raise
                except Exception as error:
                    body.close()
                    retrier.failed(f"{what} (at byte {offset} of {size})", error)
                    resume = functools.partial(self._get, key, offset, etag)
                    body = retrier.call(what, resume)["Body"]
                    continue
                offset += len(chunk)
                retrier.progressed()
                yield chunk
        finally:
            body.close()

    @contextmanager
    def open_writer(self, key: str, content_type: str | None = None) -> Iterator[IO[str]]:
        extra = {"ContentType": content_type} if content_type else None
        with tempfile.SpooledTemporaryFile(max_size=self.SPOOL_BYTES, mode="w+b") as spool:
            text = io.TextIOWrapper(spool, encoding="utf-8", newline="\n", write_through=True)
            yield text
            text.flush()
            text.detach()  # keep the spool open when the wrapper goes away

            def upload() -> None:  # every try sends the whole object again
                view = io.BufferedReader(_SpoolView(spool))
                self.client.upload_fileobj(
                    view, self.bucket, self._key(key), ExtraArgs=extra, Config=self._transfer()
                )

            self._call(f"write {key}", upload)

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        size = self.MULTIPART_BYTES
        return TransferConfig(multipart_threshold=size, multipart_chunksize=size, max_concurrency=4)

    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        def put() -> Any:
            if content_type:
                return self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
                )
            return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

        self._call(f"write {key}", put)

    def presigned_url(self, key: str, expires_seconds: int, content_type: str | None = None) -> str:
        """A link that GETs the object without credentials until it expires (signed here with
        the client's own; no request is sent). `content_type`: what the response says it is,
        whatever the object was stored with."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if content_type:
            params["ResponseContentType"] = content_type
        url: str = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_seconds
        )
        return url

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        return self._call(f"look up {key}", head)

    def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""

        def list_all() -> list[str]:
            paginator = self.client.get_paginator("list_objects_v2")
            keys = []
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=root + prefix,
                PaginationConfig={"PageSize": self.LIST_PAGE_SIZE},
            ):
                for item in page.get("Contents", []):
                    keys.append(item["Key"][len(root) :])
                if limit is not None and len(keys) > limit:
                    raise self._over(prefix, limit)
            return sorted(keys)

        return self._call(f"list {prefix or '(all)'}", list_all)

    def delete(self, key: str) -> None:
        self._call(
            f"delete {key}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )


class _SpoolView(io.RawIOBase):
    """A reader of a writer's spool from its start. s3transfer closes the file it uploads,
    also when the upload fails; closing the view leaves the spool open for the next try."""

    def __init__(self, spool: IO[bytes]) -> None:
        super().__init__()
        self._spool = spool
        spool.seek(0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._spool.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._spool.seek(offset, whence)

    def tell(self) -> int:
        return self._spool.tell()


# botocore retries single HTTP requests (one part of a multipart upload, one listing page) a
# few times, quickly; the Retrier around each operation rides out longer outages and logs.
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60


def s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> S3Client:
    """A boto3 S3 client. The endpoint defaults to $AWS_ENDPOINT_URL_S3; without explicit keys
    the credentials come from the environment (AWS_* variables, profiles)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_READ_TIMEOUT_S,
            # What requests use anyway; said here so presigned links are SigV4 too (botocore
            # presigns with the legacy SigV2 otherwise, which most regions refuse).
            signature_version="s3v4",
        ),
    )
    return client


def open_storage(
    uri: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
) -> Storage:
    """Storage for a local path or an s3:// URI (`retry`: the S3 retry policy, default from
    the environment)."""
    if uri.startswith("s3://"):
        return S3Storage(uri, s3_client(endpoint_url, region), retry)
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme (use a local path or s3://)")
    return LocalStorage(uri)
