#!/usr/bin/env bash
# Reduced active-learning experiment (issue #7): one seed, two rounds, random + bald + batch_bald
# on small balanced and imbalanced pools, through the public gRPC API of a private alps-server.
# Checks the pipeline (rows, accuracy in [0, 1], labels grow by the query size, a new model
# version every round), not the science. Exits non-zero if the pipeline is broken.
#
#   experiments/test_reduced.sh [ALPS_SERVER_BINARY]     (default: target/debug/alps-server)
set -euo pipefail
cd "$(dirname "$0")/.."
server="${1:-${ALPS_SERVER:-target/debug/alps-server}}"
out="$(mktemp -d -t alps-al-reduced.XXXXXX)"
trap 'rm -rf "$out"' EXIT
.venv/bin/python -m experiments.active_learning --reduced --server "$server" --out "$out"
