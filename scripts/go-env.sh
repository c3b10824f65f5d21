# Sourced by the scripts that build Go binaries (build-kube-binaries.sh, build-s3-server.sh):
# which Go toolchain to use, and where its caches live, shared between them.

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
