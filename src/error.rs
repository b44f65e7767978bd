//! The one error type of the crate.
//!
//! Every fallible function in the pure Rust modules returns [`Result`]. The Python bindings map each
//! variant to one exception class of `recforge.errors` (see `src/python/errors.rs`), so user input
//! never makes Rust panic.

/// Everything that can go wrong in recforge's Rust core.
#[derive(Debug, thiserror::Error)]
pub enum RecforgeError {
    /// Input data is malformed: wrong lengths, out-of-range ids, non-finite values, empty input.
    #[error("{0}")]
    Data(String),
    /// A split cannot be made as asked (for example users with too few interactions and
    /// `short_users="raise"`).
    #[error("{0}")]
    Split(String),
    /// A configuration or argument value is invalid (fractions that do not sum to one, k = 0, ...).
    #[error("{0}")]
    Config(String),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// An I/O operation failed; `context` names the file or action.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (usually the path).
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result with [`RecforgeError`].
pub type Result<T> = std::result::Result<T, RecforgeError>;

impl RecforgeError {
    /// A [`RecforgeError::Data`] from anything printable.
    pub fn data(msg: impl Into<String>) -> Self {
        Self::Data(msg.into())
    }
    /// A [`RecforgeError::Config`] from anything printable.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }
    /// A [`RecforgeError::Split`] from anything printable.
    pub fn split(msg: impl Into<String>) -> Self {
        Self::Split(msg.into())
    }
}
