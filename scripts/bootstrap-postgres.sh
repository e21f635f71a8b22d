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
# Through env: sudo resets the environment, and a prompt (tzdata) would hang the install.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# The package makes and may start a default cluster on port 5432, which would come back at
# every boot; the tests start their own, so it is removed (it is new and empty).
for cluster in /etc/postgresql/*/main; do
    [[ -d $cluster ]] || continue
    version=$(basename "$(dirname "$cluster")")
    "${as_root[@]}" pg_dropcluster --stop "$version" main 2>/dev/null || true
done
