//! Factorization Machines (Rendle 2010) and Neural FMs (He & Chua 2017) over sparse features.
//!
//! Every example is a (user, item) pair whose features are the user's feature row plus the item's
//! feature row. A row is a padded list of feature indices with values (`value 0` = padding), so a
//! user row holds the user-id feature and any user side features, an item row the item-id feature
//! and e.g. multi-hot genres or keywords. For features `x` with factors `v_f`:
//!
//! - FM: `y = w0 + sum_f w_f x_f + sum_{f<g} <v_f, v_g> x_f x_g`, the pairwise term computed in
//!   O(k n) as `0.5 * sum_k ((sum_f v_fk x_f)^2 - sum_f v_fk^2 x_f^2)`.
//! - NFM: the bi-interaction vector `0.5 * ((sum_f v_f x_f)^2 - sum_f (v_f x_f)^2)` (length k) goes
//!   through dropout and an MLP (ReLU) to a scalar, added to `w0 + sum_f w_f x_f`. With
//!   `batch_norm`, batch normalisation follows the bi-interaction pooling and every hidden layer
//!   (before its ReLU), as in the authors' code; its running statistics are saved with the
//!   weights.
//!
//! Because the sums split into a user part and an item part, full-ranking scores of a user over
//! all items need the item aggregates once per batch, not per pair.

use std::collections::HashMap;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::train::model::{Model, Validation};

use super::{BatchNorm, Linear, Var, BN_EPS};

/// Sizes and options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FmConfig {
    /// Number of features (user ids, item ids and side features together).
    pub n_features: i64,
    /// Factor dimension k.
    pub dim: i64,
    /// Hidden layer sizes of the NFM's MLP; empty = plain FM.
    pub hidden: Vec<i64>,
    /// Dropout on the bi-interaction vector and after each hidden layer (NFM only).
    pub dropout: f64,
    /// Standard deviation of the initial factors.
    pub init_std: f64,
    /// Initialisation seed.
    pub seed: u64,
    /// Batch normalisation in the NFM's MLP.
    #[serde(default)]
    pub batch_norm: bool,
}

/// Floats in one block of an NFM's first-layer output while scoring all items (8 MB).
const SCORE_BLOCK: i64 = 2_000_000;

/// Padded feature rows of users or items: `idx` and `val` are `[n_rows, width]`, on the model's
/// device (saved with the weights, used to score), with a host copy without the padding (what
/// training batches are built from).
#[derive(Debug)]
pub struct FeatureRows {
    /// Feature indices (int64).
    pub idx: Tensor,
    /// Feature values (float32; 0 marks padding).
    pub val: Tensor,
    /// Row `r`'s non-zero features are `nz_idx[ptr[r]..ptr[r + 1]]` (CSR, host).
    ptr: Vec<usize>,
    nz_idx: Vec<i64>,
    nz_val: Vec<f32>,
}

impl FeatureRows {
    /// Rows from row-major `[n_rows, width]` buffers, checked against `n_features`.
    pub fn new(
        idx: &[i64],
        val: &[f32],
        width: usize,
        n_features: i64,
        device: Device,
    ) -> Result<Self> {
        if width == 0 || idx.len() != val.len() || idx.len() % width != 0 {
            return Err(RecforgeError::data(format!(
                "feature rows must be [n_rows, width] with width >= 1; got {} indices, {} values, width {width}",
                idx.len(),
                val.len()
            )));
        }
        if let Some(&f) = idx.iter().find(|&&f| f < 0 || f >= n_features) {
            return Err(RecforgeError::data(format!(
                "feature index {f} is out of range (n_features = {n_features})"
            )));
        }
        if let Some(v) = val.iter().find(|v| !v.is_finite()) {
            return Err(RecforgeError::data(format!(
                "feature value {v} is not finite"
            )));
        }
        let rows = (idx.len() / width) as i64;
        // Zero values add nothing to any sum (padding, or an explicit 0), so training skips them.
        let mut ptr = Vec::with_capacity(rows as usize + 1);
        let (mut nz_idx, mut nz_val) = (Vec::new(), Vec::new());
        ptr.push(0);
        for (fs, vs) in idx.chunks(width).zip(val.chunks(width)) {
            for (&f, &v) in fs.iter().zip(vs) {
                if v != 0.0 {
                    nz_idx.push(f);
                    nz_val.push(v);
                }
            }
            ptr.push(nz_idx.len());
        }
        Ok(Self {
            idx: Tensor::from_slice(idx)
                .f_view([rows, width as i64])?
                .f_to(device)?,
            val: Tensor::from_slice(val)
                .f_view([rows, width as i64])?
                .f_to(device)?,
            ptr,
            nz_idx,
            nz_val,
        })
    }

    /// Number of rows.
    pub fn n_rows(&self) -> i64 {
        self.idx.size()[0]
    }
}

/// Per-row sums: linear term `[n]`, `sum_f v_f x_f` `[n, k]`, `sum_f (v_f x_f)^2` `[n, k]`.
pub struct Aggregates {
    lin: Tensor,
    sum: Tensor,
    sq: Tensor,
}

/// An FM or NFM. Its variables live in one `nn::VarStore`: `bias`, `linear`, `factors`, with
/// an NFM's `bn.{j}.*` (batch norm) and `mlp.{j}.*` (its layers).
#[derive(Debug)]
pub struct Fm {
    /// Configuration.
    pub config: FmConfig,
    vs: nn::VarStore,
    /// Global bias `[1]`.
    bias: Var,
    /// Linear weights `[n_features]`.
    linear: Var,
    /// Factors `[n_features, dim]` (sparse gradients).
    factors: Var,
    /// Batch norm after the bi-interaction pooling and each hidden layer (empty without
    /// `batch_norm`).
    bn: Vec<BatchNorm>,
    /// The NFM's layers, the last one to a scalar (empty for a plain FM).
    mlp: Vec<Linear>,
    /// Kept between training batches: an id's position among a batch's distinct rows (-1 when
    /// absent), so deduplicating costs the batch's size, not the table's.
    slot: Mutex<Vec<i64>>,
}

