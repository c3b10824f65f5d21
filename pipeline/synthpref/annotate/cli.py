"""`synthpref annotate ...`: the OpenAI Batch judge from the command line.

Loaded lazily by the main CLI (`synthpref.cli`). Every command takes the PreferenceRun manifest;
the run's name (metadata.name) tags its batches. The API key comes from the environment variable
named in `judge.openai.apiKeyEnv`.

- `submit`: upload and create batches for every file that may go now (budget, rate limit);
- `poll`: look at every batch in flight once;
- `fetch`: download the results of every ended batch (and prepare resubmissions);
- `run`: all of the above until every request has a result or a reported failure (or the
  endpoint has failed for `judge.giveUpAfterSeconds`: an error, and a rerun resumes);
- `status`: the ledgers' view, without calling the API;
- `cancel`: cancel every batch in flight, wait, keep what finished.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict
from typing import Any

import click

from synthpref.annotate.client import FatalApiError
from synthpref.annotate.engine import Annotator, FatalAnnotateError
from synthpref.annotate.ledger import Phase
from synthpref.cli import RUN_ARGUMENT, load


def _annotator(run_file: str) -> Annotator:
    """The run's judge, with the run's lease held until the command ends (one writer of the
    ledgers and batches: a second `annotate` or `run --local` gets an error naming it)."""
    from synthpref.annotate.local import annotator
    from synthpref.run_lease import hold

    manifest, storage = load(run_file)
    context = click.get_current_context()
    context.with_resource(hold(storage, f"synthpref annotate {context.info_name}"))
    try:
        return annotator(manifest.spec, storage, manifest.metadata.name)
    except FatalApiError as error:
        raise click.ClickException(str(error)) from None


def _echo(engine: Annotator, extra: dict[str, Any] | None = None) -> None:
    document: dict[str, Any] = asdict(engine.summary())
    document["files_by_phase"] = {
        phase: sorted(r.request_key for r in engine.ledgers() if r.phase.value == phase)
        for phase in sorted(Counter(r.phase.value for r in engine.ledgers()))
    }
    hold = engine.budget_hold()
    document["budget_hold"] = hold.message("raise judge.budget to resume") if hold else None
    document.update(extra or {})
    click.echo(json.dumps(document, indent=2, sort_keys=True))


def _steps(engine: Annotator, only: Collection[Phase], repeat: bool) -> dict[str, Any]:
    actions: list[str] = []
    api_errors: list[str] = []
    try:
        while True:
            report = engine.step(only)
            actions += report.actions
            api_errors += report.api_errors
            if not repeat or not report.progressed:
                break
    except FatalAnnotateError as error:
        raise click.ClickException(str(error)) from None
    return {
        "actions": actions,
        "api_errors": api_errors,
        "waiting": report.waiting,
        "transient_errors": report.transient_errors,
        "endpoint_failing_since": report.failing_since,
        "endpoint_last_error": report.last_error,
    }


@click.group()
def annotate() -> None:
    """The OpenAI Batch judge (judge.backend: openai): submit, poll, fetch, status, cancel."""


@annotate.command()
@RUN_ARGUMENT
def submit(run_file: str) -> None:
    """Upload request files and create their batches, as far as the limits allow."""
    engine = _annotator(run_file)
    _echo(engine, _steps(engine, (Phase.PENDING, Phase.UPLOADED), repeat=True))


@annotate.command()
@RUN_ARGUMENT
def poll(run_file: str) -> None:
    """Check every batch in flight once."""
    engine = _annotator(run_file)
    _echo(engine, _steps(engine, (Phase.SUBMITTED,), repeat=False))


@annotate.command()
@RUN_ARGUMENT
def fetch(run_file: str) -> None:
    """Download the results of every ended batch; failed requests are queued for resubmission."""
    engine = _annotator(run_file)
    _echo(engine, _steps(engine, (Phase.ENDED,), repeat=False))


@annotate.command("run")
@RUN_ARGUMENT
def run_command(run_file: str) -> None:
    """Submit, poll, fetch and resubmit until every request is done or reported failed."""
    engine = _annotator(run_file)
    try:
        engine.run_until_done()
    except FatalAnnotateError as error:
        raise click.ClickException(str(error)) from None
    _echo(engine)


@annotate.command()
@RUN_ARGUMENT
def status(run_file: str) -> None:
    """Show the ledgers: files per phase and request counts (no API calls)."""
    manifest, storage = load(run_file)
    _echo(Annotator(manifest.spec, storage, manifest.metadata.name, None))


@annotate.command()
@RUN_ARGUMENT
@click.option("--no-wait", is_flag=True, help="Request cancellation and return at once.")
@click.option("--delete-files", is_flag=True, help="Delete the uploaded input files afterwards.")
def cancel(run_file: str, no_wait: bool, delete_files: bool) -> None:
    """Cancel every batch in flight; finished results are fetched and kept."""
    engine = _annotator(run_file)
    try:
        engine.cancel(wait=not no_wait, delete_files=delete_files)
    except FatalAnnotateError as error:
        raise click.ClickException(str(error)) from None
    _echo(engine)
