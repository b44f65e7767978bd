//! Optimisers written on libtorch tensors, with state that can be saved and restored exactly.
//!
//! tch's own optimisers keep their state (Adam's moments, step counts) inside libtorch, out of
//! reach of a checkpoint; these keep it in named tensors, so `resume` continues bit for bit.
//! Updates follow PyTorch's `torch.optim` formulas (Adam with L2 `weight_decay`, AdamW with
//! decoupled decay, SGD with momentum, Adagrad).

use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::fused;
use crate::error::{RecforgeError, Result};
use crate::timers::{self, Section};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Adam (Kingma & Ba), L2 weight decay added to the gradient.
    Adam,
    /// AdamW (Loshchilov & Hutter), decoupled weight decay.
    AdamW,
    /// SGD with optional momentum.
    Sgd,
    /// Adagrad.
    Adagrad,
    /// `torch.optim.SparseAdam`'s lazy Adam for embedding tables: a table with a sparse
    /// gradient updates only the rows a batch used (their moments too), so a step costs the
    /// batch, not the table; other parameters get Adam. Weight decay is L2 on the rows used.
    #[serde(rename = "sparse_adam")]
    SparseAdam,
}

impl FromStr for Kind {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "adam" => Ok(Kind::Adam),
            "adamw" => Ok(Kind::AdamW),
            "sgd" => Ok(Kind::Sgd),
            "adagrad" => Ok(Kind::Adagrad),
            "sparse_adam" | "sparseadam" => Ok(Kind::SparseAdam),
            other => Err(RecforgeError::config(format!(
                "optimizer must be adam, adamw, sparse_adam, sgd or adagrad, got {other:?}"
            ))),
        }
    }
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Update rule.
    pub kind: Kind,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay (L2 for Adam/SGD/Adagrad, decoupled for AdamW).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Adam betas.
    pub betas: (f64, f64),
    /// Adam / Adagrad epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this value (0 = off).
    pub clip_grad_norm: f64,
    /// Per-group learning rate and weight decay, by parameter-name prefix (first match wins;
    /// parameters no group matches use `lr` and `weight_decay`).
    #[serde(default)]
    pub groups: Vec<ParamGroup>,
}

/// Learning rate and weight decay for the parameters whose names start with `prefix` (e.g.
/// `backbone.` for an LLM backbone inside a recommender). The group's rate follows the same
/// schedule, scaled by `lr / base lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// Parameter-name prefix.
    pub prefix: String,
    /// Learning rate (default: the base rate).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Weight decay (default: the base decay).
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: Kind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            clip_grad_norm: 0.0,
            groups: Vec::new(),
        }
    }
}

impl OptimConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(RecforgeError::config(format!(
                "{what} = {v} is out of range"
            )))
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum);
        }
        if !(0.0..1.0).contains(&self.betas.0) || !(0.0..1.0).contains(&self.betas.1) {
            return bad("beta", self.betas.0.max(self.betas.1));
        }
        if !(self.clip_grad_norm.is_finite() && self.clip_grad_norm >= 0.0) {
            return bad("clip_grad_norm", self.clip_grad_norm);
        }
        for g in &self.groups {
            if let Some(lr) = g.lr.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return bad(&format!("param_groups[{:?}].lr", g.prefix), lr);
            }
            if let Some(wd) = g.weight_decay.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return bad(&format!("param_groups[{:?}].weight_decay", g.prefix), wd);
            }
        }
        Ok(())
    }
}

/// How the learning rate changes over optimiser steps: `lr_t = lr * factor(t)` where `t` counts
/// the steps already taken, so a resumed run continues the same curve. After `warmup` steps of
/// linear warm-up (`(t + 1) / warmup`) the decay runs over the remaining `total - warmup` steps
/// with PyTorch's closed forms: `Linear` as `LinearLR(1, end, T)`, `Cosine` as
/// `CosineAnnealingLR(T, eta_min = end * lr)`, `Step` as `StepLR(every, gamma)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// Constant after warm-up.
    Constant,
    /// Linear from 1 to `end` times the base rate.
    Linear {
        /// Final factor.
        end: f64,
    },
    /// Half a cosine from 1 down to `end` times the base rate.
    Cosine {
        /// Final factor.
        end: f64,
    },
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Steps between decays.
        every: u64,
        /// Decay factor.
        gamma: f64,
    },
}