impl Fm {
    /// Fresh parameters from `config.seed`. Linear weights and biases start at 0; MLP weights use
    /// PyTorch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pub fn new(config: FmConfig, device: Device) -> Result<Self> {
        if config.n_features < 1 || config.dim < 1 || config.hidden.iter().any(|&h| h < 1) {
            return Err(RecforgeError::config(
                "n_features, dim and hidden sizes must be >= 1",
            ));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(RecforgeError::config(format!(
                "dropout must be in [0, 1), got {}",
                config.dropout
            )));
        }
        tch::manual_seed(config.seed as i64);
        let cpu = (Kind::Float, Device::Cpu);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let bias = Var::param(&root, "bias", &Tensor::f_zeros([1], cpu)?)?;
        let linear = Var::param(&root, "linear", &Tensor::f_zeros([config.n_features], cpu)?)?;
        let factors = Var::param(
            &root,
            "factors",
            &Tensor::f_randn([config.n_features, config.dim], cpu)?
                .f_mul(&Tensor::from(config.init_std))?,
        )?;
        let mut bn = Vec::new();
        if config.batch_norm && !config.hidden.is_empty() {
            let bn_sizes = std::iter::once(config.dim).chain(config.hidden.iter().copied());
            for (j, n) in bn_sizes.enumerate() {
                bn.push(BatchNorm::new(&root.sub("bn").sub(j), n)?);
            }
        }
        let mut fan_in = config.dim;
        let layers: Vec<i64> = config
            .hidden
            .iter()
            .copied()
            .chain(if config.hidden.is_empty() {
                None
            } else {
                Some(1)
            })
            .collect();
        let mut mlp = Vec::new();
        for (j, &out) in layers.iter().enumerate() {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let u = |shape: &[i64]| -> Result<Tensor> {
                Ok(Tensor::f_rand(shape, cpu)?
                    .f_mul(&Tensor::from(2.0 * bound))?
                    .f_sub(&Tensor::from(bound))?)
            };
            let weight = u(&[out, fan_in])?;
            mlp.push(Linear::new(&root.sub("mlp").sub(j), &weight, &u(&[out])?)?);
            fan_in = out;
        }
        Ok(Self {
            config,
            vs,
            bias,
            linear,
            factors,
            bn,
            mlp,
            slot: Mutex::new(Vec::new()),
        })
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Named parameters (shallow handles): `bias`, `linear`, `factors`, every `bn.{j}.weight`
    /// and `bn.{j}.bias`, every `mlp.{j}.weight` and `mlp.{j}.bias`.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let bn = self.bn.iter().flat_map(BatchNorm::params);
        let mlp = self.mlp.iter().flat_map(Linear::vars);
        super::named(
            [&self.bias, &self.linear, &self.factors]
                .into_iter()
                .chain(bn)
                .chain(mlp),
        )
    }

    /// Named buffers: batch-norm running statistics (shallow handles).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        super::named(self.bn.iter().flat_map(BatchNorm::buffers))
    }

    /// Copies parameter and buffer values by name (missing or mis-shaped tensors are errors).
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let device = self.device();
        super::load_named(&mut self.params(), tensors, device)?;
        super::load_named(&mut self.buffers(), tensors, device)
    }

    /// Batch normalisation `j` over the last dimension: batch statistics (updating the running
    /// ones) when training, the running statistics otherwise; identity without `batch_norm`.
    fn batch_norm(&self, x: Tensor, j: usize, train: bool) -> Result<Tensor> {
        let Some(bn) = self.bn.get(j) else {
            return Ok(x);
        };
        if train {
            let shape = x.size();
            let flat = x.f_reshape([-1, shape[shape.len() - 1]])?;
            return Ok(bn.train_rows(&flat)?.f_reshape(shape)?);
        }
        bn.eval(&x)
    }

    /// The linear term `sum_f w_f x_f` `[N]` and the factors `[N, L, k]` of padded feature rows
    /// `idx`, `val` (`[N, L]`).
    fn lookup_rows(&self, idx: &Tensor, val: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = idx.size();
        let flat = idx.f_reshape([-1])?;
        let lin = self
            .linear
            .f_index_select(0, &flat)?
            .f_view([shape[0], shape[1]])?
            .f_mul(val)?
            .f_sum_dim_intlist(1, false, Kind::Float)?;
        let v =
            super::lookup(&self.factors, &flat)?.f_view([shape[0], shape[1], self.config.dim])?;
        Ok((lin, v))
    }

    /// Sums over the feature rows `rows` (a `[B]` index tensor into `features`).
    pub fn aggregate(&self, features: &FeatureRows, rows: &Tensor) -> Result<Aggregates> {
        let idx = features.idx.f_index_select(0, rows)?; // [B, L]
        let val = features.val.f_index_select(0, rows)?; // [B, L]
        let (lin, v) = self.lookup_rows(&idx, &val)?;
        let vx = v.f_mul(&val.f_unsqueeze(2)?)?;
        Ok(Aggregates {
            lin,
            sum: vx.f_sum_dim_intlist(1, false, Kind::Float)?,
            sq: vx.f_square()?.f_sum_dim_intlist(1, false, Kind::Float)?,
        })
    }

    /// The bi-interaction vectors `[..., k]` -> interaction score `[...]` (FM: sum; NFM: MLP).
    fn interaction(&self, bi: &Tensor, train: bool) -> Result<Tensor> {
        if self.config.hidden.is_empty() {
            return Ok(bi.f_sum_dim_intlist(-1, false, Kind::Float)?);
        }
        let p = self.config.dropout;
        let bi = self.batch_norm(bi.shallow_clone(), 0, train)?;
        let mut h = if train { super::dropout(&bi, p)? } else { bi };
        let n_layers = self.mlp.len();
        for (j, layer) in self.mlp.iter().enumerate() {
            h = layer.forward(&h)?;
            if j + 1 < n_layers {
                h = self.batch_norm(h, j + 1, train)?.f_relu()?;
                if train {
                    h = super::dropout(&h, p)?;
                }
            }
        }
        Ok(h.f_squeeze_dim(-1)?)
    }

    /// Scores of aligned pairs: user aggregates row b with item aggregates row b -> `[B]`.
    pub fn score_pairs(&self, u: &Aggregates, i: &Aggregates, train: bool) -> Result<Tensor> {
        let sum = u.sum.f_add(&i.sum)?;
        let bi = sum
            .f_square()?
            .f_sub(&u.sq)?
            .f_sub(&i.sq)?
            .f_mul(&Tensor::from(0.5))?;
        let lin = u.lin.f_add(&i.lin)?.f_add(&self.bias)?;
        Ok(lin.f_add(&self.interaction(&bi, train)?)?)
    }

    /// Scores of every user row against every item row -> `[B, I]` (no dropout).
    pub fn score_grid(&self, u: &Aggregates, i: &Aggregates) -> Result<Tensor> {
        self.score_grid_in_blocks(u, i, SCORE_BLOCK)
    }

    /// `score_grid` with an NFM's first-layer output computed in blocks of about `block` floats.
    fn score_grid_in_blocks(&self, u: &Aggregates, i: &Aggregates, block: i64) -> Result<Tensor> {
        let lin = u
            .lin
            .f_unsqueeze(1)?
            .f_add(&i.lin.f_unsqueeze(0)?)?
            .f_add(&self.bias)?;
        if self.config.hidden.is_empty() {
            // 0.5 * (|s_u|^2 - sum q_u) + 0.5 * (|s_i|^2 - sum q_i) + s_u . s_i
            let half = |a: &Aggregates| -> Result<Tensor> {
                Ok(a.sum
                    .f_square()?
                    .f_sub(&a.sq)?
                    .f_sum_dim_intlist(1, false, Kind::Float)?
                    .f_mul(&Tensor::from(0.5))?)
            };
            let cross = u.sum.f_matmul(&i.sum.f_transpose(0, 1)?)?;
            return Ok(lin
                .f_add(&half(u)?.f_unsqueeze(1)?)?
                .f_add(&half(i)?.f_unsqueeze(0)?)?
                .f_add(&cross)?);
        }
        // NFM. The bi-interaction of (u, i) splits into a user part, an item part and a product:
        // bi = 0.5 (s_u^2 - q_u) + 0.5 (s_i^2 - q_i) + s_u * s_i, and the first layer (with the
        // evaluation-mode batch norm before it, an affine map, folded in) is linear in it, so
        // h1[b, i] = s_i (diag(s_u) W^T) + W bi_u + W bi_i + bias: one batched product per user
        // batch, with no [B, I, k] intermediate.
        let first = self
            .mlp
            .first()
            .ok_or_else(|| RecforgeError::config("an NFM has at least one layer"))?;
        let (w0, b0): (&Tensor, &Tensor) = (&first.weight, &first.bias); // [H, k], [H]
        let (w, bias) = match self.bn.first() {
            None => (w0.shallow_clone(), b0.shallow_clone()),
            Some(bn) => {
                let scale = bn
                    .running_var
                    .f_add(&Tensor::from(BN_EPS))?
                    .f_rsqrt()?
                    .f_mul(&bn.weight)?;
                let shift = bn.bias.f_sub(&bn.running_mean.f_mul(&scale)?)?;
                (
                    w0.f_mul(&scale.f_unsqueeze(0)?)?,
                    b0.f_add(&w0.f_matmul(&shift)?)?,
                )
            }
        };
        let half = |a: &Aggregates| -> Result<Tensor> {
            Ok(a.sum.f_square()?.f_sub(&a.sq)?.f_mul(&Tensor::from(0.5))?)
        };
        let wt = w.f_transpose(0, 1)?; // [k, H]
        let hu = half(u)?.f_matmul(&wt)?.f_add(&bias)?; // [B, H]
        let hi = half(i)?.f_matmul(&wt)?; // [I, H]
        let (b, k) = (u.sum.size()[0], wt.size()[0]);
        let (n_items, h_dim) = (i.sum.size()[0], wt.size()[1]);
        // Users in sub-batches of `ub`, laid out as one matrix product over the shared item sums:
        // [I, k + 1] x [k + 1, ub * H], where user b's columns are diag(s_u) W^T over W bi_u +
        // bias (the item side's extra column is 1). Each [I, ub, H] block (about `block` floats)
        // is written into one reused buffer, gets W bi_i added (broadcast over the users; with
        // the rectifier in the same pass when no batch norm follows the layer) and is read once
        // by the rest of the MLP. Adding W bi_i as addmm's input instead cost a [I, ub * H] copy
        // of it per call and a copy into the buffer per block (55% of an evaluation's time).
        // Scoring only: no autograd graph.
        let ub = (block / (n_items * h_dim).max(1)).clamp(1, b.max(1));
        tch::no_grad(|| -> Result<Tensor> {
            let items_1 = Tensor::f_cat(
                &[
                    i.sum.shallow_clone(),
                    Tensor::f_ones([n_items, 1], (i.sum.kind(), i.sum.device()))?,
                ],
                1,
            )?;
            let hi_b = hi.f_unsqueeze(1)?; // [I, 1, H]
            let fuse_relu = self.bn.get(1).is_none();
            let buf = Tensor::f_empty([n_items * ub * h_dim], (hi.kind(), hi.device()))?;
            let mut parts = Vec::new();
            let mut start = 0;
            while start < b {
                let len = ub.min(b - start);
                let per_user = u
                    .sum
                    .f_narrow(0, start, len)?
                    .f_unsqueeze(2)?
                    .f_mul(&wt.f_unsqueeze(0)?)? // [len, k, H]
                    .f_permute([1, 0, 2])?
                    .f_reshape([k, len * h_dim])?;
                let p = Tensor::f_cat(
                    &[
                        per_user,
                        hu.f_narrow(0, start, len)?.f_reshape([1, len * h_dim])?,
                    ],
                    0,
                )?;
                let out = buf
                    .f_narrow(0, 0, n_items * len * h_dim)?
                    .f_view([n_items, len * h_dim])?;
                let mut h = items_1.f_mm_out(&out, &p)?.f_view([n_items, len, h_dim])?;
                if fuse_relu {
                    let _ = h.f_internal_add_relu_(&hi_b)?;
                } else {
                    let _ = h.f_add_(&hi_b)?;
                }
                parts.push(self.mlp_tail_from(h, fuse_relu)?.f_transpose(0, 1)?); // [len, I]
                start += len;
            }
            Ok(lin.f_add(&Tensor::f_cat(&parts, 0)?)?)
        })
    }

    /// The MLP after its first linear layer, in evaluation mode: `h` is that layer's output
    /// (overwritten: rectified in place), already through its rectifier when `rectified` (no
    /// batch norm sits between them).
    fn mlp_tail_from(&self, mut h: Tensor, rectified: bool) -> Result<Tensor> {
        for (j, layer) in self.mlp.iter().enumerate().skip(1) {
            if !(rectified && j == 1) {
                h = self.batch_norm(h, j, false)?;
                let _ = h.f_relu_()?;
            }
            h = layer.forward(&h)?;
        }
        Ok(h.f_squeeze_dim(-1)?)
    }
}

