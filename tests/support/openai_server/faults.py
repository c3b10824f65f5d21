"""Fault injection for the test server: error answers on chosen calls (`fail_next`,
`fail_after_next`), hooks before or after a call (crash points), and an outage after the n-th
call (`go_down_after`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from tests.support.openai_server.core import ServerCore
from tests.support.openai_server.records import Call, Fault, Hook


class FaultInjection(ServerCore):
    """Faults and hooks a test arms; `handle` consults them on every call."""

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        *,
        message: str = "Injected fault.",
        code: str | None = None,
        match: Callable[[Call], bool] | None = None,
    ) -> None:
        """Answer the next `count` calls of `method` to paths starting with `path` (and, with
        `match`, for which `match(call)` is true) with `status`, `message` and `code`."""
        with self._lock:
            self.faults.append(
                Fault(
                    method.upper(),
                    path,
                    status,
                    count,
                    retry_after,
                    message=message,
                    code=code,
                    match=match,
                )
            )

    def go_down_after(self, method: str, path: str, count: int) -> None:
        """Start an outage right after the `count`-th matching call was answered."""
        seen = [0]

        def maybe_go_down(call: Call) -> None:
            seen[0] += 1
            if seen[0] == count:
                self.go_down()

        self.hook(method, path, maybe_go_down, when="after", times=None)

    def fail_after_next(self, method: str, path: str, status: int, count: int = 1) -> None:
        """Handle the next `count` matching calls, then answer them with `status` anyway (a
        gateway error after the work was done: the client cannot tell that it succeeded)."""
        with self._lock:
            self.faults.append(Fault(method.upper(), path, status, count, after=True))

    def cut_next(self, method: str, path: str, count: int = 1) -> None:
        """Answer the next `count` matching calls with a body cut off halfway: the headers
        promise the whole length, half is sent, then the connection closes (a download that
        breaks mid-transfer)."""
        with self._lock:
            self.cuts.append(Fault(method.upper(), path, 200, count))

    def _take_cut(self, call: Call) -> bool:
        with self._lock:
            for cut in self.cuts:
                if (
                    cut.remaining > 0
                    and cut.method == call.method
                    and call.path.startswith(cut.path)
                ):
                    cut.remaining -= 1
                    return True
        return False

    def hook(
        self,
        method: str,
        path: str,
        callback: Callable[[Call], None],
        when: Literal["before", "after"] = "after",
        times: int | None = 1,
    ) -> None:
        """Run `callback(call)` before a matching call is handled, or after it was handled and
        before its response is sent (a crash point: the client never sees the answer)."""
        with self._lock:
            self.hooks.append(Hook(method.upper(), path, when, callback, times))

    def _take_fault(self, call: Call, *, after: bool = False) -> Fault | None:
        for fault in self.faults:
            if (
                fault.remaining > 0
                and fault.after == after
                and fault.method == call.method
                and call.path.startswith(fault.path)
                and (fault.match is None or fault.match(call))
            ):
                fault.remaining -= 1
                return fault
        return None

    def _run_hooks(self, when: str, call: Call) -> None:
        with self._lock:
            due = [
                h
                for h in self.hooks
                if h.when == when
                and h.method == call.method
                and call.path.startswith(h.path)
                and (h.remaining is None or h.remaining > 0)
            ]
            for hook in due:
                if hook.remaining is not None:
                    hook.remaining -= 1
        for hook in due:
            hook.callback(call)
