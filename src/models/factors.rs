//! Embedding tables shared by the matrix-factorisation models: user and item factors, and
//! optionally user/item biases and a global bias (`mu + b_u + b_i + p_u . q_i`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::Var;
use crate::error::{RecforgeError, Result};

/// Sizes and initialisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorsConfig {
    /// Number of users.
    pub n_users: i64,
    /// Number of items.
    pub n_items: i64,
    /// Factor dimension.
    pub dim: i64,
    /// Whether to learn user/item/global biases.
    pub biases: bool,
    /// Standard deviation of the normal initialisation of the factors (biases start at 0).
    pub init_std: f64,
    /// Seed of the initialisation.
    pub seed: u64,
}

impl FactorsConfig {
    /// Checks sizes.
    pub fn validate(&self) -> Result<()> {
        if self.n_users < 1 || self.n_items < 1 || self.dim < 1 {
            return Err(RecforgeError::config(format!(
                "n_users, n_items and dim must be >= 1, got {}, {}, {}",
                self.n_users, self.n_items, self.dim
            )));
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(RecforgeError::config(
                "init_std must be a non-negative number",
            ));
        }
        Ok(())
    }
}

/// User, item and global biases.
#[derive(Debug)]
struct Biases {
    /// `user_bias` `[n_users]`.
    user: Var,
    /// `item_bias` `[n_items]`.
    item: Var,
    /// `global_bias` `[1]`.
    global: Var,
}

/// The parameters, in one `nn::VarStore`: `user_factors`, `item_factors` (sparse gradients),
/// and with `biases` `user_bias`, `item_bias`, `global_bias`.
#[derive(Debug)]
pub struct Factors {
    /// Configuration.
    pub config: FactorsConfig,
    vs: nn::VarStore,
    user_factors: Var,
    item_factors: Var,
    biases: Option<Biases>,
}

