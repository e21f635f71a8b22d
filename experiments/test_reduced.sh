#!/usr/bin/env bash
# Reduced active-learning experiment (issues #7 and #15): one seed, three rounds from zero labels,
# random + typiclust + bald + batch_bald + the server's default acquisition schedule on small
# balanced and imbalanced pools, through the public gRPC API of a private alps-server. Checks the
# pipeline (rows, accuracy in [0, 1], labels grow by the query size, training exactly once the
# labels cover 2 classes with a new model version each time, rankings from the active version
# ("untrained" first) and the expected heuristic: the schedule switches from typiclust to bald at
# 20 labels), not the science. Exits non-zero if the pipeline is broken.
#
#   experiments/test_reduced.sh [ALPS_SERVER_BINARY]     (default: target/debug/alps-server)
set -euo pipefail
cd "$(dirname "$0")/.."
server="${1:-${ALPS_SERVER:-target/debug/alps-server}}"
out="$(mktemp -d -t alps-al-reduced.XXXXXX)"
trap 'rm -rf "$out"' EXIT
.venv/bin/python -m experiments.active_learning --reduced --server "$server" --out "$out"