/// A schedule with its warm-up and length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The decay after warm-up.
    pub schedule: Schedule,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Steps of the whole run (warm-up included).
    pub total: u64,
}

impl LrSchedule {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = match self.schedule {
            Schedule::Constant => true,
            Schedule::Linear { end } | Schedule::Cosine { end } => end.is_finite() && end >= 0.0,
            Schedule::Step { every, gamma } => every >= 1 && gamma.is_finite() && gamma > 0.0,
        };
        if !ok {
            return Err(RecforgeError::config(format!(
                "learning-rate schedule {:?} is out of range",
                self.schedule
            )));
        }
        Ok(())
    }

    /// The factor applied to the base rate once `t` steps have been taken.
    pub fn factor(&self, t: u64) -> f64 {
        if t < self.warmup {
            return (t + 1) as f64 / self.warmup as f64;
        }
        let s = (t - self.warmup) as f64;
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear { end } => 1.0 + (end - 1.0) * (s / span).min(1.0),
            Schedule::Cosine { end } => {
                end + (1.0 - end) * (1.0 + (std::f64::consts::PI * s.min(span) / span).cos()) / 2.0
            }
            Schedule::Step { every, gamma } => gamma.powi(((t - self.warmup) / every) as i32),
        }
    }
}

/// The scalars of step `t` of Adam, AdamW or SparseAdam under `c`.
fn adam_step(c: &OptimConfig, t: i32) -> fused::AdamStep {
    fused::AdamStep {
        lr: c.lr,
        b1: c.betas.0,
        b2: c.betas.1,
        eps: c.eps,
        weight_decay: c.weight_decay,
        decoupled: c.kind == Kind::AdamW,
        t,
        grad_scale: 1.0,
    }
}

/// SparseAdam's lazy update of the rows of `p` a batch used: on the fused CPU path `rows` are the
/// distinct rows whose gradients were summed into the dense buffer `g`; otherwise `g` is a
/// coalesced sparse gradient.
fn sparse_adam(
    p: &mut Tensor,
    g: &Tensor,
    state: &mut HashMap<&'static str, Tensor>,
    rows: Option<&[i64]>,
    c: &OptimConfig,
    t: i32,
) -> Result<()> {
    let missing = || RecforgeError::config("optimizer state is missing a tensor");
    let mut m = state.get("exp_avg").ok_or_else(missing)?.shallow_clone();
    let mut v = state.get("exp_avg_sq").ok_or_else(missing)?.shallow_clone();
    let s = adam_step(c, t);
    let (idx, grad_rows) = match rows {
        Some(rows) => {
            let flat = [&*p, g, &m, &v].iter().all(|x| fused::is_flat_f32(x))
                && [g.numel(), m.numel(), v.numel()] == [p.numel(); 3];
            if flat {
                let _t = timers::scope(Section::Optimizer);
                let width = p.numel() / p.size().first().map_or(1, |&n| n.max(1) as usize);
                // SAFETY: four distinct contiguous float32 CPU tensors of equal length, used by
                // nothing else during the call.
                unsafe {
                    fused::sparse_adam_rows(
                        fused::slice_mut(p),
                        fused::slice(g),
                        fused::slice_mut(&mut m),
                        fused::slice_mut(&mut v),
                        width,
                        rows,
                        s,
                    )
                };
                return Ok(());
            }
            let idx = Tensor::from_slice(rows).f_to(p.device())?;
            let grad_rows = g.f_index_select(0, &idx)?;
            (idx, grad_rows)
        }
        None => (
            g.f_internal_indices()?.f_select(0, 0)?,
            g.f_internal_values()?,
        ),
    };
    // The same arithmetic as libtorch ops, on the rows only.
    let (b1, b2) = c.betas;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    let mut gr = grad_rows.f_to_kind(p.kind())?;
    if c.weight_decay > 0.0 {
        gr = gr.f_add(&p.f_index_select(0, &idx)?.f_mul_scalar(c.weight_decay)?)?;
    }
    let m_old = m.f_index_select(0, &idx)?;
    let v_old = v.f_index_select(0, &idx)?;
    let m_new = m_old.f_add(&gr.f_sub(&m_old)?.f_mul_scalar(1.0 - b1)?)?;
    let v_new = v_old.f_add(&gr.f_square()?.f_sub(&v_old)?.f_mul_scalar(1.0 - b2)?)?;
    let update = m_new
        .f_div(&v_new.f_sqrt()?.f_add_scalar(c.eps)?)?
        .f_mul_scalar(-(c.lr * bc2.sqrt() / bc1))?;
    let _ = m.f_index_copy_(0, &idx, &m_new)?;
    let _ = v.f_index_copy_(0, &idx, &v_new)?;
    let _ = p.f_index_add_(0, &idx, &update)?;
    Ok(())
}

