#!/usr/bin/env bash
# The test command (README, .ci/run): install what is missing, lint, type-check, check the
# import layering, then run every test tier. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
scripts/setup.sh
echo "setup: $((SECONDS - started)) s"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
