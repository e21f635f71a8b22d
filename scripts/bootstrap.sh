#!/usr/bin/env bash
# Creates the project virtual environment `.venv` and installs the pinned Python tools,
# above all `torch==2.11.0`, whose bundled libtorch is what `tch = "0.24"` builds and links
# against (LIBTORCH_USE_PYTORCH=1). Idempotent: a second run with nothing to do returns at once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements="$root/scripts/requirements.txt"
stamp="$venv/.alps-bootstrap.sha256"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "bootstrap: .venv is up to date ($(basename "$requirements") unchanged)"
    exit 0
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
    echo "bootstrap: $python not found; install Python 3.10+ first" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "bootstrap: creating virtual environment $venv"
    "$python" -m venv "$venv"
fi

echo "bootstrap: installing $(grep -cvE '^\s*(#|$)' "$requirements") pinned packages (torch is a multi-GB download the first time)"
"$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$requirements"

echo "bootstrap: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)') ready"
echo "$want" >"$stamp"
