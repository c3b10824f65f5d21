#!/usr/bin/env bash
# Build a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager),
# kubectl and helm from the official Go modules, at pinned versions.
#
# Output: ~/.cache/synthpref/kube/<version-key>/bin/ (override the root with
# SYNTHPREF_KUBE_CACHE). The script prints the bin dir as its last stdout line and does
# nothing when every binary and the stamp file are already there.
#
# Why a scratch module: k8s.io/kubernetes has `replace` directives pointing at its staging
# folders, so `go install k8s.io/kubernetes/cmd/...@v1.x` fails. A throwaway module that
# requires k8s.io/kubernetes and replaces each k8s.io/<staging> module with its matching
# v0.N.M release builds fine. etcd's server module has local replaces too; the same trick
# (plus a three-line main calling etcdmain.Main) builds it. helm installs as is.
#
# Go caches live under ~/.cache/synthpref/go so a warm machine reuses them.
# Usage: scripts/build-kube-binaries.sh [--print-bin-dir]
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# shellcheck source=scripts/go-env.sh
source "$(dirname "$0")/go-env.sh"
find_go build-kube-binaries

GO_VERSION="$("$GO" env GOVERSION)"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"   # v1.36.3 -> v0.36.3
VERSION_KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_${GO_VERSION}"

CACHE_ROOT="${SYNTHPREF_KUBE_CACHE:-$HOME/.cache/synthpref}"
OUT_DIR="$CACHE_ROOT/kube/$VERSION_KEY"
BIN_DIR="$OUT_DIR/bin"
STAMP="$OUT_DIR/.stamp"
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl helm)

all_present() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$VERSION_KEY" ]] || return 1
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
    return 0
}

if all_present; then
    echo "build-kube-binaries: up to date ($VERSION_KEY)" >&2
    echo "$BIN_DIR"
    exit 0
fi

mkdir -p "$OUT_DIR" "$BIN_DIR"
# One builder at a time (pytest and `synthpref dev cluster up` may race).
exec 9>"$OUT_DIR/.lock"
flock 9
if all_present; then
    echo "$BIN_DIR"
    exit 0
fi

go_cache_env "$CACHE_ROOT"
export GOFLAGS="-mod=mod"

WORK="$OUT_DIR/scratch"
mkdir -p "$WORK"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
TOTAL_START=$SECONDS

log() { echo "build-kube-binaries: $*" >&2; }
elapsed() { echo "$(( SECONDS - $1 ))s"; }

# ---------------------------------------------------------------- etcd
build_etcd() {
    local t=$SECONDS dir="$WORK/etcd"
    rm -rf "$dir" && mkdir -p "$dir"
    cat >"$dir/main.go" <<'EOF'
// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    (
        cd "$dir"
        "$GO" mod init synthpref.local/etcd-build >/dev/null 2>&1
        # Pin every etcd module to the same release so `etcd --version` is consistent.
        "$GO" mod edit \
            -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
            -require="go.etcd.io/etcd/api/v3@$ETCD_VERSION" \
            -require="go.etcd.io/etcd/client/pkg/v3@$ETCD_VERSION" \
            -require="go.etcd.io/etcd/client/v3@$ETCD_VERSION" \
            -require="go.etcd.io/etcd/pkg/v3@$ETCD_VERSION"
        "$GO" mod tidy
        "$GO" build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" .
        mv -f "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
    )
    log "etcd $ETCD_VERSION built in $(elapsed "$t")"
}

# ---------------------------------------------------------------- kube
build_kube() {
    local t=$SECONDS dir="$WORK/kube"
    rm -rf "$dir" && mkdir -p "$dir"
    (
        cd "$dir"
        "$GO" mod init synthpref.local/kube-build >/dev/null 2>&1
        "$GO" mod edit -godebug=default=go1.26
        # Read k8s.io/kubernetes's own go.mod to learn which modules live in staging/.
        local kmod
        kmod="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
            sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
        [[ -f "$kmod" ]] || { log "cannot read go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
        local staging=() m
        while read -r m; do staging+=("$m"); done < <(
            sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#\1#p' "$kmod")
        [[ ${#staging[@]} -gt 10 ]] || { log "no staging replaces found in $kmod"; exit 1; }
        local edits=(-require="k8s.io/kubernetes@$K8S_VERSION")
        for m in "${staging[@]}"; do
            edits+=(-replace="$m=$m@$STAGING_VERSION")
        done
        edits+=(
            -tool=k8s.io/kubernetes/cmd/kube-apiserver
            -tool=k8s.io/kubernetes/cmd/kube-controller-manager
            -tool=k8s.io/kubernetes/cmd/kubectl
        )
        "$GO" mod edit "${edits[@]}"
        "$GO" mod tidy

        local major minor ldf="-s -w" pkg
        major="${K8S_VERSION#v}"; major="${major%%.*}"
        minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
        for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
            ldf+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
            ldf+=" -X $pkg.gitCommit=unknown -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
        done
        # One invocation so packages shared by the three commands compile once.
        mkdir -p "$dir/out"
        "$GO" build -trimpath -ldflags "$ldf" -o "$dir/out/" \
            k8s.io/kubernetes/cmd/kube-apiserver \
            k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kubectl
        for m in kube-apiserver kube-controller-manager kubectl; do
            mv -f "$dir/out/$m" "$BIN_DIR/$m"
        done
    )
    log "kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION built in $(elapsed "$t")"
}

# ---------------------------------------------------------------- helm
build_helm() {
    local t=$SECONDS
    local ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldf+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    GOBIN="$WORK/helm-bin" "$GO" install -trimpath -ldflags "$ldf" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv -f "$WORK/helm-bin/helm" "$BIN_DIR/helm"
    log "helm $HELM_VERSION built in $(elapsed "$t")"
}

[[ -x "$BIN_DIR/etcd" ]] || build_etcd
[[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && -x "$BIN_DIR/kubectl" ]] \
    || build_kube
[[ -x "$BIN_DIR/helm" ]] || build_helm

echo "$VERSION_KEY" >"$STAMP"
rm -rf "$WORK"
log "all binaries ready in $BIN_DIR (total $(elapsed "$TOTAL_START"))"
echo "$BIN_DIR"
