"""Say at WARNING, within seconds, that an endpoint keeps failing, without flooding the log.

Used by the `openai` chat backend (many requests in flight, each retrying on its own) and the
Batch API client (one call at a time). Every failed try that is retried goes through
`RetryLog.failed`, which logs one line such as

    model llama-8b: endpoint http://host/v1 unreachable (3rd try, next in 4 s): ConnectError: ...

at once when no line was logged in the last `every_s` seconds, and otherwise only counts it (the
next line says how many tries it stood for), so 32 requests in flight print one line per round,
not 32. The subject names the endpoint by its base URL only: never a key or a header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from synthpref.retrying import ordinal, seconds


class RetryLog:
    """Throttled WARNING lines for the failed tries of calls to one endpoint."""

    def __init__(
        self,
        subject: str,
        logger: logging.Logger,
        *,
        last_try: str = "no retry left",
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subject = subject  # e.g. "judge endpoint http://host/v1"
        self.logger = logger
        self.last_try = last_try  # what happens after a call's last try
        self.every_s = every_s
        self.clock = clock
        self._last_logged: float | None = None
        self._unlogged = 0

    def failed(self, tries: int, next_in: float | None, cause: str, *, unreachable: bool) -> None:
        """A try failed for a transport reason (`unreachable`: no HTTP answer at all; else a
        429/5xx answer); `next_in` is the delay before the next try, None after the call's
        last try."""
        now = self.clock()
        if self._last_logged is not None and now - self._last_logged < self.every_s:
            self._unlogged += 1
            return
        state = "unreachable" if unreachable else "failing"
        then = f"next in {seconds(next_in)}" if next_in is not None else self.last_try
        more = ""
        if self._unlogged:
            more = f"; {self._unlogged} more failed tries since the last report"
        self.logger.warning(
            "%s %s (%s try, %s): %s%s", self.subject, state, ordinal(tries), then, cause, more
        )
        self._last_logged = now
        self._unlogged = 0
