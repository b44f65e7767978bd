//! Statistics for comparing systems: bootstrap confidence intervals and paired tests.

pub mod bootstrap;
pub mod normal;

pub use bootstrap::{bootstrap_ci, paired_bootstrap, Interval, Method, PairedResult, Statistic};
