"""`synthpref operator ...`: generate the CRD, or run the kopf operator.

Mounted lazily by the main CLI (`synthpref.cli`) as `operator_command`. `crd` prints or writes
the generated CRD (`--check` fails on drift); `run` starts the controller for one or more
namespaces or, with `--all-namespaces`, cluster-wide.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from synthpref_operator.crd import CHECKED_IN, catalog_crd_yaml, crd_yaml
from synthpref_operator.settings import DEFAULT_JOB_CREATIONS, DEFAULT_WORKERS, SETTINGS_ENV


@click.group("operator")
def operator_command() -> None:
    """The Kubernetes operator: CRD and controller."""


@operator_command.command("crd")
@click.option(
    "--write",
    "write_to",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Write the CRD to this file (repeatable).",
)
@click.option(
    "--check",
    "check_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Exit 1 when this file differs from the generated CRD (repeatable).",
)
@click.option("--sync", is_flag=True, help=f"Write every checked-in copy: {', '.join(CHECKED_IN)}.")
@click.option("--verify", is_flag=True, help="Like --check for every checked-in copy.")
@click.option(
    "--kind",
    type=click.Choice(["PreferenceRun", "ModelCatalog"]),
    default="PreferenceRun",
    show_default=True,
    help="The CRD that --write, --check and printing use.",
)
def crd_command(
    write_to: tuple[str, ...], check_files: tuple[str, ...], sync: bool, verify: bool, kind: str
) -> None:
    """Print the PreferenceRun (or ModelCatalog) CRD generated from the pydantic models."""
    text = (crd_yaml if kind == "PreferenceRun" else catalog_crd_yaml)()
    files = {path: text for path in (check_files or write_to)}
    if sync or verify:
        files.update({path: make() for path, make in CHECKED_IN.items()})
    if check_files or verify:
        differ = False
        for f, wanted in files.items():
            if not Path(f).is_file():
                fix = "`synthpref operator crd --sync`" if f in CHECKED_IN else f"--write {f}"
                click.echo(f"{f} does not exist: write it with {fix}", err=True)
            elif Path(f).read_text(encoding="utf-8") != wanted:
                click.echo(f"{f} is stale: run `synthpref operator crd --sync`", err=True)
            else:
                continue
            differ = True
        if differ:
            sys.exit(1)
        return
    for path, wanted in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(wanted, encoding="utf-8")
        click.echo(f"wrote {path}")
    if not files:
        click.echo(text, nl=False)


@operator_command.command("run")
@click.option(
    "--namespace", "-n", "namespaces", multiple=True, help="Watch this namespace (repeatable)."
)
@click.option("--all-namespaces", "-A", "cluster_wide", is_flag=True, help="Watch every namespace.")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Kubeconfig file (default: in-cluster, then $KUBECONFIG).",
)
@click.option(
    "--settings-json",
    envvar=SETTINGS_ENV,
    default="{}",
    show_envvar=True,
    help="Operator settings as JSON with camelCase keys: worker defaults (image, cpuImage, "
    "imagePullPolicy, gpuResource, gpuNodeSelector, gpuTolerations, extraEnv) and what runs may "
    "use (allowedEndpoints, allowedImagePrefixes, allowedServiceAccounts, secretNames, "
    "deletionTimeoutSeconds).",
)
@click.option("--image", default=None, help="Default worker image for GPU stages.")
@click.option("--cpu-image", default=None, help="Default worker image for CPU stages.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between reconcile passes of a run that is not done (besides events).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Threads for reconcile passes, and connections to the API server: how many runs "
    "can be reconciled at once (raise it for more than ~50 busy runs).",
)
@click.option(
    "--job-creations",
    type=click.IntRange(min=1),
    default=DEFAULT_JOB_CREATIONS,
    show_default=True,
    help="Job creations in flight at once, over all runs: a stage of twenty models is twenty "
    "Jobs, and many runs start stages together. The API server's priority and fairness "
    "queues what it cannot take at once.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    envvar="SYNTHPREF_LOG_LEVEL",
    default="info",
    show_default=True,
    show_envvar=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text"]),
    envvar="SYNTHPREF_LOG_FORMAT",
    default="text",
    show_default=True,
    show_envvar=True,
    help="json: one object per line with the run's namespace and name.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port of /metrics, /healthz and /readyz (0: none).",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option(
    "--leader-election/--no-leader-election",
    default=False,
    show_default=True,
    help="Act only while holding a Lease (for more than one replica).",
)
@click.option("--lease-name", default="synthpref-operator", show_default=True)
@click.option(
    "--lease-namespace",
    envvar="POD_NAMESPACE",
    default=None,
    help="Namespace of the Lease [default: $POD_NAMESPACE].",
)
@click.option(
    "--identity",
    envvar="POD_NAME",
    default=None,
    help="This replica's name in the Lease [default: $POD_NAME, else the host name].",
)
@click.option("--lease-duration", type=click.IntRange(min=2), default=15, show_default=True)
@click.option("--renew-deadline", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--retry-period", type=click.IntRange(min=1), default=2, show_default=True)
def run_command(
    namespaces: tuple[str, ...],
    cluster_wide: bool,
    kubeconfig: str | None,
    settings_json: str,
    image: str | None,
    cpu_image: str | None,
    interval: float,
    workers: int,
    job_creations: int,
    log_level: str,
    log_format: str,
    metrics_port: int,
    metrics_host: str,
    leader_election: bool,
    lease_name: str,
    lease_namespace: str | None,
    identity: str | None,
    lease_duration: int,
    renew_deadline: int,
    retry_period: int,
) -> None:
    """Run the controller until SIGTERM (exit 0) or a lost Lease (exit 1)."""
    if bool(namespaces) == cluster_wide:
        raise click.UsageError("give --namespace (one or more) or --all-namespaces")
    from synthpref_operator.handlers import OperatorConfig
    from synthpref_operator.leader import LeaseConfig
    from synthpref_operator.service import ServiceConfig, run_service
    from synthpref_operator.settings import SettingsError, parse_settings

    try:
        settings = parse_settings(settings_json)
    except SettingsError as error:
        raise click.BadParameter(str(error), param_hint="--settings-json") from None
    if image:
        settings = settings.model_copy(update={"image": image})
    if cpu_image:
        settings = settings.model_copy(update={"cpu_image": cpu_image})
    lease = None
    if leader_election:
        if not lease_namespace:
            raise click.UsageError("--leader-election needs --lease-namespace or $POD_NAMESPACE")
        lease = LeaseConfig(
            name=lease_name,
            namespace=lease_namespace,
            identity=identity or socket.gethostname(),
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
        )
        if lease.problems():
            raise click.UsageError("leader election: " + "; ".join(lease.problems()))
    operator = OperatorConfig(
        namespaces=list(namespaces),
        cluster_wide=cluster_wide,
        kubeconfig=kubeconfig,
        settings=settings,
        interval=interval,
        workers=workers,
        job_creations=job_creations,
    )
    service = ServiceConfig(
        log_level=log_level,
        log_format="json" if log_format == "json" else "text",
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        lease=lease,
    )
    sys.exit(run_service(operator, service))
