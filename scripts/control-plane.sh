#!/usr/bin/env bash
# Builds (or reuses) the local Kubernetes control plane that the tests, benchmarks and the demo
# run against: etcd, kube-apiserver, kube-controller-manager and a version-matched kubectl, all
# compiled from the Go module proxy with the machine's Go toolchain.
#
#   scripts/control-plane.sh ensure   # build what is missing, print the assets folder last
#   scripts/control-plane.sh path     # print the assets folder (no build)
#   scripts/control-plane.sh versions # print the pinned versions, oldest first
#   KUBERATOR_K8S_VERSION=1.33.x scripts/control-plane.sh ensure   # another minor, side by side
#
# Binaries land in a KUBEBUILDER_ASSETS-compatible folder outside the repository:
#   ${KUBERATOR_CACHE:-~/.cache/kuberator}/control-plane/v${K8S_VERSION}/{etcd,kube-apiserver,...}
# If KUBEBUILDER_ASSETS is set, its binaries are used and nothing is built.
set -euo pipefail

# The supported Kubernetes minors, each pinned to one patch release (keep in step with
# SUPPORTED_KUBERNETES_VERSIONS in kuberator/src/testing/assets.rs and the README).
PINNED="1.33.13 1.34.4 1.35.4 1.36.3 1.37.2"
# KUBERATOR_K8S_VERSION (or K8S_VERSION) picks one: a pinned patch, or a minor as `1.33` or
# `1.33.x` (its pinned patch); any other full version is built as given. Default: 1.36.
resolve_version() {
  local want="${1%.x}" v
  for v in $PINNED; do
    if [ "$want" = "$v" ] || [ "$want" = "${v%.*}" ]; then echo "$v"; return; fi
  done
  case "$want" in
    *.*.*) echo "$want" ;;
    *) echo "unknown Kubernetes version '$1' (pinned: $PINNED)" >&2; exit 2 ;;
  esac
}
K8S_VERSION="$(resolve_version "${KUBERATOR_K8S_VERSION:-${K8S_VERSION:-1.36}}")"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
CACHE="${KUBERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kuberator}"
ASSETS="$CACHE/control-plane/v$K8S_VERSION"
WORK="$CACHE/build"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

START=$(date +%s)
say() { printf '[control-plane %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }

# run STEP LOG CMD...: runs a step with its output in LOG; on failure shows the tail and how to retry.
run() {
  local step="$1" log="$2"; shift 2
  if ! "$@" >"$log" 2>&1; then
    say "FAILED: $step"
    echo "---- last 30 lines of $log ----" >&2
    tail -n 30 "$log" >&2
    echo "----" >&2
    echo "retry with: $0 ensure   (partial work in $WORK is reused; delete it to start over)" >&2
    exit 1
  fi
}

# wrapper DIR MODULE VERSION: a module that requires MODULE@VERSION and turns every relative
# `replace` of MODULE's own go.mod (its staging modules) into a versioned one, so `go build`
# resolves the same packages `go install MODULE@VERSION` would if it honoured replaces.
wrapper() {
  local dir="$1" module="$2" version="$3" staging_version="$4"
  mkdir -p "$dir"
  cd "$dir"
  if [ ! -f go.mod ]; then
    run "go mod init ($module)" "$dir/init.log" go mod init "kuberator.local/control-plane/$(basename "$dir")"
  fi
  say "downloading $module@$version"
  run "go mod download $module@$version" "$dir/download.log" \
    go mod download -json "$module@$version"
  local gomod
  gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$dir/download.log" | head -n 1)
  [ -f "$gomod" ] || { say "FAILED: no go.mod found for $module@$version"; exit 1; }
  # Relative replaces (`X => ./staging/...` or `X => ../api`) become `X => X <staging_version>`;
  # guard replaces pointing at a FORBIDDEN_DEPENDENCY folder are left out.
  local n=0
  while read -r from; do
    go mod edit -replace "$from=$from@$staging_version"
    n=$((n + 1))
  done < <(awk '
      /^replace[[:space:]]*\(/ { inblock = 1; next }
      inblock && /^\)/ { inblock = 0; next }
      inblock && $2 == "=>" && $3 ~ /^\.\.?\// && $3 !~ /FORBIDDEN/ { print $1 }
      /^replace[[:space:]]/ && $3 == "=>" && $4 ~ /^\.\.?\// && $4 !~ /FORBIDDEN/ { print $2 }
    ' "$gomod")
  say "$module: $n staging modules pinned to $staging_version"
}

build_etcd() {
  local dir="$WORK/etcd-$ETCD_VERSION"
  (
    wrapper "$dir" go.etcd.io/etcd/server/v3 "v$ETCD_VERSION" "v$ETCD_VERSION"
    say "resolving etcd dependencies"
    run "go get -tool go.etcd.io/etcd/server/v3@v$ETCD_VERSION" "$dir/get.log" \
      go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
    say "compiling etcd v$ETCD_VERSION"
    run "go build etcd" "$dir/build.log" \
      go build -trimpath -o "$ASSETS/etcd" go.etcd.io/etcd/server/v3
  )
}

k8s_ldflags() {
  local pkg ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    ldflags+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

build_k8s() {
  local dir="$WORK/kubernetes-$K8S_VERSION" staging="v0.${K8S_VERSION#*.}"
  (
    wrapper "$dir" k8s.io/kubernetes "v$K8S_VERSION" "$staging"
    for cmd in "$@"; do
      say "resolving $cmd dependencies"
      run "go get -tool k8s.io/kubernetes/cmd/$cmd@v$K8S_VERSION" "$dir/get-$cmd.log" \
        go get -tool "k8s.io/kubernetes/cmd/$cmd@v$K8S_VERSION"
      say "compiling $cmd v$K8S_VERSION (the slowest step on a cold machine)"
      run "go build $cmd" "$dir/build-$cmd.log" \
        go build -trimpath -ldflags "$(k8s_ldflags)" -o "$ASSETS/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
      mv "$ASSETS/$cmd.tmp" "$ASSETS/$cmd"
      say "built $ASSETS/$cmd"
    done
  )
}

ensure() {
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    say "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS (nothing is built)"
    echo "$KUBEBUILDER_ASSETS"
    return
  fi
  mkdir -p "$ASSETS" "$WORK"
  command -v go >/dev/null || { say "FAILED: no Go toolchain on PATH (needed to build the control plane)"; exit 1; }
  local missing=()
  for bin in kube-apiserver kubectl kube-controller-manager; do
    [ -x "$ASSETS/$bin" ] || missing+=("$bin")
  done
  if [ -x "$ASSETS/etcd" ] && [ ${#missing[@]} -eq 0 ]; then
    say "reusing cached binaries in $ASSETS (etcd v$ETCD_VERSION, kubernetes v$K8S_VERSION)"
  else
    say "building into $ASSETS with $(go version)"
    [ -x "$ASSETS/etcd" ] || { build_etcd; say "built $ASSETS/etcd"; }
    [ ${#missing[@]} -eq 0 ] || build_k8s "${missing[@]}"
    say "control plane ready in $ASSETS ($(du -sh "$ASSETS" | cut -f1) of binaries; Go's caches: $(go env GOMODCACHE), $(go env GOCACHE))"
  fi
  echo "$ASSETS"
}

case "${1:-ensure}" in
  ensure) ensure ;;
  path) echo "${KUBEBUILDER_ASSETS:-$ASSETS}" ;;
  versions) echo "$PINNED" ;;
  *) echo "usage: $0 [ensure|path|versions]" >&2; exit 2 ;;
esac
