//! `PyTensor`: a zero-copy bridge between `torch.Tensor` and `tch::Tensor`.
//!
//! Both sides share one libtorch (the extension links the libtorch of the installed `torch`), so a
//! tensor crosses the boundary as a new handle on the same storage: an in-place change made in Rust
//! is seen by the Python tensor and the other way round.

use pyo3::prelude::*;
use pyo3::types::PyAny;
use pyo3::{ffi, Borrowed};
use tch::Tensor;

use super::errors::data_error;

/// A libtorch tensor passed to or returned from Python as a `torch.Tensor`.
pub struct PyTensor(pub Tensor);

impl<'a, 'py> FromPyObject<'a, 'py> for PyTensor {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        // SAFETY: `obj` is a live Python object for the duration of the call and the GIL is held.
        let unpacked =
            unsafe { Tensor::pyobject_unpack(obj.as_ptr() as *mut tch::python::CPyObject) }
                .map_err(crate::RecforgeError::from)?;
        match unpacked {
            Some(t) => Ok(PyTensor(t)),
            None => Err(data_error(format!(
                "expected a torch.Tensor, got {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "?".into())
            ))),
        }
    }
}

impl<'py> IntoPyObject<'py> for PyTensor {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let ptr = self.0.pyobject_wrap().map_err(crate::RecforgeError::from)?;
        // SAFETY: `pyobject_wrap` returns a new (owned) reference to a torch.Tensor, or fails above.
        Ok(unsafe { Bound::from_owned_ptr(py, ptr as *mut ffi::PyObject) })
    }
}

/// Adds `value` to every element of `tensor` in place (from Rust, on the shared storage) and returns
/// the same tensor. Used by the test suite to check that tensors cross the boundary without a copy.
#[pyfunction]
pub fn _tensor_add_(tensor: PyTensor, value: f64) -> PyResult<PyTensor> {
    let mut t = tensor.0;
    // Not `f_add_scalar_`: tch 0.24 frees the temporary `Scalar` before checking libtorch's error
    // flag, so a failing scalar op panics instead of returning `Err`. A 0-dim tensor operand
    // takes the fallible path and promotes like a Python number.
    let operand = Tensor::from(value);
    let _ = t.f_add_(&operand).map_err(crate::RecforgeError::from)?;
    Ok(PyTensor(t))
}

/// Returns a new tensor made in Rust: `0, 1, ..., n - 1` as float32 on the CPU.
#[pyfunction]
pub fn _tensor_arange(n: i64) -> PyTensor {
    PyTensor(Tensor::arange(n, (tch::Kind::Float, tch::Device::Cpu)))
}
