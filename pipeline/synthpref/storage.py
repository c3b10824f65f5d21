"""One small storage interface over local directories and S3 (or S3-compatible stores).

Every stage reads and writes run artifacts through `Storage`, so the same code runs on a laptop,
in a Job against S3, and in tests against a real S3 server on loopback. Keys are relative,
'/'-separated paths under the run's storage URI.

Writes are atomic (a reader never sees half a file) and completion is explicit: a shard is done
only when `commit()` has written its marker, so a crashed or half-written shard is redone, never
trusted.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from synthpref.errors import SynthprefError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

COMMIT_SUFFIX = ".commit"


class StorageError(SynthprefError, RuntimeError):
    """A storage operation failed; the message names the full URI."""


class Storage(ABC):
    """Artifacts of one run under one root URI."""

    uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def read_lines(self, key: str) -> Iterator[str]:
        """Stream the lines of a text object, without their line endings."""

    @abstractmethod
    def open_writer(self, key: str) -> Any:
        """Context manager yielding a text stream; the object appears only on clean exit."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a key prefix, not only a folder), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str:
        """The full URI of a key, for messages and status."""
        return f"{self.uri.rstrip('/')}/{key}"

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object atomically."""

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

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

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.url(key)}: not found") from None

    def read_lines(self, key: str) -> Iterator[str]:
        try:
            with self._path(key).open(encoding="utf-8", newline="") as stream:
                for line in stream:
                    yield line.rstrip("\r\n")
        except FileNotFoundError:
            raise StorageError(f"{self.url(key)}: not found") from None

    @contextmanager
    def _atomic_file(self, key: str, binary: bool) -> Iterator[IO[Any]]:
        """Write to a temp file beside the target, then rename it into place."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with (
                tmp.open("wb") if binary else tmp.open("w", encoding="utf-8", newline="\n")
            ) as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def open_writer(self, key: str) -> Iterator[IO[str]]:
        with self._atomic_file(key, binary=False) as stream:
            yield stream

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._atomic_file(key, binary=True) as stream:
            stream.write(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        folder, _, _ = prefix.rpartition("/")
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.endswith(".tmp"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage(Storage):
    """A prefix in an S3 bucket (boto3; any S3-compatible endpoint)."""

    # Writers spool to memory up to this size, then to a temp file; boto3 switches to
    # multipart upload for large objects on its own.
    SPOOL_BYTES = 32 * 1024 * 1024
    LIST_PAGE_SIZE = 1000

    def __init__(self, uri: str, client: S3Client) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StorageError(f"{uri}: no bucket in S3 URI")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _get(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise StorageError(f"{self.url(key)}: not found") from None

    def read_bytes(self, key: str) -> bytes:
        body: bytes = self._get(key)["Body"].read()
        return body

    def read_lines(self, key: str) -> Iterator[str]:
        body = self._get(key)["Body"]
        try:
            for raw in body.iter_lines(keepends=False):
                yield raw.decode("utf-8").rstrip("\r")
        finally:
            body.close()

    @contextmanager
    def open_writer(self, key: str) -> Iterator[IO[str]]:
        with tempfile.SpooledTemporaryFile(max_size=self.SPOOL_BYTES, mode="w+b") as spool:
            text = io.TextIOWrapper(spool, encoding="utf-8", newline="\n", write_through=True)
            yield text
            text.flush()
            text.detach()  # keep the spool open when the wrapper goes away
            spool.seek(0)
            self.client.upload_fileobj(spool, self.bucket, self._key(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        for page in paginator.paginate(
            Bucket=self.bucket,
            Prefix=root + prefix,
            PaginationConfig={"PageSize": self.LIST_PAGE_SIZE},
        ):
            for item in page.get("Contents", []):
                keys.append(item["Key"][len(root) :])
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


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

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
    )
    return client


def open_storage(uri: str, endpoint_url: str | None = None, region: str | None = None) -> Storage:
    """Storage for a local path or an s3:// URI."""
    if uri.startswith("s3://"):
        return S3Storage(uri, s3_client(endpoint_url, region))
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme (use a local path or s3://)")
    return LocalStorage(uri)
