//! SoftTokenRec: collaborative soft tokens fed to a causal language model (CLLM4Rec-style, the
//! S2 reference system).
//!
//! A user table (`U x d`) and an item table (`I x d`) live beside the language model, never in
//! its vocabulary. Each user's sequence `[user, item_1, ..., item_T]` is projected into the
//! model's hidden size (`proj_in_user`, `proj_in_item`) and enters the backbone as
//! `inputs_embeds`; every output hidden state is projected back (`proj_out`, `H -> d`) and scored
//! by a dot product with the whole item table, so the model ranks all items without an output
//! vocabulary:
//!
//! ```text
//! x = [W_u u + b_u, W_i e(item_1) + b_i, ...]        (left-padded, positions follow the mask)
//! z_t = W_o backbone(x)_t + b_o                       score(next = j | t) = z_t . e(j)
//! ```
//!
//! Training: the output at item `t` predicts item `t + 1`, with weighted, switchable losses:
//! cross-entropy over all items (computed in item chunks, see [`chunked_cross_entropy`]: memory
//! does not grow with `B x T x I`), context-item BPR (`z_t` against the positive and
//! `n_negatives` uniformly drawn items), user-item BPR (the user's table row against the same
//! items) and L2 on the table rows used (`lambda_c`). Parameters are named `user_emb.weight`,
//! `item_emb.weight`, `proj_in_user.*`, `proj_in_item.*`, `proj_out.*` (as `torch.nn.Linear`) and
//! `backbone.` + the backbone's Hugging Face names, so a PyTorch module rebuilds the model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

use super::sasrec::{history_rows, training_rows, SeqBatches};
use super::{Linear, Var};
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::text::causal_lm::{CausalLm, Training};
use crate::text::decoder;
use crate::train::model::{Model, Validation};

/// What the backbone trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneMode {
    /// Every backbone weight trains (S2's default).
    Full,
    /// The backbone's weights stay fixed; gradients still flow through it to the tables and
    /// projections.
    Frozen,
    /// The backbone's architecture, freshly initialised, trained (S2's `random_init_stage_a_llm`).
    Random,
}

/// The precision the backbone computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// Mixed precision: the transformer blocks' linear layers in bfloat16 (AMX / AVX-512 BF16
    /// units on recent x86 CPUs, tensor cores on CUDA), with float32 weights, optimiser state,
    /// residual stream, attention, norms and losses (see [`crate::text::layers::ComputeKind`]).
    Bf16,
}

/// Where the backbone comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneSource {
    /// A Hugging Face folder (`config.json` + safetensors) or a `.gguf` file.
    Path(PathBuf),
    /// A Hugging Face config (randomly initialised weights from the model's seed).
    Config(Value),
}

impl BackboneSource {
    /// A path string or a config object, as a spec holds it.
    pub fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::String(s) if !s.is_empty() => Ok(Self::Path(PathBuf::from(s))),
            Value::Object(_) => Ok(Self::Config(v.clone())),
            other => Err(RecforgeError::config(format!(
                "backbone must be a model folder, a .gguf file or a config dict, got {other}"
            ))),
        }
    }

    /// Loads (or initialises) the language model on `device`; `mode = Random` keeps only the
    /// architecture of a pretrained source; `blocks` keeps only the first transformer blocks
    /// (see [`CausalLm::from_path`]).
    pub fn load(
        &self,
        mode: BackboneMode,
        seed: u64,
        device: Device,
        blocks: Option<i64>,
    ) -> Result<CausalLm> {
        let kind = Kind::Float;
        let random = |mut config: Value| -> Result<CausalLm> {
            if let Some(n) = blocks {
                crate::text::causal_lm::keep_blocks(&mut config, n)?;
            }
            CausalLm::from_config(config, seed as i64, device, kind)
        };
        match self {
            Self::Config(c) => random(c.clone()),
            Self::Path(p) if mode == BackboneMode::Random => {
                random(if crate::text::causal_lm::is_gguf(p) {
                    crate::text::gguf::read(p)?.0
                } else {
                    crate::text::weights::read_config(p)?
                })
            }
            Self::Path(p) => CausalLm::from_path(p, device, kind, blocks),
        }
    }
}

