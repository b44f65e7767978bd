//! The Python exception hierarchy of `recforge.errors`, and the mapping from the crate's error enum.
//!
//! ```text
//! RecforgeError (Exception)
//! ├── DataError        bad input data (lengths, ids, values, files)
//! │   └── SplitError   a split that cannot be made as asked
//! ├── ConfigError      an invalid argument or configuration value
//! ├── TorchError       a libtorch operation failed
//! └── StorageError     reading or writing a file failed
//! ```

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::error::RecforgeError as CoreError;

create_exception!(
    recforge.errors,
    RecforgeError,
    PyException,
    "Base class of every error recforge raises."
);
create_exception!(
    recforge.errors,
    DataError,
    RecforgeError,
    "Input data is malformed: wrong lengths, out-of-range ids, non-finite values, bad files."
);
create_exception!(
    recforge.errors,
    SplitError,
    DataError,
    "A train/valid/test split cannot be made as asked."
);
create_exception!(
    recforge.errors,
    ConfigError,
    RecforgeError,
    "An argument or configuration value is invalid."
);
create_exception!(
    recforge.errors,
    TorchError,
    RecforgeError,
    "A libtorch operation failed."
);
create_exception!(
    recforge.errors,
    StorageError,
    RecforgeError,
    "Reading or writing a file failed."
);

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> Self {
        let msg = e.to_string();
        match e {
            CoreError::Data(_) => DataError::new_err(msg),
            CoreError::Split(_) => SplitError::new_err(msg),
            CoreError::Config(_) => ConfigError::new_err(msg),
            CoreError::Torch(_) => TorchError::new_err(msg),
            CoreError::Io { .. } => StorageError::new_err(msg),
        }
    }
}

/// A `DataError` with the given message (for checks made in the binding layer).
pub fn data_error(msg: impl Into<String>) -> PyErr {
    DataError::new_err(msg.into())
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RecforgeError", py.get_type::<RecforgeError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("SplitError", py.get_type::<SplitError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("TorchError", py.get_type::<TorchError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    Ok(())
}
