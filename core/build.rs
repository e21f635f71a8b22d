//! Makes `alps-server` find libtorch at run time without `LD_LIBRARY_PATH`.
//!
//! torch-sys (`links = "tch"`) reports the libtorch directory as `DEP_TCH_LIBTORCH_LIB`; only
//! direct dependents see it, hence the direct `torch-sys` dependency. We then
//! * add that directory to the binary's rpath;
//! * link `libtorch_cuda` with `--no-as-needed` when it exists: nothing references its symbols
//!   directly, so the default `--as-needed` would drop it and `tch::Cuda::is_available()` would
//!   be false even on a CUDA machine;
//! * record the libtorch version (from `torch/version.py` beside `lib/`) for `self-check`.

use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch directory; no rpath set");
        println!("cargo:rustc-env=ALPS_LIBTORCH_VERSION=unknown");
        return;
    };
    let lib_dir = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    for cuda_lib in ["torch_cuda", "torch_hip"] {
        if lib_dir.join(format!("lib{cuda_lib}.so")).exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{cuda_lib},--as-needed");
        }
    }
    println!("cargo:rustc-env=ALPS_LIBTORCH_VERSION={}", libtorch_version(lib_dir));
}

/// Reads `__version__ = '2.11.0+cu130'` from the PyTorch package that holds `lib_dir`.
fn libtorch_version(lib_dir: &Path) -> String {
    let version_py = lib_dir.join("../version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    fs::read_to_string(&version_py)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("__version__"))
                .map(|rest| rest.trim_matches(|c: char| c == ' ' || c == '=' || c == '\'' || c == '"').to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
