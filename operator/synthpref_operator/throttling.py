"""Requests the API server throttles (429 Too Many Requests) are sent again, for every call of
the operator's Kubernetes client.

An API server with more requests in flight than it takes (`--max-requests-inflight`, or API
Priority and Fairness with its queues full) answers 429 with a Retry-After before it does
anything with the request, so sending it again is safe whatever its verb; client-go does so.
The Python client does not: urllib3's default retries leave POST and PATCH out and send the
other verbs again at most 3 times, so a Job creation, a suspension or an Event refused this way,
or any request throttled four times running, failed its pass (logged as an error, counted in
`synthpref_reconcile_errors_total`) although nothing was wrong but the load.

`api_retries` is the urllib3 `Retry` the operator's client configuration carries
(`handlers._client_configuration`): a 429, on any verb, is sent again after the server's
Retry-After (`throttled_wait`: at least 0.1 s, at most `THROTTLED_WAIT_MAX`, jittered so that
requests throttled together do not return together), up to `THROTTLED_RETRIES` times; then
the 429 is the caller's, as before. Each 429 is logged at debug level and counted
(`synthpref_api_throttled_total`). Everything else keeps urllib3's defaults: connection
errors retried, read errors only on idempotent verbs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

THROTTLED_RETRIES = 10
THROTTLED_WAIT_MAX = 10.0
# urllib3's own default (Retry(3)) for the failures this module leaves alone.
OTHER_RETRIES = 3

# Called with the HTTP method of each request the API server throttled.
OnThrottled = Callable[[str], None]


def throttled_wait(retry_after: str | None) -> float:
    """Seconds before sending a throttled request again: the server's Retry-After in seconds
    (1 s when absent or unreadable: the API server sends whole seconds), between 0.1 s and
    `THROTTLED_WAIT_MAX`, plus up to half of it again."""
    try:
        after = float(retry_after if retry_after is not None else 1)
    except ValueError:
        after = 1.0
    after = min(max(after, 0.1), THROTTLED_WAIT_MAX)
    return after * (1 + random.random() / 2)


class ThrottledRetry(Retry):
    """urllib3's `Retry` that also sends again a 429 answer to any verb (see the module)."""

    def __init__(self, *args: Any, on_throttled: OnThrottled | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_throttled = on_throttled

    def new(self, **kw: Any) -> ThrottledRetry:
        retry = super().new(**kw)
        retry.on_throttled = self.on_throttled
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == HTTPStatus.TOO_MANY_REQUESTS:
            return True  # any verb: the server did nothing with it (the count is `status`)
        return super().is_retry(method, status_code, has_retry_after)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> ThrottledRetry:
        throttled = response is not None and response.status == HTTPStatus.TOO_MANY_REQUESTS
        if throttled and self.on_throttled is not None:
            self.on_throttled(str(method or "").upper())
        return super().increment(method, url, response, error, *args, **kwargs)

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        if response.status != HTTPStatus.TOO_MANY_REQUESTS:
            return super().get_retry_after(response)
        wait = throttled_wait(response.headers.get("Retry-After"))
        last = self.history[-1] if self.history else None
        log.debug(
            "the API server throttled %s %s (429); sending it again in %.1f s",
            last.method if last else "a request",
            last.url if last else "",
            wait,
        )
        return wait


def api_retries(on_throttled: OnThrottled | None = None) -> ThrottledRetry:
    """The retries of the operator's Kubernetes client (`Configuration.retries`)."""
    return ThrottledRetry(
        total=THROTTLED_RETRIES + OTHER_RETRIES,  # a ceiling; each kind has its own count
        connect=OTHER_RETRIES,
        read=OTHER_RETRIES,
        redirect=OTHER_RETRIES,
        other=OTHER_RETRIES,
        status=THROTTLED_RETRIES,
        raise_on_status=False,  # the last 429 goes to the caller as an ApiException
        on_throttled=on_throttled,
    )
