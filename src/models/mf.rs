//! Matrix factorisation on the trainer: SVD (biased MF on ratings, squared error) and BPR-MF
//! (unbiased MF on implicit feedback, BPR against one fresh uniform negative per positive).

use std::collections::HashMap;
use std::sync::Arc;

use tch::{Device, Tensor};

use super::factors::{Factors, FactorsConfig};
use super::{bprmf, svd};
use crate::data::{Columns, Interactions};
use crate::error::{RecforgeError, Result};
use crate::sampling::{self, Strategy};
use crate::train::model::{Model, Validation};

/// What an MF model is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfObjective {
    /// Squared error against ratings (SVD).
    Ratings,
    /// BPR against sampled negatives (BPR-MF).
    Bpr,
}

enum Data {
    Ratings(svd::Ratings),
    Implicit {
        train: Arc<Interactions>,
        triples: bprmf::Triples,
    },
}

/// SVD or BPR-MF with its training data.
pub struct MfModel {
    factors: Factors,
    objective: MfObjective,
    reg: f64,
    data: Option<Data>,
}

impl MfModel {
    /// Fresh factors.
    pub fn new(
        config: FactorsConfig,
        objective: MfObjective,
        reg: f64,
        device: Device,
    ) -> Result<Self> {
        Ok(Self {
            factors: Factors::new(config, device)?,
            objective,
            reg,
            data: None,
        })
    }
}

/// The user and item id of every interaction of `c`, as int64 tensors on `dev`.
pub(crate) fn id_tensors(c: &Columns, dev: Device) -> Result<(Tensor, Tensor)> {
    let users: Vec<i64> = c.users.iter().map(|&u| u as i64).collect();
    let items: Vec<i64> = c.items.iter().map(|&i| i as i64).collect();
    Ok((
        Tensor::from_slice(&users).f_to(dev)?,
        Tensor::from_slice(&items).f_to(dev)?,
    ))
}

/// One uniform negative per training interaction (never one of the user's items), drawn from
/// `(seed, epoch)`, as an int64 tensor on `dev`.
pub(crate) fn epoch_negatives(
    train: &Interactions,
    seed: u64,
    epoch: u64,
    dev: Device,
) -> Result<Tensor> {
    let neg = sampling::training_negatives(train, 1, &Strategy::Uniform, true, seed, epoch)?;
    Ok(Tensor::from_slice(&neg).f_to(dev)?)
}

/// Training ratings on `dev`, with their mean; a model on ratings needs them.
pub(crate) fn rating_data(train: &Interactions, dev: Device) -> Result<svd::Ratings> {
    let c = train.to_columns();
    let (users, items) = id_tensors(&c, dev)?;
    let r = c
        .ratings
        .ok_or_else(|| RecforgeError::data("a rating model needs interactions with ratings"))?;
    let mean = r.iter().map(|&x| x as f64).sum::<f64>() / r.len().max(1) as f64;
    Ok(svd::Ratings {
        users,
        items,
        ratings: Tensor::from_slice(&r).f_to(dev)?,
        mean,
    })
}

impl Model for MfModel {
    fn params(&self) -> Vec<(String, Tensor)> {
        self.factors.params()
    }
    fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.factors.load(tensors)
    }
    fn device(&self) -> Device {
        self.factors.device()
    }
    fn n_users(&self) -> Option<i64> {
        Some(self.factors.config.n_users)
    }
    fn n_items(&self) -> i64 {
        self.factors.config.n_items
    }
    fn set_train(&mut self, train: Arc<Interactions>, fresh: bool) -> Result<()> {
        let dev = self.device();
        self.data = Some(match self.objective {
            MfObjective::Ratings => {
                let r = rating_data(&train, dev)?;
                if fresh {
                    // Start the global bias at the mean rating, as Funk SVD does.
                    let g = self.factors.global_bias().ok_or_else(|| {
                        RecforgeError::config("this model has no parameter global_bias")
                    })?;
                    let _ = tch::no_grad(|| g.shallow_clone().f_fill_(r.mean))?;
                }
                Data::Ratings(r)
            }
            MfObjective::Bpr => {
                let (users, pos) = id_tensors(&train.to_columns(), dev)?;
                let neg = pos.f_zeros_like()?;
                Data::Implicit {
                    train,
                    triples: bprmf::Triples { users, pos, neg },
                }
            }
        });
        Ok(())
    }
    fn start_epoch(&mut self, seed: u64, epoch: u64) -> Result<usize> {
        let dev = self.device();
        match &mut self.data {
            None => Err(RecforgeError::config("set the training data first")),
            Some(Data::Ratings(r)) => Ok(r.ratings.size()[0] as usize),
            Some(Data::Implicit { train, triples }) => {
                triples.neg = epoch_negatives(train, seed, epoch, dev)?;
                Ok(train.n_interactions())
            }
        }
    }
    fn batch_loss(&self, idx: &Tensor) -> Result<Tensor> {
        match &self.data {
            None => Err(RecforgeError::config("set the training data first")),
            Some(Data::Ratings(r)) => svd::loss(&self.factors, r, idx, self.reg),
            Some(Data::Implicit { triples, .. }) => {
                bprmf::loss(&self.factors, triples, idx, self.reg)
            }
        }
    }
    fn predict(&self, users: &Tensor, items: &Tensor) -> Result<Tensor> {
        self.factors.predict(users, items)
    }
    fn score_all(&self, users: &Tensor, _history: Option<&Interactions>) -> Result<Tensor> {
        self.factors.score_all(users)
    }
    fn validation(&self) -> Validation {
        match self.objective {
            MfObjective::Ratings => Validation::Rmse,
            MfObjective::Bpr => Validation::Ranking,
        }
    }
    fn fold_in(&self, items: &[i64], ratings: &[f32], reg: f64) -> Result<Tensor> {
        match self.objective {
            MfObjective::Ratings => svd::fold_in(&self.factors, items, ratings, reg),
            MfObjective::Bpr => Err(RecforgeError::config(
                "fold_in is available for rating models (SVD) only",
            )),
        }
    }
}
