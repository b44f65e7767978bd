//! The training core shared by every model: optimisers with saveable state, seeded mini-batch
//! epochs built in Rust, and checkpoints (safetensors weights + JSON state) for exact resume.

pub mod checkpoint;
pub mod epoch;
mod fused;
pub mod model;
pub mod optim;
pub mod spec;
pub mod trainer;

pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use epoch::{run_epoch, EpochStats};
pub use model::{Model, Validation};
pub use optim::{Kind as OptimKind, LrSchedule, OptimConfig, Optimizer, ParamGroup, Schedule};
pub use spec::{FmFeatures, ModelSpec, SideData, Spec, TrainSpec};
pub use trainer::{EpochLog, FitOptions, FitReport, Hooks, NoHooks, Trainer};
