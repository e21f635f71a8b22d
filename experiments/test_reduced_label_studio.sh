#!/usr/bin/env bash
# Reduced check of `--via label-studio` (issue #7): a fresh Label Studio (from .venv-ls, see
# scripts/bootstrap-label-studio.sh) and alps-label-studio next to a private alps-server; bald on a
# small balanced pool, one seed, two rounds. Fails (non-zero exit) unless every round's annotations
# grew the Label Studio project's count by the query size, the annotated tasks were the top of
# Label Studio's order by prediction score, alps-server holds exactly the labelled tasks after the
# adapter's resync, and each "Start training" produced a new model version that Predict serves.
#
#   experiments/test_reduced_label_studio.sh [ALPS_SERVER_BINARY]   (default: target/debug/alps-server;
#                                                                    alps-label-studio is taken from the same directory)
set -euo pipefail
cd "$(dirname "$0")/.."
server="${1:-${ALPS_SERVER:-target/debug/alps-server}}"
out="$(mktemp -d -t alps-al-ls-reduced.XXXXXX)"
trap 'rm -rf "$out"' EXIT
.venv/bin/python -m experiments.active_learning --via label-studio --reduced --server "$server" --out "$out"
