"""`synthpref operator ...`: generate the CRD, or run the kopf operator.

Mounted lazily by the main CLI (`synthpref.cli`) as `operator_command`. `crd` prints or writes
the generated CRD (`--check` fails on drift); `run` starts the controller for one or more
namespaces or, with `--all-namespaces`, cluster-wide.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from synthpref_operator.crd import CRD_PATH, crd_yaml


@click.group("operator")
def operator_command() -> None:
    """The Kubernetes operator: CRD and controller."""


@operator_command.command("crd")
@click.option(
    "--write",
    "write_to",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Write the CRD here (the checked-in copy is {CRD_PATH}).",
)
@click.option(
    "--check",
    "check_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Exit 1 when this file differs from the generated CRD.",
)
def crd_command(write_to: str | None, check_file: str | None) -> None:
    """Print the PreferenceRun CRD generated from the spec and status models."""
    text = crd_yaml()
    if check_file is not None:
        current = Path(check_file).read_text(encoding="utf-8") if Path(check_file).exists() else ""
        if current != text:
            click.echo(
                f"{check_file} is stale: run `synthpref operator crd --write {check_file}`",
                err=True,
            )
            sys.exit(1)
        return
    if write_to is not None:
        Path(write_to).parent.mkdir(parents=True, exist_ok=True)
        Path(write_to).write_text(text, encoding="utf-8")
        click.echo(f"wrote {write_to}")
        return
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
