#!/usr/bin/env bash
# Lints the deployment files, validates the compose files against the Compose Specification's
# schema, checks that each compose profile starts what its services depend on, and validates the
# rendered Kubernetes manifests against the Kubernetes API schemas, offline (make test; the tools
# come from scripts/requirements-deploy.txt).
#
#   deploy/check.sh [DEPLOY_DIR]    # default: the deploy/ directory next to this script
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy="${1:-$here}"
bin="$(cd "$here/.." && pwd)/.venv/bin"
for tool in yamllint check-jsonschema kubectl kubernetes-validate; do
    if [[ ! -x "$bin/$tool" ]]; then
        echo "deploy/check.sh: $bin/$tool is missing; run scripts/bootstrap.sh scripts/requirements-deploy.txt" >&2
        exit 1
    fi
done

"$bin/yamllint" --strict -c "$here/yamllint.yaml" "$deploy"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$deploy"/compose*.yaml
echo "deploy/check.sh: compose files validate against the Compose Specification: $(cd "$deploy" && echo compose*.yaml)"
for compose in "$deploy"/compose*.yaml; do
    "$bin/python" "$here/compose_profiles.py" "$compose"
done
echo "deploy/check.sh: every compose profile starts the services its services depend on"
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for overlay in "$deploy"/kubernetes/overlays/*/; do
    name="$(basename "$overlay")"
    "$bin/kubectl" kustomize "$overlay" >"$rendered/$name.yaml"
    "$bin/kubernetes-validate" --strict --quiet "$rendered/$name.yaml"
    echo "deploy/check.sh: overlay $name renders and validates ($(grep -c '^kind:' "$rendered/$name.yaml") resources)"
done
