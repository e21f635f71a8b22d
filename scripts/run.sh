#!/usr/bin/env bash
# Starts alps-server and alps-label-studio from target/release on localhost with the embedded
# default data dir (./data), prints where they listen, and stops both cleanly on Ctrl-C/SIGTERM.
# Every setting can be changed with the ALPS_* environment variables (see README).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release"
export ALPS_LISTEN="${ALPS_LISTEN:-127.0.0.1:50051}"
export ALPS_DATA_DIR="${ALPS_DATA_DIR:-$root/data}"
export ALPS_METRICS_LISTEN="${ALPS_METRICS_LISTEN:-127.0.0.1:9464}"
export ALPS_HTTP_LISTEN="${ALPS_HTTP_LISTEN:-127.0.0.1:8000}"
export ALPS_LS_LISTEN="${ALPS_LS_LISTEN:-127.0.0.1:9090}"
export ALPS_CORE_URL="${ALPS_CORE_URL:-http://$ALPS_LISTEN}"

pids=()
stopped=""
stop() {
    trap - INT TERM
    # Once: Ctrl-C runs it from the trap, and then again after `wait -n` returns.
    [[ -n "$stopped" ]] && return
    stopped=1
    echo "run: stopping alps-label-studio and alps-server"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

"$bin/alps-server" &
pids+=($!)
"$bin/alps-label-studio" &
pids+=($!)

cat <<INFO
run: alps-server        gRPC    $ALPS_LISTEN   (alps.v1 and the Open Inference Protocol; data $ALPS_DATA_DIR)
run: alps-server        HTTP    http://$ALPS_HTTP_LISTEN/v2   (Open Inference Protocol REST; metrics http://$ALPS_METRICS_LISTEN/metrics)
run: Python client      .venv/bin/alps-client --help   (or: from alps_client import Client)
run: alps-label-studio  HTTP    http://$ALPS_LS_LISTEN   (connect it in Label Studio: Settings > Model)
run: Ctrl-C stops both.
INFO

# If either process exits (e.g. a port is taken), stop the other and report its status.
status=0
wait -n "${pids[@]}" || status=$?
stop
exit "$status"
