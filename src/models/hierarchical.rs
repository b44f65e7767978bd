//! HierarchicalRec: an item LLM turns each item's text into a vector, a recommendation LLM reads
//! the sequence of item vectors (HLLM-style, the S4 reference system), with an optional
//! retrieval-augmented (RAG) prefix.
//!
//! ```text
//! e_j   = item_llm(text_j)                  mean over real tokens, or the [ITEM] token's state
//! v_j   = W_a e_j + b_a                     item vector in the rec LLM's hidden size (item_adapter)
//! h     = rec_llm([r_1..r_K, SEP, v_i1 .. v_iT])          (inputs_embeds, left-padded)
//! u_t   = mean(h_1 .. h_t) (or h_t)         over the item positions only
//! u_t  <- BN(u_t)                           with `user_norm = batch` (batch normalisation)
//! q_t   = W_h u_t + b_h                     (head)
//! s(j)  = q_t . v_j / tau + b_j             (or cos(q_t, v_j) / tau + b_j)
//! ```
//!
//! Frozen item-LLM vectors are computed once outside (the Python side caches them on disk) and
//! held as the buffer `item_llm_vectors`; with `item_mode = finetune` or the `[ITEM]` token, the
//! item LLM lives inside the model (`item_llm.` + its Hugging Face names) over the buffers
//! `item_tokens.ids` / `item_tokens.mask` and items are encoded as batches need them.
//!
//! Training: the state after item `t` predicts item `t + 1` (the rec LLM is causal, so every
//! position of a row trains at once and `u_t` never sees later items), by InfoNCE over sampled
//! negatives (a shared pool per batch or `n_negatives` per position; negatives equal to the
//! positive, or whose item-LLM vectors have cosine >= `dedup_threshold` with it, are masked) or
//! by the full softmax over all items, computed in item chunks.
//!
//! RAG (`retrieve_k > 0`): the `K` items whose item-LLM vectors are most similar (cosine) to the
//! mean of the input items' vectors, the user's own history excluded, enter the rec LLM before
//! the sequence, followed by a learned separator `sep_emb`; the causal rec LLM lets every item
//! position attend to them.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::sasrec::{history_rows, training_rows};
use super::soft_token::{chunked_cross_entropy, BackboneMode};
use super::{Linear, Var};
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::text::causal_lm::{CausalLm, Training};
use crate::text::decoder;
use crate::train::model::{Model, Validation};

/// Whether the item LLM trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemMode {
    /// Fixed item-LLM vectors (precomputed, or from a frozen item LLM with a learned `[ITEM]`).
    Frozen,
    /// The item LLM trains with the rest.
    Finetune,
}

/// How the item LLM's states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemPooling {
    /// Mean over the real tokens (S4).
    Mean,
    /// A learned `[ITEM]` vector appended to the text; its last state (HLLM).
    ItemToken,
}

/// How the rec LLM's states become the user representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserPooling {
    /// Mean over the item positions so far (S4).
    Mean,
    /// The state of the last item.
    Last,
}

/// Normalisation of the user representation before the head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserNorm {
    /// None (S4).
    #[default]
    None,
    /// Batch normalisation over the real positions of a batch (running statistics in
    /// evaluation): removes the large constant components a pretrained LLM's final states carry
    /// (SmolLM2's dimension 199 is about 50 for every input, the rest about 0.6), which act on
    /// the head as a learning rate many times the others'.
    Batch,
}

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HierLoss {
    /// InfoNCE over sampled negatives.
    Infonce,
    /// Softmax over all items (chunked).
    Softmax,
}

/// Where InfoNCE negatives come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativePool {
    /// `n_negatives` items shared by every position of a batch.
    Shared,
    /// `n_negatives` items per position.
    PerPosition,
}

/// Score function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// Dot product.
    Dot,
    /// Cosine similarity.
    Cosine,
}

/// Sizes and options.
#[derive(Debug, Clone, PartialEq)]
pub struct HierarchicalConfig {
    /// Items.
    pub n_items: i64,
    /// Longest item sequence the rec LLM reads (the last `max_len` items).
    pub max_len: i64,
    /// User representation.
    pub user_pooling: UserPooling,
    /// Normalisation of the user representation.
    pub user_norm: UserNorm,
    /// Whether the item LLM trains.
    pub item_mode: ItemMode,
    /// Item-LLM pooling (for an item LLM inside the model).
    pub item_pooling: ItemPooling,
    /// What the rec LLM trains.
    pub rec_mode: BackboneMode,
    /// Objective.
    pub loss: HierLoss,
    /// InfoNCE negatives (per batch or per position).
    pub n_negatives: i64,
    /// Shared pool or per position.
    pub negatives: NegativePool,
    /// Dot or cosine.
    pub similarity: Similarity,
    /// Softmax temperature (initial value when learned).
    pub temperature: f64,
    /// Whether the temperature trains (as `log_temperature`).
    pub learn_temperature: bool,
    /// Negatives whose item-LLM vectors have at least this cosine with the positive's are
    /// masked (values above 1 switch it off).
    pub dedup_threshold: f64,
    /// A learned per-item score bias.
    pub item_bias: bool,
    /// Retrieved items fed before the sequence (0: no RAG).
    pub retrieve_k: i64,
    /// Items per chunk of the full softmax.
    pub ce_chunk: i64,
    /// Items per item-LLM forward when all items are encoded.
    pub item_batch: i64,
    /// Dropout on the rec LLM's input vectors in training.
    pub dropout: f64,
    /// Standard deviation of the adapter's, head's and separator's initialisation.
    pub init_std: f64,
    /// Initialisation seed.
    pub seed: u64,
}

