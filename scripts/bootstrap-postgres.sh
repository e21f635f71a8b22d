#!/usr/bin/env bash
# Installs Debian's PostgreSQL server package where it is missing: the tests of the PostgreSQL
# catalogue start throwaway servers from it (scripts/throwaway-postgres.sh). Idempotent.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
as_root=()
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { echo "installing PostgreSQL needs root (apt-get install postgresql)" >&2; exit 1; }
    as_root=(sudo)
fi
echo "installing Debian's postgresql package for the tests"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The package may start a default cluster; the tests need none running.
for cluster in /etc/postgresql/*/main; do
    [[ -d $cluster ]] || continue
    version=$(basename "$(dirname "$cluster")")
    "${as_root[@]}" pg_ctlcluster "$version" main stop 2>/dev/null || true
done