/// An optimiser over named parameters.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimConfig,
    schedule: Option<LrSchedule>,
    params: Vec<(String, Tensor)>,
    /// Per parameter: state tensors by name (`exp_avg`, `exp_avg_sq`, `momentum`, `sum`).
    state: Vec<HashMap<&'static str, Tensor>>,
    /// Per parameter: reused buffers (a dense gradient for sparse ones, a work tensor), so a step
    /// allocates no parameter-sized memory (fresh pages cost more than the arithmetic).
    scratch: Vec<[Option<Tensor>; 2]>,
    /// Per parameter: (learning-rate factor, weight decay) from its group.
    hyper: Vec<(f64, f64)>,
    step: u64,
}

impl Optimizer {
    /// An optimiser for `params` (leaf tensors that require gradients; shallow handles are kept).
    pub fn new(config: OptimConfig, params: &[(String, Tensor)]) -> Result<Self> {
        config.validate()?;
        let params: Vec<(String, Tensor)> = params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let state = params
            .iter()
            .map(|(_, p)| {
                let z = || p.zeros_like();
                let mut s = HashMap::new();
                match config.kind {
                    Kind::Adam | Kind::AdamW | Kind::SparseAdam => {
                        s.insert("exp_avg", z());
                        s.insert("exp_avg_sq", z());
                    }
                    Kind::Sgd if config.momentum > 0.0 => {
                        s.insert("momentum", z());
                    }
                    Kind::Sgd => {}
                    Kind::Adagrad => {
                        s.insert("sum", z());
                    }
                }
                s
            })
            .collect();
        let scratch = params.iter().map(|_| [None, None]).collect();
        let hyper = params
            .iter()
            .map(
                |(name, _)| match config.groups.iter().find(|g| name.starts_with(&g.prefix)) {
                    Some(g) => (
                        g.lr.map_or(1.0, |lr| lr / config.lr),
                        g.weight_decay.unwrap_or(config.weight_decay),
                    ),
                    None => (1.0, config.weight_decay),
                },
            )
            .collect();
        Ok(Self {
            config,
            schedule: None,
            params,
            state,
            scratch,
            hyper,
            step: 0,
        })
    }

    /// Sets (or with `None` removes) the learning-rate schedule.
    pub fn set_schedule(&mut self, schedule: Option<LrSchedule>) -> Result<()> {
        if let Some(s) = &schedule {
            s.validate()?;
        }
        self.schedule = schedule;
        Ok(())
    }

    /// The learning rate the next step will use.
    pub fn lr(&self) -> f64 {
        self.config.lr * self.schedule.as_ref().map_or(1.0, |s| s.factor(self.step))
    }

