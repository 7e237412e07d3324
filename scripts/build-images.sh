#!/usr/bin/env bash
# Builds the images with podman (make images): the shared runtime, then one image per database family.
#   SUITE=bookworm (default) -> localhost/stash-runner{,-postgres,-mongodb,-elasticsearch}:$VERSION
#   SUITE=trixie             -> the runtime and PostgreSQL images on Debian 13 (PostgreSQL client 17),
#                               tagged $VERSION-trixie, for the client/server version tests
# BASE defaults to the locally made Debian base (scripts/install-image-tools.sh); elsewhere give a public
# one, e.g. BASE=docker.io/library/debian:bookworm-slim. Layers are cached by podman, so a rebuild with
# nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/images/containers.conf}
SUITE=${SUITE:-bookworm}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE=${BASE:-localhost/stash-runner-base:$SUITE}
TAG=$VERSION; [ "$SUITE" = bookworm ] || TAG=$VERSION-$SUITE
FAMILIES=${FAMILIES:-postgres mongodb elasticsearch}; [ "$SUITE" = bookworm ] || FAMILIES=postgres
args=(--network=host --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION")
# a TLS-intercepting proxy's CA bundle, for pip and npm inside the build; never written into a layer
[ -s /etc/ssl/certs/ca-certificates.crt ] && args+=(--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt)

build() {  # name containerfile [extra args]
  local name=$1 file=$2; shift 2
  local t0=$SECONDS
  podman build -q "${args[@]}" "$@" -f "$file" -t "localhost/$name:$TAG" . >/dev/null
  echo "build-images: localhost/$name:$TAG ($((SECONDS - t0)) s, $(podman image inspect -f '{{.Size}}' "localhost/$name:$TAG" | awk '{printf "%d MB", $1/1e6}'))"
}
build stash-runner images/runtime.Containerfile
for family in $FAMILIES; do
  build "stash-runner-$family" "images/$family.Containerfile" --build-arg "RUNTIME=localhost/stash-runner:$TAG"
done
# the layers the rebuilt tags left behind (untagged images only)
podman image prune -f >/dev/null