impl HierarchicalConfig {
    /// Checks sizes and options.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("n_items", self.n_items),
            ("max_len", self.max_len),
            ("ce_chunk", self.ce_chunk),
            ("item_batch", self.item_batch),
        ] {
            if v < 1 {
                return Err(RecforgeError::config(format!(
                    "{name} must be >= 1, got {v}"
                )));
            }
        }
        if self.loss == HierLoss::Infonce && self.n_negatives < 1 {
            return Err(RecforgeError::config(format!(
                "InfoNCE needs n_negatives >= 1, got {}",
                self.n_negatives
            )));
        }
        if self.retrieve_k < 0 {
            return Err(RecforgeError::config(format!(
                "retrieve_k must be >= 0, got {}",
                self.retrieve_k
            )));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(RecforgeError::config(format!(
                "temperature must be a positive number, got {}",
                self.temperature
            )));
        }
        if self.dedup_threshold.is_nan() {
            return Err(RecforgeError::config("dedup_threshold must be a number"));
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

/// What the item side is built from.
#[derive(Debug)]
pub enum ItemInput {
    /// Precomputed item-LLM vectors `[n_items, H_item]` (frozen, mean-pooled outside).
    Vectors(Tensor),
    /// Token ids and 0/1 mask `[n_items, T]`, right-padded, for an item LLM in the model.
    Tokens {
        /// Token ids.
        ids: Tensor,
        /// Real-token mask.
        mask: Tensor,
    },
}

/// Item vectors for a sorted set of item ids.
struct Local {
    ids: Vec<i64>,
    /// Adapted vectors `[m, H]`.
    vectors: Tensor,
    /// Item-LLM vectors `[m, H_item]`, detached.
    raw: Tensor,
}

impl Local {
    fn index(&self, item: i64) -> Result<i64> {
        self.ids
            .binary_search(&item)
            .map(|k| k as i64)
            .map_err(|_| RecforgeError::data(format!("item {item} is not in the batch's items")))
    }

    fn indices(&self, items: &[i64]) -> Result<Tensor> {
        let v = items
            .iter()
            .map(|&i| self.index(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::from_slice(&v).f_to(self.vectors.device())?)
    }
}

/// The network: item side, rec LLM, adapter, head. The adapter, head and the optional
/// separator, item biases, temperature and item token live in the network's own
/// `nn::VarStore` (on the rec LLM's device); each LLM keeps its own store.
pub struct Hierarchical {
    /// Configuration.
    pub config: HierarchicalConfig,
    vs: nn::VarStore,
    /// `item_adapter`: item-LLM size -> rec-LLM size.
    item_adapter: Linear,
    /// `head`: the query projection.
    head: Linear,
    /// `user_norm.*` (with `UserNorm::Batch`).
    user_norm: Option<super::BatchNorm>,
    /// `sep_emb` `[H]` (with retrieval).
    sep_emb: Option<Var>,
    /// `item_bias` `[n_items]` (with `item_bias`).
    item_bias: Option<Var>,
    /// `log_temperature` `[]` (with `learn_temperature`).
    log_temperature: Option<Var>,
    /// `item_token` `[H_item]` (with `ItemPooling::ItemToken`).
    item_token: Option<Var>,
    rec: CausalLm,
    item_llm: Option<CausalLm>,
    items: ItemInput,
}

/// The variable `v`, which the configuration says this model has (`name` in the error).
fn needed<'a>(v: &'a Option<Var>, name: &str) -> Result<&'a Tensor> {
    v.as_deref()
        .ok_or_else(|| RecforgeError::config(format!("this model has no parameter {name}")))
}

fn normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .f_square()?
        .f_sum_dim_intlist(-1, true, Kind::Float)?
        .f_sqrt()?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&n)?)
}

fn cpu_i64(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(
        t.f_to(Device::Cpu)?
            .f_to_kind(Kind::Int64)?
            .f_reshape([-1])?,
    )?)
}

/// The unweighted parts of one batch's loss (for tests).
#[derive(Debug)]
pub struct HierLossParts {
    /// The objective (InfoNCE or softmax cross-entropy), mean over positions.
    pub loss: Tensor,
    /// Positions that had a target.
    pub positions: i64,
}

