#!/usr/bin/env bash
# Build the Prometheus rule checker (tools/rulecheck: Prometheus' own rulefmt and PromQL parser,
# what `promtool check rules` runs, pinned in its go.mod/go.sum) into
# ~/.cache/synthpref/rulecheck/<key>/rulecheck, keyed by a hash of its sources and the Go
# version, so a warm machine does not rebuild. Go caches are shared with
# scripts/build-kube-binaries.sh. Prints the binary's path as its last stdout line.
# Usage: scripts/build-rulecheck.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/go-env.sh
source scripts/go-env.sh
build_go_tool rulecheck tools/rulecheck