impl Fm {
    /// Checks user and item ids against the feature rows.
    pub fn check_ids(users: &FeatureRows, items: &FeatureRows, u: &[i64], i: &[i64]) -> Result<()> {
        let (nu, ni) = (users.n_rows(), items.n_rows());
        if let Some(&x) = u.iter().find(|&&x| x < 0 || x >= nu) {
            return Err(RecforgeError::data(format!(
                "user {x} is out of range (n_users = {nu})"
            )));
        }
        if let Some(&x) = i.iter().find(|&&x| x < 0 || x >= ni) {
            return Err(RecforgeError::data(format!(
                "item {x} is out of range (n_items = {ni})"
            )));
        }
        Ok(())
    }

    /// Scores of `users` (a `[B]` index tensor) against every item, `[B, n_items]`; an NFM's
    /// first-layer output is computed in blocks of about `SCORE_BLOCK` floats.
    pub fn score_all(
        &self,
        users: &FeatureRows,
        items: &FeatureRows,
        u: &Tensor,
    ) -> Result<Tensor> {
        let ua = self.aggregate(users, u)?;
        let n_items = items.n_rows();
        // An NFM's first-layer block is [chunk, users, hidden] (see `score_grid`): all items in one
        // chunk unless even one user's block would pass SCORE_BLOCK floats.
        let chunk = match self.config.hidden.first() {
            None => n_items,
            Some(&h) => (SCORE_BLOCK / h.max(1)).clamp(1, n_items.max(1)),
        };
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n_items {
            let len = chunk.min(n_items - start);
            let ids = Tensor::f_arange_start(start, start + len, (Kind::Int64, self.device()))?;
            parts.push(self.score_grid(&ua, &self.aggregate(items, &ids)?)?);
            start += len;
        }
        Ok(Tensor::f_cat(&parts, 1)?)
    }
}

