"""The `synthpref` command line: one subcommand per stage (as the cluster Jobs run them), the
local end-to-end run, and developer tools.

Every stage command takes the PreferenceRun manifest a user would `kubectl apply`. Workers of an
Indexed Job find their index in JOB_COMPLETION_INDEX; `--worker/--workers` override it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click
import yaml

from synthpref import layout
from synthpref.console import VERBOSE_ENV, captured, quiet
from synthpref.errors import (
    DEFAULT_TERMINATION_LOG,
    TERMINATION_LOG_ENV,
    TERMINATION_MESSAGE_BYTES,
    InputsNotReadyError,
    SynthprefError,
)
from synthpref.logs import configure_from_env, set_default_context
from synthpref.spec import (
    GenerationBackend,
    PreferenceRunManifest,
    SpecError,
    load_run,
    parse_manifest,
)
from synthpref.storage import Storage, open_storage


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (keeps `--help` fast).

    `lazy` names this package's own subcommands ("module:attribute"); `plugins` names an
    entry-point group whose entries add subcommands from other installed packages (the
    operator's `synthpref operator` and `synthpref dev cluster`), so this package never
    imports them by name.
    """

    def __init__(
        self,
        *args: Any,
        lazy: dict[str, str] | None = None,
        plugins: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}
        self.plugins = plugins

    def _plugin_entries(self) -> dict[str, EntryPoint]:
        if self.plugins is None:
            return {}
        return {entry.name: entry for entry in entry_points(group=self.plugins)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = {*super().list_commands(ctx), *self.lazy, *self._plugin_entries()}
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command: click.Command
        if cmd_name in self.lazy:
            module_name, _, attribute = self.lazy[cmd_name].partition(":")
            module = __import__(module_name, fromlist=[attribute])
            command = getattr(module, attribute)
            return command
        entry = self._plugin_entries().get(cmd_name)
        if entry is not None:
            command = entry.load()
            return command
        return super().get_command(ctx, cmd_name)


MANIFEST_ENV = "SYNTHPREF_RUN_MANIFEST"


_CATALOG_KEY = "synthpref.catalog"  # where --catalog leaves its value (click context meta)


def load(run_file: str | None) -> tuple[PreferenceRunManifest, Storage]:
    """The run manifest (`load_manifest`) and the run's storage, checked to be writable."""
    manifest = load_manifest(run_file)
    storage_spec = manifest.spec.storage
    storage = open_storage(storage_spec.uri, storage_spec.endpoint_url, storage_spec.region)
    storage.check_writable()  # fail before any work, not after the first shard
    return manifest, storage


def load_manifest(run_file: str | None) -> PreferenceRunManifest:
    """The run manifest from RUN.yaml or, when omitted (in a Job), from $SYNTHPREF_RUN_MANIFEST,
    with the models of its spec.modelCatalog resolved from `--catalog FILE` (a Job's manifest
    comes resolved by the operator)."""
    context = click.get_current_context(silent=True)
    catalog_file = context.meta.get(_CATALOG_KEY) if context is not None else None
    try:
        if run_file is not None:
            manifest = load_run(run_file)
        elif MANIFEST_ENV in os.environ:
            document = yaml.safe_load(os.environ[MANIFEST_ENV])
            manifest = parse_manifest(document, f"${MANIFEST_ENV}")
        elif catalog_file is not None:
            command = _command_path(context)
            raise click.UsageError(
                f"no RUN.yaml: --catalog took {catalog_file} ({_kinds_in(catalog_file)}) and "
                f"nothing was left for the run; give the run's file first, then the file of "
                f"the ModelCatalog its spec.modelCatalog names: {command} RUN.yaml --catalog "
                "CATALOG.yaml"
            )
        else:
            raise click.UsageError(f"give RUN.yaml or set {MANIFEST_ENV}")
    except SpecError as error:
        raise click.ClickException(str(error)) from None
    manifest = with_catalog(manifest, run_file or f"${MANIFEST_ENV}", catalog_file)
    set_default_context(manifest.metadata.namespace, manifest.metadata.name)
    return manifest


def _command_path(context: click.Context | None) -> str:
    """How the user called the command: `synthpref report`, not its default `report write`."""
    if context is None:
        return "synthpref COMMAND"
    parent = context.parent
    if (
        parent is not None
        and isinstance(parent.command, DefaultCommandGroup)
        and parent.command.default == context.info_name
    ):
        return parent.command_path
    return context.command_path


def _kinds_in(path: str) -> str:
    """What a YAML file holds, for a usage message: "it has: PreferenceRun 'x'"."""
    from synthpref.spec import describe_documents

    try:
        with open(path, encoding="utf-8") as stream:
            documents = [d for d in yaml.safe_load_all(stream) if d is not None]
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        return f"which cannot be read as YAML: {error}"
    return f"it has: {describe_documents(documents)}"


def with_catalog(
    manifest: PreferenceRunManifest, source: str, catalog_file: str | None
) -> PreferenceRunManifest:
    """The manifest with spec.modelCatalog resolved from the ModelCatalog in `catalog_file`."""
    from synthpref.catalog import CatalogError, load_catalog, resolve_models

    ref = manifest.spec.model_catalog
    if ref is None:
        if catalog_file is not None:
            raise CatalogError(
                f"--catalog {catalog_file}: {source} takes no models from a catalog "
                "(no spec.modelCatalog); leave --catalog out"
            )
        return manifest
    if catalog_file is None:
        raise CatalogError(
            f"{source}: spec.modelCatalog takes models from ModelCatalog {ref.name!r}: give "
            "the file that defines it with --catalog FILE (e.g. examples/catalogs/tulu3.yaml)"
        )
    catalog = load_catalog(catalog_file, ref.name)
    try:
        spec = resolve_models(manifest.spec, catalog)
    except CatalogError as error:
        raise CatalogError(f"{source} with --catalog {catalog_file}: {error}") from None
    return manifest.model_copy(update={"spec": spec})


def echo_summary(summary: Any) -> None:
    """Print a stage summary as one JSON document (what a Job's log shows)."""
    value = asdict(summary) if is_dataclass(summary) and not isinstance(summary, type) else summary
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def worker_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="How many workers share the shards.",
    )(function)
    return click.option(
        "--worker",
        type=click.IntRange(min=0),
        default=None,
        help="This worker's index (default: $JOB_COMPLETION_INDEX, else 0).",
    )(function)