impl Hierarchical {
    /// Fresh adapter, head and separator (normal(0, init_std), biases 0) from `config.seed`,
    /// around the rec LLM `rec` and the item side (`item_llm` with `ItemInput::Tokens`).
    pub fn new(
        config: HierarchicalConfig,
        mut rec: CausalLm,
        item_llm: Option<CausalLm>,
        items: ItemInput,
    ) -> Result<Self> {
        config.validate()?;
        let device = rec.device();
        let h = rec.net().hidden_size();
        let hi = match (&items, &item_llm) {
            (ItemInput::Vectors(v), _) => {
                if config.item_mode == ItemMode::Finetune
                    || config.item_pooling == ItemPooling::ItemToken
                {
                    return Err(RecforgeError::config(
                        "item_mode='finetune' and item_pooling='item_token' need the item LLM \
                         inside the model (item token ids), not precomputed vectors",
                    ));
                }
                let (n, hi) = v.size2().map_err(|_| {
                    RecforgeError::data(format!(
                        "item vectors must be [n_items, dim], got {:?}",
                        v.size()
                    ))
                })?;
                if n != config.n_items || hi < 1 {
                    return Err(RecforgeError::data(format!(
                        "item vectors have shape [{n}, {hi}] but the data has {} items",
                        config.n_items
                    )));
                }
                let finite = v.f_isfinite()?.f_all()?.f_int64_value(&[])? == 1;
                if !finite {
                    return Err(RecforgeError::data(
                        "item vectors hold NaN or infinite values",
                    ));
                }
                hi
            }
            (ItemInput::Tokens { ids, mask }, Some(llm)) => {
                let (n, t) = ids.size2().map_err(|_| {
                    RecforgeError::data(format!(
                        "item token ids must be [n_items, tokens], got {:?}",
                        ids.size()
                    ))
                })?;
                if n != config.n_items || t < 1 {
                    return Err(RecforgeError::data(format!(
                        "item token ids have shape [{n}, {t}] but the data has {} items",
                        config.n_items
                    )));
                }
                decoder::check_ids(ids, llm.net().vocab_size())?;
                decoder::check_mask(mask, &[n, t])?;
                llm.net().hidden_size()
            }
            (ItemInput::Tokens { .. }, None) => {
                return Err(RecforgeError::config(
                    "item token ids need an item LLM (item_llm)",
                ))
            }
        };
        let items = match items {
            ItemInput::Vectors(v) => ItemInput::Vectors(v.f_to_kind(Kind::Float)?.f_to(device)?),
            ItemInput::Tokens { ids, mask } => ItemInput::Tokens {
                ids: ids.f_to_kind(Kind::Int64)?.f_to(device)?,
                mask: mask.f_to_kind(Kind::Int64)?.f_to(device)?,
            },
        };
        tch::manual_seed(config.seed as i64);
        let cpu = (Kind::Float, Device::Cpu);
        let normal = |shape: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_randn(shape, cpu)?.f_mul(&Tensor::from(config.init_std))?)
        };
        let zeros = |shape: &[i64]| -> Result<Tensor> { Ok(Tensor::f_zeros(shape, cpu)?) };
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let item_adapter =
            Linear::new(&root.sub("item_adapter"), &normal(&[h, hi])?, &zeros(&[h])?)?;
        let head = Linear::new(&root.sub("head"), &normal(&[h, h])?, &zeros(&[h])?)?;
        let user_norm = (config.user_norm == UserNorm::Batch)
            .then(|| super::BatchNorm::new(&root.sub("user_norm"), h))
            .transpose()?;
        let sep_emb = (config.retrieve_k > 0)
            .then(|| Var::param(&root, "sep_emb", &normal(&[h])?))
            .transpose()?;
        let item_bias = config
            .item_bias
            .then(|| Var::param(&root, "item_bias", &zeros(&[config.n_items])?))
            .transpose()?;
        let log_temperature = config
            .learn_temperature
            .then(|| {
                let t = Tensor::from(config.temperature.ln() as f32);
                Var::param(&root, "log_temperature", &t)
            })
            .transpose()?;
        let item_token = (config.item_pooling == ItemPooling::ItemToken)
            .then(|| Var::param(&root, "item_token", &normal(&[hi])?))
            .transpose()?;
        rec.set_trainable(config.rec_mode != BackboneMode::Frozen);
        let mut item_llm = item_llm;
        if let Some(llm) = item_llm.as_mut() {
            llm.set_trainable(config.item_mode == ItemMode::Finetune);
        }
        Ok(Self {
            config,
            vs,
            item_adapter,
            head,
            user_norm,
            sep_emb,
            item_bias,
            log_temperature,
            item_token,
            rec,
            item_llm,
            items,
        })
    }

    /// The device of the network's variables and of both LLMs.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The adapter's, head's and optional variables' parameters (shallow handles), in this
    /// order: `item_adapter.*`, `head.*`, `sep_emb`, `item_bias`, `log_temperature`,
    /// `item_token`, `user_norm.weight`, `user_norm.bias`.
    pub fn own_params(&self) -> Vec<(String, Tensor)> {
        let optional = [
            &self.sep_emb,
            &self.item_bias,
            &self.log_temperature,
            &self.item_token,
        ];
        super::named(
            self.item_adapter
                .vars()
                .into_iter()
                .chain(self.head.vars())
                .chain(optional.into_iter().flatten())
                .chain(self.user_norm.iter().flat_map(super::BatchNorm::params)),
        )
    }

    /// The network's own buffers: `user_norm.running_mean` and `user_norm.running_var` (with
    /// `UserNorm::Batch`).
    pub fn own_buffers(&self) -> Vec<(String, Tensor)> {
        super::named(self.user_norm.iter().flat_map(super::BatchNorm::buffers))
    }

    /// The rec LLM.
    pub fn rec(&self) -> &CausalLm {
        &self.rec
    }

    fn named(llm: &CausalLm, prefix: &str) -> Vec<(String, Tensor)> {
        llm.named_parameters()
            .into_iter()
            .map(|(n, t)| (format!("{prefix}{n}"), t))
            .collect()
    }

    fn rec_named(&self) -> Vec<(String, Tensor)> {
        Self::named(&self.rec, "rec_llm.")
    }

    fn item_llm_named(&self) -> Vec<(String, Tensor)> {
        self.item_llm
            .as_ref()
            .map(|l| Self::named(l, "item_llm."))
            .unwrap_or_default()
    }

    fn item_buffers(&self) -> Vec<(String, Tensor)> {
        match &self.items {
            ItemInput::Vectors(v) => vec![("item_llm_vectors".into(), v.shallow_clone())],
            ItemInput::Tokens { ids, mask } => vec![
                ("item_tokens.ids".into(), ids.shallow_clone()),
                ("item_tokens.mask".into(), mask.shallow_clone()),
            ],
        }
    }

    /// The item side a checkpoint holds (`item_llm_vectors`, or `item_tokens.ids` and
    /// `item_tokens.mask`).
    pub fn items_from(tensors: &HashMap<String, Tensor>) -> Result<ItemInput> {
        if let Some(v) = tensors.get("item_llm_vectors") {
            return Ok(ItemInput::Vectors(v.shallow_clone()));
        }
        match (tensors.get("item_tokens.ids"), tensors.get("item_tokens.mask")) {
            (Some(ids), Some(mask)) => Ok(ItemInput::Tokens {
                ids: ids.shallow_clone(),
                mask: mask.shallow_clone(),
            }),
            _ => Err(RecforgeError::data(
                "the checkpoint holds neither item_llm_vectors nor item_tokens.ids / item_tokens.mask",
            )),
        }
    }

    /// Item-LLM vectors `[m, H_item]` of items `items` (`[m]`, 0-based, on this device).
    pub fn item_llm_vectors(&self, items: &Tensor) -> Result<Tensor> {
        match &self.items {
            ItemInput::Vectors(v) => Ok(v.f_index_select(0, items)?),
            ItemInput::Tokens { ids, mask } => {
                let llm = self
                    .item_llm
                    .as_ref()
                    .ok_or_else(|| RecforgeError::config("no item LLM"))?;
                let ids = ids.f_index_select(0, items)?;
                let mask = mask.f_index_select(0, items)?;
                let emb = llm.net().embed(&ids);
                match self.config.item_pooling {
                    ItemPooling::Mean => {
                        let h = decoder::hidden_states(llm.net(), &emb, &mask)?;
                        let m = mask.f_to_kind(Kind::Float)?;
                        let sum = h.f_mul(&m.f_unsqueeze(2)?)?.f_sum_dim_intlist(
                            1,
                            false,
                            Kind::Float,
                        )?;
                        let count = m
                            .f_sum_dim_intlist(1, true, Kind::Float)?
                            .f_clamp_min(1.0)?;
                        Ok(sum.f_div(&count)?)
                    }
                    ItemPooling::ItemToken => {
                        let (m, t, hi) = emb.size3()?;
                        let len = mask.f_sum_dim_intlist(1, true, Kind::Int64)?; // [m, 1]
                        let pos = Tensor::f_arange(t + 1, (Kind::Int64, self.device()))?;
                        let onehot = pos.f_unsqueeze(0)?.f_eq_tensor(&len)?; // [m, t + 1]
                        let oh = onehot.f_to_kind(Kind::Float)?.f_unsqueeze(2)?;
                        let emb = Tensor::f_cat(
                            &[
                                emb,
                                Tensor::f_zeros([m, 1, hi], (Kind::Float, self.device()))?,
                            ],
                            1,
                        )?;
                        let token = needed(&self.item_token, "item_token")?;
                        let emb = emb
                            .f_mul(&oh.f_neg()?.f_add_scalar(1.0)?)?
                            .f_add(&oh.f_mul(token)?)?;
                        let mask = Tensor::f_cat(
                            &[mask, Tensor::f_zeros([m, 1], (Kind::Int64, self.device()))?],
                            1,
                        )?
                        .f_add(&onehot.f_to_kind(Kind::Int64)?)?;
                        let h = decoder::hidden_states(llm.net(), &emb, &mask)?;
                        Ok(h.f_mul(&oh)?.f_sum_dim_intlist(1, false, Kind::Float)?)
                    }
                }
            }
        }
    }

    /// Item vectors (in the rec LLM's hidden size) of a sorted, de-duplicated id list.
    fn local(&self, ids: Vec<i64>) -> Result<Local> {
        let idx = Tensor::from_slice(&ids).f_to(self.device())?;
        let raw = self.item_llm_vectors(&idx)?;
        let vectors = self.item_adapter.forward(&raw)?;
        Ok(Local {
            ids,
            vectors,
            raw: raw.detach(),
        })
    }

    /// Item vectors of every item, encoded `item_batch` items at a time.
    fn all_items(&self) -> Result<Local> {
        let n = self.config.n_items;
        match &self.items {
            ItemInput::Vectors(_) => self.local((0..n).collect()),
            ItemInput::Tokens { .. } => {
                let mut vecs = Vec::new();
                let mut raws = Vec::new();
                for a in (0..n).step_by(self.config.item_batch as usize) {
                    let part = self.local((a..(a + self.config.item_batch).min(n)).collect())?;
                    vecs.push(part.vectors);
                    raws.push(part.raw);
                }
                Ok(Local {
                    ids: (0..n).collect(),
                    vectors: Tensor::f_cat(&vecs, 0)?,
                    raw: Tensor::f_cat(&raws, 0)?,
                })
            }
        }
    }

    /// Normalised item-LLM vectors of every item (the retrieval index), without gradients.
    pub fn retrieval_index(&self) -> Result<Tensor> {
        tch::no_grad(|| -> Result<Tensor> {
            let raw = match &self.items {
                ItemInput::Vectors(v) => v.shallow_clone(),
                ItemInput::Tokens { .. } => self.all_items()?.raw,
            };
            normalize(&raw)
        })
    }

    /// For each row of `seq` (`[B, L]` padded ids, CPU or device), the `retrieve_k` items most
    /// similar (cosine of item-LLM vectors) to the mean of the row's items, none of
    /// `exclude[b]` (0-based ids): `[B, K]` padded ids (0 where fewer candidates remain or the
    /// row is empty), CPU.
    pub fn retrieve(&self, index: &Tensor, seq: &Tensor, exclude: &[Vec<i64>]) -> Result<Tensor> {
        let k = self.config.retrieve_k;
        let (b, _) = seq.size2()?;
        let n = self.config.n_items;
        tch::no_grad(|| -> Result<Tensor> {
            let seq = seq.f_to(self.device())?;
            let present = seq.f_ne(0)?.f_to_kind(Kind::Float)?.f_unsqueeze(2)?;
            let rows = index
                .f_index_select(0, &seq.f_sub_scalar(1)?.f_clamp_min(0)?.f_reshape([-1])?)?
                .f_view([b, -1, index.size()[1]])?;
            let q = normalize(
                &rows
                    .f_mul(&present)?
                    .f_sum_dim_intlist(1, false, Kind::Float)?,
            )?;
            let mut sims = q.f_matmul(&index.f_transpose(0, 1)?)?; // [B, I]
            let (mut r, mut c) = (Vec::new(), Vec::new());
            for (row, items) in exclude.iter().enumerate() {
                for &i in items {
                    r.push(row as i64);
                    c.push(i);
                }
            }
            if !r.is_empty() {
                let r = Tensor::from_slice(&r).f_to(self.device())?;
                let c = Tensor::from_slice(&c).f_to(self.device())?;
                let _ = sims.f_index_put_(
                    &[Some(r), Some(c)],
                    &Tensor::from(f32::NEG_INFINITY).f_to(self.device())?,
                    false,
                )?;
            }
            let kk = k.min(n);
            let (vals, idx) = sims.f_topk(kk, 1, true, true)?;
            let empty = present
                .f_sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float)?
                .f_eq(0.0)?;
            let ok = vals
                .f_isfinite()?
                .f_logical_and(&empty.f_logical_not()?.f_unsqueeze(1)?)?;
            let out = idx.f_add_scalar(1)?.f_mul(&ok.f_to_kind(Kind::Int64)?)?;
            let out = if kk < k {
                Tensor::f_cat(
                    &[
                        out,
                        Tensor::f_zeros([b, k - kk], (Kind::Int64, self.device()))?,
                    ],
                    1,
                )?
            } else {
                out
            };
            Ok(out.f_to(Device::Cpu)?)
        })
    }

    /// States `[B, L, H]` of the rec LLM at the item columns of `seq` (`[B, L]` padded ids,
    /// left-padded), after the retrieved items `retrieved` (`[B, K]` padded ids) and the
    /// separator; dropout on the inputs when `train`.
    fn rec_states(
        &self,
        seq: &Tensor,
        retrieved: Option<&Tensor>,
        local: &Local,
        train: bool,
    ) -> Result<Tensor> {
        let (b, l) = seq.size2()?;
        let seq_v = cpu_i64(seq)?;
        let ret_v = match retrieved {
            Some(r) if self.config.retrieve_k > 0 => Some(cpu_i64(r)?),
            _ => None,
        };
        let k = self.config.retrieve_k;
        let extra = if ret_v.is_some() { k + 1 } else { 0 };
        let w = l + extra;
        let m = local.ids.len() as i64;
        let (sep, pad) = (m, m + 1);
        let mut idx = Vec::with_capacity((b * w) as usize);
        let mut mask = Vec::with_capacity((b * w) as usize);
        for row in 0..b as usize {
            let items = &seq_v[row * l as usize..(row + 1) * l as usize];
            let mut prefix = Vec::new();
            if let Some(ret) = &ret_v {
                for &r in &ret[row * k as usize..(row + 1) * k as usize] {
                    if r > 0 {
                        prefix.push(local.index(r - 1)?);
                    }
                }
                prefix.push(sep);
            }
            let t = items.iter().filter(|&&i| i > 0).count();
            let real = prefix.len() + t;
            let pads = w as usize - real;
            idx.extend(std::iter::repeat_n(pad, pads));
            mask.extend(std::iter::repeat_n(0i64, pads));
            idx.extend(prefix.iter().copied());
            for &i in &items[l as usize - t..] {
                idx.push(local.index(i - 1)?);
            }
            mask.extend(std::iter::repeat_n(1i64, real));
        }
        let h = local.vectors.size()[1];
        let mut rows = vec![local.vectors.shallow_clone()];
        if extra > 0 {
            rows.push(needed(&self.sep_emb, "sep_emb")?.f_unsqueeze(0)?);
        } else {
            rows.push(Tensor::f_zeros([1, h], (Kind::Float, self.device()))?);
        }
        rows.push(Tensor::f_zeros([1, h], (Kind::Float, self.device()))?);
        let table = Tensor::f_cat(&rows, 0)?;
        let idx = Tensor::from_slice(&idx).f_to(self.device())?;
        let mut embeds = table.f_index_select(0, &idx)?.f_view([b, w, h])?;
        if train && self.config.dropout > 0.0 {
            embeds = super::dropout(&embeds, self.config.dropout)?;
        }
        let mask = Tensor::from_slice(&mask)
            .f_view([b, w])?
            .f_to(self.device())?;
        let states = decoder::hidden_states(self.rec.net(), &embeds, &mask)?;
        Ok(states.f_narrow(1, extra, l)?)
    }

    /// Queries `[B, L, H]` (the head applied to the pooled user representation) at every item
    /// column of `seq`.
    fn queries(
        &self,
        seq: &Tensor,
        retrieved: Option<&Tensor>,
        local: &Local,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.rec_states(seq, retrieved, local, train)?;
        let rep = match self.config.user_pooling {
            UserPooling::Last => h,
            UserPooling::Mean => {
                let m = seq
                    .f_to(self.device())?
                    .f_ne(0)?
                    .f_to_kind(Kind::Float)?
                    .f_unsqueeze(2)?;
                let sum = h.f_mul(&m)?.f_cumsum(1, Kind::Float)?;
                sum.f_div(&m.f_cumsum(1, Kind::Float)?.f_clamp_min(1.0)?)?
            }
        };
        let rep = match &self.user_norm {
            None => rep,
            Some(bn) if train => {
                // Statistics of the real positions only; padding rows pass through (unused).
                let hsize = rep.size()[2];
                let flat = rep.f_reshape([-1, hsize])?;
                let real = seq
                    .f_to(self.device())?
                    .f_reshape([-1])?
                    .f_gt(0)?
                    .f_nonzero()?
                    .f_squeeze_dim(1)?;
                let normed = bn.train_rows(&flat.f_index_select(0, &real)?)?;
                flat.f_index_copy(0, &real, &normed)?.f_view_as(&rep)?
            }
            Some(bn) => bn.eval(&rep)?,
        };
        self.head.forward(&rep)
    }

    fn temperature(&self) -> Result<Tensor> {
        if self.config.learn_temperature {
            Ok(needed(&self.log_temperature, "log_temperature")?.f_exp()?)
        } else {
            Ok(Tensor::from(self.config.temperature as f32).f_to(self.device())?)
        }
    }

    /// Queries and item vectors as the score function uses them: `s = q' . v'` (+ bias).
    fn score_parts(&self, q: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (q, v) = match self.config.similarity {
            Similarity::Dot => (q.shallow_clone(), v.shallow_clone()),
            Similarity::Cosine => (normalize(q)?, normalize(v)?),
        };
        Ok((q.f_div(&self.temperature()?)?, v))
    }

    fn bias_of(&self, items: &Tensor) -> Result<Option<Tensor>> {
        if self.config.item_bias {
            Ok(Some(
                needed(&self.item_bias, "item_bias")?.f_index_select(0, items)?,
            ))
        } else {
            Ok(None)
        }
    }

    /// Scores `[B, n_items]` of every item after the last item of each row of `seq`.
    pub fn score_sequences(&self, seq: &Tensor, retrieved: Option<&Tensor>) -> Result<Tensor> {
        let all = self.all_items()?;
        let q = self.queries(seq, retrieved, &all, false)?;
        let last = q.f_select(1, q.size()[1] - 1)?;
        let (q, v) = self.score_parts(&last, &all.vectors)?;
        let s = q.f_matmul(&v.f_transpose(0, 1)?)?;
        match self.bias_of(&Tensor::f_arange(
            self.config.n_items,
            (Kind::Int64, self.device()),
        )?)? {
            Some(b) => Ok(s.f_add(&b)?),
            None => Ok(s),
        }
    }

    /// The objective of training rows (`input`, `target`: `[B, L]` padded ids, `retrieved`
    /// `[B, K]`) with InfoNCE negatives `neg` (0-based; `[n_negatives]` for a shared pool,
    /// `[positions, n_negatives]` per position; `None`: drawn uniformly), in training mode.
    pub fn loss_parts(
        &self,
        input: &Tensor,
        target: &Tensor,
        retrieved: Option<&Tensor>,
        neg: Option<&Tensor>,
    ) -> Result<HierLossParts> {
        let cfg = &self.config;
        let dev = self.device();
        // Dropout inside the LLMs that train, where their configs have it; frozen ones are
        // evaluated as the fixed functions they are.
        let mut lms = Vec::new();
        if cfg.rec_mode != BackboneMode::Frozen {
            lms.push(&self.rec);
        }
        if let (Some(l), ItemMode::Finetune) = (self.item_llm.as_ref(), cfg.item_mode) {
            lms.push(l);
        }
        let _training = Training::on(lms);
        let flat_t = cpu_i64(target)?;
        let at: Vec<i64> = flat_t
            .iter()
            .enumerate()
            .filter(|(_, &t)| t > 0)
            .map(|(k, _)| k as i64)
            .collect();
        let tv: Vec<i64> = at.iter().map(|&k| flat_t[k as usize] - 1).collect();
        let n = tv.len() as i64;
        if n == 0 {
            return Ok(HierLossParts {
                loss: Tensor::f_zeros([], (Kind::Float, dev))?,
                positions: 0,
            });
        }
        let neg: Option<Vec<i64>> = match (cfg.loss, neg) {
            (HierLoss::Softmax, _) => None,
            (HierLoss::Infonce, Some(t)) => Some(cpu_i64(t)?),
            (HierLoss::Infonce, None) => {
                let shape: Vec<i64> = match cfg.negatives {
                    NegativePool::Shared => vec![cfg.n_negatives],
                    NegativePool::PerPosition => vec![n, cfg.n_negatives],
                };
                Some(cpu_i64(&Tensor::f_randint(
                    cfg.n_items,
                    shape.as_slice(),
                    (Kind::Int64, Device::Cpu),
                )?)?)
            }
        };
        let local = match cfg.loss {
            HierLoss::Softmax => self.all_items()?,
            HierLoss::Infonce => {
                let mut ids: Vec<i64> = cpu_i64(input)?
                    .into_iter()
                    .chain(match retrieved {
                        Some(r) if cfg.retrieve_k > 0 => cpu_i64(r)?,
                        _ => Vec::new(),
                    })
                    .filter(|&i| i > 0)
                    .map(|i| i - 1)
                    .chain(tv.iter().copied())
                    .chain(neg.iter().flatten().copied())
                    .collect();
                if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i >= cfg.n_items) {
                    return Err(RecforgeError::data(format!(
                        "item {bad} is out of range (n_items = {})",
                        cfg.n_items
                    )));
                }
                ids.sort_unstable();
                ids.dedup();
                self.local(ids)?
            }
        };
        let q = self.queries(input, retrieved, &local, true)?;
        let hsize = q.size()[2];
        let at_t = Tensor::from_slice(&at).f_to(dev)?;
        let qn = q.f_reshape([-1, hsize])?.f_index_select(0, &at_t)?; // [N, H]
        let tv_t = Tensor::from_slice(&tv).f_to(dev)?;
        let loss = match cfg.loss {
            HierLoss::Softmax => {
                let (qs, vs) = self.score_parts(&qn, &local.vectors)?;
                let (qs, vs) =
                    match self.bias_of(&Tensor::f_arange(cfg.n_items, (Kind::Int64, dev))?)? {
                        Some(b) => (
                            Tensor::f_cat(&[qs, Tensor::f_ones([n, 1], (Kind::Float, dev))?], 1)?,
                            Tensor::f_cat(&[vs, b.f_unsqueeze(1)?], 1)?,
                        ),
                        None => (qs, vs),
                    };
                chunked_cross_entropy(&qs, &vs, &tv_t, cfg.ce_chunk)?
            }
            HierLoss::Infonce => {
                let neg = neg.unwrap_or_default();
                let kneg = cfg.n_negatives;
                let pos_local = local.indices(&tv)?;
                let neg_local = local.indices(&neg)?;
                let (qs, vs) = self.score_parts(&qn, &local.vectors)?;
                let v_pos = vs.f_index_select(0, &pos_local)?; // [N, H]
                let mut pos = qs.f_mul(&v_pos)?.f_sum_dim_intlist(1, true, Kind::Float)?; // [N, 1]
                let neg_ids = Tensor::from_slice(&neg).f_to(dev)?;
                let (mut negs, neg_ids2d, raw_neg) = match cfg.negatives {
                    NegativePool::Shared if neg.len() as i64 == kneg => {
                        let v_neg = vs.f_index_select(0, &neg_local)?; // [K, H]
                        let s = qs.f_matmul(&v_neg.f_transpose(0, 1)?)?; // [N, K]
                        let ids = neg_ids.f_unsqueeze(0)?.f_expand([n, kneg], false)?;
                        let raw = local
                            .raw
                            .f_index_select(0, &neg_local)?
                            .f_unsqueeze(0)?
                            .f_expand([n, kneg, -1], false)?;
                        (s, ids, raw)
                    }
                    _ if neg.len() as i64 == n * kneg => {
                        let v_neg = vs.f_index_select(0, &neg_local)?.f_view([n, kneg, hsize])?;
                        let s = v_neg.f_matmul(&qs.f_unsqueeze(2)?)?.f_squeeze_dim(2)?;
                        let raw = local
                            .raw
                            .f_index_select(0, &neg_local)?
                            .f_view([n, kneg, -1])?;
                        (s, neg_ids.f_view([n, kneg])?, raw)
                    }
                    _ => {
                        return Err(RecforgeError::data(format!(
                            "negatives: {} ids for {n} positions and n_negatives = {kneg}",
                            neg.len()
                        )))
                    }
                };
                if let Some(b) = self.bias_of(&tv_t)? {
                    pos = pos.f_add(&b.f_unsqueeze(1)?)?;
                    let bn = needed(&self.item_bias, "item_bias")?
                        .f_index_select(0, &neg_ids2d.f_reshape([-1])?)?;
                    negs = negs.f_add(&bn.f_view([n, kneg])?)?;
                }
                // Masked: the positive itself, and near-duplicates of it.
                let mut masked = neg_ids2d.f_eq_tensor(&tv_t.f_unsqueeze(1)?)?;
                if cfg.dedup_threshold <= 1.0 {
                    let rp = normalize(&local.raw.f_index_select(0, &pos_local)?)?;
                    let cos = normalize(&raw_neg)?
                        .f_matmul(&rp.f_unsqueeze(2)?)?
                        .f_squeeze_dim(2)?;
                    masked = masked.f_logical_or(&cos.f_ge(cfg.dedup_threshold)?)?;
                }
                let negs = negs.f_masked_fill(&masked, f64::NEG_INFINITY)?;
                let logits = Tensor::f_cat(&[pos.shallow_clone(), negs], 1)?;
                logits
                    .f_logsumexp([1i64].as_slice(), false)?
                    .f_sub(&pos.f_squeeze_dim(1)?)?
                    .f_mean(Kind::Float)?
            }
        };
        Ok(HierLossParts { loss, positions: n })
    }
}

