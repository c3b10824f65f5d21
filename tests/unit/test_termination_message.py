"""A failed worker's `Error:` line as its container's termination message: the CLI writes it
where the pod says, and the test kubelet reports it (or the log's tail) as a kubelet does."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthpref.cli import write_termination_message
from synthpref.errors import TERMINATION_LOG_ENV, TERMINATION_MESSAGE_BYTES
from synthpref_operator.devcluster.kubelet import termination_message


def test_the_cli_writes_the_line_only_where_the_kubelet_made_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(path))
    write_termination_message("Error: p.jsonl:6: missing string field 'text'")
    assert not path.exists()  # outside a pod: nothing is created
    path.write_bytes(b"")
    write_termination_message("Error: p.jsonl:6: missing string field 'text'")
    assert path.read_text() == "Error: p.jsonl:6: missing string field 'text'"
    write_termination_message("Error: " + "x" * 10_000)
    assert len(path.read_bytes()) == TERMINATION_MESSAGE_BYTES


FALLBACK = {"terminationMessagePolicy": "FallbackToLogsOnError"}


@pytest.mark.parametrize(
    ("container", "written", "failed", "expected"),
    [
        (FALLBACK, "Error: bad input", True, "Error: bad input"),
        # Nothing written: the last 80 lines of the log, but only for a failed container.
        (FALLBACK, "", True, "".join(f"line {i}\n" for i in range(20, 100))),
        (FALLBACK, "", False, ""),
        ({}, "", True, ""),
    ],
)
def test_the_kubelet_reports_the_file_or_the_log_tail(
    tmp_path: Path, container: dict[str, str], written: str, failed: bool, expected: str
) -> None:
    message = tmp_path / "termination-log"
    message.write_text(written)
    log = tmp_path / "container.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert termination_message(container, message, log, failed=failed) == expected


def test_the_log_tail_is_at_most_2048_bytes(tmp_path: Path) -> None:
    log = tmp_path / "container.log"
    log.write_text("y" * 5000 + "\nError: the end\n")
    text = termination_message(FALLBACK, None, log, failed=True)
    assert len(text) == 2048 and text.endswith("Error: the end\n")
