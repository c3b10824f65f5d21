"""Sort a finished batch's output and error lines into results and failed requests.

Called by the annotate engine when it fetches a batch. Pure. A request is done when its output
line has a 200 response (whatever the reply says: an unparseable reply is `parse`'s to count);
it failed when its line is on the error file, has a non-2xx response or an `error` object
(`batch_expired`, `request_timeout`, ...), or when no line names it at all (missing). `tokens`
sums the `usage.total_tokens` the service reported on every line it answered
(`prompt_tokens` and `completion_tokens` its parts, which the judge's budget prices).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from synthpref.rows import BatchError, BatchResultLine

MISSING = "missing"


@dataclass
class SortedResults:
    ok: dict[str, str] = field(default_factory=dict)  # custom_id -> output line (JSON text)
    failed: dict[str, str] = field(default_factory=dict)  # custom_id -> reason
    failure_lines: dict[str, str] = field(default_factory=dict)  # custom_id -> line to report
    unknown: int = 0  # lines that are not JSON, or name no request of the input
    tokens: int = 0  # usage.total_tokens over the lines with a response (what was billed)
    prompt_tokens: int = 0  # usage.prompt_tokens over the same lines
    completion_tokens: int = 0  # usage.completion_tokens over the same lines


def _reason(line: BatchResultLine) -> str | None:
    """None for a usable 200 response, else why the request failed."""
    if line.error is not None:
        return line.error.code or "error"
    if line.response is None:
        return "no_response"
    if line.response.status_code != 200:
        body = line.response.body or {}
        detail = body.get("error") if isinstance(body, dict) else None
        code = detail.get("code") if isinstance(detail, dict) else None
        return f"http_{line.response.status_code}" + (f"_{code}" if code else "")
    return None


def _usage(line: BatchResultLine, name: str) -> int:
    """One `usage` count of a line (0 when absent or not a positive integer)."""
    body = line.response.body if line.response is not None else None
    usage = body.get("usage") if isinstance(body, dict) else None
    count = usage.get(name) if isinstance(usage, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def failure_line(custom_id: str, reason: str, message: str) -> str:
    """A Batch error line for a request that got none from the service (e.g. missing)."""
    line = BatchResultLine(
        id=None, custom_id=custom_id, response=None, error=BatchError(code=reason, message=message)
    )
    return line.model_dump_json()


def sort_results(
    input_ids: Iterable[str],
    output_lines: Iterable[str],
    error_lines: Iterable[str],
    missing_reason: str = MISSING,
    sink: Callable[[str], None] | None = None,
) -> SortedResults:
    """Results of one batch: each input custom_id ends in exactly one of `ok` and `failed`.

    With `sink`, each ok line is handed to it as it is read (the first one per custom_id) and
    `ok` maps the ids to "" instead of keeping the lines: memory holds ids, not replies."""
    expected = set(input_ids)
    result = SortedResults()
    for text in [*output_lines, *error_lines]:
        if not text.strip():
            continue
        try:
            line = BatchResultLine.model_validate_json(text)
        except (ValidationError, json.JSONDecodeError):
            result.unknown += 1
            continue
        result.tokens += _usage(line, "total_tokens")
        result.prompt_tokens += _usage(line, "prompt_tokens")
        result.completion_tokens += _usage(line, "completion_tokens")
        custom_id = line.custom_id
        if custom_id not in expected:
            result.unknown += 1
            continue
        reason = _reason(line)
        if reason is None:
            if sink is None:
                result.ok[custom_id] = text
            elif custom_id not in result.ok:
                sink(text)
                result.ok[custom_id] = ""
            result.failed.pop(custom_id, None)
            result.failure_lines.pop(custom_id, None)
        elif custom_id not in result.ok:
            result.failed[custom_id] = reason
            result.failure_lines[custom_id] = text
    for custom_id in sorted(expected - result.ok.keys() - result.failed.keys()):
        result.failed[custom_id] = missing_reason
        result.failure_lines[custom_id] = failure_line(
            custom_id, missing_reason, "The request has no line in the batch's output or errors."
        )
    return result