/// Training objective of an FM / NFM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FmLoss {
    /// Squared error against ratings.
    Mse,
    /// BPR against one sampled negative item per positive.
    Bpr,
    /// Binary cross-entropy: positives labelled 1, sampled negatives 0.
    Bce,
}

/// Mini-batch loss over examples `idx` of (`users`, `items`, `targets` for MSE, `negatives` for
/// BPR/BCE), plus `reg` times the batch-mean squared norm of the factors used (each user counted
/// once per positive).
#[allow(clippy::too_many_arguments)]
pub fn loss(
    fm: &Fm,
    user_rows: &FeatureRows,
    item_rows: &FeatureRows,
    users: &[i64],
    items: &[i64],
    targets: Option<&Tensor>,
    negatives: Option<&[i64]>,
    objective: FmLoss,
    idx: &Tensor,
    reg: f64,
) -> Result<Tensor> {
    let examples = Vec::<i64>::try_from(idx)?;
    let pick = |col: &[i64], what: &str| -> Result<Vec<i64>> {
        examples
            .iter()
            .map(|&e| {
                usize::try_from(e)
                    .ok()
                    .and_then(|e| col.get(e).copied())
                    .ok_or_else(|| {
                        RecforgeError::data(format!(
                            "example {e} is out of range ({} {what})",
                            col.len()
                        ))
                    })
            })
            .collect()
    };
    let b = examples.len() as i64;
    let u = pick(users, "examples")?;
    let i = pick(items, "examples")?;
    let (base, joint, once) = match objective {
        FmLoss::Mse => {
            let y = targets
                .ok_or_else(|| RecforgeError::data("a rating objective needs ratings"))?
                .f_index_select(0, &idx.f_to(fm.device())?)?;
            let joint = fm.score_examples(user_rows, item_rows, &u, &i, true)?;
            let mse = joint.score.f_sub(&y)?.f_square()?.f_mean(Kind::Float)?;
            (mse, joint, b)
        }
        FmLoss::Bpr | FmLoss::Bce => {
            let j = pick(
                negatives
                    .ok_or_else(|| RecforgeError::data("a ranking objective needs negatives"))?,
                "negatives",
            )?;
            // Positives and negatives scored as one batch of 2B examples: one embedding lookup
            // per table, so each table gets a single sparse gradient.
            let uu = [u.as_slice(), u.as_slice()].concat();
            let ij = [i.as_slice(), j.as_slice()].concat();
            let joint = fm.score_examples(user_rows, item_rows, &uu, &ij, true)?;
            let base = if objective == FmLoss::Bpr {
                let s = joint.score.f_view([2, b])?;
                s.f_select(0, 0)?
                    .f_sub(&s.f_select(0, 1)?)?
                    .f_log_sigmoid()?
                    .f_mean(Kind::Float)?
                    .f_neg()?
            } else {
                // mean over B of the positives' loss + mean over B of the negatives'.
                let target = Tensor::f_ones([2 * b], (Kind::Float, fm.device()))?;
                let _ = target.f_narrow(0, b, b)?.f_zero_()?;
                joint
                    .score
                    .f_binary_cross_entropy_with_logits::<Tensor>(
                        &target,
                        None,
                        None,
                        tch::Reduction::Mean,
                    )?
                    .f_mul_scalar(2.0)?
            };
            (base, joint, b)
        }
    };
    if reg > 0.0 {
        // Squared norms of the factors used, sum_f (v_f x_f)^2: every example's item row and
        // the user rows of the first `once` examples (the positives: each user counted once).
        let (sq_user, sq_item) = joint.squared_norms()?;
        let penalty = sq_item
            .f_sum(Kind::Float)?
            .f_add(&sq_user.f_narrow(0, 0, once)?.f_sum(Kind::Float)?)?;
        Ok(base.f_add(&penalty.f_mul(&Tensor::from(reg / b as f64))?)?)
    } else {
        Ok(base)
    }
}

/// Scores of examples, with what the penalty needs.
pub struct Joint {
    /// Scores `[N]`.
    pub score: Tensor,
    /// Per example, its user row's then its item row's sums `[sum v x, sum (v x)^2, sum w x]`,
    /// `[2, N, 2k + 1]`.
    parts: Tensor,
    k: i64,
}

impl Joint {
    /// `sum_f (v_f x_f)^2` summed over the factor dimension, per example, over its user rows
    /// (`[N]`) and its item rows (`[N]`).
    pub fn squared_norms(&self) -> Result<(Tensor, Tensor)> {
        let q = self
            .parts
            .f_narrow(2, self.k, self.k)?
            .f_sum_dim_intlist(2, false, Kind::Float)?;
        Ok((q.f_select(0, 0)?, q.f_select(0, 1)?))
    }
}

