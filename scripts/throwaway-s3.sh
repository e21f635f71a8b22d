#!/usr/bin/env bash
# A throwaway S3-compatible server for tests: moto's S3 service (scripts/requirements-objects.txt,
# in the project venv) on a free loopback port, in memory. Prints its endpoint URL (one line),
# then waits until its standard input closes (the test process ended, however it ended) and
# stops the server. Buckets are made by the tests (an unsigned PUT /<bucket>).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
if ! "$python" -c 'import moto.server' 2>/dev/null; then
    echo "moto is not installed: run scripts/bootstrap.sh scripts/requirements-objects.txt" >&2
    exit 1
fi
log=$(mktemp)
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
for attempt in 1 2 3; do
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$python" -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
        if "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
            echo "http://127.0.0.1:$port"
            cat >/dev/null || true
            exit 0
        fi
        kill -0 "$server" 2>/dev/null || break
        sleep 0.2
    done
    echo "moto did not start on port $port (attempt $attempt):" >&2
    tail -5 "$log" >&2 || true
    kill "$server" 2>/dev/null || true
done
exit 1
