//! The one helper that releases the GIL around work in the Rust core, and the one bridge that
//! brings progress callbacks and Ctrl-C back into Python while that work runs.

use std::time::{Duration, Instant};

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

/// Progress and Ctrl-C from inside released-GIL work: each [`Bridge::call`] takes the GIL,
/// checks for Ctrl-C, and runs a Python callback; the first Python exception or Ctrl-C asks the
/// work to stop, and is kept for [`Bridge::finish`].
pub struct Bridge {
    failure: Option<PyErr>,
    interrupted: bool,
    last: Option<Instant>,
    every: Duration,
}

impl Bridge {
    /// A bridge that runs throttled calls at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            failure: None,
            interrupted: false,
            last: None,
            every,
        }
    }

    /// Checks Ctrl-C and runs `f` with the GIL; returns `true` when the work should stop.
    /// With `throttle`, a call within `every` of the previous one returns at once.
    pub fn call(&mut self, throttle: bool, f: impl FnOnce(Python<'_>) -> PyResult<()>) -> bool {
        if self.failure.is_some() || self.interrupted {
            return true;
        }
        if throttle && self.last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        self.last = Some(Instant::now());
        Python::attach(|py| {
            if py.check_signals().is_err() {
                self.interrupted = true;
                return true;
            }
            match f(py) {
                Ok(()) => false,
                Err(e) => {
                    self.failure = Some(e);
                    true
                }
            }
        })
    }

    /// Whether Ctrl-C stopped the work.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// The work's result, unless a callback raised (that exception wins) or, with
    /// `raise_interrupt`, Ctrl-C stopped it (`KeyboardInterrupt`).
    pub fn finish<T>(self, out: PyResult<T>, raise_interrupt: bool) -> PyResult<T> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        if raise_interrupt && self.interrupted {
            return Err(PyKeyboardInterrupt::new_err("interrupted"));
        }
        out
    }
}

/// Runs `work` with the GIL released, feeding `progress(done, total)` and checking Ctrl-C
/// (which raises `KeyboardInterrupt` once the work has stopped).
pub fn with_progress<T: Send>(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    work: impl FnOnce(&mut dyn FnMut(usize, usize) -> bool) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let mut bridge = Bridge::new(Duration::ZERO);
    let b = &mut bridge;
    let out = without_gil(py, move || {
        let mut tick = |done: usize, total: usize| {
            b.call(false, |py| match progress.as_ref() {
                Some(cb) => cb.call1(py, (done, total)).map(|_| ()),
                None => Ok(()),
            })
        };
        work(&mut tick)
    });
    bridge.finish(out, true)
}
