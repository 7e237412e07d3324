#!/bin/bash
# initdb into the container's own filesystem, then the server on 127.0.0.1:$PGPORT with password auth.
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
data=/tmp/pgdata
pwfile=$(mktemp)
printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
"$bin/initdb" -D "$data" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" >/dev/null
rm -f "$pwfile"
exec "$bin/postgres" -D "$data" -c listen_addresses=127.0.0.1 -c port="$PGPORT" -c unix_socket_directories=/tmp
