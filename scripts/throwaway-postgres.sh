#!/usr/bin/env bash
# A throwaway PostgreSQL for tests: starts one on a free loopback port with a fresh data
# directory, prints its superuser URL (one line, with a random password), then waits until its
# standard input closes (the test process ended, however it ended), stops the server and
# removes every file it made. Connections over TCP need a password (SCRAM), so tests of
# passwords test something. Uses Debian's postgresql package (scripts/bootstrap-postgres.sh).
# PG_FSYNC=on makes it durable like a real server (benchmarks); tests default to off (faster).
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
    echo "PostgreSQL is not installed: run scripts/bootstrap-postgres.sh" >&2
    exit 1
fi
dir=$(mktemp -d)
chmod 700 "$dir"
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$password" >"$dir/password"
# initdb refuses to run as root: as root, the server runs as the package's postgres user, which
# then owns the directory (no one else may enter it).
as_postgres=()
if [[ $(id -u) == 0 ]]; then
    as_postgres=(runuser -u postgres --)
    chown -R postgres: "$dir"
fi
cleanup() {
    "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"${as_postgres[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$dir/password" >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
for attempt in 1 2 3; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=200" \
        start >/dev/null; then
        echo "postgres://postgres:$password@127.0.0.1:$port/postgres"
        cat >/dev/null || true
        exit 0
    fi
    echo "PostgreSQL did not start on port $port (attempt $attempt):" >&2
    tail -5 "$dir/data/server.log" >&2 || true
done
exit 1
