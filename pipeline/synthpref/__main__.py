"""`python -m synthpref` runs the CLI."""

from synthpref.cli import entrypoint

entrypoint()
