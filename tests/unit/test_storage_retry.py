"""Unit tests of synthpref.storage_retry: which S3 errors are transient, the backoff, the
deadline, the WARNING lines and the one-line error at the end. Errors are real botocore
exception objects; time is a scripted clock."""

from __future__ import annotations

import errno
import logging
import random
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from synthpref.storage_errors import StorageError, StorageUnavailableError, os_error_cause
from synthpref.storage_retry import (
    DEFAULT_RETRY_SECONDS,
    RETRY_SECONDS_ENV,
    Retrier,
    RetryPolicy,
    classify,
    retry_seconds_from_env,
)

URI = "s3://bucket/run"


def client_error(code: str, status: int, message: str = "msg") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


def upload_failed(cause: Exception) -> S3UploadFailedError:
    """What boto3's upload raises: the client error is only its context."""
    wrapped = S3UploadFailedError("Failed to upload x to bucket/run/x: ...")
    wrapped.__context__ = cause
    return wrapped


@pytest.mark.parametrize(
    "error",
    [
        client_error("SlowDown", 503, "Please reduce your request rate."),
        client_error("ServiceUnavailable", 503),
        client_error("InternalError", 500),
        client_error("RequestTimeout", 400),
        client_error("Throttling", 400),
        client_error("503", 503),  # a HEAD: no body, only the status
        client_error("", 502),
        EndpointConnectionError(endpoint_url="http://s3:9000/b/k"),
        ConnectionClosedError(endpoint_url="http://s3:9000/b/k"),
        ReadTimeoutError(endpoint_url="http://s3:9000/b/k"),
        IncompleteReadError(actual_bytes=10, expected_bytes=20),
        ResponseStreamingError(error="Connection broken: IncompleteRead"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        upload_failed(client_error("SlowDown", 503)),
    ],
)
def test_transient(error: Exception) -> None:
    problem = classify(error, URI, "bucket")
    assert problem is not None and problem.transient


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            client_error("NoSuchBucket", 404),
            "storage s3://bucket/run: bucket 'bucket' does not exist",
        ),
        (
            client_error("AccessDenied", 403, "Access Denied"),
            "storage s3://bucket/run: access denied",
        ),
        (client_error("403", 403), "storage s3://bucket/run: access denied"),
        (
            client_error("InvalidAccessKeyId", 403),
            "S3 rejected the credentials (InvalidAccessKeyId)",
        ),
        (client_error("SignatureDoesNotMatch", 403), "rejected the credentials"),
        (NoCredentialsError(), "storage s3://bucket/run: no S3 credentials found"),
        (client_error("PreconditionFailed", 412), "changed while being read"),
        (upload_failed(client_error("NoSuchBucket", 404)), "does not exist"),
    ],
)
def test_not_transient(error: Exception, message: str) -> None:
    problem = classify(error, URI, "bucket")
    assert problem is not None and not problem.transient
    assert message in problem.message


def test_bugs_are_not_storage_problems() -> None:
    assert classify(KeyError("x"), URI, "bucket") is None


def test_delays_double_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy()
    rng = random.Random(3)
    for tries, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)]:
        delays = [policy.delay(tries, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)


def test_deadline_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETRY_SECONDS_ENV, raising=False)
    assert retry_seconds_from_env() == DEFAULT_RETRY_SECONDS >= 30
    monkeypatch.setenv(RETRY_SECONDS_ENV, "45.5")
    assert RetryPolicy.from_env().deadline_s == 45.5
    monkeypatch.setenv(RETRY_SECONDS_ENV, "soon")
    with pytest.raises(StorageError, match=rf"{RETRY_SECONDS_ENV}='soon' is not a number"):
        retry_seconds_from_env()


class Script:
    """A clock moved only by the retrier's sleeps, and an operation failing `failures` times."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.failures = failures
        self.error = error
        self.calls = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def operation(self) -> str:
        self.calls += 1
        self.now += 0.5  # each try takes a while
        if self.calls <= self.failures:
            raise self.error
        return "done"

    def retrier(self, deadline_s: float = 180.0) -> Retrier:
        return Retrier(
            URI, "bucket", RetryPolicy(deadline_s), self.sleep, lambda: self.now, random.Random(1)
        )


def test_rides_out_a_long_outage_and_logs_each_retry(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(9, EndpointConnectionError(endpoint_url="http://s3:9000/bucket/run/a"))
    with caplog.at_level(logging.WARNING, logger="synthpref.storage_retry"):
        assert script.retrier().call("write a.json", script.operation) == "done"
    assert script.calls == 10 and script.now > 60  # an outage of over a minute, ridden out
    assert max(script.sleeps) <= 60
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9 and all(r.levelno == logging.WARNING for r in caplog.records)
    assert lines[2].startswith(f"storage {URI} unreachable (3rd try, next in ")
    assert lines[2].endswith(
        " s): write a.json: EndpointConnectionError: Could not connect to the endpoint URL: "
        '"http://s3:9000/bucket/run/a"'
    )


def test_gives_up_at_the_deadline_with_one_line() -> None:
    script = Script(1000, client_error("SlowDown", 503, "Please reduce your request rate."))
    with pytest.raises(StorageUnavailableError) as caught:
        script.retrier(deadline_s=30).call("read a.jsonl", script.operation)
    assert 30 <= script.now <= 31
    assert str(caught.value) == (
        f"storage {URI} unavailable for 30 s (last error: read a.jsonl: SlowDown: Please "
        "reduce your request rate.); committed work is kept, rerun to resume"
    )


def test_fatal_causes_are_not_retried() -> None:
    script = Script(5, client_error("NoSuchBucket", 404))
    with pytest.raises(StorageError, match="bucket 'bucket' does not exist") as caught:
        script.retrier().call("write a", script.operation)
    assert script.calls == 1 and script.sleeps == []
    assert not isinstance(caught.value, StorageUnavailableError)


def test_progress_starts_a_new_count() -> None:
    script = Script(100, ConnectionResetError(errno.ECONNRESET, "reset"))
    retrier = script.retrier(deadline_s=10)
    for _ in range(3):
        try:
            script.operation()
        except ConnectionResetError as error:
            retrier.failed("read", error)
    assert retrier.tries == 3
    retrier.progressed()
    assert (retrier.tries, retrier.first_failure) == (0, None)


@pytest.mark.parametrize(
    ("number", "cause"),
    [
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "disk full (no space left on device)"),
        (errno.EDQUOT, "disk full (no space left on device)"),
        (errno.EIO, "input/output error"),
    ],
)
def test_os_error_causes(number: int, cause: str) -> None:
    import os

    assert os_error_cause(OSError(number, os.strerror(number))) == cause
