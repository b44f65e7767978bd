//! One training epoch: a seeded permutation of the examples, cut into mini-batches, each a
//! forward pass, a backward pass and an optimiser step.

use tch::Tensor;

use super::optim::Optimizer;
use crate::error::{RecforgeError, Result};
use crate::rng::Rng;

/// What an epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// Mean training loss over the batches run.
    pub loss: f64,
    /// Batches run.
    pub batches: usize,
    /// Whether `should_stop` ended the epoch early (e.g. Ctrl-C).
    pub interrupted: bool,
}

/// Runs one epoch over `n_examples` examples: the order is a permutation drawn from
/// `Rng::new(seed, epoch)`, so epoch `e` sees the same batches (and dropout masks) whether or not
/// training was resumed in between. `batch_loss` gets the example indices of a batch (as an int64
/// CPU tensor) and returns a scalar loss. `after_batch(done, total, mean_loss)` is called after
/// every batch (progress reporting); when it returns `true` the epoch stops there (e.g. Ctrl-C).
pub fn run_epoch(
    n_examples: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    optimizer: &mut Optimizer,
    mut batch_loss: impl FnMut(&Tensor) -> Result<Tensor>,
    mut after_batch: impl FnMut(usize, usize, f64) -> bool,
) -> Result<EpochStats> {
    if batch_size == 0 {
        return Err(RecforgeError::config("batch_size must be >= 1"));
    }
    if n_examples == 0 {
        return Err(RecforgeError::data("no training examples"));
    }
    let mut rng = Rng::new(seed, epoch);
    // libtorch's own generator (dropout) is reseeded from (seed, epoch) too, so an epoch's random
    // numbers do not depend on what ran before it: resuming from a checkpoint is exact.
    tch::manual_seed((rng.next_u64() >> 1) as i64);
    let mut order: Vec<i64> = (0..n_examples as i64).collect();
    rng.shuffle(&mut order);
    let (mut total, mut batches) = (0.0, 0usize);
    let n_batches = n_examples.div_ceil(batch_size);
    for chunk in order.chunks(batch_size) {
        let idx = Tensor::from_slice(chunk);
        let loss = batch_loss(&idx)?;
        let value = loss.f_double_value(&[])?;
        if !value.is_finite() {
            return Err(RecforgeError::data(format!(
                "the training loss became {value} at epoch {epoch}, batch {batches}; lower the learning rate"
            )));
        }
        optimizer.backward_step(&loss)?;
        total += value;
        batches += 1;
        if after_batch(batches, n_batches, total / batches as f64) {
            return Ok(EpochStats {
                loss: total / batches as f64,
                batches,
                interrupted: true,
            });
        }
    }
    Ok(EpochStats {
        loss: total / batches as f64,
        batches,
        interrupted: false,
    })
}