impl Factors {
    /// Fresh parameters on `device`, initialised from `config.seed`.
    pub fn new(config: FactorsConfig, device: Device) -> Result<Self> {
        config.validate()?;
        tch::manual_seed(config.seed as i64);
        let opts = (Kind::Float, Device::Cpu);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let init = |name: &str, n: i64| -> Result<Var> {
            let t =
                Tensor::f_randn([n, config.dim], opts)?.f_mul(&Tensor::from(config.init_std))?;
            Var::param(&root, name, &t)
        };
        let user_factors = init("user_factors", config.n_users)?;
        let item_factors = init("item_factors", config.n_items)?;
        let biases = if config.biases {
            let zeros = |name: &str, n: i64| Var::param(&root, name, &Tensor::f_zeros([n], opts)?);
            Some(Biases {
                user: zeros("user_bias", config.n_users)?,
                item: zeros("item_bias", config.n_items)?,
                global: zeros("global_bias", 1)?,
            })
        } else {
            None
        };
        Ok(Self {
            config,
            vs,
            user_factors,
            item_factors,
            biases,
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Named parameters (shallow handles): `user_factors`, `item_factors`, then (with biases)
    /// `user_bias`, `item_bias`, `global_bias`.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let biases = self
            .biases
            .iter()
            .flat_map(|b| [&b.user, &b.item, &b.global]);
        super::named(
            [&self.user_factors, &self.item_factors]
                .into_iter()
                .chain(biases),
        )
    }

    /// User factors `[n_users, dim]`.
    pub fn user_factors(&self) -> &Tensor {
        &self.user_factors
    }

    /// Item factors `[n_items, dim]`.
    pub fn item_factors(&self) -> &Tensor {
        &self.item_factors
    }

    /// User biases `[n_users]` (`None` without biases).
    pub fn user_bias(&self) -> Option<&Tensor> {
        self.biases.as_ref().map(|b| &*b.user)
    }

    /// Item biases `[n_items]` (`None` without biases).
    pub fn item_bias(&self) -> Option<&Tensor> {
        self.biases.as_ref().map(|b| &*b.item)
    }

    /// The global bias `[1]` (`None` without biases).
    pub fn global_bias(&self) -> Option<&Tensor> {
        self.biases.as_ref().map(|b| &*b.global)
    }

    /// Copies parameter values from `tensors` (checkpoint or state dict); a missing or mis-shaped
    /// tensor is an error naming it.
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let device = self.device();
        super::load_named(&mut self.params(), tensors, device)
    }

    /// Checks that ids lie in range.
    pub fn check_ids(&self, users: &[i64], items: &[i64]) -> Result<()> {
        if let Some(&u) = users.iter().find(|&&u| u < 0 || u >= self.config.n_users) {
            return Err(RecforgeError::data(format!(
                "user {u} is out of range (n_users = {})",
                self.config.n_users
            )));
        }
        if let Some(&i) = items.iter().find(|&&i| i < 0 || i >= self.config.n_items) {
            return Err(RecforgeError::data(format!(
                "item {i} is out of range (n_items = {})",
                self.config.n_items
            )));
        }
        Ok(())
    }

    /// Scores of (user, item) pairs (index tensors on this device): `[B]`.
    pub fn predict(&self, users: &Tensor, items: &Tensor) -> Result<Tensor> {
        let p = super::lookup(&self.user_factors, users)?;
        let q = super::lookup(&self.item_factors, items)?;
        let mut s = p.f_mul(&q)?.f_sum_dim_intlist(1, false, Kind::Float)?;
        if let Some(b) = &self.biases {
            s = s
                .f_add(&b.user.f_index_select(0, users)?)?
                .f_add(&b.item.f_index_select(0, items)?)?
                .f_add(&b.global)?;
        }
        Ok(s)
    }

    /// Scores of every item for each user: `[B, n_items]`.
    pub fn score_all(&self, users: &Tensor) -> Result<Tensor> {
        let p = super::lookup(&self.user_factors, users)?;
        let mut s = p.f_matmul(&self.item_factors.f_transpose(0, 1)?)?;
        if let Some(b) = &self.biases {
            let bu = b.user.f_index_select(0, users)?.f_unsqueeze(1)?;
            s = s
                .f_add(&bu)?
                .f_add(&b.item.f_unsqueeze(0)?)?
                .f_add(&b.global)?;
        }
        Ok(s)
    }

    /// Squared L2 norm of the rows touched by a batch, averaged over the batch: the per-example
    /// regularisation of Funk SVD / BPR.
    pub fn batch_l2(&self, users: &Tensor, items: &[&Tensor]) -> Result<Tensor> {
        let sq = |t: &Tensor, idx: &Tensor| -> Result<Tensor> {
            Ok(t.f_index_select(0, idx)?.f_square()?.f_sum(Kind::Float)?)
        };
        // Factor rows through the embedding lookup, so the penalty's gradient stays sparse (an
        // index_select would make the whole table's gradient dense every step).
        let sq_rows = |t: &Tensor, idx: &Tensor| -> Result<Tensor> {
            Ok(super::lookup(t, idx)?.f_square()?.f_sum(Kind::Float)?)
        };
        let mut total = sq_rows(&self.user_factors, users)?;
        for idx in items {
            total = total.f_add(&sq_rows(&self.item_factors, idx)?)?;
            if let Some(b) = &self.biases {
                total = total.f_add(&sq(&b.item.f_unsqueeze(1)?, idx)?)?;
            }
        }
        if let Some(b) = &self.biases {
            total = total.f_add(&sq(&b.user.f_unsqueeze(1)?, users)?)?;
        }
        Ok(total.f_div(&Tensor::from(users.size()[0] as f64))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch penalty reads factor rows through the embedding lookup: its gradient on the
    /// factor tables is sparse (so a step never walks the whole table) and equals
    /// `2 x row / batch` summed over the rows' uses.
    #[test]
    fn batch_l2_gradient_is_sparse_and_exact() {
        let f = Factors::new(
            FactorsConfig {
                n_users: 5,
                n_items: 7,
                dim: 3,
                biases: true,
                init_std: 0.5,
                seed: 2,
            },
            Device::Cpu,
        )
        .unwrap();
        super::super::assert_in_store(&f.vs, &f.params(), &[]);
        let users = Tensor::from_slice(&[1i64, 1, 4]);
        let items = Tensor::from_slice(&[0i64, 6, 6]);
        let penalty = f.batch_l2(&users, &[&items]).unwrap();
        let params: Vec<(String, Tensor)> = f.params();
        let inputs: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
        let grads = Tensor::run_backward(&[penalty], &inputs, false, false);
        for ((name, p), g) in params.iter().zip(&grads) {
            let (rows, uses): (&[i64], &[f64]) = match name.as_str() {
                "user_factors" => (&[1, 4], &[2.0, 1.0]),
                "item_factors" => (&[0, 6], &[1.0, 2.0]),
                _ => continue,
            };
            assert!(g.is_sparse(), "{name}: dense gradient");
            let dense = g.to_dense(None, false);
            let want = p.detach().zeros_like();
            for (&r, &n) in rows.iter().zip(uses) {
                want.get(r).copy_(&(p.detach().get(r) * (2.0 * n / 3.0)));
            }
            let diff = (&dense - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: {diff}");
        }
    }
}