/// One epoch's training rows.
struct Rows {
    input: Tensor,
    target: Tensor,
    retrieved: Option<Tensor>,
}

/// HierarchicalRec on the trainer.
pub struct HierarchicalModel {
    net: Hierarchical,
    train: Option<Arc<Interactions>>,
    rows: Option<Rows>,
}

impl HierarchicalModel {
    /// The model around a loaded rec LLM and item side.
    pub fn new(
        config: HierarchicalConfig,
        rec: CausalLm,
        item_llm: Option<CausalLm>,
        items: ItemInput,
    ) -> Result<Self> {
        Ok(Self {
            net: Hierarchical::new(config, rec, item_llm, items)?,
            train: None,
            rows: None,
        })
    }

    /// The network.
    pub fn net(&self) -> &Hierarchical {
        &self.net
    }

    /// Each user's retrieved items for padded rows `seq` of `users`, their `history` excluded.
    fn retrieved_for(
        &self,
        seq: &Tensor,
        users: &[i64],
        history: &Interactions,
    ) -> Result<Option<Tensor>> {
        if self.net.config.retrieve_k == 0 {
            return Ok(None);
        }
        let index = self.net.retrieval_index()?;
        let exclude = users
            .iter()
            .map(|&u| -> Result<Vec<i64>> {
                Ok(history
                    .user_items(u as u32)?
                    .iter()
                    .map(|&i| i as i64)
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(self.net.retrieve(&index, seq, &exclude)?))
    }
}

impl Model for HierarchicalModel {
    fn params(&self) -> Vec<(String, Tensor)> {
        let mut out = self.net.own_params();
        if self.net.config.rec_mode != BackboneMode::Frozen {
            out.extend(self.net.rec_named());
        }
        if self.net.config.item_mode == ItemMode::Finetune {
            out.extend(self.net.item_llm_named());
        }
        out
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = self.net.item_buffers();
        out.extend(self.net.own_buffers());
        if self.net.config.rec_mode == BackboneMode::Frozen {
            out.extend(self.net.rec_named());
        }
        if self.net.config.item_mode == ItemMode::Frozen {
            out.extend(self.net.item_llm_named());
        }
        out
    }
    fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let device = self.net.device();
        super::load_named(&mut self.net.own_params(), tensors, device)?;
        super::load_named(&mut self.net.own_buffers(), tensors, device)?;
        let mut named = self.net.rec_named();
        named.extend(self.net.item_llm_named());
        if let ItemInput::Vectors(v) = &self.net.items {
            named.push(("item_llm_vectors".into(), v.shallow_clone()));
        }
        super::load_named(&mut named, tensors, device)
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
        training_rows(&train, None, self.net.config.max_len)?;
        self.train = Some(train);
        Ok(())
    }
    fn start_epoch(&mut self, _seed: u64, _epoch: u64) -> Result<usize> {
        let train = self
            .train
            .clone()
            .ok_or_else(|| RecforgeError::config("set the training data first"))?;
        let seq = training_rows(&train, None, self.net.config.max_len)?;
        let retrieved = self.retrieved_for(&seq.input, &seq.users, &train)?;
        let n = seq.users.len();
        self.rows = Some(Rows {
            input: seq.input,
            target: seq.target,
            retrieved,
        });
        Ok(n)
    }
    fn batch_loss(&self, idx: &Tensor) -> Result<Tensor> {
        let rows = self
            .rows
            .as_ref()
            .ok_or_else(|| RecforgeError::config("start an epoch first"))?;
        let input = rows.input.f_index_select(0, idx)?;
        let target = rows.target.f_index_select(0, idx)?;
        let retrieved = match &rows.retrieved {
            Some(r) => Some(r.f_index_select(0, idx)?),
            None => None,
        };
        Ok(self
            .net
            .loss_parts(&input, &target, retrieved.as_ref(), None)?
            .loss)
    }
    fn score_all(&self, users: &Tensor, history: Option<&Interactions>) -> Result<Tensor> {
        let history = match history {
            Some(h) => h,
            None => self
                .train
                .as_deref()
                .ok_or_else(|| RecforgeError::config("the model has no training interactions"))?,
        };
        let ids = cpu_i64(users)?;
        let seq = history_rows(history, &ids, self.net.config.max_len)?;
        let retrieved = self.retrieved_for(&seq, &ids, history)?;
        tch::no_grad(|| self.net.score_sequences(&seq, retrieved.as_ref()))
    }
    fn validation(&self) -> Validation {
        Validation::Ranking
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    impl Hierarchical {
        /// The network variable called `name` (tests read values by name).
        fn get(&self, name: &str) -> Result<Tensor> {
            crate::models::by_name(self.own_params(), name)
        }
    }

    fn tiny(kind: &str, hidden: i64, seed: i64) -> CausalLm {
        let config = match kind {
            "gpt2" => json!({"model_type": "gpt2", "vocab_size": 40, "n_positions": 32,
                             "n_embd": hidden, "n_layer": 2, "n_head": 2, "eos_token_id": 39}),
            _ => json!({"model_type": kind, "vocab_size": 40, "hidden_size": hidden,
                        "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "eos_token_id": 39}),
        };
        CausalLm::from_config(config, seed, Device::Cpu, Kind::Float).unwrap()
    }

    fn config() -> HierarchicalConfig {
        HierarchicalConfig {
            n_items: 12,
            max_len: 5,
            user_pooling: UserPooling::Mean,
            user_norm: UserNorm::None,
            item_mode: ItemMode::Frozen,
            item_pooling: ItemPooling::Mean,
            rec_mode: BackboneMode::Full,
            loss: HierLoss::Infonce,
            n_negatives: 3,
            negatives: NegativePool::PerPosition,
            similarity: Similarity::Dot,
            temperature: 0.5,
            learn_temperature: false,
            dedup_threshold: 0.999,
            item_bias: true,
            retrieve_k: 0,
            ce_chunk: 5,
            item_batch: 5,
            dropout: 0.0,
            init_std: 0.1,
            seed: 1,
        }
    }

    fn vectors() -> Tensor {
        tch::manual_seed(7);
        let v = Tensor::randn([12, 6], (Kind::Float, Device::Cpu));
        // Item 9 duplicates item 4's text vector.
        v.get(9).copy_(&v.get(4));
        v
    }

    fn net(cfg: HierarchicalConfig) -> Hierarchical {
        let net = Hierarchical::new(
            cfg,
            tiny("llama", 16, 3),
            None,
            ItemInput::Vectors(vectors()),
        )
        .unwrap();
        super::super::assert_in_store(&net.vs, &net.own_params(), &net.own_buffers());
        // A non-zero bias, so the tests see it.
        tch::no_grad(|| {
            net.get("item_bias")
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::arange(12, (Kind::Float, Device::Cpu)).g_mul_scalar(0.1));
        });
        net
    }

    /// The scores of a row, rebuilt by hand from its parts: adapter, rec LLM states, mean
    /// pooling, head, dot with every item vector over the temperature, plus the bias.
    fn scores_by_hand(net: &Hierarchical, items: &[i64]) -> Tensor {
        let all = net.all_items().unwrap();
        let idx = Tensor::from_slice(items);
        let x = all.vectors.index_select(0, &idx).unsqueeze(0);
        let mask = Tensor::ones([1, items.len() as i64], (Kind::Int64, Device::Cpu));
        let h = decoder::hidden_states(net.rec.net(), &x, &mask).unwrap();
        let u = h.mean_dim([1i64].as_slice(), false, Kind::Float);
        let q = u.matmul(&net.get("head.weight").unwrap().tr()) + net.get("head.bias").unwrap();
        q.matmul(&all.vectors.tr()) / net.config.temperature + net.get("item_bias").unwrap()
    }

    /// Each loss equals its formula computed from the scores: InfoNCE (per position and
    /// shared, with the positive and its duplicate masked) and the chunked full softmax.
    #[test]
    fn losses_equal_their_formulas() {
        // One row: items 2, 4, 7 -> inputs 2, 4 (padded ids 3, 5), targets 4, 7.
        let input = Tensor::from_slice(&[0i64, 0, 0, 3, 5]).view([1, 5]);
        let target = Tensor::from_slice(&[0i64, 0, 0, 5, 8]).view([1, 5]);
        // Each net's own scores: tests run in parallel threads that share libtorch's generator,
        // so two nets built from the same seed need not be equal.
        let scores = |net: &Hierarchical| {
            tch::no_grad(|| {
                (
                    scores_by_hand(net, &[2]).get(0),
                    scores_by_hand(net, &[2, 4]).get(0),
                )
            })
        };
        let n = net(config());
        let (s1, s2) = scores(&n);
        let lse = |s: &Tensor, pos: i64, negs: &[i64]| {
            let mut v = vec![s.double_value(&[pos])];
            v.extend(negs.iter().map(|&j| s.double_value(&[j])));
            let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - v[0]
        };
        // Per position: [1, 4, 9] for target 4 (4 itself and its duplicate 9 masked), [0, 7, 3]
        // for target 7 (7 masked).
        let neg = Tensor::from_slice(&[1i64, 4, 9, 0, 7, 3]).view([2, 3]);
        let got = n
            .loss_parts(&input, &target, None, Some(&neg))
            .unwrap()
            .loss
            .double_value(&[]);
        let want = (lse(&s1, 4, &[1]) + lse(&s2, 7, &[0, 3])) / 2.0;
        assert!((got - want).abs() < 1e-4, "per position: {got} vs {want}");
        // Shared pool [5, 9, 7].
        let mut cfg = config();
        cfg.negatives = NegativePool::Shared;
        let n2 = net(cfg);
        let (s1, s2) = scores(&n2);
        let shared = Tensor::from_slice(&[5i64, 9, 7]);
        let got = n2
            .loss_parts(&input, &target, None, Some(&shared))
            .unwrap()
            .loss
            .double_value(&[]);
        let want = (lse(&s1, 4, &[5, 7]) + lse(&s2, 7, &[5, 9])) / 2.0;
        assert!((got - want).abs() < 1e-4, "shared: {got} vs {want}");
        // Full softmax.
        let mut cfg = config();
        cfg.loss = HierLoss::Softmax;
        let n3 = net(cfg);
        let (s1, s2) = scores(&n3);
        let got = n3
            .loss_parts(&input, &target, None, None)
            .unwrap()
            .loss
            .double_value(&[]);
        let exact = |s: &Tensor, pos: i64| {
            s.logsumexp([0i64].as_slice(), false).double_value(&[]) - s.double_value(&[pos])
        };
        let want_exact = (exact(&s1, 4) + exact(&s2, 7)) / 2.0;
        assert!(
            (got - want_exact).abs() < 1e-4,
            "softmax: {got} vs {want_exact}"
        );
    }

    /// A row's scores do not depend on its padding or on the other rows (with and without the
    /// RAG prefix), for each backbone, and equal the hand-built scores.
    #[test]
    fn padding_and_batching_do_not_change_scores() {
        for kind in ["gpt2", "llama", "qwen2"] {
            for k in [0i64, 2] {
                let mut cfg = config();
                cfg.retrieve_k = k;
                let n =
                    Hierarchical::new(cfg, tiny(kind, 16, 3), None, ItemInput::Vectors(vectors()))
                        .unwrap();
                let alone_seq = Tensor::from_slice(&[3i64, 8]).view([1, 2]);
                let index = n.retrieval_index().unwrap();
                let r1 = n.retrieve(&index, &alone_seq, &[vec![2, 7]]).unwrap();
                let alone = n.score_sequences(&alone_seq, Some(&r1)).unwrap();
                let seq = Tensor::from_slice(&[0i64, 0, 0, 3, 8, 1, 2, 3, 4, 5]).view([2, 5]);
                let r2 = n
                    .retrieve(&index, &seq, &[vec![2, 7], vec![0, 1, 2, 3, 4]])
                    .unwrap();
                let batch = n.score_sequences(&seq, Some(&r2)).unwrap();
                let d = (batch.get(0) - alone.get(0)).abs().max().double_value(&[]);
                assert!(d < 1e-5, "{kind} k={k}: {d}");
                if k == 0 {
                    let want = scores_by_hand(&n, &[2, 7]);
                    let d = (alone - want).abs().max().double_value(&[]);
                    assert!(d < 1e-4, "{kind}: hand-built scores differ by {d}");
                }
            }
        }
    }

    /// Retrieval returns the most similar items by cosine, never the history, and pads when
    /// fewer candidates remain.
    #[test]
    fn retrieval_excludes_the_history() {
        let mut cfg = config();
        cfg.retrieve_k = 3;
        let n = net(cfg);
        let index = n.retrieval_index().unwrap();
        let seq = Tensor::from_slice(&[0i64, 5, 3]).view([1, 3]); // items 4, 2
        let got = cpu_i64(&n.retrieve(&index, &seq, &[vec![4, 2]]).unwrap()).unwrap();
        let v = normalize(&vectors()).unwrap();
        let q = normalize(&(v.get(4) + v.get(2))).unwrap();
        let mut sims: Vec<(f64, i64)> = (0..12)
            .filter(|&j| j != 4 && j != 2)
            .map(|j| ((&q * v.get(j)).sum(Kind::Float).double_value(&[]), j))
            .collect();
        sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let want: Vec<i64> = sims[..3].iter().map(|&(_, j)| j + 1).collect();
        assert_eq!(got, want);
        assert_eq!(want[0], 10, "item 9 duplicates item 4");
        // Ten items excluded: two candidates left, the third slot is padding; an empty row gets
        // nothing.
        let seq = Tensor::from_slice(&[0i64, 5, 3, 0, 0, 0]).view([2, 3]);
        let excl: Vec<i64> = (0..10).collect();
        let got = cpu_i64(&n.retrieve(&index, &seq, &[excl, vec![]]).unwrap()).unwrap();
        let mut first = got[..2].to_vec();
        first.sort();
        assert_eq!(first, vec![11, 12]);
        assert_eq!(&got[2..], &[0, 0, 0, 0]);
    }

    /// With the item LLM inside: the [ITEM] token and the adapter train while a frozen item LLM
    /// and a frozen rec LLM stay bit-identical; finetune moves the item LLM; a checkpoint's
    /// tensors rebuild the item side.
    #[test]
    fn item_llm_modes_train_what_they_should() {
        let ids = Tensor::randint(39, [12, 4], (Kind::Int64, Device::Cpu));
        let mask = Tensor::from_slice(&[1i64, 1, 1, 0])
            .view([1, 4])
            .repeat([12, 1]);
        let train = Arc::new(
            Interactions::from_arrays(
                &[0, 0, 0, 1, 1, 2, 2, 2],
                &[3, 5, 8, 1, 2, 9, 4, 3],
                None,
                Some(&[1, 2, 3, 1, 2, 1, 2, 3]),
                Some(3),
                Some(12),
            )
            .unwrap(),
        );
        for (item_mode, pooling, item_moves) in [
            (ItemMode::Frozen, ItemPooling::ItemToken, false),
            (ItemMode::Finetune, ItemPooling::Mean, true),
        ] {
            let mut cfg = config();
            cfg.item_mode = item_mode;
            cfg.item_pooling = pooling;
            cfg.rec_mode = BackboneMode::Frozen;
            cfg.retrieve_k = 2;
            let mut model = HierarchicalModel::new(
                cfg,
                tiny("gpt2", 16, 3),
                Some(tiny("llama", 8, 5)),
                ItemInput::Tokens {
                    ids: ids.copy(),
                    mask: mask.copy(),
                },
            )
            .unwrap();
            let snapshot = |m: &HierarchicalModel| -> Vec<Tensor> {
                m.net
                    .rec_named()
                    .into_iter()
                    .chain(m.net.item_llm_named())
                    .map(|(_, t)| t.copy())
                    .collect()
            };
            let before = snapshot(&model);
            let own_before: Vec<Tensor> = model
                .net
                .own_params()
                .iter()
                .map(|(_, t)| t.copy())
                .collect();
            model.set_train(train.clone(), true).unwrap();
            assert_eq!(model.start_epoch(0, 0).unwrap(), 3);
            let params = model.params();
            for _ in 0..2 {
                let loss = model
                    .batch_loss(&Tensor::from_slice(&[0i64, 1, 2]))
                    .unwrap();
                let ts: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
                let g = Tensor::run_backward(&[&loss], &ts, false, true);
                tch::no_grad(|| {
                    for ((_, p), g) in params.iter().zip(&g).filter(|(_, g)| g.defined()) {
                        let _ = p.shallow_clone().f_sub_(&(g * 0.5)).unwrap();
                    }
                });
            }
            let after = snapshot(&model);
            let rec_n = model.net.rec_named().len();
            assert!(before[..rec_n]
                .iter()
                .zip(&after[..rec_n])
                .all(|(a, b)| a.equal(b)));
            let item_same = before[rec_n..]
                .iter()
                .zip(&after[rec_n..])
                .all(|(a, b)| a.equal(b));
            assert_eq!(item_same, !item_moves, "{item_mode:?}");
            for ((name, t), b) in model.net.own_params().iter().zip(&own_before) {
                if name != "item_bias" && name != "sep_emb" {
                    assert!(!t.equal(b), "{name} did not train");
                }
            }
            let scores = model
                .score_all(&Tensor::from_slice(&[0i64, 2]), None)
                .unwrap();
            assert_eq!(scores.size(), [2, 12]);
            let mut tensors: HashMap<String, Tensor> = HashMap::new();
            for (name, t) in model.params().into_iter().chain(model.buffers()) {
                tensors.insert(name, t.copy());
            }
            assert!(matches!(
                Hierarchical::items_from(&tensors).unwrap(),
                ItemInput::Tokens { .. }
            ));
        }
    }

    /// `user_norm = batch`: in training the user representation is normalised by the
    /// statistics of the batch's real positions (padding excluded) and the running statistics
    /// follow them as torch's do; in evaluation the running statistics normalise.
    #[test]
    fn batch_user_norm_uses_the_real_positions() {
        let mut cfg = config();
        cfg.user_pooling = UserPooling::Last;
        cfg.user_norm = UserNorm::Batch;
        let net = net(cfg);
        assert_eq!(
            net.own_buffers()
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["user_norm.running_mean", "user_norm.running_var"]
        );
        let seq = Tensor::from_slice(&[0i64, 0, 3, 7, 1, 2, 5, 11]).view([2, 4]);
        let all = net.all_items().unwrap();
        let head = |x: &Tensor| {
            x.matmul(&net.get("head.weight").unwrap().tr()) + net.get("head.bias").unwrap()
        };
        let states = net
            .rec_states(&seq, None, &all, false)
            .unwrap()
            .reshape([-1, 16]);
        let real = Tensor::from_slice(&[2i64, 3, 4, 5, 6, 7]);
        let x = states.index_select(0, &real);
        let mean = x.mean_dim([0i64].as_slice(), false, Kind::Float);
        let var = x.var_dim([0i64].as_slice(), false, false);
        let expect = head(&((&x - &mean) / (&var + 1e-5).sqrt()));
        let got = tch::no_grad(|| net.queries(&seq, None, &all, true).unwrap())
            .reshape([-1, 16])
            .index_select(0, &real);
        assert!(got.allclose(&expect, 1e-4, 1e-5, false), "training mode");
        // Running statistics: momentum 0.1 from (0, 1), the unbiased variance.
        let rm = net.own_buffers()[0].1.shallow_clone();
        let rv = net.own_buffers()[1].1.shallow_clone();
        assert!(rm.allclose(&(&mean * 0.1), 1e-5, 1e-6, false));
        let unbiased = x.var_dim([0i64].as_slice(), true, false);
        assert!(rv.allclose(&(unbiased * 0.1 + 0.9), 1e-5, 1e-6, false));
        // Evaluation: the running statistics, which it leaves alone.
        let before = rm.copy();
        let eval = tch::no_grad(|| net.queries(&seq, None, &all, false).unwrap()).reshape([-1, 16]);
        let expect = head(&((&states - &rm) / (&rv + 1e-5).sqrt()));
        assert!(eval.allclose(&expect, 1e-4, 1e-5, false), "evaluation mode");
        assert!(rm.equal(&before));
        // A batch with one real position cannot be normalised: an error, not a NaN.
        let one = Tensor::from_slice(&[0i64, 0, 0, 7]).view([1, 4]);
        assert!(net.queries(&one, None, &all, true).is_err());
    }
}
