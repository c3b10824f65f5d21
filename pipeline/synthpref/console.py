"""A quiet local console: what an engine prints while a stage runs goes to the run's `logs/`.

vLLM, torch, transformers and triton print dozens of lines at every engine start. Python
logging alone cannot hold them back: vLLM on CPU runs its engine core and workers as child
processes that write to the file descriptors they inherit, and torch's C++ code writes to fd 2
itself. So `captured` points fds 1 and 2 of this process at a temporary file while a stage runs
(every process started meanwhile inherits it) and hands synthpref's own output (its progress
bars, its log records) a stream on the console's stderr. When the stage ends the file is written
to the run's storage (`layout.engine_log`). When the stage fails, its last lines (and, when it
is further up, the first exception in it, the root cause they point at) are printed first, so
that they come just before the command's `Error:` line.

When to capture (`quiet`): never with `--verbose` or SYNTHPREF_VERBOSE=1; always under `run
--local`; for a stage command only when stderr is a terminal. A stage command in a Job's pod
keeps the engine's output in the pod log (`kubectl logs`), where it always was.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TextIO

from tqdm import tqdm

from synthpref.storage import Storage

VERBOSE_ENV = "SYNTHPREF_VERBOSE"
TAIL_LINES = 20
_TAIL_BYTES = 256 * 1024  # the tail is read from at most this much of the file's end
# The last line of a Python traceback ("pkg.SomeError: message"), also as vLLM logs it, after
# "(Worker pid=8) ERROR 12-08 03:39:21 [file.py:953] ".
_EXCEPTION = re.compile(
    r"^(\([^)]*\) [A-Z]+ \S+ \S+ \[[^\]]*\] )?[A-Za-z_][\w.]*(Error|Exception)(: |$)"
)


def verbose_requested(flag: bool) -> bool:
    """`--verbose`, or $SYNTHPREF_VERBOSE set to 1 (true, yes)."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def quiet(verbose: bool, *, local_run: bool) -> bool:
    """Whether to keep engine output off the console: not when verbose; under `run --local`
    always; for a stage command only on a terminal (in a pod it stays in the pod log)."""
    if verbose_requested(verbose):
        return False
    return local_run or _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr (a test runner's stream)
        return False


def tail(data: bytes, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` non-blank lines of a log, each as a terminal shows it (the text after its
    last carriage return: a progress bar's last state)."""
    text = data[-_TAIL_BYTES:].decode("utf-8", errors="replace")
    shown = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return [line for line in shown if line.strip()][-lines:]


def first_exception(data: bytes) -> tuple[int, str] | None:
    """The log's first line that ends a traceback, with its line number: the root cause that
    vLLM's last lines only point at ("See root cause above")."""
    for number, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        if _EXCEPTION.match(line):
            return number, line.rstrip()
    return None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, OSError, ValueError):
            stream.flush()


class _AboveTheBars(logging.StreamHandler[TextIO]):
    """Writes each record above the progress bars drawn on the same stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging.StreamHandler does
            self.handleError(record)


@contextmanager
def _own_records_to(stream: TextIO) -> Iterator[None]:
    """synthpref's own log records also go to `stream` (the console), formatted as the root
    logger's handler does, or as Python's last-resort handler (warnings and up) when there is
    none. Records that reach the root handler as well land in the engine log beside the
    engine's lines."""
    own = logging.getLogger("synthpref")
    handler = _AboveTheBars(stream)
    root_handlers = logging.getLogger().handlers
    if root_handlers:
        model = root_handlers[0]
        handler.setFormatter(model.formatter)
        for record_filter in model.filters:
            handler.addFilter(record_filter)
    else:
        handler.setLevel(logging.WARNING)
    own.addHandler(handler)
    try:
        yield
    finally:
        own.removeHandler(handler)


@contextmanager
def captured(storage: Storage, key: str, *, enabled: bool = True) -> Iterator[TextIO]:
    """Run the body with fds 1 and 2 on a temporary file; yield the stream for the console.

    Afterwards the file (when anything was written) becomes `key` in `storage`; if the body
    raised, its last `TAIL_LINES` lines are printed on stderr first. Not `enabled`: the body
    runs as it is and the console stream is sys.stderr.
    """
    if not enabled:
        yield sys.stderr
        return
    handle, path = tempfile.mkstemp(prefix="synthpref-engine-", suffix=".log")
    os.close(handle)
    _flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(
        os.dup(saved_err),
        "w",
        buffering=1,
        encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
    )
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    failed = False
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        with _own_records_to(console):
            yield console
    except Exception:
        failed = True
        raise
    finally:
        _flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        console.close()
        _keep(storage, key, path, show_tail=failed)


def _keep(storage: Storage, key: str, path: str, *, show_tail: bool) -> None:
    """Write the log to the storage (nothing when it is empty) and remove the temporary file;
    print its tail on stderr when the stage failed. Never raises for a storage failure: the
    stage's own error matters more, and the temporary file is then kept and named."""
    with open(path, "rb") as log:
        data = log.read()
    if not data:
        os.unlink(path)
        return
    where = storage.url(key)
    try:
        storage.write_bytes(key, data)
    except Exception as error:  # the stage's own outcome matters more: keep the file, name it
        where = path
        print(
            f"warning: could not write the engine log to {storage.url(key)}: {error}; it is "
            f"kept at {path}",
            file=sys.stderr,
        )
    else:
        os.unlink(path)
    if show_tail:
        lines = tail(data)
        cause = first_exception(data)
        if cause is not None and cause[1] not in lines:
            print(f"The engine's first exception (line {cause[0]} of {where}):", file=sys.stderr)
            print(f"  {cause[1]}", file=sys.stderr)
        print(f"The engine's last {len(lines)} lines (all of them in {where}):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
    sys.stderr.flush()
