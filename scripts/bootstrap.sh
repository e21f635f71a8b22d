#!/usr/bin/env bash
# Creates the project virtual environment `.venv` and installs pinned Python packages, above
# all `torch==2.11.0`, whose bundled libtorch is what `tch = "0.24"` builds and links against
# (LIBTORCH_USE_PYTORCH=1).
#
#   scripts/bootstrap.sh                                  # scripts/requirements.txt
#   scripts/bootstrap.sh scripts/requirements-bench.txt   # plus the benchmark tools (Baal)
#
# Idempotent: each requirements file is installed once; a second run with nothing to do returns
# at once. Editing a requirements file makes the next run install it again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    if ! command -v "$python" >/dev/null; then
        echo "bootstrap: $python not found; install Python 3.11+ (with venv) first" >&2
        exit 1
    fi
    echo "bootstrap: creating virtual environment $venv"
    "$python" -m venv "$venv"
fi

for requirements in "$root/scripts/requirements.txt" "$@"; do
    name="$(basename "$requirements" .txt)"
    stamp="$venv/.alps-$name.sha256"
    want="$(sha256sum "$requirements" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "bootstrap: $name is up to date"
        continue
    fi
    count="$(grep -cvE '^\s*(#|$)' "$requirements")"
    echo "bootstrap: installing $name ($count pinned packages; torch is a multi-GB download the first time)"
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$requirements"
    echo "$want" >"$stamp"
done
echo "bootstrap: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') ready"
