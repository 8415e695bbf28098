#!/usr/bin/env bash
# Builds (or reuses) the controller-runtime baseline of `make bench` and prints its path last.
# The binary is cached outside the repository, keyed by the sources, go.mod, go.sum and the Go
# version: ${KUBERATOR_CACHE:-~/.cache/kuberator}/bench-controller-runtime/<key>/bench-controller-runtime
# Dependencies come from the Go module proxy, pinned by go.sum; the machine's Go is used as is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
CACHE="${KUBERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kuberator}"
command -v go >/dev/null || { echo "bench-controller-runtime: no \`go\` on PATH (needed for the controller-runtime baseline; or leave it out with --impls)" >&2; exit 1; }
key=$( (go version; cat go.mod go.sum ./*.go) | sha256sum | cut -c1-16)
out="$CACHE/bench-controller-runtime/$key"
if [ ! -x "$out/bench-controller-runtime" ]; then
  START=$(date +%s)
  say() { printf '[controller-runtime %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
  mkdir -p "$out"
  say "downloading modules (go.sum-pinned, $(go version | cut -d' ' -f3))"
  go mod download >"$out/download.log" 2>&1 || { tail -n 30 "$out/download.log" >&2; exit 1; }
  say "compiling sigs.k8s.io/controller-runtime $(sed -n 's/^\tsigs.k8s.io\/controller-runtime \(v[^ ]*\)$/\1/p' go.mod) and the bench operator"
  go build -trimpath -ldflags "-s -w" -o "$out/bench-controller-runtime.tmp" . >"$out/build.log" 2>&1 \
    || { echo "---- $out/build.log ----" >&2; tail -n 30 "$out/build.log" >&2; exit 1; }
  mv "$out/bench-controller-runtime.tmp" "$out/bench-controller-runtime"
  say "built $out/bench-controller-runtime"
fi
echo "$out/bench-controller-runtime"
