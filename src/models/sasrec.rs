//! SASRec (Kang & McAuley 2018): causal self-attention over a user's item sequence; the hidden
//! state at each position scores the next item by a dot product with the item embeddings.
//!
//! Layout (pre-LayerNorm blocks, as in the authors' code):
//!
//! ```text
//! x = dropout(item_emb[seq] + pos_emb) * valid
//! for each block:  x = x + dropout(attn(ln1(x)));  x = (x + dropout(ffn(ln2(x)))) * valid
//! h = final_ln(x);  score(next = i) = h . item_emb[i]
//! ```
//!
//! Sequences are left-padded to `max_len` with item 0 (the padding row; real item `i` is row
//! `i + 1`). Attention is causal and never looks at padding (a position may always see itself, so
//! no row of the attention matrix is empty). Parameters use the names of `torch.nn`
//! (`blocks.0.attn.in_proj_weight`, ...), so a PyTorch module with the same layout loads them.
//! Training: each position predicts the next item, with one sampled negative and binary
//! cross-entropy (the paper's loss) or a softmax over all items (cross-entropy).

use std::collections::HashMap;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::{LayerNorm, Linear, Var};
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::train::model::{Model, Validation};

/// Sizes and options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SasRecConfig {
    /// Number of items (the embedding table has one more row, for padding).
    pub n_items: i64,
    /// Hidden size.
    pub dim: i64,
    /// Number of self-attention blocks.
    pub n_layers: i64,
    /// Attention heads (must divide `dim`).
    pub n_heads: i64,
    /// Longest sequence seen (older items are cut).
    pub max_len: i64,
    /// Dropout on embeddings, attention weights and block outputs.
    pub dropout: f64,
    /// Standard deviation of the normal initialisation of embeddings and weights.
    pub init_std: f64,
    /// Initialisation seed.
    pub seed: u64,
}

