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
find_go build-rulecheck

SRC=tools/rulecheck
KEY="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" | sha256sum | cut -c1-16)_$("$GO" env GOVERSION)"
CACHE_ROOT="${SYNTHPREF_KUBE_CACHE:-$HOME/.cache/synthpref}"
OUT="$CACHE_ROOT/rulecheck/$KEY/rulecheck"

if [[ ! -x "$OUT" ]]; then
    mkdir -p "$(dirname "$OUT")"
    go_cache_env "$CACHE_ROOT"
    (cd "$SRC" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$OUT.tmp" .)
    mv -f "$OUT.tmp" "$OUT"
    echo "build-rulecheck: built $OUT" >&2
fi
echo "$OUT"