    /// The settings.
    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Clears the gradients of all parameters.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update from the current gradients (parameters without a gradient are left alone).
    pub fn step(&mut self) -> Result<()> {
        let grads = self
            .params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                g.defined().then_some(g)
            })
            .collect();
        self.apply(grads)
    }

    /// Back-propagates `loss` and updates: the gradients come straight from the autograd engine
    /// (like PyTorch's `zero_grad(set_to_none=True)`), so no `.grad` buffer is zeroed or
    /// accumulated into.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let inputs: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        let grads = Tensor::f_run_backward(&[loss], &inputs, false, false)?
            .into_iter()
            .map(|g| g.defined().then_some(g))
            .collect();
        self.apply(grads)
    }

    fn apply(&mut self, mut grads: Vec<Option<Tensor>>) -> Result<()> {
        let mut c = self.config.clone();
        c.lr = self.lr();
        self.step += 1;
        let t = self.step as i32;
        // Rows of kept dense buffers that the fused path filled and must clear after the update.
        let mut rezero: Vec<(usize, usize, Vec<i64>)> = Vec::new();
        let lazy = c.kind == Kind::SparseAdam;
        // SparseAdam on the fused path: per parameter, the distinct rows its gradient touched.
        let mut lazy_rows: Vec<Option<Vec<i64>>> = vec![None; self.params.len()];
        let result = tch::no_grad(|| -> Result<()> {
            // Sparse gradients (embedding rows) are summed into a kept dense buffer.
            for (k, ((g, (_, p)), scratch)) in grads
                .iter_mut()
                .zip(&self.params)
                .zip(&mut self.scratch)
                .enumerate()
            {
                let Some(sparse) = g.as_ref().filter(|g| g.is_sparse()) else {
                    continue;
                };
                let mut buf = match &scratch[0] {
                    Some(b) => b.shallow_clone(),
                    None => {
                        let b = p.f_zeros_like()?;
                        scratch[0] = Some(b.shallow_clone());
                        b
                    }
                };
                let rows = sparse.f_internal_indices()?.f_select(0, 0)?;
                let values = sparse.f_internal_values()?.f_contiguous()?;
                if lazy && !(fused::is_flat_f32(&buf) && fused::is_flat_f32(&values)) {
                    // Off the CPU, SparseAdam works on the coalesced (summed, distinct) rows.
                    *g = Some(sparse.f_coalesce()?);
                    continue;
                }
                if fused::is_flat_f32(&buf) && fused::is_flat_f32(&values) {
                    // On the CPU the buffer stays zero between steps: the rows are added here and
                    // cleared after the update, so the table is never zeroed whole.
                    let rows = Vec::<i64>::try_from(&rows)?;
                    let _t = timers::scope(Section::Optimizer);
                    let width = buf.numel() / buf.size().first().map_or(1, |&n| n.max(1) as usize);
                    // SAFETY: both are contiguous float32 CPU tensors, distinct allocations, and
                    // nothing else touches them during the call.
                    unsafe {
                        fused::scatter_rows(
                            fused::slice_mut(&mut buf),
                            width,
                            &rows,
                            fused::slice(&values),
                        )?
                    };
                    if lazy {
                        let mut distinct = rows.clone();
                        distinct.sort_unstable();
                        distinct.dedup();
                        lazy_rows[k] = Some(distinct);
                    }
                    rezero.push((k, width, rows));
                } else {
                    let mut dense = buf.shallow_clone();
                    let _ = dense.f_zero_()?;
                    let _ = dense.f_index_add_(0, &rows, &values)?;
                }
                *g = Some(buf);
            }
            let mut clip: Option<f64> = None;
            if c.clip_grad_norm > 0.0 {
                let mut total = 0.0;
                for g in grads.iter().flatten() {
                    let norm = if g.is_sparse() {
                        g.f_internal_values()?.f_norm()?
                    } else {
                        g.f_norm()?
                    };
                    total += norm.double_value(&[]).powi(2);
                }
                let norm = total.sqrt();
                if norm > c.clip_grad_norm {
                    clip = Some(c.clip_grad_norm / (norm + 1e-6));
                }
            }
            // The clipping factor: folded into the fused Adam pass, else applied to the gradient.
            let scaled = |g: Tensor| -> Result<Tensor> {
                Ok(match clip {
                    Some(s) => g.f_mul(&Tensor::from(s))?,
                    None => g,
                })
            };
            let missing = || RecforgeError::config("optimizer state is missing a tensor");
            let base = c.clone();
            for (k, (((((_, p), state), grad), scratch), &(lr_factor, weight_decay))) in self
                .params
                .iter_mut()
                .zip(&mut self.state)
                .zip(grads)
                .zip(&mut self.scratch)
                .zip(&self.hyper)
                .enumerate()
            {
                let Some(mut g) = grad else { continue };
                let c = OptimConfig {
                    lr: base.lr * lr_factor,
                    weight_decay,
                    groups: Vec::new(),
                    ..base.clone()
                };
                if lazy && (lazy_rows[k].is_some() || g.is_sparse()) {
                    sparse_adam(p, &scaled(g)?, state, lazy_rows[k].as_deref(), &c, t)?;
                    continue;
                }
                if matches!(c.kind, Kind::Adam | Kind::AdamW | Kind::SparseAdam)
                    && fused::is_flat_f32(p)
                {
                    if !fused::is_flat_f32(&g) && g.device() == p.device() {
                        g = g.f_to_kind(tch::Kind::Float)?.f_contiguous()?;
                    }
                    let mut m = state.get("exp_avg").ok_or_else(missing)?.shallow_clone();
                    let mut v = state.get("exp_avg_sq").ok_or_else(missing)?.shallow_clone();
                    if fused::is_flat_f32(&g)
                        && fused::is_flat_f32(&m)
                        && fused::is_flat_f32(&v)
                        && [g.numel(), m.numel(), v.numel()] == [p.numel(); 3]
                    {
                        let _t = timers::scope(Section::Optimizer);
                        let s = fused::AdamStep {
                            grad_scale: clip.map_or(1.0, |s| s as f32),
                            ..adam_step(&c, t)
                        };
                        // SAFETY: four distinct contiguous float32 CPU tensors of equal length
                        // (a gradient never shares a parameter's or a moment's storage), used by
                        // nothing else during the call.
                        unsafe {
                            fused::adam(
                                fused::slice_mut(p),
                                fused::slice(&g),
                                fused::slice_mut(&mut m),
                                fused::slice_mut(&mut v),
                                s,
                            )
                        };
                        continue;
                    }
                }
                g = scaled(g)?;
                if c.weight_decay > 0.0 && c.kind != Kind::AdamW {
                    g = g.f_add(&p.f_mul(&Tensor::from(c.weight_decay))?)?;
                }
                let update = match c.kind {
                    Kind::Adam | Kind::AdamW | Kind::SparseAdam => {
                        let (b1, b2) = c.betas;
                        if c.kind == Kind::AdamW && c.weight_decay > 0.0 {
                            let decayed = p.f_mul(&Tensor::from(1.0 - c.lr * c.weight_decay))?;
                            p.f_copy_(&decayed)?;
                        }
                        // In place, as torch.optim.Adam does: m = b1 m + (1 - b1) g,
                        // v = b2 v + (1 - b2) g^2, p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
                        let bc1 = 1.0 - b1.powi(t);
                        let bc2 = 1.0 - b2.powi(t);
                        // Shapes match by construction, so the Scalar-taking ops cannot fail.
                        let m = state.get_mut("exp_avg").ok_or_else(missing)?;
                        let _ = m.f_lerp_(&g, 1.0 - b1)?;
                        let m = m.shallow_clone();
                        let v = state.get_mut("exp_avg_sq").ok_or_else(missing)?;
                        let work = match &scratch[1] {
                            Some(w) => w.shallow_clone(),
                            None => {
                                let w = p.f_empty_like()?;
                                scratch[1] = Some(w.shallow_clone());
                                w
                            }
                        };
                        let _ = g.f_square_out(&work)?;
                        let _ = v.f_lerp_(&work, 1.0 - b2)?;
                        // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
                        //    = m / denom, denom = -(sqrt(v) + eps sqrt(bc2)) * bc1 / (lr sqrt(bc2)).
                        let mut denom = v.f_sqrt_out(&work)?;
                        let _ = denom.f_add_scalar_(c.eps * bc2.sqrt())?;
                        let _ = denom.f_mul_scalar_(-bc1 / (c.lr * bc2.sqrt()))?;
                        let _ = p.f_addcdiv_(&m, &denom)?;
                        continue;
                    }
                    Kind::Sgd if c.momentum > 0.0 => {
                        let buf = &state["momentum"];
                        let new = if t == 1 {
                            g.copy()
                        } else {
                            (buf * c.momentum).f_add(&g)?
                        };
                        state
                            .get_mut("momentum")
                            .map(|b| b.f_copy_(&new))
                            .transpose()?;
                        new * c.lr
                    }
                    Kind::Sgd => g * c.lr,
                    Kind::Adagrad => {
                        let sum = state["sum"].f_add(&g.f_square()?)?;
                        state.get_mut("sum").map(|s| s.f_copy_(&sum)).transpose()?;
                        (g / sum.f_sqrt()?.f_add(&Tensor::from(c.eps))?) * c.lr
                    }
                };
                let new_p = p.f_sub(&update)?;
                p.f_copy_(&new_p)?;
            }
            Ok(())
        });
        // Cleared whether or not the update went through, so the next step starts from zero.
        let _t = timers::scope(Section::Optimizer);
        for (k, width, rows) in &rezero {
            if let Some(buf) = &self.scratch[*k][0] {
                // SAFETY: the buffer is the contiguous float32 CPU tensor filled above.
                let mut buf = buf.shallow_clone();
                fused::zero_rows(unsafe { fused::slice_mut(&mut buf) }, *width, rows);
            }
        }
        result
    }

    /// All state tensors, named `optim.<param>.<state>`, plus the step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("optim.step".to_string(), Tensor::from(self.step as i64))];
        for ((name, _), s) in self.params.iter().zip(&self.state) {
            let mut keys: Vec<_> = s.keys().collect();
            keys.sort();
            for k in keys {
                out.push((format!("optim.{name}.{k}"), s[k].shallow_clone()));
            }
        }
        out
    }

    /// Restores state written by [`Optimizer::state_tensors`]; a missing or mis-shaped tensor is
    /// an error naming it.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let step = tensors
            .get("optim.step")
            .ok_or_else(|| RecforgeError::data("checkpoint has no optim.step"))?;
        self.step = step.int64_value(&[]) as u64;
        for ((name, _), s) in self.params.iter().zip(&mut self.state) {
            for (k, t) in s.iter_mut() {
                let key = format!("optim.{name}.{k}");
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| RecforgeError::data(format!("checkpoint has no {key}")))?;
                if src.size() != t.size() {
                    return Err(RecforgeError::data(format!(
                        "checkpoint tensor {key} has shape {:?}, expected {:?}",
                        src.size(),
                        t.size()
                    )));
                }
                tch::no_grad(|| t.f_copy_(src))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind as TKind};

    /// Minimises (x - 3)^2 from x = 0 and checks each rule moves towards 3 and that the first
    /// Adam step has size lr (Adam's normalised first step).
    #[test]
    fn each_rule_minimises_a_quadratic() {
        for kind in [Kind::Adam, Kind::AdamW, Kind::Sgd, Kind::Adagrad] {
            let x = Tensor::zeros([1], (TKind::Float, Device::Cpu)).set_requires_grad(true);
            let lr = if kind == Kind::Adagrad { 1.0 } else { 0.1 };
            let cfg = OptimConfig {
                kind,
                lr,
                momentum: 0.5,
                ..OptimConfig::default()
            };
            let mut opt = Optimizer::new(cfg, &[("x".into(), x.shallow_clone())]).unwrap();
            for i in 0..300 {
                opt.zero_grad();
                let loss = (&x - 3.0).square().sum(TKind::Float);
                loss.backward();
                opt.step().unwrap();
                if i == 0 && kind == Kind::Adam {
                    assert!((x.double_value(&[0]) - 0.1).abs() < 1e-5);
                }
            }
            let v = x.double_value(&[0]);
            assert!((v - 3.0).abs() < 0.2, "{kind:?}: {v}");
        }
    }

    /// An embedding table updated from sparse gradients (the fused CPU path with its kept
    /// buffer), from dense gradients, and in float64 (the op-by-op path libtorch runs on other
    /// devices and dtypes) ends at the same values; without weight decay, rows never looked up
    /// stay where they were.
    #[test]
    fn sparse_dense_and_op_by_op_updates_agree() {
        tch::manual_seed(5);
        let table = Tensor::randn([7, 3], (TKind::Float, Device::Cpu));
        let coef = Tensor::randn([3, 3], (TKind::Float, Device::Cpu));
        let batches = [[1i64, 3, 1], [0, 5, 5], [2, 2, 4], [3, 3, 3]];
        for (kind, weight_decay) in [(Kind::Adam, 0.0), (Kind::Adam, 0.01), (Kind::AdamW, 0.1)] {
            let run = |sparse: bool, dtype: TKind| -> Tensor {
                // A copy: `to_kind` to the same dtype would hand back `table` itself.
                let p = table.to_kind(dtype).copy().set_requires_grad(true);
                let cfg = OptimConfig {
                    kind,
                    lr: 0.05,
                    weight_decay,
                    ..OptimConfig::default()
                };
                let mut opt = Optimizer::new(cfg, &[("t".into(), p.shallow_clone())]).unwrap();
                for ids in batches {
                    let e = Tensor::embedding(&p, &Tensor::from_slice(&ids), -1, false, sparse);
                    let loss = (e * coef.to_kind(dtype)).sin().sum(dtype);
                    opt.backward_step(&loss).unwrap();
                }
                p.detach().to_kind(TKind::Float)
            };
            let fused = run(true, TKind::Float);
            for other in [
                run(false, TKind::Float),
                run(false, TKind::Double),
                run(true, TKind::Double),
            ] {
                let diff = (&fused - &other).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{kind:?} wd {weight_decay}: {diff}");
            }
            let moved = (&fused - &table)
                .abs()
                .sum_dim_intlist(1, false, TKind::Float);
            let moved = Vec::<f32>::try_from(moved).unwrap();
            // Weight decay reaches every row, as with a dense gradient.
            if weight_decay == 0.0 {
                assert_eq!(moved[6], 0.0, "{kind:?}: an untouched row moved");
            } else {
                assert!(
                    moved[6] > 1e-3,
                    "{kind:?}: weight decay skipped an untouched row"
                );
            }
            assert!(moved[..6].iter().all(|&m| m > 1e-3), "{kind:?}: {moved:?}");
        }
    }

    /// SparseAdam (fused CPU path, and the op path in float64) equals torch.optim.SparseAdam's
    /// formula applied by hand to the rows each batch used; rows never used stay put (weight
    /// decay included), and a parameter with a dense gradient is updated as by Adam.
    #[test]
    fn sparse_adam_updates_only_the_rows_used_as_torch_does() {
        tch::manual_seed(6);
        let table = Tensor::randn([7, 3], (TKind::Float, Device::Cpu));
        let coef = Tensor::randn([3, 3], (TKind::Float, Device::Cpu));
        let dense0 = Tensor::randn([2], (TKind::Float, Device::Cpu));
        let batches = [[1i64, 3, 1], [0, 5, 5], [2, 2, 4], [3, 3, 3]];
        let (lr, b1, b2, eps) = (0.05, 0.9, 0.999, 1e-8);
        for weight_decay in [0.0, 0.01] {
            let loss_of = |e: &Tensor, d: &Tensor, dtype: TKind| {
                (e * coef.to_kind(dtype)).sin().sum(dtype) + (d * d).sum(dtype) * 0.5
            };
            let run = |dtype: TKind| -> (Tensor, Tensor) {
                let p = table.to_kind(dtype).copy().set_requires_grad(true);
                let d = dense0.to_kind(dtype).copy().set_requires_grad(true);
                let cfg = OptimConfig {
                    kind: Kind::SparseAdam,
                    lr,
                    weight_decay,
                    ..OptimConfig::default()
                };
                let named = [
                    ("t".into(), p.shallow_clone()),
                    ("d".into(), d.shallow_clone()),
                ];
                let mut opt = Optimizer::new(cfg, &named).unwrap();
                for ids in batches {
                    let e = Tensor::embedding(&p, &Tensor::from_slice(&ids), -1, false, true);
                    opt.backward_step(&loss_of(&e, &d, dtype)).unwrap();
                }
                (
                    p.detach().to_kind(TKind::Float),
                    d.detach().to_kind(TKind::Float),
                )
            };
            // By hand, in float64: SparseAdam on the table's rows used, Adam on `d`.
            let p = table.to_kind(TKind::Double).copy().set_requires_grad(true);
            let mut d = dense0.to_kind(TKind::Double).copy().set_requires_grad(true);
            let (m, v) = (p.zeros_like().detach(), p.zeros_like().detach());
            let (mut dm, mut dv) = (d.zeros_like().detach(), d.zeros_like().detach());
            for (t, ids) in batches.iter().enumerate() {
                let t = t as i32 + 1;
                let e = Tensor::embedding(&p, &Tensor::from_slice(ids), -1, false, false);
                let g = Tensor::run_backward(
                    &[loss_of(&e, &d, TKind::Double)],
                    &[&p, &d],
                    false,
                    false,
                );
                let (bc1, bc2) = (1.0 - f64::powi(b1, t), 1.0 - f64::powi(b2, t));
                tch::no_grad(|| {
                    let mut used: Vec<i64> = ids.to_vec();
                    used.sort_unstable();
                    used.dedup();
                    for r in used {
                        let (pr, gr) = (p.get(r), g[0].get(r) + p.get(r) * weight_decay);
                        let (mr, vr) = (m.get(r), v.get(r));
                        let m_new = &mr + (&gr - &mr) * (1.0 - b1);
                        let v_new = &vr + (gr.square() - &vr) * (1.0 - b2);
                        let step = -(lr * bc2.sqrt() / bc1);
                        let new_p = &pr + (&m_new / (v_new.sqrt() + eps)) * step;
                        m.get(r).copy_(&m_new);
                        v.get(r).copy_(&v_new);
                        p.get(r).copy_(&new_p);
                    }
                    let gd = &g[1] + &d * weight_decay;
                    dm = dm.lerp(&gd, 1.0 - b1);
                    dv = &dv * b2 + gd.square() * (1.0 - b2);
                    let new_d = &d - (&dm / (dv.sqrt() / bc2.sqrt() + eps)) * (lr / bc1);
                    d.copy_(&new_d);
                });
            }
            let want = (
                p.detach().to_kind(TKind::Float),
                d.detach().to_kind(TKind::Float),
            );
            for dtype in [TKind::Float, TKind::Double] {
                let got = run(dtype);
                for (a, b, what) in [(&got.0, &want.0, "table"), (&got.1, &want.1, "dense")] {
                    let diff = (a - b).abs().max().double_value(&[]);
                    assert!(diff < 1e-5, "wd {weight_decay} {dtype:?} {what}: {diff}");
                }
                let moved = Vec::<f32>::try_from((&got.0 - &table).abs().sum_dim_intlist(
                    1,
                    false,
                    TKind::Float,
                ))
                .unwrap();
                assert_eq!(moved[6], 0.0, "wd {weight_decay}: an unused row moved");
                assert!(moved[..6].iter().all(|&x| x > 1e-3), "{moved:?}");
            }
        }
        assert_eq!("sparse_adam".parse::<Kind>().unwrap(), Kind::SparseAdam);
    }

    #[test]
    fn state_round_trips() {
        let x = Tensor::zeros([2], (TKind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt =
            Optimizer::new(OptimConfig::default(), &[("x".into(), x.shallow_clone())]).unwrap();
        opt.zero_grad();
        (&x - 1.0).square().sum(TKind::Float).backward();
        opt.step().unwrap();
        let saved: HashMap<String, Tensor> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let y = Tensor::zeros([2], (TKind::Float, Device::Cpu)).set_requires_grad(true);
        let mut other = Optimizer::new(OptimConfig::default(), &[("x".into(), y)]).unwrap();
        other.load_state(&saved).unwrap();
        assert_eq!(other.steps(), 1);
        let a = &opt.state_tensors()[1].1;
        let b = &other.state_tensors()[1].1;
        assert!(a.equal(b));
        assert!(OptimConfig {
            lr: -1.0,
            ..OptimConfig::default()
        }
        .validate()
        .is_err());
    }
}
