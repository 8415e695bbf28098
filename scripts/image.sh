#!/usr/bin/env bash
# Builds a container image of an operator binary without a Docker engine or a registry pull:
# the release binary, the shared libraries it links (from `ldd`) and a passwd entry for the
# non-root user 65532 go into one layer; the result is an OCI image archive that
# `docker load`, `podman load` and `skopeo copy oci-archive:…` take as it is.
#
#   scripts/image.sh                       # the demo operator (`-p kuberator-examples --bin demo`)
#   scripts/image.sh -p my-crate my-bin    # any binary of the workspace
#   IMAGE=registry.example.com/op:1.0 scripts/image.sh …   # the name inside the archive
#
# It then proves the root filesystem is complete: the binary is run in a chroot of exactly the
# layer's files, as user 65532, with `manifests --image …` (the install bundle subcommand of
# `kuberator::manifests::cli`), which must print the bundle. Sizes are printed last.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=kuberator-examples
if [ "${1:-}" = "-p" ]; then PACKAGE="$2"; shift 2; fi
BIN="${1:-demo}"
IMAGE="${IMAGE:-localhost/$BIN:latest}"
TARGET="$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')"
OUT="$TARGET/image/$BIN"
say() { printf '[image] %s\n' "$*" >&2; }

say "building $PACKAGE --bin $BIN (release)"
cargo build --quiet --release -p "$PACKAGE" --bin "$BIN"
BINARY="$TARGET/release/$BIN"

rm -rf "$OUT" && mkdir -p "$OUT/rootfs/etc" "$OUT/rootfs/tmp" "$OUT/layout/blobs/sha256"
ROOTFS="$OUT/rootfs"
cp "$BINARY" "$ROOTFS/$BIN"
strip "$ROOTFS/$BIN"
# The shared libraries and the dynamic loader the binary needs, at their own paths.
for lib in $(ldd "$BINARY" | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$ROOTFS/"; done
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ROOTFS/etc/group"
chmod 1777 "$ROOTFS/tmp"

say "checking the layer is complete: chroot, user 65532, '$BIN manifests --image $IMAGE'"
if [ "$(id -u)" != 0 ]; then
  say "not checked: chroot needs root (run as root to prove the layer holds every library)"
elif ! chroot --userspec=65532:65532 "$ROOTFS" "/$BIN" manifests --image "$IMAGE" >"$OUT/bundle.yaml" 2>"$OUT/chroot.err"; then
  say "the binary does not run from its own layer:"; cat "$OUT/chroot.err" >&2; exit 1
elif ! grep -q '^kind: Deployment' "$OUT/bundle.yaml"; then
  say "no Deployment in the bundle the binary printed from its layer"; exit 1
fi

# One reproducible layer: sorted, epoch mtimes, numeric root ownership.
LAYER_TAR="$OUT/layer.tar"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$ROOTFS" -cf "$LAYER_TAR" .
DIFF_ID=$(sha256sum "$LAYER_TAR" | cut -d' ' -f1)
gzip -n -9 -c "$LAYER_TAR" >"$OUT/layer.tar.gz"

blob() { # file → its digest, stored as a blob
  local digest; digest=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$OUT/layout/blobs/sha256/$digest"; echo "$digest"
}
size() { stat -c %s "$1"; }

LAYER=$(blob "$OUT/layer.tar.gz")
cat >"$OUT/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"User":"65532:65532","Entrypoint":["/$BIN"],"Env":["PATH=/"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$DIFF_ID"]},"history":[{"created_by":"scripts/image.sh $BIN"}]}
JSON
CONFIG=$(blob "$OUT/config.json")
cat >"$OUT/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$CONFIG","size":$(size "$OUT/config.json")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$LAYER","size":$(size "$OUT/layer.tar.gz")}]}
JSON
MANIFEST=$(blob "$OUT/manifest.json")
cat >"$OUT/layout/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$MANIFEST","size":$(size "$OUT/manifest.json"),"annotations":{"io.containerd.image.name":"$IMAGE","org.opencontainers.image.ref.name":"${IMAGE##*:}"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$OUT/layout/oci-layout"
# `docker load` of Docker before 25 reads manifest.json (the docker-archive format) instead.
cat >"$OUT/layout/manifest.json" <<JSON
[{"Config":"blobs/sha256/$CONFIG","RepoTags":["$IMAGE"],"Layers":["blobs/sha256/$LAYER"]}]
JSON
ARCHIVE="$TARGET/image/$BIN.oci.tar"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$OUT/layout" -cf "$ARCHIVE" .

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "binary $BINARY: $(mib "$(size "$BINARY")") ($(mib "$(size "$ROOTFS/$BIN")") stripped)"
say "libraries: $(ldd "$BINARY" | grep -o '/[^ ]*' | xargs -n1 basename | tr '\n' ' ')"
say "image $IMAGE: $(mib "$(du -sb "$ROOTFS" | cut -f1)") unpacked, $(mib "$(size "$OUT/layer.tar.gz")") compressed (one layer)"
say "archive: $ARCHIVE (docker load -i / podman load -i)"
echo "$ARCHIVE"
