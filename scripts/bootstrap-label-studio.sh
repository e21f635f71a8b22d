#!/usr/bin/env bash
# Creates the virtual environment `.venv-ls` and installs the pinned Label Studio of
# scripts/requirements-label-studio.txt, for the end-to-end test of alps-label-studio:
#
#   scripts/bootstrap-label-studio.sh
#   .venv/bin/python tests/e2e/test_label_studio.py
#
# Label Studio gets its own venv, apart from `.venv`, because it pins Django and many other
# packages of its own. Python 3.11 is preferred (what Label Studio 1.23 is tested with);
# PYTHON=/path/to/python overrides it.
#
# Then it migrates an empty Label Studio database once, `.venv-ls/alps-template/label_studio.sqlite3`,
# which tests/e2e/label_studio.py copies into each fresh data directory: Label Studio then starts
# in seconds instead of running its ~150 migrations on every start (one to three minutes).
#
# Idempotent: the requirements file is installed once and the template migrated once; a second
# run with nothing to do returns at once. Editing the requirements file makes the next run install
# it again and migrate a new template.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-ls"
requirements="$root/scripts/requirements-label-studio.txt"
me="bootstrap-label-studio"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null; then python=python3.11; else python=python3; fi
else
    python="$PYTHON"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    if ! command -v "$python" >/dev/null; then
        echo "$me: $python not found; install Python 3.10-3.12 (with venv) first, or set PYTHON" >&2
        exit 1
    fi
    echo "$me: creating virtual environment $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi

stamp="$venv/.alps-requirements-label-studio.sha256"
template="$venv/alps-template"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$me: requirements-label-studio is up to date"
else
    count="$(grep -cvE '^\s*(#|$)' "$requirements")"
    echo "$me: installing requirements-label-studio ($count pinned packages and their dependencies, about 1 GB the first time)"
    rm -rf "$template"
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$requirements"
    echo "$want" >"$stamp"
fi

if [[ -f "$template/label_studio.sqlite3" ]]; then
    echo "$me: template database is up to date"
else
    echo "$me: migrating the template database $template (a minute or more)"
    rm -rf "$template.tmp"
    mkdir -p "$template.tmp"
    # What `label-studio start` does before it creates the user: Django's migrate, same settings.
    LABEL_STUDIO_BASE_DATA_DIR="$template.tmp" SENTRY_DSN="" LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false \
        "$venv/bin/python" - <<'PY' >"$template.tmp/migrate.log" 2>&1 || { cat "$template.tmp/migrate.log" >&2; exit 1; }
import os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", "migrate", "--no-color", "--verbosity", "0"])
PY
    mkdir -p "$template"
    mv "$template.tmp/label_studio.sqlite3" "$template/label_studio.sqlite3"
    rm -rf "$template.tmp"
fi
echo "$me: label-studio $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("label-studio"))') ready ($venv/bin/label-studio)"
