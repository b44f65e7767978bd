//! Recommendation models on libtorch, one file each.

pub mod bprmf;
pub mod factors;
pub mod fm;
pub mod svd;

pub use factors::{Factors, FactorsConfig};
