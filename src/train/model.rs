//! The contract every trainable recommender fulfils, so one [`Trainer`](super::Trainer) trains
//! them all (RecBole's split: the model owns its loss and its data, the trainer owns the loop).
//!
//! A model owns its parameters and buffers under stable names, turns the training
//! [`Interactions`] into examples (drawing its own negatives each epoch), computes the loss of a
//! batch of example indices, and scores: `predict` for pairs, `score_all` for full ranking.

use std::collections::HashMap;
use std::sync::Arc;

use tch::{Device, Tensor};

use crate::data::Interactions;
use crate::error::{RecforgeError, Result};

/// How a model is validated during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// RMSE of `predict` against the validation ratings (lower is better).
    Rmse,
    /// Full-ranking NDCG@10 (monitored) and Hit@10 with the training items masked.
    Ranking,
}

impl Validation {
    /// The monitored metric and whether higher is better.
    pub fn monitor(self) -> (&'static str, bool) {
        match self {
            Validation::Rmse => ("rmse", false),
            Validation::Ranking => ("ndcg@10", true),
        }
    }
}

/// A recommender the generic trainer can train, save and score.
pub trait Model: Send {
    /// Trainable parameters under stable names (shallow handles).
    fn params(&self) -> Vec<(String, Tensor)>;
    /// Tensors saved with the parameters but not trained (batch-norm statistics, feature rows).
    fn buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Parameter values by name, from a checkpoint or a state dict (a missing or mis-shaped
    /// tensor is a `DataError` naming it).
    fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()>;
    /// The device the parameters live on.
    fn device(&self) -> Device;
    /// Users the model was built for (`None`: any user with a history, as sequential models).
    fn n_users(&self) -> Option<i64>;
    /// Items the model was built for.
    fn n_items(&self) -> i64;
    /// Takes the training interactions (checked against the model's sizes by the trainer).
    /// `fresh` is true when no optimiser step was taken yet (SVD starts its global bias at the
    /// mean rating then).
    fn set_train(&mut self, train: Arc<Interactions>, fresh: bool) -> Result<()>;
    /// Prepares epoch `epoch` (fresh negatives from `(seed, epoch)`) and returns its number of
    /// examples; batches are index sets into them.
    fn start_epoch(&mut self, seed: u64, epoch: u64) -> Result<usize>;
    /// The scalar loss of examples `idx` (an int64 CPU tensor), in training mode.
    fn batch_loss(&self, idx: &Tensor) -> Result<Tensor>;
    /// Scores of (user, item) pairs (index tensors on the model's device), `[B]`; by default
    /// picked from [`score_all`](Self::score_all) (what sequential models score from).
    fn predict(&self, users: &Tensor, items: &Tensor) -> Result<Tensor> {
        Ok(self
            .score_all(users, None)?
            .f_gather(1, &items.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?)
    }
    /// Scores of every item for `users`, `[B, n_items]`; a sequential model reads histories from
    /// `history` (default: its training interactions).
    fn score_all(&self, users: &Tensor, history: Option<&Interactions>) -> Result<Tensor>;
    /// How the trainer validates it.
    fn validation(&self) -> Validation;
    /// Scores of every item for a new user who rated `items` with `ratings` (rating models).
    fn fold_in(&self, _items: &[i64], _ratings: &[f32], _reg: f64) -> Result<Tensor> {
        Err(RecforgeError::config(
            "fold_in is available for rating models (SVD) only",
        ))
    }

    /// Checks user and item ids against the model's sizes.
    fn check_ids(&self, users: &[i64], items: &[i64]) -> Result<()> {
        if let Some(n) = self.n_users() {
            if let Some(&u) = users.iter().find(|&&u| u < 0 || u >= n) {
                return Err(RecforgeError::data(format!(
                    "user {u} is out of range (n_users = {n})"
                )));
            }
        } else if let Some(&u) = users.iter().find(|&&u| u < 0) {
            return Err(RecforgeError::data(format!("user {u} is negative")));
        }
        let n = self.n_items();
        if let Some(&i) = items.iter().find(|&&i| i < 0 || i >= n) {
            return Err(RecforgeError::data(format!(
                "item {i} is out of range (n_items = {n})"
            )));
        }
        Ok(())
    }
}
