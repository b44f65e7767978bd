//! The one helper that releases the GIL around work in the Rust core.

use pyo3::prelude::*;

/// Runs `work` with the GIL released and turns its error into the matching Python exception.
///
/// Extract owned (or `Send`-borrowed) inputs first, then call the pure Rust function inside.
/// Every call that may take long (building CSR arrays, splits, training, evaluation) goes through
/// here, so other Python threads and the notebook stay responsive, and so libtorch's autograd
/// (which needs the GIL free on its worker threads) never deadlocks. The work runs on
/// [`crate::parallel::run`]'s pool, which stays usable in a forked child process.
pub fn without_gil<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: FnOnce() -> crate::Result<T> + Send,
    T: Send,
{
    py.detach(|| crate::parallel::run(work))
        .map_err(PyErr::from)
}
