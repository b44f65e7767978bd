//! Link settings for libtorch.
//!
//! torch-sys (`links = "tch"`) finds the libtorch of the Python `torch` wheel when
//! `LIBTORCH_USE_PYTORCH=1` and exports its library folder as `DEP_TCH_LIBTORCH_LIB`.
//! - The Python extension (feature `python`) finds libtorch next to itself in site-packages:
//!   `$ORIGIN/../torch/lib` (recforge/_native.so -> site-packages/torch/lib).
//! - Pure Rust test and benchmark binaries get an rpath to the libtorch they were built against,
//!   so `cargo test` runs without `LD_LIBRARY_PATH` (on another machine, set `LD_LIBRARY_PATH`).
//! - `--no-as-needed -ltorch` keeps libtorch (and through it libtorch_cuda) a dependency even
//!   though no symbol of it is used directly, so the CUDA kernels register on load.
//!
//! It also records two build facts for `recforge.build_info()` as compile-time environment
//! variables: `RECFORGE_TORCH_VERSION`, the version of the torch (libtorch) linked, read from
//! `torch/version.py` beside `DEP_TCH_LIBTORCH_LIB` (or libtorch's `build-version` file), and
//! `RECFORGE_TCH_VERSION`, the tch version in `Cargo.lock`; "unknown" when not found.

use std::path::Path;

/// `__version__ = '2.11.0+cu130'` in torch's `version.py`, else the first line of libtorch's
/// `build-version` file.
fn torch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    let version_py = root.join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    if let Ok(text) = std::fs::read_to_string(&version_py) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let v = rest.trim_start_matches([' ', '=', ':']).trim();
                let v = v.rsplit_once('=').map_or(v, |(_, v)| v).trim();
                let v = v.trim_matches(['\'', '"']);
                if !v.is_empty() {
                    return Some(v.to_owned());
                }
            }
        }
    }
    let text = std::fs::read_to_string(root.join("build-version")).ok()?;
    text.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The version of the `tch` package in `Cargo.lock`.
fn tch_version() -> Option<String> {
    let lock = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR")?).join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"tch\"" {
            let v = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(v.trim_matches('"').to_owned());
        }
    }
    None
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let torch =
        std::env::var_os("DEP_TCH_LIBTORCH_LIB").and_then(|lib| torch_version(Path::new(&lib)));
    let torch = torch.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RECFORGE_TORCH_VERSION={torch}");
    let tch = tch_version().unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RECFORGE_TCH_VERSION={tch}");
    let python_extension = std::env::var_os("CARGO_FEATURE_PYTHON").is_some();
    if python_extension {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    } else if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
