#!/usr/bin/env bash
# A throwaway PostgreSQL for tests: starts one on a free loopback port with a fresh data
# directory, prints its superuser URL (one line, with a random password) and the path of the CA
# certificate that signed its TLS certificate (a second line), then waits until its standard
# input closes (the test process ended, however it ended), stops the server and removes every
# file it made. Connections over TCP need a password (SCRAM), so tests of passwords test
# something; TLS is offered (for 127.0.0.1, by a CA made here), so tests of TLS test something.
# Uses Debian's postgresql package (scripts/bootstrap-postgres.sh), whose ssl-cert dependency
# brings the openssl command.
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
tls() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=alps throwaway CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr"
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
        -extfile "$dir/server.ext" -out "$dir/server.crt"
    chmod 600 "$dir/server.key"
}
tls >"$dir/tls.log" 2>&1 || { cat "$dir/tls.log" >&2; exit 1; }
if [[ ${#as_postgres[@]} -gt 0 ]]; then
    chown postgres: "$dir"/server.key "$dir"/server.crt
fi
"${as_postgres[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$dir/password" >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
for attempt in 1 2 3; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if "${as_postgres[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off} -c max_connections=200 \
            -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" \
        start >/dev/null; then
        # A reader that stops after the first line must not end this script (and its server).
        trap '' PIPE
        echo "postgres://postgres:$password@127.0.0.1:$port/postgres" || true
        echo "$dir/ca.crt" || true
        cat >/dev/null || true
        exit 0
    fi
    echo "PostgreSQL did not start on port $port (attempt $attempt):" >&2
    tail -5 "$dir/data/server.log" >&2 || true
done
exit 1
