"""`synthpref operator ...`: generate the CRD, or run the kopf operator.

Mounted lazily by the main CLI (`synthpref.cli`) as `operator_command`. `crd` prints or writes
the generated CRD (`--check` fails on drift); `run` starts the controller for one or more
namespaces or, with `--all-namespaces`, cluster-wide.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synthpref_operator.crd import CRD_PATHS, crd_yaml


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
@click.option(
    "--sync", is_flag=True, help=f"Write every checked-in copy: {', '.join(CRD_PATHS)}."
)
@click.option("--verify", is_flag=True, help="Like --check for every checked-in copy.")
def crd_command(
    write_to: tuple[str, ...], check_files: tuple[str, ...], sync: bool, verify: bool
) -> None:
    """Print the PreferenceRun CRD generated from the spec and status models."""
    text = crd_yaml()
    write_to += CRD_PATHS if sync else ()
    check_files += CRD_PATHS if verify else ()
    if check_files:
        stale = [
            f
            for f in check_files
            if not Path(f).exists() or Path(f).read_text(encoding="utf-8") != text
        ]
        for f in stale:
            click.echo(f"{f} is stale: run `synthpref operator crd --sync`", err=True)
        if stale:
            sys.exit(1)
        return
    for path in write_to:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}")
    if not write_to:
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
@click.option("--image", default=None, help="Default worker image for GPU stages.")
@click.option("--cpu-image", default=None, help="Default worker image for CPU stages.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between reconcile passes of a run (besides events).",
)
def run_command(
    namespaces: tuple[str, ...],
    cluster_wide: bool,
    kubeconfig: str | None,
    image: str | None,
    cpu_image: str | None,
    interval: float,
) -> None:
    """Run the controller until interrupted."""
    if bool(namespaces) == cluster_wide:
        raise click.UsageError("give --namespace (one or more) or --all-namespaces")
    from synthpref_operator.handlers import OperatorConfig, run_operator
    from synthpref_operator.settings import OperatorSettings

    settings = OperatorSettings()
    if image:
        settings = settings.model_copy(update={"image": image})
    if cpu_image:
        settings = settings.model_copy(update={"cpu_image": cpu_image})
    run_operator(
        OperatorConfig(
            namespaces=list(namespaces),
            cluster_wide=cluster_wide,
            kubeconfig=kubeconfig,
            settings=settings,
            interval=interval,
        )
    )
