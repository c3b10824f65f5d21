#!/usr/bin/env bash
# Build the operator benchmark's S3 protocol server (tests/support/s3_server: gofakes3, pinned
# in its go.mod/go.sum) into ~/.cache/synthpref/s3-server/<key>/s3-server, keyed by a hash of
# its sources and the Go version, so a warm machine does not rebuild. Go caches are shared with
# scripts/build-kube-binaries.sh. Prints the binary's path as its last stdout line.
# Usage: scripts/build-s3-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/go-env.sh
source scripts/go-env.sh
build_go_tool s3-server tests/support/s3_server
