#!/usr/bin/env bash
# The demo: a whole preference run on this machine, no GPU, no network, no API key.
# Installs what is missing (no Kubernetes binaries needed), builds four tiny offline models,
# then runs examples/quickstart.yaml locally and prints the summary and the dataset path.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --no-kube
.venv/bin/synthpref dev tiny-models .tiny-models --names tiny-a,tiny-b,tiny-c,tiny-d
time .venv/bin/synthpref run examples/quickstart.yaml --local
