#!/usr/bin/env bash
# What `make demo` needs, and nothing more: Debian's postgresql (the server binaries, to run a throw-away
# cluster) and restic (to let restic check what the demo wrote), and stash-runner itself (pip install -e .).
# The test toolchain (storage emulators, MongoDB and Elasticsearch servers, kube-apiserver, podman) is
# `make deps`. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v runuser >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-demo-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # The Debian package would start a cluster of its own; the demo only wants the binaries.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
if ! "$PY" -c "import stash_runner, psycopg" 2>/dev/null || ! command -v stash-runner >/dev/null; then
  echo "install-demo-deps: pip install -e ."
  "$PY" -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