/// Positions of `ids` in their list of distinct values, appended to `distinct` (first-seen
/// order); `slot` (all -1 between calls, at least as long as the id range) maps an id to its
/// position while the call runs.
fn dedup(ids: &[i64], slot: &mut [i64], distinct: &mut Vec<i64>, what: &str) -> Result<Vec<i64>> {
    let (start, n) = (distinct.len(), slot.len());
    let inverse = ids
        .iter()
        .map(|&x| {
            let s = usize::try_from(x)
                .ok()
                .and_then(|x| slot.get_mut(x))
                .ok_or_else(|| {
                    RecforgeError::data(format!("{what} {x} is out of range ({n} rows)"))
                })?;
            if *s < 0 {
                *s = (distinct.len() - start) as i64;
                distinct.push(x);
            }
            Ok(*s)
        })
        .collect::<Result<Vec<i64>>>();
    for &x in &distinct[start..] {
        slot[x as usize] = -1;
    }
    inverse
}

impl Fm {
    /// Scores of the examples (user `u[n]`, item `i[n]`) for training (`train` turns dropout and
    /// batch statistics on). The sums over a row's features are computed once per distinct user
    /// and item of the batch, over its non-zero features only (no padding), then added per
    /// example: a batch touches `distinct rows x features x k` values instead of
    /// `examples x padded row width x k`.
    pub fn score_examples(
        &self,
        users: &FeatureRows,
        items: &FeatureRows,
        u: &[i64],
        i: &[i64],
        train: bool,
    ) -> Result<Joint> {
        if u.len() != i.len() {
            return Err(RecforgeError::data(format!(
                "{} users for {} items",
                u.len(),
                i.len()
            )));
        }
        let timer = crate::timers::scope(crate::timers::Section::BatchBuilding);
        let mut distinct = Vec::new();
        let mut slot = self
            .slot
            .lock()
            .map_err(|_| RecforgeError::config("a training batch panicked earlier"))?;
        let need = users.ptr.len().max(items.ptr.len());
        if slot.len() < need {
            slot.resize(need, -1);
        }
        let ex_u = dedup(u, &mut slot[..users.ptr.len() - 1], &mut distinct, "user")?;
        let n_du = distinct.len() as i64;
        let mut ex_i = dedup(i, &mut slot[..items.ptr.len() - 1], &mut distinct, "item")?;
        drop(slot);
        for x in &mut ex_i {
            *x += n_du;
        }
        // The distinct rows' features, one segment per row.
        let (mut feat, mut val, mut seg) = (Vec::new(), Vec::new(), Vec::new());
        for (r, &row) in distinct.iter().enumerate() {
            let rows = if (r as i64) < n_du { users } else { items };
            let (a, z) = (rows.ptr[row as usize], rows.ptr[row as usize + 1]);
            feat.extend_from_slice(&rows.nz_idx[a..z]);
            val.extend_from_slice(&rows.nz_val[a..z]);
            seg.extend(std::iter::repeat_n(r as i64, z - a));
        }
        drop(timer);
        let dev = self.device();
        let n_rows = distinct.len() as i64;
        let feat = Tensor::from_slice(&feat).f_to(dev)?;
        let val = Tensor::from_slice(&val).f_to(dev)?;
        let seg = Tensor::from_slice(&seg).f_to(dev)?;
        let k = self.config.dim;
        let val = val.f_unsqueeze(1)?;
        // Per feature [v x, (v x)^2, w x], summed per distinct row, then each example's user row
        // and item row gathered at once: one scatter and one gather, forward and backward.
        let vx = super::lookup(&self.factors, &feat)?.f_mul(&val)?;
        let wx = self
            .linear
            .f_index_select(0, &feat)?
            .f_unsqueeze(1)?
            .f_mul(&val)?;
        let per_feature = Tensor::f_cat(&[&vx, &vx.f_square()?, &wx], 1)?;
        let per_row = Tensor::f_zeros([n_rows, 2 * k + 1], (Kind::Float, dev))?.f_index_add(
            0,
            &seg,
            &per_feature,
        )?;
        let n = u.len() as i64;
        let ex: Vec<i64> = ex_u.iter().chain(&ex_i).copied().collect();
        let parts = per_row
            .f_index_select(0, &Tensor::from_slice(&ex).f_to(dev)?)?
            .f_view([2, n, 2 * k + 1])?;
        let both = parts.f_sum_dim_intlist(0, false, Kind::Float)?;
        let sum = both.f_narrow(1, 0, k)?;
        let sq = both.f_narrow(1, k, k)?;
        let lin = both.f_select(1, 2 * k)?.f_add(&self.bias)?;
        let bi = sum.f_square()?.f_sub(&sq)?.f_mul_scalar(0.5)?;
        let score = lin.f_add(&self.interaction(&bi, train)?)?;
        Ok(Joint { score, parts, k })
    }
}

/// The training data of an FM: ratings (MSE) or positives with this epoch's negatives. Ids stay
/// on the host, where batches are deduplicated; ratings live on the model's device.
enum FmData {
    Ratings {
        users: Vec<i64>,
        items: Vec<i64>,
        ratings: Tensor,
    },
    Implicit {
        train: Arc<Interactions>,
        users: Vec<i64>,
        pos: Vec<i64>,
        neg: Vec<i64>,
    },
}

/// An FM / NFM on the trainer: the network, its user and item feature rows (saved with the
/// weights as `features.{user,item}.{idx,val}`), its objective and its training data.
pub struct FmModel {
    fm: Fm,
    users: FeatureRows,
    items: FeatureRows,
    objective: FmLoss,
    reg: f64,
    data: Option<FmData>,
}

impl FmModel {
    /// A fresh network over `features`.
    pub fn new(
        config: FmConfig,
        features: crate::train::spec::FmFeatures,
        objective: FmLoss,
        reg: f64,
        device: Device,
    ) -> Result<Self> {
        let n = config.n_features;
        let rows = |(idx, val, width): &crate::train::spec::FeatureBuffers| {
            FeatureRows::new(idx, val, *width, n, device)
        };
        let users = rows(&features.users)?;
        let items = rows(&features.items)?;
        Ok(Self {
            fm: Fm::new(config, device)?,
            users,
            items,
            objective,
            reg,
            data: None,
        })
    }

