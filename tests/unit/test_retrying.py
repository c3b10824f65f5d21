"""Retry wording and the throttled WARNING lines about an endpoint that keeps failing
(retrying, backends.retrylog)."""

from __future__ import annotations

import logging

import pytest

from synthpref.backends.retrylog import RetryLog
from synthpref.retrying import ordinal, seconds


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (102, "102nd"),
        (111, "111th"),
    ],
)
def test_ordinals(number: int, text: str) -> None:
    assert ordinal(number) == text


def test_delays_read_well() -> None:
    assert [seconds(v) for v in (0.05, 4.0, 4.5, 20.0, 64.2)] == [
        "0.05 s",
        "4 s",
        "4.5 s",
        "20 s",
        "64 s",
    ]


def test_the_first_failure_is_logged_at_once_then_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    retry_log = RetryLog(
        "judge endpoint http://host/v1",
        logging.getLogger("test.retrylog"),
        every_s=10.0,
        clock=lambda: now[0],
    )
    caplog.set_level(logging.WARNING)

    retry_log.failed(3, 20.0, "ConnectError: refused", unreachable=True)
    for tries in range(4, 36):  # 32 requests failing in the same second
        retry_log.failed(tries, 4.0, "HTTP 503 server_error: busy", unreachable=False)
    now[0] += 10.0
    retry_log.failed(36, None, "HTTP 503 server_error: busy", unreachable=False)

    assert [r.getMessage() for r in caplog.records] == [
        "judge endpoint http://host/v1 unreachable (3rd try, next in 20 s): ConnectError: refused",
        "judge endpoint http://host/v1 failing (36th try, no retry left): HTTP 503 server_error: "
        "busy; 32 more failed tries since the last report",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}
