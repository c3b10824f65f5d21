"""Process-wide logging: text or JSON lines on stderr, each tagged with the run it is about.

`configure_logging` installs one stderr handler on the root logger, so records of every logger
(ours, kopf's, the Kubernetes client's) go through it. Its filter tags each record with
`namespace` and `run`: from `run_context` (a context variable, set around a reconcile pass),
else from kopf's per-object `k8s_ref`, else from the process default (`set_default_context`, a
worker's run manifest), else None. The operator calls `configure_logging` from its command;
worker commands call `configure_from_env` ($SYNTHPREF_LOG_FORMAT, $SYNTHPREF_LOG_LEVEL).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO, cast

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]
FORMAT_ENV = "SYNTHPREF_LOG_FORMAT"
LEVEL_ENV = "SYNTHPREF_LOG_LEVEL"
RUN_KIND = "PreferenceRun"

# Libraries that log every HTTP request (and, at debug, headers): kept at warnings.
_CHATTY = ("httpx", "httpx2", "httpcore", "urllib3", "botocore", "boto3", "s3transfer")
# LogRecord attributes that are not JSON fields of their own (kopf's extras included).
_NOT_FIELDS = frozenset(
    {*RESERVED_ATTRS, "taskName", "k8s_ref", "k8s_skip", "settings", "namespace", "run"}
)

_Context = tuple[str | None, str | None]
_context: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "synthpref_run_context", default=None
)
_default: _Context = (None, None)


@contextmanager
def run_context(namespace: str, run: str) -> Iterator[None]:
    """Tag every record logged inside (in this thread or task) with the run."""
    token = _context.set((namespace, run))
    try:
        yield
    finally:
        _context.reset(token)


def set_default_context(namespace: str | None, run: str | None) -> None:
    """The run of records logged outside any `run_context`, in every thread (worker processes)."""
    global _default  # noqa: PLW0603 - one process, one run
    _default = (namespace, run)


def rfc3339(created: float) -> str:
    """A record's time as RFC 3339 UTC with milliseconds: 2026-01-01T00:00:00.123Z."""
    moment = dt.datetime.fromtimestamp(created, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _from_ref(ref: dict[str, Any]) -> tuple[_Context, str | None]:
    """(namespace, run) and, for another kind (a Job), `Kind/name`, from kopf's `k8s_ref`."""
    namespace, name, kind = ref.get("namespace"), ref.get("name"), ref.get("kind")
    if kind in (None, RUN_KIND):
        return (namespace, name), None
    return (namespace, None), f"{kind}/{name}"


class RunContextFilter(logging.Filter):
    """Sets `namespace`, `run` and `context` (the text prefix) on every record; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        obj: str | None = None
        explicit = getattr(record, "namespace", None), getattr(record, "run", None)
        ref = getattr(record, "k8s_ref", None)
        current = _context.get()
        if explicit != (None, None):
            namespace, run = explicit
        elif current is not None:
            namespace, run = current
        elif isinstance(ref, dict):
            (namespace, run), obj = _from_ref(ref)
        else:
            namespace, run = _default
        record.namespace, record.run = namespace, run
        if obj is not None:
            record.object = obj
        where = "/".join(p for p in (namespace, run or obj) if p)
        record.context = f"[{where}] " if where else ""
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, namespace, run, then extras
    (`extra=`), and `exc_info` as text when there is an exception."""

    def __init__(self) -> None:
        super().__init__(reserved_attrs=[*_NOT_FIELDS, "context"])

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = rfc3339(record.created)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["namespace"] = getattr(record, "namespace", None)
        log_data["run"] = getattr(record, "run", None)
        super().add_fields(log_data, record, message_dict)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER [namespace/run] message`, the bracket only when there is a run."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(context)s%(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):  # a handler without RunContextFilter
            record.context = ""
        return super().format(record)


def parse_level(level: str) -> int:
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    return value


def configure_logging(
    level: str = "info", fmt: LogFormat = "text", stream: TextIO | None = None
) -> None:
    """Log to stderr (or `stream`) in `fmt` at `level`, replacing the root logger's handlers."""
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r} (json, text)")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RunContextFilter())
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_from_env() -> None:
    """Worker commands: configure only when $SYNTHPREF_LOG_FORMAT is set (json or text)."""
    fmt = os.environ.get(FORMAT_ENV, "").strip().lower()
    if fmt in ("json", "text"):
        configure_logging(os.environ.get(LEVEL_ENV, "info"), cast(LogFormat, fmt))
