"""One writer per run: a lease object in the run's storage, `lease.json`.

Two processes that both write a run's unsharded state (the prompt manifest, the judge's
ledgers and batches, the run summary) would each pay for every judge request and each count
only their own half. So whoever writes them first takes the run's lease: `synthpref run
--local` for the whole run, `synthpref annotate ...` and the operator's judge loop for the
judge, `prepare` for the manifest and `parse` for the summary. Sharded work (a stage's parallel
workers) takes none and runs in parallel as before.

The lease names its holder (host, process, what it runs) and when it expires; the holder renews
it (`hold` does, from a thread) long before that. A second writer gets `LeaseHeldError` naming
the holder and when the lease ends. A holder that was killed stops renewing: its lease is taken
over once it has expired, never sooner. Every change is a compare-and-swap on the object:
S3's conditional writes (If-None-Match to create, If-Match on the ETag read to renew or take
over), and on a local filesystem the same under an exclusive lock on a sidecar file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from synthpref.storage import LocalStorage, S3Storage, Storage, StorageError
from synthpref.storage_errors import LeaseHeldError, LeaseLostError

__all__ = ["LEASE_KEY", "LeaseHeldError", "LeaseLostError", "RunLease", "hold"]

log = logging.getLogger(__name__)

LEASE_KEY = "lease.json"
# S3's answers to a conditional write whose condition does not hold.
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
DEFAULT_TTL_S = 60.0


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    purpose: str
    renewed_at: float
    expires_at: float

    def ends(self) -> str:
        moment = dt.datetime.fromtimestamp(self.expires_at, dt.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def holder_id(purpose: str) -> str:
    """Who holds a lease: host, process id and a token unique to this holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]} ({purpose})"


# ------------------------------------------------------------------ compare-and-swap backends


class _Backend:
    """Create, read, replace and delete the lease object; a version identifies what was read."""

    def read(self) -> tuple[LeaseRecord, str] | None:
        raise NotImplementedError

    def create(self, record: LeaseRecord) -> str | None:
        """Write it if there is none; its version, or None if one exists."""
        raise NotImplementedError

    def replace(self, record: LeaseRecord, version: str) -> str | None:
        """Write it if the object is still at `version`; the new version, or None."""
        raise NotImplementedError

    def delete(self, version: str) -> None:
        """Delete it if it is still at `version`."""
        raise NotImplementedError


def _encode(record: LeaseRecord) -> bytes:
    return (json.dumps(asdict(record), sort_keys=True) + "\n").encode()


def _decode(data: bytes) -> LeaseRecord:
    document: dict[str, Any] = json.loads(data)
    return LeaseRecord(
        holder=str(document["holder"]),
        purpose=str(document.get("purpose", "")),
        renewed_at=float(document["renewed_at"]),
        expires_at=float(document["expires_at"]),
    )


class _S3Backend(_Backend):
    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self.key = storage._key(LEASE_KEY)

    def _conditional_put(self, data: bytes, if_match: str | None) -> str | None:
        """Put if there is no object (`if_match` None), or if it is at ETag `if_match`; None
        when the condition does not hold. Other failures: the storage's retries and errors."""
        from botocore.exceptions import ClientError

        client, bucket, key = self.storage.client, self.storage.bucket, self.key

        def put() -> str | None:
            try:
                if if_match is None:
                    reply = client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                else:
                    reply = client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=if_match)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
                    return None
                raise
            return str(reply["ETag"])

        return self.storage.call(f"write {LEASE_KEY}", put)

    def read(self) -> tuple[LeaseRecord, str] | None:
        from botocore.exceptions import ClientError

        client, bucket, key = self.storage.client, self.storage.bucket, self.key

        def get() -> tuple[bytes, str] | None:
            try:
                reply = client.get_object(Bucket=bucket, Key=key)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return reply["Body"].read(), str(reply["ETag"])

        found = self.storage.call(f"read {LEASE_KEY}", get)
        return None if found is None else (_decode(found[0]), found[1])

    def create(self, record: LeaseRecord) -> str | None:
        return self._conditional_put(_encode(record), None)

    def replace(self, record: LeaseRecord, version: str) -> str | None:
        return self._conditional_put(_encode(record), version)

    def delete(self, version: str) -> None:
        found = self.read()
        if found is not None and found[1] == version:
            self.storage.delete(LEASE_KEY)


