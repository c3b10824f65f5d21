"""`synthpref dev ...`: developer tools (tiny offline models, the local Kubernetes cluster).

The cluster commands live with the operator (synthpref_operator.devcluster) and are imported
only when used, so the pipeline package does not depend on the operator at import time.
"""

from __future__ import annotations

import click

from synthpref.cli import LazyGroup


@click.group(
    cls=LazyGroup,
    lazy={
        "tiny-models": "synthpref.tinymodels:tiny_models_command",
        "cluster": "synthpref_operator.devcluster.cli:cluster_group",
    },
)
def dev() -> None:
    """Developer tools."""


@dev.command("field-reference")
@click.option(
    "--write",
    "readme",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Update this README in place instead of printing.",
)
def field_reference_command(readme: str | None) -> None:
    """Print the spec's field reference (Markdown) that README.md carries."""
    from pathlib import Path

    from synthpref.reference import field_reference, with_reference

    if readme is None:
        click.echo(field_reference(), nl=False)
        return
    path = Path(readme)
    path.write_text(with_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
