"""Riding out storage faults: which S3 errors are transient, and one retry loop for them all.

`S3Storage` (synthpref.storage) runs every operation through a `Retrier`. A transient cause
(a connection refused, reset or timed out, a stream broken mid-read, HTTP 5xx, SlowDown and the
other throttling codes, RequestTimeout) is retried with exponential backoff and jitter (1 s
doubling up to a minute), each retry logged at WARNING with the storage URI, the try number and
the next delay. The retries stop at a deadline counted from the first failure in a row
(SYNTHPREF_STORAGE_RETRY_SECONDS, default 180 s): then one `StorageUnavailableError` says so.
A cause that waiting cannot fix (no such bucket, access denied, bad or missing credentials)
fails at once with a message naming the storage and the cause.

These are the outer retries around whole operations; botocore's own (standard mode, a few
attempts, see `s3_client`) retry single HTTP requests inside them, such as one part of a
multipart upload.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from synthpref.retrying import backoff_delay, ordinal
from synthpref.storage_errors import StorageError, StorageUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS_ENV = "SYNTHPREF_STORAGE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 180.0

# S3 error codes that mean "try again later" whatever the HTTP status says.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "BadGateway",
        "GatewayTimeout",
        "OperationAborted",
    }
)
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)


def retry_seconds_from_env() -> float:
    """The retry deadline from $SYNTHPREF_STORAGE_RETRY_SECONDS, else the default."""
    value = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not value:
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise StorageError(f"{RETRY_SECONDS_ENV}={value!r} is not a number of seconds (>= 0)")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry: `deadline_s` after the first failure in a row, with
    delays of `base_delay_s` doubling up to `max_delay_s` (each 50-100% of that, at random)."""

    deadline_s: float = DEFAULT_RETRY_SECONDS
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(deadline_s=retry_seconds_from_env())

    def delay(self, tries: int, rng: random.Random) -> float:
        """Seconds to wait after the `tries`-th failed try in a row."""
        return backoff_delay(tries, self.base_delay_s, self.max_delay_s, rng)


@dataclass(frozen=True)
class Problem:
    """What went wrong, in one line, and whether waiting may fix it."""

    transient: bool
    message: str
    unreachable: bool = False  # no answer at all (as opposed to an answer saying "later")


def _error_code(error: Exception) -> tuple[str, int]:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _causes(error: BaseException) -> list[BaseException]:
    """The error and the errors it was raised from or while handling (boto3 wraps some)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def classify(error: Exception, uri: str, bucket: str) -> Problem | None:
    """The problem behind an S3 client error; None for an error that is not about storage
    (a bug, which the caller lets through)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    for cause in _causes(error):
        name = type(cause).__name__
        if isinstance(cause, ClientError):
            code, status = _error_code(cause)
            text = f"{code or status}: {cause.response.get('Error', {}).get('Message', '')}"
            text = text.rstrip(": ")
            if code in TRANSIENT_CODES or status >= 500 or status in (408, 429):
                return Problem(True, text)
            if code == "NoSuchBucket":
                return Problem(False, f"storage {uri}: bucket {bucket!r} does not exist")
            if code in CREDENTIAL_CODES:
                return Problem(
                    False,
                    f"storage {uri}: S3 rejected the credentials ({code}); check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or spec.storage.credentials",
                )
            if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
                return Problem(
                    False,
                    f"storage {uri}: access denied ({text}); the credentials may not use "
                    f"bucket {bucket!r}",
                )
            if code == "PreconditionFailed":
                return Problem(False, f"storage {uri}: object changed while being read; rerun")
            return Problem(False, f"storage {uri}: {text}")
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            return Problem(
                False,
                f"storage {uri}: no S3 credentials found ({cause}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or spec.storage.credentials on a cluster)",
            )
        if isinstance(cause, BotoConnectionError | HTTPClientError):
            return Problem(True, f"{name}: {cause}", unreachable=True)
        if isinstance(cause, IncompleteReadError | ResponseStreamingError):
            return Problem(True, f"{name}: {cause}", unreachable=True)
        if isinstance(cause, ConnectionError | TimeoutError | http.client.HTTPException):
            return Problem(True, f"{name}: {cause}", unreachable=True)
        if isinstance(cause, BotoCoreError):
            return Problem(False, f"storage {uri}: {name}: {cause}")
        if isinstance(cause, RecursionError):
            # botocore asks a custom endpoint that answers 3xx without a region again and
            # again (its region redirector); a redirect's Location is never followed.
            return Problem(
                False,
                f"storage {uri}: the S3 endpoint answers with redirects (HTTP 3xx), which are "
                "not followed; set storage.endpointUrl to the store itself",
            )
    return None


@dataclass
class Retrier:
    """The tries of one storage operation (or one streamed read): call `failed` from an
    `except` block to sleep before the next try, or raise the StorageError when the cause is
    not transient or the deadline has passed; call `progressed` when a try got somewhere."""

    uri: str
    bucket: str
    policy: RetryPolicy = field(default_factory=RetryPolicy.from_env)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    tries: int = 0
    first_failure: float | None = None

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """`operation()` until it succeeds; `what` (e.g. "read prompts/a.jsonl") is logged."""
        while True:
            try:
                return operation()
            except StorageError:
                raise
            except Exception as error:
                self.failed(what, error)

    def failed(self, what: str, error: Exception) -> None:
        """Sleep before the next try of `what` after `error`, or raise: the StorageError of a
        cause that is not transient or has lasted past the deadline; `error` itself when it
        is not about storage."""
        problem = classify(error, self.uri, self.bucket)
        if problem is None:
            raise error
        if not problem.transient:
            raise StorageError(problem.message) from error
        now = self.clock()
        if self.first_failure is None:
            self.first_failure = now
        self.tries += 1
        elapsed = now - self.first_failure
        remaining = self.policy.deadline_s - elapsed
        if remaining <= 0:
            raise StorageUnavailableError(
                f"storage {self.uri} unavailable for {elapsed:.0f} s (last error: {what}: "
                f"{problem.message}); committed work is kept, rerun to resume"
            ) from error
        delay = min(self.policy.delay(self.tries, self.rng), remaining)
        log.warning(
            "storage %s %s (%s try, next in %s): %s: %s",
            self.uri,
            "unreachable" if problem.unreachable else "unavailable",
            ordinal(self.tries),
            f"{delay:.0f} s" if delay >= 1 else f"{delay:.1f} s",
            what,
            problem.message,
        )
        self.sleep(delay)

    def progressed(self) -> None:
        """The last try got somewhere (a streamed read received bytes): count afresh."""
        self.tries = 0
        self.first_failure = None
