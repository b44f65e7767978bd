//! The one helper that releases the GIL around work in the Rust core.

use pyo3::exceptions::PyKeyboardInterrupt;
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

/// Runs `work` with the GIL released, feeding `progress(done, total)` and checking Ctrl-C.
pub fn with_progress<T: Send>(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    work: impl FnOnce(&mut dyn FnMut(usize, usize) -> bool) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let mut failure: Option<PyErr> = None;
    let mut interrupted = false;
    let (failed, stopped) = (&mut failure, &mut interrupted);
    let out = without_gil(py, move || {
        let mut tick = |done: usize, total: usize| {
            Python::attach(|py| {
                if let Err(e) = py.check_signals() {
                    *failed = Some(e);
                    *stopped = true;
                    return true;
                }
                if let Some(Err(e)) = progress.as_ref().map(|cb| cb.call1(py, (done, total))) {
                    *failed = Some(e);
                    return true;
                }
                false
            })
        };
        work(&mut tick)
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if interrupted {
        return Err(PyKeyboardInterrupt::new_err("interrupted"));
    }
    out
}
