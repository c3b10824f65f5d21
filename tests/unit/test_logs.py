"""Structured logging: JSON lines and text lines tagged with the run (context, kopf, worker)."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from click.testing import CliRunner
from kopf._core.actions.loggers import ObjectLogger

from synthpref import cli
from synthpref.logs import (
    JsonLineFormatter,
    configure_from_env,
    configure_logging,
    run_context,
    set_default_context,
)
from tests.builders import manifest_dict, spec_dict

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
log = logging.getLogger("synthpref.test")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures the root logger; put it back as it was. The process default
    context starts empty (CLI tests that load a manifest set it)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    set_default_context(None, None)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    set_default_context(None, None)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line is one JSON object."""
    documents = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(d, dict) for d in documents)
    return documents


def json_stream(level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    return stream


def kopf_logger(kind: str, name: str, namespace: str) -> ObjectLogger:
    """kopf's own per-object logger, as its handlers get it."""
    body = kopf.Body(
        {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": namespace}}
    )
    return ObjectLogger(body=body, settings=kopf.OperatorSettings())


def test_json_lines_carry_the_run_inside_run_context_and_null_outside() -> None:
    stream = json_stream()
    log.info("operator starting")
    with run_context("team-a", "run-1"):
        log.info("pass %d", 3, extra={"job": "run-1-prepare"})
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            log.exception("pass failed")
    log.warning("after")

    start, inside, failed, after = lines(stream)
    for line in (start, inside, failed, after):
        assert {"time", "level", "logger", "message", "namespace", "run"} <= line.keys()
        assert RFC3339_UTC.match(line["time"]), line["time"]
        assert line["logger"] == "synthpref.test"
    assert (start["namespace"], start["run"]) == (None, None)
    assert (after["namespace"], after["run"], after["level"]) == (None, None, "warning")
    assert inside == inside | {
        "namespace": "team-a",
        "run": "run-1",
        "message": "pass 3",
        "level": "info",
        "job": "run-1-prepare",
    }
    assert (failed["namespace"], failed["run"], failed["level"]) == ("team-a", "run-1", "error")
    assert "ZeroDivisionError: boom" in failed["exc_info"]
    assert "Traceback" in failed["exc_info"]


def test_json_lines_take_the_run_from_kopf_object_loggers() -> None:
    stream = json_stream()
    kopf_logger("PreferenceRun", "run-2", "team-b").info("Handler 'run_changed' succeeded.")
    kopf_logger("Job", "run-2-mix", "team-b").warning("Handler 'job_changed' failed.")

    run_line, job_line = lines(stream)
    assert (run_line["namespace"], run_line["run"]) == ("team-b", "run-2")
    assert run_line["logger"] == "kopf.objects"
    # kopf's bookkeeping extras (settings, k8s_skip, k8s_ref) are not fields of their own
    assert not {"settings", "k8s_skip", "k8s_ref"} & run_line.keys()
    # a Job is not a run: its namespace, and the object it is about
    assert (job_line["namespace"], job_line["run"]) == ("team-b", None)
    assert job_line["object"] == "Job/run-2-mix"


def test_run_context_belongs_to_the_thread_that_set_it() -> None:
    stream = json_stream()
    with run_context("team-a", "run-1"):
        other = threading.Thread(target=lambda: log.info("other thread"))
        other.start()
        other.join()
        log.info("this thread")
    by_message = {line["message"]: line for line in lines(stream)}
    assert by_message["other thread"]["run"] is None
    assert by_message["this thread"]["run"] == "run-1"


def test_the_process_default_context_applies_in_every_thread() -> None:
    stream = json_stream()
    set_default_context("team-c", "run-3")
    other = threading.Thread(target=lambda: log.info("worker thread"))
    other.start()
    other.join()
    with run_context("team-a", "run-1"):
        log.info("pass")
    worker, reconcile = lines(stream)
    assert (worker["namespace"], worker["run"]) == ("team-c", "run-3")
    assert (reconcile["namespace"], reconcile["run"]) == ("team-a", "run-1")


def test_text_lines_show_the_run_only_when_there_is_one() -> None:
    stream = io.StringIO()
    configure_logging("info", "text", stream=stream)
    log.info("operator starting")
    with run_context("team-a", "run-1"):
        log.info("created Job")
    kopf_logger("Job", "run-1-mix", "team-a").info("job event")
    log.debug("hidden at info level")

    start, inside, job = stream.getvalue().splitlines()
    time, level, logger, *rest = start.split(" ")
    assert RFC3339_UTC.match(time)
    assert (level, logger, " ".join(rest)) == ("INFO", "synthpref.test", "operator starting")
    assert inside.endswith(" INFO synthpref.test [team-a/run-1] created Job")
    assert job.endswith(" INFO kopf.objects [team-a/Job/run-1-mix] job event")


def test_configure_logging_replaces_the_handlers_and_rejects_unknown_values() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "text", stream=first)
    configure_logging("warning", "json", stream=second)
    log.info("dropped")
    log.warning("kept")
    assert logging.getLogger().handlers[0].stream is second  # type: ignore[attr-defined]
    assert len(logging.getLogger().handlers) == 1
    assert first.getvalue() == ""
    assert [line["message"] for line in lines(second)] == ["kept"]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "text")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


def test_workers_configure_json_logging_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    monkeypatch.delenv("SYNTHPREF_LOG_FORMAT", raising=False)
    configure_from_env()
    assert root.handlers == before  # unset: the worker's logging stays as it was

    monkeypatch.setenv("SYNTHPREF_LOG_FORMAT", "json")
    monkeypatch.setenv("SYNTHPREF_LOG_LEVEL", "warning")
    result = CliRunner().invoke(cli.main, ["prepare", "--help"])
    assert result.exit_code == 0, result.output
    assert isinstance(root.handlers[0].formatter, JsonLineFormatter)
    assert root.level == logging.WARNING


def test_a_workers_run_manifest_becomes_the_log_context(tmp_path: Path) -> None:
    document = manifest_dict(spec_dict(storage_uri=str(tmp_path / "store")), name="run-4")
    document["metadata"]["namespace"] = "team-d"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    stream = json_stream()
    cli.load(str(path))
    log.info("shard committed")
    (line,) = lines(stream)
    assert (line["namespace"], line["run"]) == ("team-d", "run-4")
