//! recforge's Rust core: data layer, sampling, evaluation, models and training on libtorch.
//!
//! The domain modules are pure Rust and tested with `cargo test`; `python` (feature `python`, on in
//! the maturin build only) is the one place that knows PyO3.

pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod llm;
pub mod models;
pub mod parallel;
pub mod rng;
pub mod sampling;
pub mod stats;
pub mod text;
pub mod timers;
pub mod train;

#[cfg(feature = "python")]
mod python;

pub use error::{RecforgeError, Result};
