# Source this file (`source scripts/env.sh`) to run cargo by hand with the same environment as
# the Makefile: tch's build (torch-sys) then finds libtorch in the project venv's PyTorch.
# Keep these identical between runs, or torch-sys rebuilds its C++ bindings.
_alps_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$_alps_root/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset _alps_root