    /// The feature rows stored in a checkpoint's tensors (`None` when it has none).
    pub fn features_from(
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Option<crate::train::spec::FmFeatures>> {
        let Some(factors) = tensors.get("factors") else {
            return Ok(None);
        };
        let side = |who: &str| -> Result<Option<crate::train::spec::FeatureBuffers>> {
            let (Some(idx), Some(val)) = (
                tensors.get(&format!("features.{who}.idx")),
                tensors.get(&format!("features.{who}.val")),
            ) else {
                return Ok(None);
            };
            let shape = idx.size();
            if shape.len() != 2 || val.size() != shape {
                return Err(RecforgeError::data(format!(
                    "features.{who}: index and value tensors must be [rows, width] alike, got {:?} and {:?}",
                    shape,
                    val.size()
                )));
            }
            let flat_idx = Vec::<i64>::try_from(idx.f_to_kind(Kind::Int64)?.f_reshape([-1])?)?;
            let flat_val = Vec::<f32>::try_from(val.f_to_kind(Kind::Float)?.f_reshape([-1])?)?;
            Ok(Some((flat_idx, flat_val, shape[1] as usize)))
        };
        match (side("user")?, side("item")?) {
            (Some(users), Some(items)) => Ok(Some(crate::train::spec::FmFeatures {
                users,
                items,
                n_features: factors.size()[0],
            })),
            _ => Ok(None),
        }
    }
}

impl Model for FmModel {
    fn params(&self) -> Vec<(String, Tensor)> {
        self.fm.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut b = self.fm.buffers();
        for (who, rows) in [("user", &self.users), ("item", &self.items)] {
            b.push((format!("features.{who}.idx"), rows.idx.shallow_clone()));
            b.push((format!("features.{who}.val"), rows.val.shallow_clone()));
        }
        b
    }
    fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.fm.load(tensors)
    }
    fn device(&self) -> Device {
        self.fm.device()
    }
    fn n_users(&self) -> Option<i64> {
        Some(self.users.n_rows())
    }
    fn n_items(&self) -> i64 {
        self.items.n_rows()
    }
    fn set_train(&mut self, train: Arc<Interactions>, _fresh: bool) -> Result<()> {
        let dev = self.device();
        let c = train.to_columns();
        let users: Vec<i64> = c.users.iter().map(|&u| u as i64).collect();
        let items: Vec<i64> = c.items.iter().map(|&i| i as i64).collect();
        self.data = Some(if self.objective == FmLoss::Mse {
            let r = c.ratings.ok_or_else(|| {
                RecforgeError::data("a rating model needs interactions with ratings")
            })?;
            FmData::Ratings {
                users,
                items,
                ratings: Tensor::from_slice(&r).f_to(dev)?,
            }
        } else {
            FmData::Implicit {
                train,
                users,
                pos: items,
                neg: Vec::new(),
            }
        });
        Ok(())
    }
    fn start_epoch(&mut self, seed: u64, epoch: u64) -> Result<usize> {
        match &mut self.data {
            None => Err(RecforgeError::config("set the training data first")),
            Some(FmData::Ratings { users, .. }) => Ok(users.len()),
            Some(FmData::Implicit { train, neg, .. }) => {
                *neg = crate::sampling::training_negatives(
                    train,
                    1,
                    &crate::sampling::Strategy::Uniform,
                    true,
                    seed,
                    epoch,
                )?;
                Ok(train.n_interactions())
            }
        }
    }
    fn batch_loss(&self, idx: &Tensor) -> Result<Tensor> {
        let (fm, ur, ir, obj, reg) = (&self.fm, &self.users, &self.items, self.objective, self.reg);
        match &self.data {
            None => Err(RecforgeError::config("set the training data first")),
            Some(FmData::Ratings {
                users,
                items,
                ratings,
            }) => loss(fm, ur, ir, users, items, Some(ratings), None, obj, idx, reg),
            Some(FmData::Implicit {
                users, pos, neg, ..
            }) => loss(fm, ur, ir, users, pos, None, Some(neg), obj, idx, reg),
        }
    }
    fn predict(&self, u: &Tensor, i: &Tensor) -> Result<Tensor> {
        self.fm.score_pairs(
            &self.fm.aggregate(&self.users, u)?,
            &self.fm.aggregate(&self.items, i)?,
            false,
        )
    }
    fn score_all(&self, u: &Tensor, _history: Option<&Interactions>) -> Result<Tensor> {
        self.fm.score_all(&self.users, &self.items, u)
    }
    fn validation(&self) -> Validation {
        if self.objective == FmLoss::Mse {
            Validation::Rmse
        } else {
            Validation::Ranking
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Fm {
        /// The parameter or buffer called `name` (tests read values by name).
        fn get(&self, name: &str) -> Result<Tensor> {
            crate::models::by_name(self.params().into_iter().chain(self.buffers()), name)
        }
    }

    fn tiny(hidden: Vec<i64>) -> (Fm, FeatureRows, FeatureRows) {
        let cfg = FmConfig {
            n_features: 7,
            dim: 3,
            hidden,
            dropout: 0.0,
            init_std: 0.5,
            seed: 1,
            batch_norm: false,
        };
        let fm = Fm::new(cfg, Device::Cpu).unwrap();
        // Users 0, 1 = features 0, 1 (+ side feature 6 with value 0.5 for user 1).
        let users =
            FeatureRows::new(&[0, 6, 1, 6], &[1.0, 0.0, 1.0, 0.5], 2, 7, Device::Cpu).unwrap();
        // Items 0..2 = features 2..4, item 0 and 2 with genre feature 5.
        let items = FeatureRows::new(
            &[2, 5, 3, 5, 4, 5],
            &[1.0, 1.0, 1.0, 0.0, 1.0, 1.0],
            2,
            7,
            Device::Cpu,
        )
        .unwrap();
        (fm, users, items)
    }

    /// Direct formula with an explicit double loop over feature pairs.
    fn direct(fm: &Fm, feats: &[(i64, f64)]) -> f64 {
        let w = Vec::<f32>::try_from(fm.get("linear").unwrap()).unwrap();
        let v = Vec::<f32>::try_from(fm.get("factors").unwrap().reshape([-1])).unwrap();
        let k = fm.config.dim as usize;
        let mut y = fm.get("bias").unwrap().double_value(&[0]);
        for (a, &(f, x)) in feats.iter().enumerate() {
            y += w[f as usize] as f64 * x;
            for &(g, z) in &feats[a + 1..] {
                let dot: f64 = (0..k)
                    .map(|d| v[f as usize * k + d] as f64 * v[g as usize * k + d] as f64)
                    .sum();
                y += dot * x * z;
            }
        }
        y
    }

    #[test]
    fn fm_equals_the_pairwise_formula_and_grid_equals_pairs() {
        let (fm, users, items) = tiny(vec![]);
        tch::no_grad(|| {
            let _ = fm
                .get("linear")
                .unwrap()
                .shallow_clone()
                .f_normal_(0.0, 0.3)
                .unwrap();
        });
        let u = Tensor::from_slice(&[0i64, 1, 1]);
        let i = Tensor::from_slice(&[0i64, 1, 2]);
        let s = fm
            .score_pairs(
                &fm.aggregate(&users, &u).unwrap(),
                &fm.aggregate(&items, &i).unwrap(),
                false,
            )
            .unwrap();
        let got = Vec::<f32>::try_from(s).unwrap();
        let want = [
            direct(&fm, &[(0, 1.0), (2, 1.0), (5, 1.0)]),
            direct(&fm, &[(1, 1.0), (6, 0.5), (3, 1.0)]),
            direct(&fm, &[(1, 1.0), (6, 0.5), (4, 1.0), (5, 1.0)]),
        ];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        let all_i = Tensor::from_slice(&[0i64, 1, 2]);
        let grid = fm
            .score_grid(
                &fm.aggregate(&users, &Tensor::from_slice(&[1i64])).unwrap(),
                &fm.aggregate(&items, &all_i).unwrap(),
            )
            .unwrap();
        let g = Vec::<f32>::try_from(grid.reshape([-1])).unwrap();
        assert!((g[1] - got[1]).abs() < 1e-5 && (g[2] - got[2]).abs() < 1e-5);
    }

    /// An NFM's grid (with batch norm, two hidden layers) equals pair-by-pair scoring, whether
    /// its first layer runs in one block or one user at a time.
    #[test]
    fn nfm_grid_in_blocks_equals_pairs() {
        // Two hidden layers with batch norm (the one checked for loading below), one with and
        // without it, three with it: every batch norm randomised, so each fold is exercised.
        let mut fm_bn2 = None;
        for (hidden, batch_norm) in [
            (vec![5], false),
            (vec![5], true),
            (vec![4, 3, 2], true),
            (vec![4, 2], true),
        ] {
            let cfg = FmConfig {
                n_features: 7,
                dim: 3,
                hidden: hidden.clone(),
                dropout: 0.0,
                init_std: 0.5,
                seed: 3,
                batch_norm,
            };
            let fm = Fm::new(cfg, Device::Cpu).unwrap();
            super::super::assert_in_store(&fm.vs, &fm.params(), &fm.buffers());
            let (_, users, items) = tiny(hidden.clone());
            tch::no_grad(|| {
                let _ = fm
                    .get("linear")
                    .unwrap()
                    .shallow_clone()
                    .f_normal_(0.5, 0.3);
                for j in 0..if batch_norm { hidden.len() + 1 } else { 0 } {
                    for (what, lo, hi) in [
                        ("weight", 0.5, 1.5),
                        ("bias", -0.5, 0.5),
                        ("running_mean", -0.5, 0.5),
                        ("running_var", 0.5, 2.0),
                    ] {
                        let _ = fm
                            .get(&format!("bn.{j}.{what}"))
                            .unwrap()
                            .shallow_clone()
                            .f_uniform_(lo, hi);
                    }
                }
            });
            let (u, i) = (
                Tensor::from_slice(&[0i64, 1]),
                Tensor::from_slice(&[0i64, 1, 2]),
            );
            let (ua, ia) = (
                fm.aggregate(&users, &u).unwrap(),
                fm.aggregate(&items, &i).unwrap(),
            );
            let pairs: Vec<f32> = (0..2i64)
                .flat_map(|a| {
                    let ua = fm
                        .aggregate(&users, &Tensor::from_slice(&[a, a, a]))
                        .unwrap();
                    Vec::<f32>::try_from(fm.score_pairs(&ua, &ia, false).unwrap()).unwrap()
                })
                .collect();
            for block in [1, 4, SCORE_BLOCK] {
                let grid = fm.score_grid_in_blocks(&ua, &ia, block).unwrap();
                assert_eq!(grid.size(), [2, 3]);
                let g = Vec::<f32>::try_from(grid.reshape([-1])).unwrap();
                for (a, b) in g.iter().zip(&pairs) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "hidden {hidden:?}, bn {batch_norm}, block {block}: {a} vs {b}"
                    );
                }
            }
            fm_bn2 = Some(fm);
        }
        // Loading copies into the variables; a missing or mis-shaped tensor is an error naming it.
        let mut fm = fm_bn2.unwrap();
        let mut state: HashMap<String, Tensor> = fm
            .params()
            .into_iter()
            .chain(fm.buffers())
            .map(|(n, t)| (n, t.detach().ones_like()))
            .collect();
        fm.load(&state).unwrap();
        for (name, t) in fm.params().into_iter().chain(fm.buffers()) {
            assert!(t.detach().equal(&t.ones_like()), "{name} was not loaded");
        }
        let zeros = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let right = state.insert("mlp.1.bias".into(), zeros).unwrap();
        let err = fm.load(&state).unwrap_err().to_string();
        assert!(err.contains("mlp.1.bias"), "{err}");
        state.insert("mlp.1.bias".into(), right);
        state.remove("bn.0.running_mean");
        let err = fm.load(&state).unwrap_err().to_string();
        assert!(err.contains("bn.0.running_mean"), "{err}");
    }

