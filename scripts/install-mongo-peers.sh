#!/usr/bin/env bash
# The MongoDB test peers, built from their own registries into a cache OUTSIDE the clone (so that CI, a
# fresh clone on the same machine, reuses them):
#   - FerretDB v1.24.2 from the Go module proxy (SQLite backend): $CACHE/ferretdb-v1.24.2/ferretdb
#   - mongo-java-server 1.47.0 (memory backend) from Maven Central with its dependencies, and our launcher
#     tests/peers/MongoJavaServerMain.java compiled against it: $CACHE/mongo-java-server-1.47.0/{lib,classes}
# Idempotent: a second run only checks (seconds). Called by scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${STASH_RUNNER_CACHE:-$HOME/.cache/stash-runner}
FERRETDB_VERSION=v1.24.2
MJS_VERSION=1.47.0
FERRETDB_DIR=$CACHE/ferretdb-$FERRETDB_VERSION
MJS_DIR=$CACHE/mongo-java-server-$MJS_VERSION
LAUNCHER=$ROOT/tests/peers/MongoJavaServerMain.java

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
# Maven and a JDK are on this machine kind; Debian's packages otherwise. Go (>= 1.24) must be there already:
# Debian's golang is too old for FerretDB.
if ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then
  echo "install-mongo-peers: apt-get install maven openjdk-17-jdk-headless"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends maven openjdk-17-jdk-headless >/dev/null
fi
mkdir -p "$CACHE"
# Two installs at once (a developer's and CI's) must not build into each other.
exec 9>"$CACHE/.install-mongo-peers.lock"
flock 9

# --- FerretDB ---------------------------------------------------------------------------------------------
ferretdb_ok() {  # (not `| grep -q`: with pipefail, ferretdb's SIGPIPE would fail the check at random)
  local out
  [ -x "$FERRETDB_DIR/ferretdb" ] && out=$("$FERRETDB_DIR/ferretdb" --version 2>/dev/null) &&
    [[ $out == *"version: $FERRETDB_VERSION"* ]]
}
if ! ferretdb_ok; then
  [ -x "$GO" ] || { echo "install-mongo-peers: Go is missing (expected /usr/local/go/bin/go)" >&2; exit 1; }
  echo "install-mongo-peers: building FerretDB $FERRETDB_VERSION from the Go module proxy"
  mod_dir=$("$GO" mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
            python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))')
  build=$(mktemp -d "$CACHE/.ferretdb-build.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  cp -r "$mod_dir/." "$build/src"
  chmod -R u+w "$build/src"
  # Without a version here the binary panics at start (the module zip does not carry it).
  printf '%s' "$FERRETDB_VERSION" > "$build/src/build/version/version.txt"
  (cd "$build/src" && "$GO" mod download && CGO_ENABLED=0 "$GO" build -trimpath -o "$build/ferretdb" ./cmd/ferretdb)
  mkdir -p "$FERRETDB_DIR"
  mv -f "$build/ferretdb" "$FERRETDB_DIR/ferretdb"
  rm -rf "$build"
  trap - EXIT
  ferretdb_ok || { echo "install-mongo-peers: the built ferretdb does not run" >&2; exit 1; }
fi

# --- mongo-java-server ------------------------------------------------------------------------------------
launcher_sum=$(sha256sum "$LAUNCHER" | cut -d' ' -f1)
stamp="$MJS_VERSION $launcher_sum"
if [ ! -f "$MJS_DIR/lib/mongo-java-server-$MJS_VERSION.jar" ] || [ ! -f "$MJS_DIR/classes/MongoJavaServerMain.class" ] ||
   [ "$(cat "$MJS_DIR/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "install-mongo-peers: mongo-java-server $MJS_VERSION from Maven Central, compiling the launcher"
  mkdir -p "$MJS_DIR"
  cat > "$MJS_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stash-runner</groupId>
  <artifactId>mongo-java-server-peer</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>de.bwaldvogel</groupId>
      <artifactId>mongo-java-server</artifactId>
      <version>$MJS_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$MJS_DIR/lib" "$MJS_DIR/classes" "$MJS_DIR/.stamp"
  (cd "$MJS_DIR" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime \
     -DoutputDirectory=lib > mvn.log 2>&1) || { cat "$MJS_DIR/mvn.log" >&2; exit 1; }
  mkdir -p "$MJS_DIR/classes"
  javac -nowarn -d "$MJS_DIR/classes" -cp "$MJS_DIR/lib/*" "$LAUNCHER"
  echo "$stamp" > "$MJS_DIR/.stamp"
fi

echo "install-mongo-peers: ok (FerretDB $FERRETDB_VERSION, mongo-java-server $MJS_VERSION, in $CACHE)"
