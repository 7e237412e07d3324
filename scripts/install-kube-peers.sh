#!/usr/bin/env bash
# The Kubernetes control plane the cluster tests run against, built from the Go module proxy into a cache
# OUTSIDE the clone (so that CI, a fresh clone on the same machine, reuses it):
#   - etcd 3.6.16:            $CACHE/etcd-v3.6.16/etcd
#   - kube-apiserver v1.37.2: $CACHE/kube-apiserver-v1.37.2/kube-apiserver
# Neither can be `go install`ed (their go.mod files carry replace directives), so each is a tiny module of
# our own whose main calls the server's library entry point. A cold kube-apiserver build takes ~10 min on 2
# cores (and ~3 GB of Go build cache); etcd ~1 min. Idempotent: a second run only checks.
# Called by scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${STASH_RUNNER_CACHE:-$HOME/.cache/stash-runner}
ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.37.2  # k8s.io/kubernetes vX.Y.Z publishes its staging modules as v0.Y.Z
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
KUBE_DIR=$CACHE/kube-apiserver-$KUBE_VERSION

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
command -v openssl >/dev/null || {
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssl >/dev/null
}
mkdir -p "$CACHE"
exec 9>"$CACHE/.install-kube-peers.lock"
flock 9

etcd_ok() {
  local out
  [ -x "$ETCD_DIR/etcd" ] && out=$("$ETCD_DIR/etcd" --version 2>/dev/null) &&
    [[ $out == *"etcd Version: ${ETCD_VERSION#v}"* ]]
}
kube_ok() {
  local out
  [ -x "$KUBE_DIR/kube-apiserver" ] && out=$("$KUBE_DIR/kube-apiserver" --version 2>/dev/null) &&
    [[ $out == *"Kubernetes $KUBE_VERSION"* ]]
}

# build_into NAME OUTPUT LDFLAGS: builds the module prepared in $build/src into OUTPUT, atomically.
build_into() {
  local name=$1 out=$2 ldflags=$3
  (cd "$build/src" && "$GO" mod tidy 2>&1 | grep -v '^go: \(finding\|downloading\|found\)' || true
   [ -f "$build/src/go.sum" ] || { echo "install-kube-peers: go mod tidy failed for $name" >&2; exit 1; }
   cd "$build/src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags="-s -w $ldflags" -o "$build/$name" .)
  mkdir -p "$(dirname "$out")"
  mv -f "$build/$name" "$out"
}

# start_build WHAT: a fresh build directory ($build, removed on exit) with an empty module source in it.
start_build() {
  [ -x "$GO" ] || { echo "install-kube-peers: Go is missing (expected /usr/local/go/bin/go)" >&2; exit 1; }
  echo "install-kube-peers: building $1 from the Go module proxy"
  build=$(mktemp -d "$CACHE/.build.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  mkdir -p "$build/src"
}

if ! etcd_ok; then
  start_build "etcd $ETCD_VERSION (~1 min)"
  cat > "$build/src/main.go" <<'EOF'
// etcd's own main, which cannot be `go install`ed from its module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$build/src" && "$GO" mod init local/etcd >/dev/null 2>&1 &&
   "$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>&1 | grep -v '^go: \(finding\|downloading\|added\|upgraded\)' || true)
  build_into etcd "$ETCD_DIR/etcd" ""
  rm -rf "$build"; trap - EXIT
  etcd_ok || { echo "install-kube-peers: the built etcd does not run" >&2; exit 1; }
fi

if ! kube_ok; then
  start_build "kube-apiserver $KUBE_VERSION (4-10 min cold)"
  cat > "$build/src/main.go" <<'EOF'
// kube-apiserver's own main, which cannot be `go install`ed from its module.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() { os.Exit(cli.Run(app.NewAPIServerCommand())) }
EOF
  # k8s.io/kubernetes replaces its staging modules with ./staging/...; we name their published versions.
  mod=$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("GoMod") or sys.exit(d.get("Error")))')
  {
    echo "module local/kube-apiserver"
    echo
    grep -E '^go [0-9]' "$mod" | head -1
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$mod" | awk '{print $1}' | sort -u |
      while read -r staged; do echo "replace $staged => $staged $STAGING_VERSION"; done
  } > "$build/src/go.mod"
  grep -c '^replace' "$build/src/go.mod" | xargs echo "install-kube-peers: staging modules replaced:"
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  build_into kube-apiserver "$KUBE_DIR/kube-apiserver" \
    "-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  rm -rf "$build"; trap - EXIT
  kube_ok || { echo "install-kube-peers: the built kube-apiserver does not run" >&2; exit 1; }
fi
echo "install-kube-peers: ok (etcd $ETCD_VERSION, kube-apiserver $KUBE_VERSION in $CACHE)"