    /// The training path (joint feature rows, batched products) scores like the aggregate path,
    /// and `loss` equals its definition written out from those scores: BCE/BPR over positives
    /// and negatives plus `reg / B` times the squared factor norms used (each user once).
    #[test]
    fn joint_scores_and_losses_equal_their_definitions() {
        for hidden in [vec![], vec![4]] {
            let (fm, users, items) = tiny(hidden);
            tch::no_grad(|| {
                let _ = fm
                    .get("linear")
                    .unwrap()
                    .shallow_clone()
                    .f_normal_(0.0, 0.3);
            });
            let u = Tensor::from_slice(&[0i64, 1, 1]);
            let i = Tensor::from_slice(&[0i64, 1, 2]);
            let j = Tensor::from_slice(&[2i64, 0, 1]);
            let pairs = |items_: &Tensor| {
                fm.score_pairs(
                    &fm.aggregate(&users, &u).unwrap(),
                    &fm.aggregate(&items, items_).unwrap(),
                    false,
                )
                .unwrap()
            };
            let (us, is, js) = ([0i64, 1, 1], [0i64, 1, 2], [2i64, 0, 1]);
            let joint = fm.score_examples(&users, &items, &us, &is, false).unwrap();
            let diff = (&joint.score - pairs(&i)).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "joint vs pairs: {diff}");
            let sq = |rows: &FeatureRows, ids: &Tensor| -> f64 {
                let v = fm
                    .get("factors")
                    .unwrap()
                    .index_select(0, &rows.idx.index_select(0, ids).reshape([-1]));
                let x = rows.val.index_select(0, ids).reshape([-1, 1]);
                (v * x).square().sum(Kind::Double).double_value(&[])
            };
            let reg = 0.3;
            let penalty = sq(&users, &u) + sq(&items, &i) + sq(&items, &j);
            let (sp, sn) = (pairs(&i), pairs(&j));
            let bpr = -(&sp - &sn)
                .log_sigmoid()
                .mean(Kind::Double)
                .double_value(&[]);
            let softplus = |x: &Tensor| (x.exp() + 1.0).log().mean(Kind::Double).double_value(&[]);
            let bce = softplus(&-&sp) + softplus(&sn);
            let all = Tensor::from_slice(&[0i64, 1, 2]);
            for (objective, base) in [(FmLoss::Bpr, bpr), (FmLoss::Bce, bce)] {
                let got = loss(
                    &fm,
                    &users,
                    &items,
                    &us,
                    &is,
                    None,
                    Some(&js),
                    objective,
                    &all,
                    reg,
                )
                .unwrap()
                .double_value(&[]);
                let want = base + reg / 3.0 * penalty;
                assert!((got - want).abs() < 1e-5, "{objective:?}: {got} vs {want}");
            }
            let y = Tensor::from_slice(&[1.0f32, -0.5, 2.0]);
            let got = loss(
                &fm,
                &users,
                &items,
                &us,
                &is,
                Some(&y),
                None,
                FmLoss::Mse,
                &all,
                reg,
            )
            .unwrap()
            .double_value(&[]);
            let mse = (pairs(&i) - &y)
                .square()
                .mean(Kind::Double)
                .double_value(&[]);
            let want = mse + reg / 3.0 * (sq(&users, &u) + sq(&items, &i));
            assert!((got - want).abs() < 1e-5, "MSE: {got} vs {want}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (hidden, joint) in [
            (vec![], false),
            (vec![4], false),
            (vec![], true),
            (vec![4], true),
        ] {
            let (fm, users, items) = tiny(hidden);
            let u = Tensor::from_slice(&[0i64, 1]);
            let i = Tensor::from_slice(&[2i64, 0]);
            let y = Tensor::from_slice(&[1.0f32, -0.5]);
            let loss = |fm: &Fm| {
                let s = if joint {
                    fm.score_examples(&users, &items, &[0, 1], &[2, 0], false)
                        .unwrap()
                        .score
                } else {
                    fm.score_pairs(
                        &fm.aggregate(&users, &u).unwrap(),
                        &fm.aggregate(&items, &i).unwrap(),
                        false,
                    )
                    .unwrap()
                };
                s.f_sub(&y).unwrap().square().sum(Kind::Double)
            };
            loss(&fm).backward();
            for (name, p) in fm.params() {
                let g = p.grad();
                // Embedding tables get sparse gradients.
                let g = if g.is_sparse() {
                    g.to_dense(None, false)
                } else {
                    g
                };
                let grad = Vec::<f32>::try_from(g.reshape([-1])).unwrap();
                for (e, &g) in grad.iter().enumerate().take(6) {
                    let flat = p.reshape([-1]);
                    let orig = flat.double_value(&[e as i64]);
                    let h = 1e-2;
                    let set = |v: f64| {
                        tch::no_grad(|| {
                            let _ = flat.get(e as i64).fill_(v);
                        })
                    };
                    set(orig + h);
                    let up = loss(&fm).double_value(&[]);
                    set(orig - h);
                    let down = loss(&fm).double_value(&[]);
                    set(orig);
                    let fd = (up - down) / (2.0 * h);
                    let g = g as f64;
                    assert!(
                        (fd - g).abs() < 2e-2 * (1.0 + g.abs()),
                        "{name}[{e}]: fd {fd} vs grad {g}"
                    );
                }
            }
        }
    }

