"""`synthpref dev ...`: developer tools (offline models, the local Kubernetes cluster).

The cluster commands live with the operator (synthpref_operator.devcluster), which adds them
through the `synthpref.dev_commands` entry-point group: the pipeline never imports the operator.
"""

from __future__ import annotations

import click

from synthpref.cli import LazyGroup

DEV_COMMANDS_ENTRY_POINTS = "synthpref.dev_commands"


@click.group(
    cls=LazyGroup,
    lazy={
        "models": "synthpref.realmodel:models_command",
        "tiny-models": "synthpref.tinymodels:tiny_models_command",
    },
    plugins=DEV_COMMANDS_ENTRY_POINTS,
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
