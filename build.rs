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

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let python_extension = std::env::var_os("CARGO_FEATURE_PYTHON").is_some();
    if python_extension {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    } else if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