    /// A batch with many repeated users and items (deduplicated before the sums) gives every
    /// example the score and every parameter the gradient of the per-pair path, and ids out of
    /// range are errors that leave the next batch unaffected.
    #[test]
    fn deduplicated_batches_score_and_train_like_pairs() {
        for hidden in [vec![], vec![4]] {
            let (fm, users, items) = tiny(hidden);
            let mut rng = crate::rng::Rng::new(7, 0);
            let us: Vec<i64> = (0..50).map(|_| (rng.next_u64() % 2) as i64).collect();
            let is: Vec<i64> = (0..50).map(|_| (rng.next_u64() % 3) as i64).collect();
            let w = Tensor::randn([50], (Kind::Float, Device::Cpu));
            let grads = |joint: bool| -> (Tensor, Vec<Tensor>) {
                let s = if joint {
                    fm.score_examples(&users, &items, &us, &is, false)
                        .unwrap()
                        .score
                } else {
                    fm.score_pairs(
                        &fm.aggregate(&users, &Tensor::from_slice(&us)).unwrap(),
                        &fm.aggregate(&items, &Tensor::from_slice(&is)).unwrap(),
                        false,
                    )
                    .unwrap()
                };
                let inputs: Vec<Tensor> = fm.params().into_iter().map(|(_, p)| p).collect();
                let g = Tensor::run_backward(&[(&s * &w).sum(Kind::Float)], &inputs, false, false);
                let g = g
                    .into_iter()
                    .map(|g| {
                        if g.is_sparse() {
                            g.to_dense(None, false)
                        } else {
                            g
                        }
                    })
                    .collect();
                (s.detach(), g)
            };
            let (s1, g1) = grads(true);
            let (s2, g2) = grads(false);
            assert!((&s1 - &s2).abs().max().double_value(&[]) < 1e-5);
            for ((name, _), (a, b)) in fm.params().iter().zip(g1.iter().zip(&g2)) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d < 1e-5, "{name}: gradients differ by {d}");
            }
            assert!(fm
                .score_examples(&users, &items, &[0, 2], &[0, 1], false)
                .is_err());
            assert!(fm
                .score_examples(&users, &items, &[0, 1], &[3, 1], false)
                .is_err());
            assert!(fm
                .score_examples(&users, &items, &[0], &[0, 1], false)
                .is_err());
            let again = fm.score_examples(&users, &items, &us, &is, false).unwrap();
            assert!(again.score.equal(&s1));
        }
    }

    #[test]
    fn bad_feature_rows_are_errors() {
        assert!(FeatureRows::new(&[0, 9], &[1.0, 1.0], 2, 7, Device::Cpu).is_err());
        assert!(FeatureRows::new(&[0, 1, 2], &[1.0, 1.0, 1.0], 2, 7, Device::Cpu).is_err());
        assert!(FeatureRows::new(&[0], &[f32::NAN], 1, 7, Device::Cpu).is_err());
    }
}