impl SasRecConfig {
    /// Checks sizes.
    pub fn validate(&self) -> Result<()> {
        if self.n_items < 1 || self.dim < 1 || self.n_layers < 1 || self.max_len < 1 {
            return Err(RecforgeError::config(
                "n_items, dim, n_layers and max_len must be >= 1",
            ));
        }
        if self.n_heads < 1 || self.dim % self.n_heads != 0 {
            return Err(RecforgeError::config(format!(
                "n_heads must divide dim: dim = {}, n_heads = {}",
                self.dim, self.n_heads
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(RecforgeError::config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return Err(RecforgeError::config("init_std must be a positive number"));
        }
        Ok(())
    }
}

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeqLoss {
    /// One sampled negative per position, binary cross-entropy (Kang & McAuley).
    Bce,
    /// Softmax cross-entropy over all items.
    Ce,
}

/// One pre-LayerNorm self-attention block `blocks.{j}`.
#[derive(Debug)]
struct Block {
    ln1: LayerNorm,
    /// `attn.in_proj_weight` `[3d, d]` and `attn.in_proj_bias` (queries, keys, values).
    in_proj: Linear,
    /// `attn.out_proj`.
    out_proj: Linear,
    ln2: LayerNorm,
    ffn0: Linear,
    ffn1: Linear,
}

impl Block {
    /// Its variables in `torch.nn` order.
    fn vars(&self) -> impl Iterator<Item = &Var> {
        [
            &self.ln1.weight,
            &self.ln1.bias,
            &self.in_proj.weight,
            &self.in_proj.bias,
            &self.out_proj.weight,
            &self.out_proj.bias,
            &self.ln2.weight,
            &self.ln2.bias,
            &self.ffn0.weight,
            &self.ffn0.bias,
            &self.ffn1.weight,
            &self.ffn1.bias,
        ]
        .into_iter()
    }
}

/// The network. Its variables live in one `nn::VarStore`, under `torch.nn` names.
#[derive(Debug)]
pub struct SasRec {
    /// Configuration.
    pub config: SasRecConfig,
    vs: nn::VarStore,
    /// `item_emb.weight` `[n_items + 1, d]` (row 0: padding; sparse gradients).
    item_emb: Var,
    /// `pos_emb.weight` `[max_len, d]`.
    pos_emb: Var,
    blocks: Vec<Block>,
    final_ln: LayerNorm,
}

/// One epoch's training examples (CPU tensors, one row per user with at least two items):
/// input sequences, next-item targets and sampled negatives, all `[E, max_len]` in padded ids.
#[derive(Debug)]
pub struct SeqBatches {
    /// Inputs (`item + 1`, 0 = padding).
    pub input: Tensor,
    /// Next item at each position (`item + 1`, 0 = no target).
    pub target: Tensor,
    /// A negative item per position (`item + 1`, 0 = none).
    pub negative: Tensor,
    /// The user of each row (every user with two or more items, in id order).
    pub users: Vec<i64>,
}

/// The last `max_len` items of every user in `users`, left-padded: `[B, max_len]` padded ids.
pub fn history_rows(history: &Interactions, users: &[i64], max_len: i64) -> Result<Tensor> {
    let l = max_len as usize;
    let mut out = vec![0i64; users.len() * l];
    for (row, &u) in users.iter().enumerate() {
        if u < 0 || u >= history.n_users() as i64 {
            return Err(RecforgeError::data(format!(
                "user {u} is out of range (n_users = {})",
                history.n_users()
            )));
        }
        let items = history.user_items(u as u32)?;
        let tail = &items[items.len().saturating_sub(l)..];
        let dst = &mut out[row * l + (l - tail.len())..(row + 1) * l];
        for (d, &i) in dst.iter_mut().zip(tail) {
            *d = i as i64 + 1;
        }
    }
    Ok(Tensor::from_slice(&out).f_view([users.len() as i64, max_len])?)
}

/// Training rows: for each user with `n >= 2` items, inputs `items[..n-1]` and targets
/// `items[1..]` (the last `max_len` of them), with `negatives[k]` (one per interaction in the
/// CSR order of `train`, or `None`) aligned to the targets.
pub fn training_rows(
    train: &Interactions,
    negatives: Option<&[i64]>,
    max_len: i64,
) -> Result<SeqBatches> {
    let l = max_len as usize;
    let users: Vec<u32> = (0..train.n_users())
        .filter(|&u| train.user_range(u).len() >= 2)
        .collect();
    if users.is_empty() {
        return Err(RecforgeError::data(
            "SASRec needs at least one user with two or more training interactions",
        ));
    }
    let n = users.len() * l;
    let (mut input, mut target, mut negative) = (vec![0i64; n], vec![0i64; n], vec![0i64; n]);
    let items = train.items();
    for (row, &u) in users.iter().enumerate() {
        let r = train.user_range(u);
        // Target positions r.start+1 .. r.end, the last l of them.
        let first = (r.start + 1).max(r.end.saturating_sub(l));
        let len = r.end - first;
        let base = row * l + (l - len);
        for (k, pos) in (first..r.end).enumerate() {
            input[base + k] = items[pos - 1] as i64 + 1;
            target[base + k] = items[pos] as i64 + 1;
            if let Some(neg) = negatives {
                negative[base + k] = neg[pos] + 1;
            }
        }
    }
    let shape = [users.len() as i64, max_len];
    Ok(SeqBatches {
        input: Tensor::from_slice(&input).f_view(shape)?,
        target: Tensor::from_slice(&target).f_view(shape)?,
        negative: Tensor::from_slice(&negative).f_view(shape)?,
        users: users.iter().map(|&u| u as i64).collect(),
    })
}

impl SasRec {
    /// Fresh parameters from `config.seed`: embeddings and weights normal(0, init_std), biases 0,
    /// LayerNorm scales 1.
    pub fn new(config: SasRecConfig, device: Device) -> Result<Self> {
        config.validate()?;
        tch::manual_seed(config.seed as i64);
        let cpu = (Kind::Float, Device::Cpu);
        let d = config.dim;
        let normal = |shape: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_randn(shape, cpu)?.f_mul(&Tensor::from(config.init_std))?)
        };
        let zeros = |n: i64| -> Result<Tensor> { Ok(Tensor::f_zeros([n], cpu)?) };
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let item_emb = Var::param(
            &(&root / "item_emb"),
            "weight",
            &normal(&[config.n_items + 1, d])?,
        )?;
        let pos_emb = Var::param(
            &root.sub("pos_emb"),
            "weight",
            &normal(&[config.max_len, d])?,
        )?;
        let mut blocks = Vec::new();
        for j in 0..config.n_layers {
            let p = root.sub("blocks").sub(j);
            let attn = p.sub("attn");
            let ln1 = LayerNorm::new(&p.sub("ln1"), d)?;
            let in_proj = Linear {
                weight: Var::param(&attn, "in_proj_weight", &normal(&[3 * d, d])?)?,
                bias: Var::param(&attn, "in_proj_bias", &zeros(3 * d)?)?,
            };
            let out_proj = Linear::new(&attn.sub("out_proj"), &normal(&[d, d])?, &zeros(d)?)?;
            let ln2 = LayerNorm::new(&p.sub("ln2"), d)?;
            let ffn0 = Linear::new(&p.sub("ffn").sub(0), &normal(&[d, d])?, &zeros(d)?)?;
            let ffn1 = Linear::new(&p.sub("ffn").sub(1), &normal(&[d, d])?, &zeros(d)?)?;
            blocks.push(Block {
                ln1,
                in_proj,
                out_proj,
                ln2,
                ffn0,
                ffn1,
            });
        }
        let final_ln = LayerNorm::new(&root.sub("final_ln"), d)?;
        Ok(Self {
            config,
            vs,
            item_emb,
            pos_emb,
            blocks,
            final_ln,
        })
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Named parameters (shallow handles): `item_emb.weight`, `pos_emb.weight`, each block's
    /// `blocks.{j}.*`, `final_ln.*`.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        let blocks = self.blocks.iter().flat_map(Block::vars);
        super::named(
            [&self.item_emb, &self.pos_emb]
                .into_iter()
                .chain(blocks)
                .chain(self.final_ln.vars()),
        )
    }

    /// Copies parameter values by name (missing or mis-shaped tensors are errors).
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let device = self.device();
        super::load_named(&mut self.params(), tensors, device)
    }

    fn dropout(&self, x: Tensor, train: bool) -> Result<Tensor> {
        let p = self.config.dropout;
        Ok(if train { super::dropout(&x, p)? } else { x })
    }

    /// Hidden states `[B, L, dim]` of padded sequences `seq` (`[B, L]` int64 on this device,
    /// `L <= max_len`, left-padded with 0).
    pub fn forward(&self, seq: &Tensor, train: bool) -> Result<Tensor> {
        let (b, l) = match seq.size()[..] {
            [b, l] if l >= 1 && l <= self.config.max_len => (b, l),
            ref s => {
                return Err(RecforgeError::data(format!(
                    "sequences must be [batch, length <= {}], got {s:?}",
                    self.config.max_len
                )))
            }
        };
        let (d, h) = (self.config.dim, self.config.n_heads);
        let dh = d / h;
        let valid = seq.f_ne(0)?; // [B, L]
        let vmask = valid.f_unsqueeze(-1)?.f_to_kind(Kind::Float)?;
        let pos = self.pos_emb.f_narrow(0, 0, l)?;
        let emb = super::lookup(&self.item_emb, &seq.f_reshape([-1])?)?.f_view([b, l, d])?;
        let mut x = self.dropout(emb.f_add(&pos)?, train)?.f_mul(&vmask)?;
        // Allowed attention: causal, not to padding, always to itself: [B, 1, L, L].
        let device = self.device();
        let causal = Tensor::f_ones([l, l], (Kind::Bool, device))?.f_tril(0)?;
        let eye = Tensor::f_eye(l, (Kind::Bool, device))?;
        let mask = causal
            .f_unsqueeze(0)?
            .f_logical_and(&valid.f_unsqueeze(1)?)?
            .f_logical_or(&eye.f_unsqueeze(0)?)?
            .f_unsqueeze(1)?;
        let p_attn = if train { self.config.dropout } else { 0.0 };
        for block in &self.blocks {
            let q_in = block.ln1.forward(&x)?;
            let qkv = block.in_proj.forward(&q_in)?;
            let heads =
                |t: &Tensor| -> Result<Tensor> { Ok(t.f_view([b, l, h, dh])?.f_transpose(1, 2)?) };
            let parts = qkv.f_split(d, -1)?;
            let a = Tensor::f_scaled_dot_product_attention(
                &heads(&parts[0])?,
                &heads(&parts[1])?,
                &heads(&parts[2])?,
                Some(&mask),
                p_attn,
                false,
                None,
                false,
            )?
            .f_transpose(1, 2)?
            .f_reshape([b, l, d])?;
            let a = block.out_proj.forward(&a)?;
            x = x.f_add(&self.dropout(a, train)?)?;
            let f_in = block.ln2.forward(&x)?;
            let f = block.ffn0.forward(&f_in)?.f_relu()?;
            let f = block.ffn1.forward(&self.dropout(f, train)?)?;
            x = x.f_add(&self.dropout(f, train)?)?.f_mul(&vmask)?;
        }
        self.final_ln.forward(&x)
    }

    /// Next-item scores over all items `[B, n_items]` from padded sequences `[B, L]`.
    pub fn score_sequences(&self, seq: &Tensor) -> Result<Tensor> {
        let h = self.forward(seq, false)?;
        let last = h.f_select(1, h.size()[1] - 1)?;
        let items = self.item_emb.f_narrow(0, 1, self.config.n_items)?;
        Ok(last.f_matmul(&items.f_transpose(0, 1)?)?)
    }

    /// Mean training loss of the examples `idx` (CPU int64) of `data`.
    pub fn loss(&self, data: &SeqBatches, idx: &Tensor, objective: SeqLoss) -> Result<Tensor> {
        let dev = self.device();
        let input = data.input.f_index_select(0, idx)?.f_to(dev)?;
        let target = data.target.f_index_select(0, idx)?.f_to(dev)?;
        let h = self.forward(&input, true)?;
        let d = self.config.dim;
        // Only positions with a target count.
        let at = target
            .f_reshape([-1])?
            .f_ne(0)?
            .f_nonzero()?
            .f_squeeze_dim(1)?;
        let hv = h.f_reshape([-1, d])?.f_index_select(0, &at)?;
        let tv = target.f_reshape([-1])?.f_index_select(0, &at)?;
        let emb: &Tensor = &self.item_emb;
        match objective {
            SeqLoss::Ce => {
                let logits =
                    hv.f_matmul(&emb.f_narrow(0, 1, self.config.n_items)?.f_transpose(0, 1)?)?;
                Ok(logits.f_cross_entropy_loss::<Tensor>(
                    &tv.f_sub(&Tensor::from(1i64).f_to(dev)?)?,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    0.0,
                )?)
            }
            SeqLoss::Bce => {
                let neg = data
                    .negative
                    .f_index_select(0, idx)?
                    .f_to(dev)?
                    .f_reshape([-1])?
                    .f_index_select(0, &at)?;
                let score = |items: &Tensor| -> Result<Tensor> {
                    Ok(hv.f_mul(&super::lookup(emb, items)?)?.f_sum_dim_intlist(
                        1,
                        false,
                        Kind::Float,
                    )?)
                };
                let pos = score(&tv)?.f_log_sigmoid()?;
                let negl = score(&neg)?.f_neg()?.f_log_sigmoid()?;
                Ok(pos.f_add(&negl)?.f_mean(Kind::Float)?.f_neg()?)
            }
        }
    }
}

/// SASRec on the trainer: the network, its objective, and the interactions its users'
/// histories come from.
pub struct SasRecModel {
    net: SasRec,
    objective: SeqLoss,
    train: Option<Arc<Interactions>>,
    rows: Option<SeqBatches>,
}

impl SasRecModel {
    /// A fresh network.
    pub fn new(config: SasRecConfig, objective: SeqLoss, device: Device) -> Result<Self> {
        Ok(Self {
            net: SasRec::new(config, device)?,
            objective,
            train: None,
            rows: None,
        })
    }
}

impl Model for SasRecModel {
    fn params(&self) -> Vec<(String, Tensor)> {
        self.net.params()
    }
    fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.net.load(tensors)
    }
    fn device(&self) -> Device {
        self.net.device()
    }
    fn n_users(&self) -> Option<i64> {
        None
    }
    fn n_items(&self) -> i64 {
        self.net.config.n_items
    }
    fn set_train(&mut self, train: Arc<Interactions>, _fresh: bool) -> Result<()> {
        // Fails early when no user has two items.
        training_rows(&train, None, self.net.config.max_len)?;
        self.train = Some(train);
        Ok(())
    }
    fn start_epoch(&mut self, seed: u64, epoch: u64) -> Result<usize> {
        let train = self
            .train
            .as_ref()
            .ok_or_else(|| RecforgeError::config("set the training data first"))?;
        let neg = match self.objective {
            SeqLoss::Bce => Some(crate::sampling::training_negatives(
                train,
                1,
                &crate::sampling::Strategy::Uniform,
                true,
                seed,
                epoch,
            )?),
            SeqLoss::Ce => None,
        };
        let rows = training_rows(train, neg.as_deref(), self.net.config.max_len)?;
        let n = rows.input.size()[0] as usize;
        self.rows = Some(rows);
        Ok(n)
    }
    fn batch_loss(&self, idx: &Tensor) -> Result<Tensor> {
        let rows = self
            .rows
            .as_ref()
            .ok_or_else(|| RecforgeError::config("start an epoch first"))?;
        self.net.loss(rows, idx, self.objective)
    }
    fn score_all(&self, users: &Tensor, history: Option<&Interactions>) -> Result<Tensor> {
        let h = history.or(self.train.as_deref()).ok_or_else(|| {
            RecforgeError::config("this model has no interaction history: fit it first")
        })?;
        if h.n_items() as i64 != self.net.config.n_items {
            return Err(RecforgeError::data(format!(
                "history has {} items but the model was built for {}",
                h.n_items(),
                self.net.config.n_items
            )));
        }
        let users = Vec::<i64>::try_from(users.f_to(Device::Cpu)?)?;
        let seq = history_rows(h, &users, self.net.config.max_len)?;
        self.net.score_sequences(&seq.f_to(self.device())?)
    }
    fn validation(&self) -> Validation {
        Validation::Ranking
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Interactions {
        // user 0: items 3, 1, 4 (in time order); user 1: item 2 only; user 2: 0, 1.
        Interactions::from_arrays(
            &[0, 0, 0, 1, 2, 2],
            &[3, 1, 4, 2, 0, 1],
            None,
            Some(&[1, 2, 3, 1, 1, 2]),
            Some(3),
            Some(5),
        )
        .unwrap()
    }

    #[test]
    fn training_rows_shift_by_one_and_left_pad() {
        let x = toy();
        let neg: Vec<i64> = (0..x.n_interactions() as i64).map(|k| 10 + k).collect();
        let r = training_rows(&x, Some(&neg), 3).unwrap();
        let rows = |t: &Tensor| Vec::<i64>::try_from(t.f_reshape([-1]).unwrap()).unwrap();
        // user 1 has one item: no example.
        assert_eq!(rows(&r.input), vec![0, 4, 2, 0, 0, 1]);
        assert_eq!(rows(&r.target), vec![0, 2, 5, 0, 0, 2]);
        assert_eq!(rows(&r.negative), vec![0, 12, 13, 0, 0, 16]);
        let r = training_rows(&x, None, 1).unwrap();
        assert_eq!(rows(&r.input), vec![2, 1]);
        assert_eq!(rows(&r.target), vec![5, 2]);
        let h = history_rows(&x, &[0, 1, 2], 2).unwrap();
        assert_eq!(rows(&h), vec![2, 5, 0, 3, 1, 2]);
        assert!(history_rows(&x, &[3], 2).is_err());
    }

    #[test]
    fn attention_is_causal_and_ignores_padding() {
        let cfg = SasRecConfig {
            n_items: 6,
            dim: 8,
            n_layers: 2,
            n_heads: 2,
            max_len: 4,
            dropout: 0.0,
            init_std: 0.5,
            seed: 1,
        };
        let m = SasRec::new(cfg, Device::Cpu).unwrap();
        super::super::assert_in_store(&m.vs, &m.params(), &[]);
        let a = Tensor::from_slice(&[0i64, 2, 3, 4]).view([1, 4]);
        let b = Tensor::from_slice(&[0i64, 2, 3, 6]).view([1, 4]);
        let c = Tensor::from_slice(&[5i64, 2, 3, 4]).view([1, 4]);
        let (ha, hb, hc) = (
            m.forward(&a, false).unwrap(),
            m.forward(&b, false).unwrap(),
            m.forward(&c, false).unwrap(),
        );
        // A later item does not change earlier positions.
        assert!(ha
            .narrow(1, 1, 2)
            .allclose(&hb.narrow(1, 1, 2), 1e-6, 1e-6, false));
        assert!(!ha
            .narrow(1, 3, 1)
            .allclose(&hb.narrow(1, 3, 1), 1e-6, 1e-6, false));
        // A real item where padding was changes later positions.
        assert!(!ha
            .narrow(1, 3, 1)
            .allclose(&hc.narrow(1, 3, 1), 1e-6, 1e-6, false));
        assert!(ha.isfinite().all().int64_value(&[]) == 1);
        let s = m.score_sequences(&a).unwrap();
        assert_eq!(s.size(), vec![1, 6]);
        assert!(m
            .forward(&Tensor::zeros([1, 5], (Kind::Int64, Device::Cpu)), false)
            .is_err());
    }
}
