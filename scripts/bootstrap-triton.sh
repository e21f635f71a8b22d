#!/usr/bin/env bash
# Creates the virtual environment `.venv-triton` with Triton Inference Server's Python client
# (scripts/requirements-triton.txt) and NVIDIA's perf_analyzer: the standard clients of the Open
# Inference Protocol that `make test` and `make bench` drive ALPS with:
#
#   scripts/bootstrap-triton.sh
#   .venv-triton/bin/python -c 'import tritonclient.grpc, tritonclient.http'
#   .venv-triton/bin/perf_analyzer -m MODEL -u 127.0.0.1:50051 -i grpc
#
# A venv of its own because tritonclient requires protobuf<7 and `.venv`'s grpcio-tools needs 7.
# Python 3.11+ is required; PYTHON=/path/to/python overrides python3.
#
# perf_analyzer ships on PyPI only as a manylinux_2_38 wheel (glibc 2.38, GLIBCXX_3.4.32); Debian 12
# has glibc 2.36, so pip refuses it. On such a system the script unpacks the binary from the pinned
# wheel and runs it under Debian 13 (trixie)'s own loader, libc and libstdc++, unpacked (not
# installed) into `.venv-triton/glibc` from .debs fetched with a private apt configuration (the
# system's apt state is untouched); libssl, libcrypto and libz still come from the system.
# `.venv-triton/bin/perf_analyzer` is a wrapper doing that. On glibc >= 2.38 the wheel is pip-installed.
#
# Idempotent: the requirements file is installed once and perf_analyzer unpacked once; a second run
# with nothing to do returns at once. Editing the requirements file or the pins below redoes that part.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-triton"
requirements="$root/scripts/requirements-triton.txt"
python="${PYTHON:-python3}"
me="bootstrap-triton"

pa_version="2.60.0"
pa_wheel="perf_analyzer-$pa_version-py3-none-manylinux_2_38_x86_64.whl"
pa_sha256="23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25"
# Debian trixie packages for the loader; a point release drops old versions from the archive, and
# then the current ones are fetched instead (with a warning): update these pins to match.
debs=(libc6=2.41-12+deb13u5 libstdc++6=14.2.0-19 libgcc-s1=14.2.0-19)

if [[ ! -x "$venv/bin/python" ]]; then
    if ! command -v "$python" >/dev/null; then
        echo "$me: $python not found; install Python 3.11+ (with venv) first, or set PYTHON" >&2
        exit 1
    fi
    echo "$me: creating virtual environment $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi

stamp="$venv/.alps-requirements-triton.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$me: requirements-triton is up to date"
else
    count="$(grep -cvE '^\s*(#|$)' "$requirements")"
    echo "$me: installing requirements-triton ($count pinned packages and their dependencies)"
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$requirements"
    echo "$want" >"$stamp"
fi

pa_stamp="$venv/.alps-perf-analyzer.sha256"
pa_want="$(echo "$pa_sha256 ${debs[*]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$pa_stamp" && "$(cat "$pa_stamp")" == "$pa_want" ]]; then
    echo "$me: perf_analyzer is up to date"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "$me: downloading perf-analyzer $pa_version"
    "$venv/bin/python" -m pip download --disable-pip-version-check --progress-bar off --quiet --no-deps \
        --only-binary=:all: --platform manylinux_2_38_x86_64 -d "$tmp" "perf-analyzer==$pa_version"
    echo "$pa_sha256  $tmp/$pa_wheel" | sha256sum -c --quiet
    glibc="$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)"
    rm -rf "$venv/perf_analyzer" "$venv/glibc" "$venv/bin/perf_analyzer"
    if [[ "$(printf '%s\n' 2.38 "$glibc" | sort -V | head -1)" == 2.38 ]]; then
        echo "$me: glibc $glibc >= 2.38, pip-installing the wheel"
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps "$tmp/$pa_wheel"
    else
        for tool in apt-get dpkg-deb; do
            command -v "$tool" >/dev/null || { echo "$me: glibc $glibc < 2.38 and $tool not found" >&2; exit 1; }
        done
        echo "$me: glibc $glibc < 2.38, fetching Debian trixie's loader and C/C++ runtime (${debs[*]})"
        mkdir -p "$venv/perf_analyzer"
        "$venv/bin/python" - "$tmp/$pa_wheel" "$venv/perf_analyzer/perf_analyzer" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("perf_analyzer/bin/perf_analyzer") as binary, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(binary, out)
PY
        chmod +x "$venv/perf_analyzer/perf_analyzer"
        # Private apt: own sources, state, cache and (empty) conf dir, so no system hook runs.
        mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/archives/partial" "$tmp/apt/empty" "$tmp/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
            >"$tmp/apt/sources.list"
        cat >"$tmp/apt/apt.conf" <<EOF
Dir::State "$tmp/apt"; Dir::State::status "/dev/null"; Dir::Cache "$tmp/apt";
Dir::Etc::sourcelist "$tmp/apt/sources.list"; Dir::Etc::sourceparts "-";
Dir::Etc::parts "$tmp/apt/empty"; Dir::Etc::preferencesparts "$tmp/apt/empty";
APT::Architecture "amd64"; APT::Architectures { "amd64"; }; Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
        export APT_CONFIG="$tmp/apt/apt.conf"
        apt-get -q update >"$tmp/apt/update.log" 2>&1 || { cat "$tmp/apt/update.log" >&2; exit 1; }
        if ! (cd "$tmp/debs" && apt-get -q download "${debs[@]}"); then
            echo "$me: WARNING: pinned trixie versions not found, fetching the current ones; update the pins" >&2
            (cd "$tmp/debs" && apt-get -q download "${debs[@]%%=*}")
        fi
        for deb in "$tmp"/debs/*.deb; do
            echo "$me: unpacking $(basename "$deb")"
            dpkg-deb -x "$deb" "$venv/glibc"
        done
        cat >"$venv/bin/perf_analyzer" <<'EOF'
#!/usr/bin/env bash
# Written by scripts/bootstrap-triton.sh: runs perf_analyzer (built for glibc 2.38) under Debian
# trixie's loader and libraries from ../glibc, with the system's for the rest (libssl, libz).
venv="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
lib="$venv/glibc/usr/lib/x86_64-linux-gnu"
exec "$lib/ld-linux-x86-64.so.2" \
    --library-path "$lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$venv/perf_analyzer/perf_analyzer" "$@"
EOF
        chmod +x "$venv/bin/perf_analyzer"
    fi
    # It prints its version (as 0.0.0) to stderr and exits 0.
    out="$("$venv/bin/perf_analyzer" --version 2>&1)" || { echo "$me: perf_analyzer does not run: $out" >&2; exit 1; }
    echo "$pa_want" >"$pa_stamp"
fi
"$venv/bin/python" -c 'import tritonclient.grpc, tritonclient.http'
echo "$me: tritonclient $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("tritonclient"))') and perf_analyzer $pa_version ready ($venv/bin/perf_analyzer)"
