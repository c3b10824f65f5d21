#!/usr/bin/env bash
# Build the operator benchmark's S3 protocol server (tests/support/s3_server: gofakes3, pinned
# in its go.mod/go.sum) into ~/.cache/synthpref/s3-server/<key>/s3-server, keyed by a hash of
# its sources and the Go version, so a warm machine does not rebuild. Go caches are shared with
# scripts/build-kube-binaries.sh. Prints the binary's path as its last stdout line.
# Usage: scripts/build-s3-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GO="${GO:-}"
if [[ -z "$GO" ]]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
fi
[[ -x "$GO" ]] || { echo "build-s3-server: no Go toolchain found (set GO=...)" >&2; exit 2; }

SRC=tests/support/s3_server
KEY="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)_$("$GO" env GOVERSION)"
CACHE_ROOT="${SYNTHPREF_KUBE_CACHE:-$HOME/.cache/synthpref}"
OUT="$CACHE_ROOT/s3-server/$KEY/s3-server"

if [[ ! -x "$OUT" ]]; then
    mkdir -p "$(dirname "$OUT")"
    export GOPATH="$CACHE_ROOT/go/path" GOCACHE="$CACHE_ROOT/go/build-cache"
    export GOMODCACHE="$CACHE_ROOT/go/mod-cache" GOTOOLCHAIN=local CGO_ENABLED=0
    (cd "$SRC" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$OUT.tmp" .)
    mv -f "$OUT.tmp" "$OUT"
    echo "build-s3-server: built $OUT" >&2
fi
echo "$OUT"