/// Sizes, losses and options.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftTokenConfig {
    /// Users (rows of the user table).
    pub n_users: i64,
    /// Items (rows of the item table).
    pub n_items: i64,
    /// Size of the user and item vectors (`d_rec`).
    pub dim: i64,
    /// Longest input: the user token plus the last `max_len - 1` items.
    pub max_len: i64,
    /// Uniform negatives per position for the BPR losses.
    pub n_negatives: i64,
    /// Weight of the all-item cross-entropy (0 switches it off).
    pub ce_weight: f64,
    /// Weight of the context-item BPR loss.
    pub bpr_weight: f64,
    /// Weight of the user-item BPR loss.
    pub user_bpr_weight: f64,
    /// L2 weight on the user and item rows of a batch.
    pub lambda_c: f64,
    /// Items per chunk of the cross-entropy.
    pub ce_chunk: i64,
    /// Dropout on the soft tokens (the projected user and item vectors) in training.
    pub dropout: f64,
    /// What the backbone trains.
    pub mode: BackboneMode,
    /// Standard deviation of the tables' and projections' normal initialisation.
    pub init_std: f64,
    /// Initialisation seed.
    pub seed: u64,
}

impl SoftTokenConfig {
    /// Checks sizes and weights.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("n_users", self.n_users),
            ("n_items", self.n_items),
            ("dim", self.dim),
            ("ce_chunk", self.ce_chunk),
        ] {
            if v < 1 {
                return Err(RecforgeError::config(format!(
                    "{name} must be >= 1, got {v}"
                )));
            }
        }
        if self.max_len < 2 {
            return Err(RecforgeError::config(format!(
                "max_len must be >= 2 (the user token and one item), got {}",
                self.max_len
            )));
        }
        if self.n_negatives < 0 {
            return Err(RecforgeError::config("n_negatives must be >= 0"));
        }
        for (name, v) in [
            ("ce_weight", self.ce_weight),
            ("bpr_weight", self.bpr_weight),
            ("user_bpr_weight", self.user_bpr_weight),
            ("lambda_c", self.lambda_c),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(RecforgeError::config(format!(
                    "{name} must be a non-negative number, got {v}"
                )));
            }
        }
        if self.ce_weight == 0.0 && self.bpr_weight == 0.0 && self.user_bpr_weight == 0.0 {
            return Err(RecforgeError::config(
                "every loss is switched off: set ce_weight, bpr_weight or user_bpr_weight > 0",
            ));
        }
        if (self.bpr_weight > 0.0 || self.user_bpr_weight > 0.0) && self.n_negatives == 0 {
            return Err(RecforgeError::config(
                "the BPR losses need n_negatives >= 1 (or set their weights to 0)",
            ));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return Err(RecforgeError::config("init_std must be a positive number"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(RecforgeError::config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// The exponentials of pass 1 are kept for pass 2 while all of them fit in this many bytes:
/// pass 2 then needs neither a matmul nor an `exp` of its own. Above it, pass 2 recomputes
/// them chunk by chunk, so peak memory stays `N x chunk` whatever the item count.
pub const CE_KEEP_BYTES: i64 = 256 << 20;

/// Mean cross-entropy of `h @ table.T` (`[N, d]` x `[I, d]`) against `target` (`[N]`, 0-based),
/// computed `chunk` items at a time: peak memory is `N x chunk` (or at most
/// [`CE_KEEP_BYTES`]), not `N x I`.
///
/// The value is `mean(logsumexp_j(h . t_j) - h . t_target)`. Its gradient is assembled without
/// autograd keeping any `N x chunk` block: a first pass finds each row's log-sum-exp (online,
/// chunk by chunk: `E_c = exp(L_c - m_c)` with `m_c` the running row maximum), a second computes
/// the softmax-weighted sums `dL/dh = P T / N` and `dL/dT = P^T h / N` chunk by chunk, with
/// `P_c = diag(exp(m_c - lse)) E_c` (the row scale applied to the `[N, d]` factors, not to the
/// block), and the loss carries them as `(h * G_h).sum() + (T * G_T).sum()` minus its own value
/// (zero in value, exact in gradient).
pub fn chunked_cross_entropy(
    h: &Tensor,
    table: &Tensor,
    target: &Tensor,
    chunk: i64,
) -> Result<Tensor> {
    chunked_cross_entropy_within(h, table, target, chunk, CE_KEEP_BYTES)
}

/// [`chunked_cross_entropy`], keeping pass 1's blocks only when they fit in `keep_bytes`.
fn chunked_cross_entropy_within(
    h: &Tensor,
    table: &Tensor,
    target: &Tensor,
    chunk: i64,
    keep_bytes: i64,
) -> Result<Tensor> {
    let (n, d) = h.size2()?;
    let (items, d2) = table.size2()?;
    if d != d2 || target.size() != [n] || chunk < 1 {
        return Err(RecforgeError::data(format!(
            "chunked_cross_entropy: h {:?}, table {:?}, target {:?}, chunk {chunk}",
            h.size(),
            table.size(),
            target.size()
        )));
    }
    if n == 0 {
        return Ok(h.f_sum(Kind::Float)?.f_mul_scalar(0.0)?);
    }
    let (hd, td) = (h.detach(), table.detach());
    let chunks: Vec<(i64, i64)> = (0..items)
        .step_by(chunk as usize)
        .map(|a| (a, chunk.min(items - a)))
        .collect();
    let keep = n.saturating_mul(items).saturating_mul(4) <= keep_bytes;
    let (lse, gh, gt) = tch::no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        // A fresh float block of logits (the matmul's own output, or its float copy), so the
        // shift and the exponential can run in place.
        let logits_of = |a: i64, len: i64| -> Result<Tensor> {
            Ok(hd
                .f_matmul(&td.f_narrow(0, a, len)?.f_transpose(0, 1)?)?
                .f_to_kind(Kind::Float)?)
        };
        // Pass 1: running max and scaled sum per row.
        let mut m = Tensor::f_full([n], f64::NEG_INFINITY, (Kind::Float, h.device()))?;
        let mut s = Tensor::f_zeros([n], (Kind::Float, h.device()))?;
        let mut kept: Vec<(Tensor, Tensor)> = Vec::new();
        for &(a, len) in &chunks {
            let mut e = logits_of(a, len)?;
            let cm = e.f_amax([1i64].as_slice(), false)?;
            let new_m = m.f_maximum(&cm)?;
            let _ = e.f_sub_(&new_m.f_unsqueeze(1)?)?;
            let _ = e.f_exp_()?;
            s = s
                .f_mul(&m.f_sub(&new_m)?.f_exp()?)?
                .f_add(&e.f_sum_dim_intlist(1, false, Kind::Float)?)?;
            m = new_m;
            if keep {
                kept.push((e, m.shallow_clone()));
            }
        }
        let lse = m.f_add(&s.f_log()?)?;
        // Pass 2: gradients of the log-sum-exp term.
        let mut gh = Tensor::f_zeros([n, d], (Kind::Float, h.device()))?;
        let gt = Tensor::f_empty([items, d], (Kind::Float, h.device()))?; // every chunk writes its rows
        let hf = hd.f_to_kind(Kind::Float)?;
        for (c, &(a, len)) in chunks.iter().enumerate() {
            let tc = td.f_narrow(0, a, len)?.f_to_kind(Kind::Float)?;
            let (ph, pt) = match kept.get(c) {
                // P_c = diag(scale) E_c: P_c T_c = scale * (E_c T_c), P_c^T h = E_c^T (scale * h).
                Some((e, mc)) => {
                    let scale = mc.f_sub(&lse)?.f_exp()?.f_unsqueeze(1)?;
                    (
                        e.f_matmul(&tc)?.f_mul(&scale)?,
                        e.f_transpose(0, 1)?.f_matmul(&hf.f_mul(&scale)?)?,
                    )
                }
                None => {
                    let mut p = logits_of(a, len)?;
                    let _ = p.f_sub_(&lse.f_unsqueeze(1)?)?;
                    let _ = p.f_exp_()?;
                    (p.f_matmul(&tc)?, p.f_transpose(0, 1)?.f_matmul(&hf)?)
                }
            };
            gh = gh.f_add(&ph)?;
            gt.f_narrow(0, a, len)?.f_copy_(&pt)?;
        }
        let inv = 1.0 / n as f64;
        Ok((lse, gh.f_mul_scalar(inv)?, gt.f_mul_scalar(inv)?))
    })?;
    let target_logit = h
        .f_mul(&table.f_index_select(0, target)?)?
        .f_sum_dim_intlist(1, false, Kind::Float)?;
    let mut loss = lse
        .f_mean(Kind::Float)?
        .f_sub(&target_logit.f_mean(Kind::Float)?)?;
    let mut carriers: Vec<Tensor> = Vec::new();
    if h.requires_grad() {
        carriers.push(h.f_mul(&gh.f_to_kind(h.kind())?)?.f_sum(Kind::Float)?);
    }
    if table.requires_grad() {
        carriers.push(
            table
                .f_mul(&gt.f_to_kind(table.kind())?)?
                .f_sum(Kind::Float)?,
        );
    }
    for c in carriers {
        loss = loss.f_add(&c.f_sub(&c.detach())?)?;
    }
    Ok(loss)
}

/// The losses of one batch, before weighting (for tests and logging).
#[derive(Debug)]
pub struct LossParts {
    /// All-item cross-entropy (mean over positions).
    pub ce: Tensor,
    /// Context-item BPR (mean over positions and negatives).
    pub bpr: Tensor,
    /// User-item BPR (mean over positions and negatives).
    pub user_bpr: Tensor,
    /// `mean ||u||^2 + mean ||e_target||^2` over the batch's rows and positions.
    pub reg: Tensor,
}

/// The network: tables and projections (in their own `nn::VarStore`, on the backbone's
/// device) and the language model (which keeps its own store).
pub struct SoftToken {
    /// Configuration.
    pub config: SoftTokenConfig,
    vs: nn::VarStore,
    /// `user_emb.weight` `[n_users, d]`.
    user_emb: Var,
    /// `item_emb.weight` `[n_items, d]`.
    item_emb: Var,
    /// `proj_in_user`: `d -> H`.
    proj_in_user: Linear,
    /// `proj_in_item`: `d -> H`.
    proj_in_item: Linear,
    /// `proj_out`: `H -> d`.
    proj_out: Linear,
    backbone: CausalLm,
}

impl SoftToken {
    /// Fresh tables and projections (normal(0, init_std), biases 0) from `config.seed`, around
    /// `backbone` (frozen when `config.mode` says so).
    pub fn new(config: SoftTokenConfig, mut backbone: CausalLm) -> Result<Self> {
        config.validate()?;
        let device = backbone.device();
        let hsize = backbone.net().hidden_size();
        tch::manual_seed(config.seed as i64);
        let cpu = (Kind::Float, Device::Cpu);
        let normal = |shape: &[i64]| -> Result<Tensor> {
            Ok(Tensor::f_randn(shape, cpu)?.f_mul(&Tensor::from(config.init_std))?)
        };
        let zeros = |n: i64| -> Result<Tensor> { Ok(Tensor::f_zeros([n], cpu)?) };
        let d = config.dim;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let table = |name: &str, n: i64| -> Result<Var> {
            Var::param(&root.sub(name), "weight", &normal(&[n, d])?)
        };
        let user_emb = table("user_emb", config.n_users)?;
        let item_emb = table("item_emb", config.n_items)?;
        let proj_in_user = Linear::new(
            &root.sub("proj_in_user"),
            &normal(&[hsize, d])?,
            &zeros(hsize)?,
        )?;
        let proj_in_item = Linear::new(
            &root.sub("proj_in_item"),
            &normal(&[hsize, d])?,
            &zeros(hsize)?,
        )?;
        let proj_out = Linear::new(&root.sub("proj_out"), &normal(&[d, hsize])?, &zeros(d)?)?;
        backbone.set_trainable(config.mode != BackboneMode::Frozen);
        Ok(Self {
            config,
            vs,
            user_emb,
            item_emb,
            proj_in_user,
            proj_in_item,
            proj_out,
            backbone,
        })
    }

    /// The device of the tables, the projections and the backbone.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The tables' and projections' parameters (shallow handles): `user_emb.weight`,
    /// `item_emb.weight`, `proj_in_user.*`, `proj_in_item.*`, `proj_out.*`.
    pub fn own_params(&self) -> Vec<(String, Tensor)> {
        super::named(
            [&self.user_emb, &self.item_emb]
                .into_iter()
                .chain(self.proj_in_user.vars())
                .chain(self.proj_in_item.vars())
                .chain(self.proj_out.vars()),
        )
    }

    /// The language model.
    pub fn backbone(&self) -> &CausalLm {
        &self.backbone
    }

    fn backbone_named(&self) -> Vec<(String, Tensor)> {
        self.backbone
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (format!("backbone.{n}"), t))
            .collect()
    }

    /// Projected hidden states `[B, L, d]` of users `[B]` and their left-padded item sequences
    /// `seq` (`[B, L - 1]`, `item + 1`, 0 = padding), both on this device. Position `0` of the
    /// output belongs to the user token when the row is full; in general output `k + 1` is the
    /// state after `seq[k]` (the user token sits just before the row's first item).
    pub fn forward(&self, users: &Tensor, seq: &Tensor) -> Result<Tensor> {
        self.forward_mode(users, seq, false)
    }

    /// [`forward`](Self::forward), with dropout on the soft tokens when `train`.
    pub fn forward_mode(&self, users: &Tensor, seq: &Tensor, train: bool) -> Result<Tensor> {
        let (b, l1) = seq.size2()?;
        let d = self.config.dim;
        let u = self.user_emb.f_index_select(0, users)?;
        let xu = self.proj_in_user.forward(&u)?;
        let items = seq.f_sub_scalar(1)?.f_clamp_min(0)?.f_reshape([-1])?;
        let e = self
            .item_emb
            .f_index_select(0, &items)?
            .f_view([b, l1, d])?;
        let xi = self.proj_in_item.forward(&e)?;
        let full = Tensor::f_cat(&[xu.f_unsqueeze(1)?, xi], 1)?; // [B, L, H]
                                                                 // Move each row's user token to just before its first item: order = pads, user, items.
        let counts = Vec::<i64>::try_from(
            seq.f_ne(0)?
                .f_sum_dim_intlist(1, false, Kind::Int64)?
                .f_to(Device::Cpu)?,
        )?;
        let l = l1 + 1;
        let mut order = Vec::with_capacity((b * l) as usize);
        let mut mask = Vec::with_capacity((b * l) as usize);
        for &t in &counts {
            let pads = l1 - t;
            order.extend(1..=pads);
            order.push(0);
            order.extend(pads + 1..=l1);
            mask.extend(std::iter::repeat_n(0i64, pads as usize));
            mask.extend(std::iter::repeat_n(1i64, (t + 1) as usize));
        }
        let device = self.device();
        let order = Tensor::from_slice(&order).f_view([b, l, 1])?.f_to(device)?;
        let hsize = full.size()[2];
        let mut embeds = full.f_gather(1, &order.f_expand([b, l, hsize], false)?, false)?;
        if train && self.config.dropout > 0.0 {
            embeds = super::dropout(&embeds, self.config.dropout)?;
        }
        let mask = Tensor::from_slice(&mask).f_view([b, l])?.f_to(device)?;
        let h = decoder::hidden_states(self.backbone.net(), &embeds, &mask)?;
        self.proj_out.forward(&h)
    }

    /// Next-item scores `[B, n_items]`: the state after each row's last item (or after the user
    /// token when the row is empty) against the item table.
    pub fn score_sequences(&self, users: &Tensor, seq: &Tensor) -> Result<Tensor> {
        let z = self.forward(users, seq)?;
        let last = z.f_select(1, z.size()[1] - 1)?;
        Ok(last.f_matmul(&self.item_emb.f_transpose(0, 1)?)?)
    }

    /// The four unweighted losses of training rows `rows` (users `[B]`, inputs and targets
    /// `[B, L - 1]` in padded ids) with negatives `neg` (`[N, n_negatives]`, 0-based, one row
    /// per position that has a target, in row-major order; `None`: drawn uniformly), in
    /// training mode (dropout on).
    pub fn loss_parts(
        &self,
        users: &Tensor,
        input: &Tensor,
        target: &Tensor,
        neg: Option<&Tensor>,
    ) -> Result<LossParts> {
        let dev = self.device();
        let cfg = &self.config;
        let d = cfg.dim;
        // Dropout inside the backbone where its config has it, unless it is frozen (a fixed
        // function, evaluated as such).
        let trained = cfg.mode != BackboneMode::Frozen;
        let _training = Training::on(if trained {
            vec![&self.backbone]
        } else {
            vec![]
        });
        let z = self.forward_mode(users, input, true)?;
        let l1 = input.size()[1];
        // Output k + 1 follows input k.
        let z = z.f_narrow(1, 1, l1)?.f_reshape([-1, d])?;
        let flat_t = target.f_reshape([-1])?;
        let at = flat_t.f_ne(0)?.f_nonzero()?.f_squeeze_dim(1)?;
        let hv = z.f_index_select(0, &at)?;
        let tv = flat_t.f_index_select(0, &at)?.f_sub_scalar(1)?;
        let n = tv.size()[0];
        let table: &Tensor = &self.item_emb;
        let zero = || Tensor::f_zeros([], (Kind::Float, dev));
        let ce = if cfg.ce_weight > 0.0 {
            chunked_cross_entropy(&hv, table, &tv, cfg.ce_chunk)?
        } else {
            zero()?
        };
        let row_of = at.f_div_scalar_mode(l1, "floor")?;
        let u = self
            .user_emb
            .f_index_select(0, &users.f_index_select(0, &row_of)?)?;
        let e_pos = table.f_index_select(0, &tv)?;
        let (bpr, user_bpr) = if (cfg.bpr_weight > 0.0 || cfg.user_bpr_weight > 0.0) && n > 0 {
            let k = cfg.n_negatives;
            let neg = match neg {
                Some(t) => t.f_to(dev)?,
                None => Tensor::f_randint(cfg.n_items, [n, k], (Kind::Int64, dev))?,
            };
            // A negative equal to the positive does not count.
            let valid = neg
                .f_ne_tensor(&tv.f_unsqueeze(1)?)?
                .f_to_kind(Kind::Float)?;
            let denom = valid.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
            let e_neg = table
                .f_index_select(0, &neg.f_reshape([-1])?)?
                .f_view([n, k, d])?;
            let pair = |q: &Tensor| -> Result<Tensor> {
                let pos = q.f_mul(&e_pos)?.f_sum_dim_intlist(1, true, Kind::Float)?; // [N, 1]
                let negs = e_neg.f_matmul(&q.f_unsqueeze(2)?)?.f_squeeze_dim(2)?; // [N, K]
                let l = pos.f_sub(&negs)?.f_log_sigmoid()?.f_neg()?;
                Ok(l.f_mul(&valid)?.f_sum(Kind::Float)?.f_div(&denom)?)
            };
            (pair(&hv)?, pair(&u)?)
        } else {
            (zero()?, zero()?)
        };
        let reg = if n > 0 {
            u.f_square()?
                .f_sum_dim_intlist(1, false, Kind::Float)?
                .f_mean(Kind::Float)?
                .f_add(
                    &e_pos
                        .f_square()?
                        .f_sum_dim_intlist(1, false, Kind::Float)?
                        .f_mean(Kind::Float)?,
                )?
        } else {
            zero()?
        };
        Ok(LossParts {
            ce,
            bpr,
            user_bpr,
            reg,
        })
    }

    /// The weighted training loss.
    pub fn loss(&self, users: &Tensor, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        let p = self.loss_parts(users, input, target, None)?;
        let c = &self.config;
        let mut total = p.ce.f_mul_scalar(c.ce_weight)?;
        for (t, w) in [
            (&p.bpr, c.bpr_weight),
            (&p.user_bpr, c.user_bpr_weight),
            (&p.reg, c.lambda_c),
        ] {
            if w > 0.0 {
                total = total.f_add(&t.f_mul_scalar(w)?)?;
            }
        }
        Ok(total)
    }
}

/// One epoch's rows: users and their input / target sequences.
struct Rows {
    users: Tensor,
    seq: SeqBatches,
}

/// SoftTokenRec on the trainer.
pub struct SoftTokenModel {
    net: SoftToken,
    train: Option<Arc<Interactions>>,
    rows: Option<Rows>,
}

impl SoftTokenModel {
    /// The model around a loaded backbone.
    pub fn new(config: SoftTokenConfig, backbone: CausalLm) -> Result<Self> {
        Ok(Self {
            net: SoftToken::new(config, backbone)?,
            train: None,
            rows: None,
        })
    }

    /// The network.
    pub fn net(&self) -> &SoftToken {
        &self.net
    }
}

fn rows_of(train: &Interactions, max_len: i64) -> Result<Rows> {
    let seq = training_rows(train, None, max_len - 1)?;
    Ok(Rows {
        users: Tensor::from_slice(&seq.users),
        seq,
    })
}

impl Model for SoftTokenModel {
    fn params(&self) -> Vec<(String, Tensor)> {
        let mut out = self.net.own_params();
        if self.net.config.mode != BackboneMode::Frozen {
            out.extend(self.net.backbone_named());
        }
        out
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        if self.net.config.mode == BackboneMode::Frozen {
            self.net.backbone_named()
        } else {
            Vec::new()
        }
    }
    fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let device = self.net.device();
        super::load_named(&mut self.net.own_params(), tensors, device)?;
        let mut backbone = self.net.backbone_named();
        super::load_named(&mut backbone, tensors, device)
    }
    fn device(&self) -> Device {
        self.net.device()
    }
    fn n_users(&self) -> Option<i64> {
        Some(self.net.config.n_users)
    }
    fn n_items(&self) -> i64 {
        self.net.config.n_items
    }
    fn set_train(&mut self, train: Arc<Interactions>, _fresh: bool) -> Result<()> {
        rows_of(&train, self.net.config.max_len)?;
        self.train = Some(train);
        Ok(())
    }
    fn start_epoch(&mut self, _seed: u64, _epoch: u64) -> Result<usize> {
        let train = self
            .train
            .as_ref()
            .ok_or_else(|| RecforgeError::config("set the training data first"))?;
        let rows = rows_of(train, self.net.config.max_len)?;
        let n = rows.users.size()[0] as usize;
        self.rows = Some(rows);
        Ok(n)
    }
    fn batch_loss(&self, idx: &Tensor) -> Result<Tensor> {
        let rows = self
            .rows
            .as_ref()
            .ok_or_else(|| RecforgeError::config("start an epoch first"))?;
        let dev = self.net.device();
        let users = rows.users.f_index_select(0, idx)?.f_to(dev)?;
        let input = rows.seq.input.f_index_select(0, idx)?.f_to(dev)?;
        let target = rows.seq.target.f_index_select(0, idx)?.f_to(dev)?;
        self.net.loss(&users, &input, &target)
    }
    fn score_all(&self, users: &Tensor, history: Option<&Interactions>) -> Result<Tensor> {
        let history = match history {
            Some(h) => h,
            None => self
                .train
                .as_deref()
                .ok_or_else(|| RecforgeError::config("the model has no training interactions"))?,
        };
        let ids = Vec::<i64>::try_from(users.f_to(Device::Cpu)?)?;
        if let Some(&u) = ids.iter().find(|&&u| u < 0 || u >= self.net.config.n_users) {
            return Err(RecforgeError::data(format!(
                "user {u} is out of range (n_users = {})",
                self.net.config.n_users
            )));
        }
        let seq =
            history_rows(history, &ids, self.net.config.max_len - 1)?.f_to(self.net.device())?;
        let users = users.f_to(self.net.device())?;
        tch::no_grad(|| self.net.score_sequences(&users, &seq))
    }
    fn validation(&self) -> Validation {
        Validation::Ranking
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    impl SoftToken {
        /// The table or projection variable called `name` (tests read values by name).
        fn get(&self, name: &str) -> Result<Tensor> {
            crate::models::by_name(self.own_params(), name)
        }
    }

    fn tiny_backbone(kind: &str) -> CausalLm {
        let config = match kind {
            "gpt2" => {
                json!({"model_type": "gpt2", "vocab_size": 40, "n_positions": 32, "n_embd": 16,
                             "n_layer": 2, "n_head": 2, "eos_token_id": 39})
            }
            _ => {
                json!({"model_type": kind, "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "eos_token_id": 39})
            }
        };
        CausalLm::from_config(config, 3, Device::Cpu, Kind::Float).unwrap()
    }

    fn config(mode: BackboneMode) -> SoftTokenConfig {
        SoftTokenConfig {
            n_users: 5,
            n_items: 23,
            dim: 8,
            max_len: 6,
            n_negatives: 4,
            ce_weight: 1.0,
            bpr_weight: 1.0,
            user_bpr_weight: 1.0,
            lambda_c: 0.1,
            ce_chunk: 5,
            dropout: 0.0,
            mode,
            init_std: 0.1,
            seed: 1,
        }
    }

    fn grads(loss: &Tensor, xs: &[&Tensor]) -> Vec<Tensor> {
        Tensor::run_backward(&[loss], xs, false, false)
    }

    /// The chunked cross-entropy equals the plain one, in value and in both gradients, for
    /// chunk sizes that divide the items, do not, and exceed them.
    #[test]
    fn chunked_cross_entropy_equals_the_plain_one() {
        tch::manual_seed(0);
        let h = Tensor::randn([7, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let t = Tensor::randn([13, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let target = Tensor::from_slice(&[0i64, 3, 12, 5, 5, 9, 1]);
        let plain = h.matmul(&t.tr()).cross_entropy_for_logits(&target);
        let want = grads(&plain, &[&h, &t]);
        // keep_bytes 0: pass 2 recomputes every block; 1 << 20: it reuses pass 1's.
        for (chunk, keep_bytes) in [1, 4, 13, 100].iter().flat_map(|&c| [(c, 0), (c, 1 << 20)]) {
            let got = chunked_cross_entropy_within(&h, &t, &target, chunk, keep_bytes).unwrap();
            assert!(
                (got.double_value(&[]) - plain.double_value(&[])).abs() < 1e-5,
                "chunk {chunk}, keep {keep_bytes}"
            );
            let g = grads(&got, &[&h, &t]);
            for (a, b) in g.iter().zip(&want) {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "chunk {chunk}, keep {keep_bytes}: gradient differs by {diff}"
                );
            }
        }
        // Only the table trains: its gradient still matches.
        let hd = h.detach();
        let plain = hd.matmul(&t.tr()).cross_entropy_for_logits(&target);
        let want = grads(&plain, &[&t]);
        for keep_bytes in [0, 1 << 20] {
            let got = chunked_cross_entropy_within(&hd, &t, &target, 3, keep_bytes).unwrap();
            let diff = (&grads(&got, &[&t])[0] - &want[0])
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "keep {keep_bytes}");
        }
    }

    /// Each loss equals its formula computed directly from the network's projected states.
    #[test]
    fn losses_equal_their_formulas() {
        let net = SoftToken::new(config(BackboneMode::Full), tiny_backbone("llama")).unwrap();
        super::super::assert_in_store(&net.vs, &net.own_params(), &[]);
        let users = Tensor::from_slice(&[1i64, 4]);
        // Row 0: items 2, 7, 3 (inputs 2, 7; targets 7, 3); row 1: items 0, 5.
        let input = Tensor::from_slice(&[0i64, 0, 0, 3, 8, 0, 0, 0, 0, 1]).view([2, 5]);
        let target = Tensor::from_slice(&[0i64, 0, 0, 8, 4, 0, 0, 0, 0, 6]).view([2, 5]);
        let neg = Tensor::from_slice(&[1i64, 7, 9, 2, 7, 7, 0, 22, 5, 3, 11, 5]).view([3, 4]);
        let parts = net.loss_parts(&users, &input, &target, Some(&neg)).unwrap();
        let z = net.forward(&users, &input).unwrap().detach();
        let e = net.get("item_emb.weight").unwrap().detach();
        let u = net.get("user_emb.weight").unwrap().detach();
        // Positions with targets, in row-major order: (0, 3) -> 7, (0, 4) -> 3, (1, 4) -> 5.
        let cases = [(0i64, 3i64, 7i64, 1i64), (0, 4, 3, 1), (1, 4, 5, 4)];
        let dot = |a: &Tensor, b: &Tensor| (a * b).sum(Kind::Float).double_value(&[]);
        let (mut ce, mut bpr, mut ubpr, mut n_valid) = (0.0, 0.0, 0.0, 0.0);
        let (mut ru, mut re) = (0.0, 0.0);
        for (k, &(row, pos, item, user)) in cases.iter().enumerate() {
            let zk = z.get(row).get(pos + 1);
            let logits = zk.matmul(&e.tr());
            ce += logits.logsumexp([0i64].as_slice(), false).double_value(&[])
                - logits.double_value(&[item]);
            let uk = u.get(user);
            for j in 0..4 {
                let ng = neg.int64_value(&[k as i64, j]);
                if ng == item {
                    continue;
                }
                n_valid += 1.0;
                let ls = |q: &Tensor| {
                    let x = dot(q, &e.get(item)) - dot(q, &e.get(ng));
                    -(1.0 / (1.0 + (-x).exp())).ln()
                };
                bpr += ls(&zk);
                ubpr += ls(&uk);
            }
            ru += dot(&uk, &uk);
            re += dot(&e.get(item), &e.get(item));
        }
        let close = |got: &Tensor, want: f64, what: &str| {
            let g = got.double_value(&[]);
            assert!(
                (g - want).abs() < 1e-4 * want.abs().max(1.0),
                "{what}: {g} vs {want}"
            );
        };
        close(&parts.ce, ce / 3.0, "ce");
        close(&parts.bpr, bpr / n_valid, "bpr");
        close(&parts.user_bpr, ubpr / n_valid, "user bpr");
        close(&parts.reg, ru / 3.0 + re / 3.0, "reg");
        assert_eq!(n_valid, 9.0, "negatives equal to the positive are skipped");
    }

    /// A row's states do not depend on its padding or on the other rows, for each backbone.
    #[test]
    fn padding_and_batching_do_not_change_states() {
        for kind in ["gpt2", "llama", "qwen2"] {
            let net = SoftToken::new(config(BackboneMode::Full), tiny_backbone(kind)).unwrap();
            let alone = net
                .forward(
                    &Tensor::from_slice(&[2i64]),
                    &Tensor::from_slice(&[4i64, 9]).view([1, 2]),
                )
                .unwrap();
            let seq = Tensor::from_slice(&[0i64, 0, 0, 4, 9, 3, 1, 7, 7, 2]).view([2, 5]);
            let batch = net.forward(&Tensor::from_slice(&[2i64, 0]), &seq).unwrap();
            let d = (batch.get(0).narrow(0, 3, 3) - alone.get(0))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-5, "{kind}: {d}");
        }
    }

    /// Frozen mode leaves the backbone bit-identical after steps that move the tables; full mode
    /// moves it.
    #[test]
    fn frozen_backbones_do_not_move() {
        for (mode, moves) in [(BackboneMode::Frozen, false), (BackboneMode::Full, true)] {
            let mut model = SoftTokenModel::new(config(mode), tiny_backbone("gpt2")).unwrap();
            let before: Vec<Tensor> = model
                .net
                .backbone_named()
                .iter()
                .map(|(_, t)| t.copy())
                .collect();
            let names: Vec<String> = model.params().into_iter().map(|(n, _)| n).collect();
            assert_eq!(names.iter().any(|n| n.starts_with("backbone.")), moves);
            let train = Arc::new(
                Interactions::from_arrays(
                    &[0, 0, 0, 1, 1, 2, 2, 2],
                    &[3, 5, 8, 1, 2, 9, 4, 3],
                    None,
                    Some(&[1, 2, 3, 1, 2, 1, 2, 3]),
                    Some(5),
                    Some(23),
                )
                .unwrap(),
            );
            model.set_train(train, true).unwrap();
            let n = model.start_epoch(0, 0).unwrap();
            assert_eq!(n, 3);
            let params = model.params();
            for _ in 0..2 {
                let loss = model
                    .batch_loss(&Tensor::from_slice(&[0i64, 1, 2]))
                    .unwrap();
                let ts: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
                let g = Tensor::run_backward(&[&loss], &ts, false, false);
                tch::no_grad(|| {
                    // The token embeddings are unused with soft tokens: no gradient.
                    for ((_, p), g) in params.iter().zip(&g).filter(|(_, g)| g.defined()) {
                        let mut p = p.shallow_clone();
                        let _ = p.f_sub_(&(g * 0.5)).unwrap();
                    }
                });
            }
            let after = model.net.backbone_named();
            let same = before.iter().zip(&after).all(|(a, (_, b))| a.equal(b));
            assert_eq!(same, !moves, "{mode:?}");
            let scores = model
                .score_all(&Tensor::from_slice(&[0i64, 3]), None)
                .unwrap();
            assert_eq!(scores.size(), [2, 23]);
            assert!(model.score_all(&Tensor::from_slice(&[5i64]), None).is_err());
        }
    }
}
