#!/usr/bin/env bash
# The Elasticsearch/OpenSearch test peers, from their own registries into a cache OUTSIDE the clone (so that CI,
# a fresh clone on the same machine, reuses them):
#   - Elasticsearch 7.17.29 and 8.7.1, OpenSearch 2.19.6: the "integ-test-zip" distributions from Maven Central
#     (no bundled JDK, few modules), unzipped into $CACHE/elasticsearch-<version>, $CACHE/opensearch-<version>
#   - elasticdump 6.125.1 from npm: $CACHE/elasticdump-6.125.1/node_modules/.bin/{elasticdump,multielasticdump}
# Everything is made readable by others: the servers run as `nobody` (Elasticsearch refuses root); the tests
# reach the trees through hard links in their run dirs, since $HOME is usually 0700.
# Idempotent: a second run only checks (seconds). Called by scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${STASH_RUNNER_CACHE:-$HOME/.cache/stash-runner}
# group:artifact:version of each integ-test zip; the directory name is <artifact>-<version>.
DISTS=(
  "org.elasticsearch.distribution.integ-test-zip:elasticsearch:7.17.29"
  "org.elasticsearch.distribution.integ-test-zip:elasticsearch:8.7.1"
  "org.opensearch.distribution.integ-test-zip:opensearch:2.19.6"
)
ELASTICDUMP_VERSION=6.125.1
ELASTICDUMP_DIR=$CACHE/elasticdump-$ELASTICDUMP_VERSION
M2=${MAVEN_REPO:-$HOME/.m2/repository}

# Maven, a JDK 17 and unzip on this machine kind; Debian's packages otherwise. npm comes from install-deps.sh.
need_apt=()
command -v mvn >/dev/null || need_apt+=(maven)
[ -d /usr/lib/jvm/java-17-openjdk-amd64 ] || command -v java >/dev/null || need_apt+=(openjdk-17-jdk-headless)
command -v unzip >/dev/null || need_apt+=(unzip)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-es-peers: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
mkdir -p "$CACHE"
# Two installs at once (a developer's and CI's) must not unpack into each other.
exec 9>"$CACHE/.install-es-peers.lock"
flock 9

build=""
trap '[ -z "$build" ] || rm -rf "$build"' EXIT

# --- the server distributions -----------------------------------------------------------------------------
for gav in "${DISTS[@]}"; do
  IFS=: read -r group artifact version <<<"$gav"
  dir=$CACHE/$artifact-$version
  stamp="$gav:zip"
  if [ -x "$dir/bin/$artifact" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  echo "install-es-peers: $artifact $version (integ-test zip) from Maven Central"
  zip=$M2/${group//.//}/$artifact/$version/$artifact-$version.zip
  if [ ! -f "$zip" ]; then
    log=$(mktemp)
    mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$M2" dependency:get -Dartifact="$gav:zip" \
      -Dtransitive=false >"$log" 2>&1 ||
      { cat "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
  fi
  [ -f "$zip" ] || { echo "install-es-peers: Maven did not leave $zip" >&2; exit 1; }
  # Unpacked beside the final place, then renamed: an interrupted run leaves no half tree behind.
  build=$(mktemp -d "$CACHE/.$artifact-$version.XXXXXX")
  unzip -q "$zip" -d "$build"
  [ -x "$build/$artifact-$version/bin/$artifact" ] ||
    { echo "install-es-peers: $zip has no $artifact-$version/bin/$artifact" >&2; exit 1; }
  chmod -R a+rX "$build/$artifact-$version"
  echo "$stamp" > "$build/$artifact-$version/.stamp"
  rm -rf "$dir"
  mv "$build/$artifact-$version" "$dir"
  rm -rf "$build"; build=""
done

# --- elasticdump ------------------------------------------------------------------------------------------
elasticdump_ok() {
  local out
  [ -x "$ELASTICDUMP_DIR/node_modules/.bin/multielasticdump" ] &&
    out=$("$ELASTICDUMP_DIR/node_modules/.bin/elasticdump" --version 2>/dev/null) &&
    [[ $out == *"$ELASTICDUMP_VERSION"* ]]
}
if ! elasticdump_ok; then
  echo "install-es-peers: elasticdump $ELASTICDUMP_VERSION from npm"
  mkdir -p "$ELASTICDUMP_DIR"
  npm install --silent --no-audit --no-fund --prefix "$ELASTICDUMP_DIR" "elasticdump@$ELASTICDUMP_VERSION" >/dev/null
  chmod -R a+rX "$ELASTICDUMP_DIR"
  elasticdump_ok || { echo "install-es-peers: the installed elasticdump does not run" >&2; exit 1; }
fi

echo "install-es-peers: ok (Elasticsearch 7.17.29 and 8.7.1, OpenSearch 2.19.6, elasticdump $ELASTICDUMP_VERSION," \
     "in $CACHE)"