class _LocalBackend(_Backend):
    def __init__(self, storage: LocalStorage) -> None:
        self.path = Path(storage.root) / LEASE_KEY
        self.lock_path = self.path.with_name(LEASE_KEY + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, data: bytes) -> str:
        temporary = self.path.with_name(f"{LEASE_KEY}.{uuid.uuid4().hex}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, self.path)
        return data.decode()

    def read(self) -> tuple[LeaseRecord, str] | None:
        with self._locked():
            data = self._current()
        return None if data is None else (_decode(data), data.decode())

    def create(self, record: LeaseRecord) -> str | None:
        with self._locked():
            return None if self._current() is not None else self._write(_encode(record))

    def replace(self, record: LeaseRecord, version: str) -> str | None:
        with self._locked():
            current = self._current()
            if current is None or current.decode() != version:
                return None
            return self._write(_encode(record))

    def delete(self, version: str) -> None:
        with self._locked():
            current = self._current()
            if current is not None and current.decode() == version:
                self.path.unlink()


def _backend(storage: Storage) -> _Backend:
    inner = getattr(storage, "inner", storage)  # a BoundedStorage: the storage it wraps
    if isinstance(inner, S3Storage):
        return _S3Backend(inner)
    if isinstance(inner, LocalStorage):
        return _LocalBackend(inner)
    raise TypeError(f"no lease for {type(inner).__name__}")


# ------------------------------------------------------------------ the lease


class RunLease:
    """The run's lease as one holder sees it."""

    def __init__(
        self,
        storage: Storage,
        purpose: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.storage = storage
        self.purpose = purpose
        self.ttl_s = ttl_s
        self.holder = holder or holder_id(purpose)
        self.clock = clock
        self.sleep = sleep
        self._backend = _backend(storage)
        self._version: str | None = None

    def _record(self) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(self.holder, self.purpose, now, now + self.ttl_s)

    def _held_error(self, record: LeaseRecord) -> LeaseHeldError:
        left = max(0.0, record.expires_at - self.clock())
        return LeaseHeldError(
            f"{self.storage.url(LEASE_KEY)}: another writer holds this run: {record.holder}, "
            f"its lease ends at {record.ends()} (in {left:.0f} s) unless renewed; two writers "
            "would pay for the same judge requests twice. Wait for it to finish, or stop it "
            "(a stopped holder's lease is taken over once it has expired)"
        )

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lease: a new one, or one that has expired (taken over). While another
        holder's is live, wait up to `wait_s` (a killed holder's expires), then raise
        LeaseHeldError naming it."""
        give_up = self.clock() + wait_s
        while True:
            found = self._backend.read()
            if found is None:
                self._version = self._backend.create(self._record())
                if self._version is not None:
                    return
                continue  # another writer created one just now: look at it
            record, version = found
            if record.holder == self.holder or self.clock() >= record.expires_at:
                self._version = self._backend.replace(self._record(), version)
                if self._version is not None:
                    if record.holder != self.holder:
                        log.warning(
                            "took over the run's lease from %s (expired at %s)",
                            record.holder,
                            record.ends(),
                        )
                    return
                continue  # it changed meanwhile: look again
            if self.clock() >= give_up:
                raise self._held_error(record)
            self.sleep(min(1.0, max(0.05, give_up - self.clock())))

    def renew(self) -> None:
        """Extend the lease; LeaseLostError when it was taken over meanwhile."""
        if self._version is None:
            raise LeaseLostError(f"{self.storage.url(LEASE_KEY)}: the lease is not held")
        version = self._backend.replace(self._record(), self._version)
        if version is None:
            found = self._backend.read()
            who = found[0].holder if found is not None else "nobody"
            raise LeaseLostError(
                f"{self.storage.url(LEASE_KEY)}: this run's lease was taken over by {who} "
                "after it expired unrenewed"
            )
        self._version = version

    def release_if_held(self) -> None:
        """Give the lease up if this holder has it (looked up afresh)."""
        found = self._backend.read()
        if found is not None and found[0].holder == self.holder:
            self._backend.delete(found[1])
        self._version = None

    def release(self) -> None:
        """Give the lease up (if it is still ours)."""
        if self._version is not None:
            self._backend.delete(self._version)
            self._version = None


@contextlib.contextmanager
def hold(
    storage: Storage, purpose: str, *, ttl_s: float = DEFAULT_TTL_S, wait_s: float = 0.0
) -> Iterator[RunLease]:
    """Hold the run's lease for the block, renewed every third of `ttl_s` from a thread;
    released at the end. A renewal that finds the lease taken over is logged as an error."""
    lease = RunLease(storage, purpose, ttl_s=ttl_s)
    lease.acquire(wait_s)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                lease.renew()
            except (LeaseLostError, StorageError) as error:
                log.error("%s", error)

    thread = threading.Thread(target=heartbeat, name="run-lease", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(StorageError):
            lease.release()
