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
find_go build-s3-server

SRC=tests/support/s3_server
KEY="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)_$("$GO" env GOVERSION)"
CACHE_ROOT="${SYNTHPREF_KUBE_CACHE:-$HOME/.cache/synthpref}"
OUT="$CACHE_ROOT/s3-server/$KEY/s3-server"

if [[ ! -x "$OUT" ]]; then
    mkdir -p "$(dirname "$OUT")"
    go_cache_env "$CACHE_ROOT"
    (cd "$SRC" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$OUT.tmp" .)
    mv -f "$OUT.tmp" "$OUT"
    echo "build-s3-server: built $OUT" >&2
fi
echo "$OUT"
