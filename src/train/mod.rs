//! The training core shared by every model: optimisers with saveable state, seeded mini-batch
//! epochs built in Rust, and checkpoints (safetensors weights + JSON state) for exact resume.

pub mod checkpoint;
pub mod epoch;
mod fused;
pub mod optim;

pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use epoch::{run_epoch, EpochStats};
pub use optim::{Kind as OptimKind, LrSchedule, OptimConfig, Optimizer, Schedule};
