//! Negative sampling for training and for sampled evaluation.

pub mod alias;
pub mod negatives;

pub use alias::AliasTable;
pub use negatives::{eval_negatives, training_negatives, Strategy, UserItemSets};