def verbose_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """`--verbose` of the commands that start a vLLM engine (`synthpref.console`)."""
    return click.option(
        "--verbose",
        is_flag=True,
        help="Print what the vLLM engine and its libraries print. Without it, when stderr is a "
        "terminal, that goes to the run's logs/ instead and only its last lines are printed if "
        f"the stage fails; elsewhere (a Job's pod) it is printed anyway (also: {VERBOSE_ENV}=1).",
    )(function)


def resolve_worker(worker: int | None, workers: int) -> int:
    index = layout.worker_from_env() if worker is None else worker
    if index >= workers:
        raise click.BadParameter(f"worker {index} is not below --workers {workers}")
    return index


def _remember_catalog(context: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None:
        context.meta[_CATALOG_KEY] = value


def RUN_ARGUMENT(function: Callable[..., Any]) -> Callable[..., Any]:  # noqa: N802
    """RUN.yaml, and `--catalog FILE` for a run whose spec.modelCatalog names a ModelCatalog
    (kept in the context for `load`, so every command that reads a run takes it alike)."""
    function = click.option(
        "--catalog",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=_remember_catalog,
        help="YAML file with the ModelCatalog the run's spec.modelCatalog names.",
    )(function)
    return click.argument(
        "run_file", metavar="[RUN.yaml]", required=False, type=click.Path(dir_okay=False)
    )(function)


COMMANDS_ENTRY_POINTS = "synthpref.commands"
DEBUG_ENV = "SYNTHPREF_DEBUG"


@click.group(
    cls=LazyGroup,
    lazy={
        "annotate": "synthpref.annotate.cli:annotate",
        "dev": "synthpref.devtools:dev",
    },
    plugins=COMMANDS_ENTRY_POINTS,
)
@click.version_option(package_name="synthpref")
@click.option(
    "--debug",
    is_flag=True,
    help=f"Show the traceback of an error (also: {DEBUG_ENV}=1).",
)
def main(debug: bool) -> None:
    """Make synthetic preference datasets: prompts → answers → judge → chosen/rejected pairs."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
    configure_from_env()


@main.command()
@RUN_ARGUMENT
def prepare(run_file: str | None) -> None:
    """Read prompt files, assign stable ids, drop duplicates, write prompt shards."""
    from synthpref.run_lease import DEFAULT_TTL_S, hold
    from synthpref.stages.prepare import PromptFileError, run_prepare

    manifest, storage = load(run_file)
    try:
        # The manifest has one writer; a killed earlier try's lease is waited out.
        with hold(storage, "synthpref prepare", wait_s=DEFAULT_TTL_S + 5):
            echo_summary(run_prepare(manifest.spec, storage))
    except PromptFileError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@RUN_ARGUMENT
@click.option("--model", "model_name", required=True, help="Name of the model in spec.models.")
@worker_options
@verbose_option
def generate(
    run_file: str | None, model_name: str, worker: int | None, workers: int, verbose: bool
) -> None:
    """Answer this worker's prompt shards with one model (loaded once)."""
    from synthpref.stages.generate import run_generate

    manifest, storage = load(run_file)
    try:
        model = manifest.spec.model(model_name)
    except KeyError as error:
        raise click.BadParameter(str(error.args[0]), param_hint="--model") from None
    index = resolve_worker(worker, workers)
    engine = quiet(verbose, local_run=False) and model.backend is GenerationBackend.VLLM
    log_key = layout.engine_log("generate", model_name, index, workers)
    with captured(storage, log_key, enabled=engine):
        summary = run_generate(manifest.spec, storage, model_name, worker=index, workers=workers)
    echo_summary({**asdict(summary), "tokens_per_second": round(summary.tokens_per_second, 1)})


@main.command()
@RUN_ARGUMENT
@worker_options
def mix(run_file: str | None, worker: int | None, workers: int) -> None:
    """Join the models' answers, sample k per prompt, write judge request files."""
    from synthpref.stages.mix import run_mix

    manifest, storage = load(run_file)
    echo_summary(
        run_mix(manifest.spec, storage, worker=resolve_worker(worker, workers), workers=workers)
    )


@main.command()
@RUN_ARGUMENT
@worker_options
@verbose_option
def judge(run_file: str | None, worker: int | None, workers: int, verbose: bool) -> None:
    """Rate the judge request files with the offline vLLM judge (judge.backend: vllm)."""
    from synthpref.stages.judge import run_judge

    manifest, storage = load(run_file)
    index = resolve_worker(worker, workers)
    log_key = layout.engine_log("judge", None, index, workers)
    with captured(storage, log_key, enabled=quiet(verbose, local_run=False)):
        summary = run_judge(manifest.spec, storage, worker=index, workers=workers)
    echo_summary(summary)


@main.command()
@RUN_ARGUMENT
@worker_options
def parse(run_file: str | None, worker: int | None, workers: int) -> None:
    """Parse judge ratings, binarize into pairs, write the dataset and its summary."""
    from synthpref.outcome import assess, describe_losses
    from synthpref.report.writer import report_or_error
    from synthpref.stages.parse import run_parse

    manifest, storage = load(run_file)
    # The last worker to finish writes the report, then the run summary.
    reports: list[Any] = []
    run_summaries: list[dict[str, Any]] = []

    def before_summary(document: dict[str, Any]) -> None:
        run_summaries.append(document)
        reports.append(report_or_error(manifest, storage, summary=document))

    summary = run_parse(
        manifest.spec,
        storage,
        worker=resolve_worker(worker, workers),
        workers=workers,
        before_summary=before_summary,
    )
    echo_summary(summary)
    if run_summaries:  # as `run --local` says it: what the whole run lost, by cause
        lost = assess(run_summaries[-1], manifest.spec.acceptance).losses
        if lost:
            click.echo(f"data loss: {describe_losses(lost)}", err=True)
    if reports:
        show_report(reports[-1])


def show_report(result: Any) -> None:
    """Print where the report is and its warnings, or raise its one-line error (the dataset
    stays; `synthpref report RUN.yaml` redoes only the report)."""
    from synthpref.report.writer import ReportError

    if isinstance(result, ReportError):
        raise result
    click.echo(f"report: {result.uri}")
    for warning in result.warnings:
        click.echo(f"warning: {warning['message']}", err=True)


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names none of its commands, goes to `default`:
    `synthpref report RUN.yaml` is `synthpref report write RUN.yaml`, and `synthpref report
    open RUN` another command of the group."""

    def __init__(self, *args: Any, default: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@main.group(cls=DefaultCommandGroup, default="write")
def report() -> None:
    """The run report of a finished run: `synthpref report [RUN.yaml]` writes it again (as
    `report write`); `synthpref report open RUN` fetches it to a local folder or prints a
    presigned link to it."""


@report.command("write")
@RUN_ARGUMENT
def report_write(run_file: str | None) -> None:
    """Write the run report (report/index.html, report/report.json, report/warnings.json),
    dataset/provenance.json and the dataset card dataset/README.md of a finished run."""
    from synthpref.report.writer import report_or_error

    manifest, storage = load(run_file)
    if not storage.exists(layout.SUMMARY):
        raise InputsNotReadyError(
            f"{storage.url(layout.SUMMARY)}: not found: the run has not finished its parse "
            "stage; run it (or the whole run) first"
        )
    show_report(report_or_error(manifest, storage))


@report.command("open")
@click.argument("run", metavar="RUN")
@click.option(
    "--namespace",
    "-n",
    default=None,
    help="RUN is a run's name on the cluster, in this namespace (default: the kubeconfig "
    "context's, else default).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    default=None,
    help="The kubeconfig to read the run with (default: $KUBECONFIG, ~/.kube/config).",
)
@click.option(
    "--to",
    "folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder to copy the report into (default: ./RUN-NAME-report).",
)
@click.option("--url", "as_url", is_flag=True, help="Print a presigned HTTPS link instead.")
@click.option(
    "--expires",
    type=click.IntRange(min=1, max=7 * 24 * 3600),
    default=3600,
    show_default=True,
    help="Seconds the --url link works.",
)
def report_open(
    run: str,
    namespace: str | None,
    kubeconfig: str | None,
    folder: str | None,
    as_url: bool,
    expires: int,
) -> None:
    """Open a finished run's report: RUN is its RUN.yaml, or its name on the cluster (with
    --namespace, or any RUN that is not a file). The report (status.result.reportUri, an
    s3:// URI) is copied into a local folder whose index.html a browser opens; with --url,
    a presigned HTTPS link to the page is printed instead. S3 is read with your own
    credentials (AWS_* variables), as `aws s3 cp` does."""
    from pathlib import Path

    from synthpref.report import opening

    if namespace is None and (os.path.isfile(run) or run.endswith((".yaml", ".yml"))):
        located = opening.from_manifest(load_run_file(run))
    else:
        located = opening.from_cluster(run, namespace, kubeconfig)
    if as_url:
        click.echo(opening.presigned_link(located, expires))
        return
    page = opening.local_page(located)
    if page is None:
        target = Path(folder) if folder is not None else Path(f"{located.run}-report")
        page = opening.fetch(located, target)
        click.echo(f"fetched {located.uri}", err=True)
    click.echo(f"report: {page}")
    warnings_file = page.parent / "warnings.json"
    if warnings_file.is_file():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            for warning in json.loads(warnings_file.read_text(encoding="utf-8"))["warnings"]:
                click.echo(f"warning: {warning['message']}", err=True)


def load_run_file(run_file: str) -> PreferenceRunManifest:
    """A RUN.yaml as it is (its spec.modelCatalog left unresolved: the report needs no models)."""
    try:
        return load_run(run_file)
    except SpecError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@RUN_ARGUMENT
@click.option(
    "--prompts",
    "prompts_uri",
    metavar="URI",
    help="Estimate for these prompt files instead of spec.prompts.uri; the run's storage is "
    "then not read.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(run_file: str | None, prompts_uri: str | None, as_json: bool) -> None:
    """What the run will cost: prompts, answer tokens per model, judge requests, tokens and US
    dollars at Batch API prices. No GPU, no API call; reads the prompts and, when it exists,
    what the run's storage already holds (answers, judge request files)."""
    from synthpref.estimate_inputs import estimate_from
    from synthpref.run_estimate import as_document, render

    spec = load_manifest(run_file).spec
    storage = None
    if prompts_uri is None:
        settings = spec.storage
        storage = open_storage(settings.uri, settings.endpoint_url, settings.region)
    result = estimate_from(spec, storage, prompts_uri)
    if as_json:
        click.echo(json.dumps(as_document(result), indent=2))
    else:
        click.echo(render(result))


@main.command()
@RUN_ARGUMENT
@click.option("--local", is_flag=True, required=True, help="Run every stage here, in order.")
@click.option("--no-progress", is_flag=True, help="No progress bars (e.g. in CI logs).")
@click.option(
    "--verbose",
    is_flag=True,
    help="Print what the vLLM engines and their libraries print, between the progress bars; "
    "without it that goes to the run's logs/ (logs/generate-MODEL.log, logs/judge.log) and "
    f"only a failing engine's last lines are printed (also: {VERBOSE_ENV}=1).",
)
def run(run_file: str | None, local: bool, no_progress: bool, verbose: bool) -> None:
    """Run the whole pipeline locally: prepare → generate → mix → judge → parse."""
    from synthpref.local_run import run_local
    from synthpref.outcome import AcceptanceError, describe_losses
    from synthpref.report.writer import ReportError
    from synthpref.run_lease import hold

    manifest, storage = load(run_file)
    with hold(storage, "synthpref run --local"):  # one writer per run: no request paid twice
        result = run_local(manifest, storage, progress=not no_progress, verbose=verbose)
    echo_summary(result.summary)
    click.echo(f"dataset: {result.dataset_uri} ({result.pairs} pairs)")
    report_result = result.report
    if report_result is not None and not isinstance(report_result, ReportError):
        show_report(report_result)
    assessment = result.assessment
    if assessment.losses:
        click.echo(f"data loss: {describe_losses(assessment.losses)}", err=True)
    if not assessment.accepted:
        report_note = f"; {report_result}" if isinstance(report_result, ReportError) else ""
        raise AcceptanceError(
            "the run finished but failed its acceptance check: "
            + assessment.message(result.dataset_uri)
            + " (the dataset is kept; lower spec.acceptance to accept it)"
            + report_note
        )
    if isinstance(report_result, ReportError):
        raise report_result


def error_line(error: BaseException) -> str:
    """The one line a user sees for an error that escaped a command."""
    if isinstance(error, SynthprefError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    detail = str(error) or "(no message)"
    return f"unexpected {type(error).__name__}: {detail} (rerun with --debug for the traceback)"


def write_termination_message(line: str) -> None:
    """In a pod, leave `line` as the container's termination message, which the operator puts
    in the run's status and Events: written to $SYNTHPREF_TERMINATION_LOG (default
    /dev/termination-log) only when that file exists, as the kubelet creates it."""
    path = os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG
    if not os.path.isfile(path):
        return
    data = line.encode(errors="replace")[:TERMINATION_MESSAGE_BYTES]
    try:
        with open(path, "wb") as out:
            out.write(data)
    except OSError:
        pass  # the message is a courtesy; the log has the line anyway


def entrypoint() -> None:
    """Console-script entry: every error is one `Error: ...` line on stderr and a non-zero exit
    (`SynthprefError.exit_code`, 1 by default); --debug or SYNTHPREF_DEBUG=1 re-raises it for
    the traceback. Committed work is never undone by an error: rerunning resumes."""
    try:
        # Not standalone: click would turn Ctrl-C into "Aborted!" and exit 1.
        code = main.main(standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("Interrupted: committed work is kept; rerun to resume.", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as error:  # usage errors: click's own message
        error.show()
        sys.exit(error.exit_code)
    except Exception as error:
        if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
            raise
        line = f"Error: {error_line(error)}"
        click.echo(line, err=True)
        write_termination_message(line)
        sys.exit(getattr(error, "exit_code", 1) if isinstance(error, SynthprefError) else 1)
    sys.exit(code if isinstance(code, int) else 0)
