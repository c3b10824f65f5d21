# Sourced by the scripts that build Go binaries (build-kube-binaries.sh, build-s3-server.sh,
# build-rulecheck.sh, build-actionlint.sh): which Go toolchain to use, where its caches live,
# shared between them, and how a small tool module of this repository is built once per version.

# find_go NAME: set GO to $GO, else the go on PATH, else /usr/local/go/bin/go; exit 2 (with
# NAME in the message) when none is there.
find_go() {
    GO="${GO:-}"
    if [[ -z "$GO" ]]; then
        if command -v go >/dev/null 2>&1; then GO="$(command -v go)"; else GO=/usr/local/go/bin/go; fi
    fi
    [[ -x "$GO" ]] || { echo "$1: no Go toolchain found (set GO=...)" >&2; exit 2; }
}

# go_cache_env ROOT: Go's module and build caches under ROOT/go, this toolchain only, no cgo.
go_cache_env() {
    export GOPATH="$1/go/path"
    export GOCACHE="$1/go/build-cache"
    export GOMODCACHE="$1/go/mod-cache"
    export GOTOOLCHAIN=local
    export CGO_ENABLED=0
    mkdir -p "$GOPATH" "$GOCACHE" "$GOMODCACHE"
}

# build_go_tool NAME SRC [PACKAGE]: build PACKAGE (default: the module in SRC itself) of the Go
# module in folder SRC into ~/.cache/synthpref/NAME/<key>/NAME, keyed by a hash of SRC's go.mod,
# go.sum and *.go files and the Go version, unless it is there already (a warm machine does not
# rebuild); prints the binary's path as the last stdout line.
build_go_tool() {
    local name="$1" src="$2" package="${3:-.}"
    find_go "build-$name"
    local sources key cache_root out
    sources="$(find "$src" -maxdepth 1 \( -name go.mod -o -name go.sum -o -name '*.go' \) | sort)"
    # shellcheck disable=SC2086  # one file name per word
    key="$(cat $sources | sha256sum | cut -c1-16)_$("$GO" env GOVERSION)"
    cache_root="${SYNTHPREF_KUBE_CACHE:-$HOME/.cache/synthpref}"
    out="$cache_root/$name/$key/$name"
    if [[ ! -x "$out" ]]; then
        mkdir -p "$(dirname "$out")"
        go_cache_env "$cache_root"
        (cd "$src" && "$GO" build -mod=readonly -trimpath -ldflags "-s -w" -o "$out.tmp" "$package")
        mv -f "$out.tmp" "$out"
        echo "build-$name: built $out" >&2
    fi
    echo "$out"
}
