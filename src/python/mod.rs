//! The Python face of the Rust core: the `recforge._native` extension module.
//!
//! This is the only part of the crate that knows PyO3. Each submodule converts arguments, releases
//! the GIL through [`gil::without_gil`] and maps [`crate::RecforgeError`] to `recforge.errors`.

mod chat;
mod convert;
mod data;
mod errors;
mod eval;
mod gil;
mod llm;
mod models;
mod tensor;
mod text;

use pyo3::prelude::*;

/// `"cuda"` when libtorch sees a GPU, else `"cpu"`.
#[pyfunction]
fn device() -> PyResult<String> {
    Ok(crate::device::name(crate::device::resolve("auto")?))
}

/// Resolves a device name (`auto`, `cpu`, `cuda`, `cuda:N`) to the one a trainer would use.
#[pyfunction]
fn resolve_device(name: &str) -> PyResult<String> {
    Ok(crate::device::name(crate::device::resolve(name)?))
}

/// Clears and starts recforge's own timers (`crate::timers`); a ConfigError when they already run.
#[pyfunction]
fn _timers_start() -> PyResult<()> {
    Ok(crate::timers::start()?)
}

/// Stops recforge's own timers: per section, its name, timed calls and seconds.
#[pyfunction]
fn _timers_stop() -> Vec<(&'static str, u64, f64)> {
    crate::timers::stop()
}

/// The torch version the extension was built against (`torch/version.py` of the linked libtorch,
/// recorded by `build.rs`), behind a marker and NUL-terminated, so that Python can read it from the
/// file itself when the extension cannot be loaded (another torch installed):
/// `recforge._built_torch_from_file`.
static TORCH_MARKER: &str = concat!(
    "recforge-built-against-torch=",
    env!("RECFORGE_TORCH_VERSION"),
    "\0"
);

/// The version in [`TORCH_MARKER`]; `black_box` keeps the whole marker in the binary.
fn torch_built_against() -> &'static str {
    let marker = std::hint::black_box(TORCH_MARKER);
    marker
        .strip_prefix("recforge-built-against-torch=")
        .and_then(|v| v.strip_suffix('\0'))
        .unwrap_or(marker)
}

/// Number of threads recforge's parallel work uses in this process.
#[pyfunction]
fn num_threads() -> usize {
    crate::parallel::num_threads()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::parallel::init_global();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("_TORCH_VERSION", torch_built_against())?;
    m.add("_TCH_VERSION", env!("RECFORGE_TCH_VERSION"))?;
    errors::register(m)?;
    m.add_class::<data::PyInteractions>()?;
    m.add_class::<data::PyIdMap>()?;
    m.add_class::<models::PyTrainer>()?;
    m.add_class::<llm::PyLlmClient>()?;
    m.add_class::<llm::PyLocalLlm>()?;
    m.add_class::<text::PyTokenizer>()?;
    m.add_class::<text::PyEncoder>()?;
    m.add_class::<text::PyCausalLm>()?;
    m.add_class::<chat::PyChatTemplate>()?;
    m.add_function(wrap_pyfunction!(data::k_core, m)?)?;
    m.add_function(wrap_pyfunction!(data::leave_one_out, m)?)?;
    m.add_function(wrap_pyfunction!(data::ratio_split, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_rank_batch, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_corrected_hit_values, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_eval_negatives, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_training_negatives, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_bootstrap_ci, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_paired_bootstrap, m)?)?;
    m.add_function(wrap_pyfunction!(device, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_device, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_timers_start, m)?)?;
    m.add_function(wrap_pyfunction!(_timers_stop, m)?)?;
    // Test hooks of the tensor bridge live apart from the API, in `_native._testing`.
    let testing = PyModule::new(m.py(), "_testing")?;
    testing.add_function(wrap_pyfunction!(tensor::_tensor_add_, &testing)?)?;
    testing.add_function(wrap_pyfunction!(tensor::_tensor_arange, &testing)?)?;
    m.add_submodule(&testing)?;
    Ok(())
}
