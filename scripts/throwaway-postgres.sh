#!/usr/bin/env bash
# A throwaway PostgreSQL for tests: starts one on a free loopback port with a fresh data
# directory, prints its URL (one line), then waits until its standard input closes (the test
# process ended, however it ended), stops the server and removes every file it made.
# Uses Debian's postgresql package (scripts/bootstrap-postgres.sh installs it).
# PG_FSYNC=on makes it durable like a real server (benchmarks); tests default to off (faster).
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
    echo "PostgreSQL is not installed: run scripts/bootstrap-postgres.sh" >&2
    exit 1
fi
dir=$(mktemp -d)
# initdb refuses to run as root: as root, the server runs as the package's postgres user.
as_postgres=()
if [[ $(id -u) == 0 ]]; then
    as_postgres=(runuser -u postgres --)
    chmod 777 "$dir"
fi
cleanup() {
    "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
"${as_postgres[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
for attempt in 1 2 3; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=200" start >/dev/null; then
        echo "postgres://postgres@127.0.0.1:$port/postgres"
        cat >/dev/null || true
        exit 0
    fi
    echo "PostgreSQL did not start on port $port (attempt $attempt):" >&2
    tail -5 "$dir/server.log" >&2 || true
done
exit 1
