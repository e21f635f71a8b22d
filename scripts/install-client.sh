#!/usr/bin/env bash
# Installs the Python client of alps.v1 (proto/python, package `alps-client`) into `.venv`,
# generating its stubs from proto/alps/v1/*.proto. Idempotent: reinstalls only when the client's
# sources or the .proto files changed since the last install.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
"$root/scripts/bootstrap.sh" "$root/scripts/requirements-client.txt" >/dev/null
stamp="$venv/.alps-client.sha256"
want="$(cd "$root" && find proto/alps proto/python -type f \( -name '*.proto' -o -name '*.py' -o -name '*.toml' \) \
    -not -path '*/build/*' | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "install-client: alps-client is up to date"
    exit 0
fi
echo "install-client: installing alps-client from proto/python"
# No build isolation: the pinned grpcio-tools of the venv generates the stubs, offline.
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet --no-build-isolation --no-deps "$root/proto/python"
rm -rf "$root/proto/python/build"
echo "$want" >"$stamp"
