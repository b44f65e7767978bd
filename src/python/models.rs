//! Bindings of the training core and the matrix-factorisation models (`recforge.models`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tch::Tensor;

use super::convert;
use super::data::PyInteractions;
use super::errors::ConfigError;
use super::gil::without_gil;
use super::tensor::PyTensor;
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::models::fm::{self, FeatureRows, Fm, FmConfig, FmLoss};
use crate::models::sasrec::{self, SasRec, SasRecConfig, SeqLoss};
use crate::models::{bprmf, svd, Factors, FactorsConfig};
use crate::sampling::{self, Strategy};
use crate::train::{self, LrSchedule, OptimConfig, Optimizer, Schedule};

enum Data {
    Ratings(svd::Ratings),
    Implicit {
        train: Arc<Interactions>,
        users: Tensor,
        pos: Tensor,
    },
    Sequences(Arc<Interactions>),
}

/// The network: matrix factorisation, an FM / NFM with its user and item feature rows, or a
/// sequential model with the interactions its users' histories come from.
enum Net {
    Mf(Factors),
    Fm {
        fm: Fm,
        users: FeatureRows,
        items: FeatureRows,
        objective: FmLoss,
    },
    Seq {
        model: SasRec,
        objective: SeqLoss,
        history: Option<Arc<Interactions>>,
    },
}

impl Net {
    fn params(&self) -> Vec<(String, Tensor)> {
        match self {
            Net::Mf(m) => m.params(),
            Net::Fm { fm, .. } => fm.params(),
            Net::Seq { model, .. } => model.params(),
        }
    }
    /// Tensors saved with the parameters but not trained (batch-norm running statistics).
    fn buffers(&self) -> Vec<(String, Tensor)> {
        match self {
            Net::Fm { fm, .. } => fm.buffers(),
            _ => Vec::new(),
        }
    }
    fn device(&self) -> tch::Device {
        match self {
            Net::Mf(m) => m.device(),
            Net::Fm { fm, .. } => fm.device(),
            Net::Seq { model, .. } => model.device(),
        }
    }
    fn load(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        match self {
            Net::Mf(m) => m.load(t),
            Net::Fm { fm, .. } => fm.load(t),
            Net::Seq { model, .. } => model.load(t),
        }
    }
    /// Users (None: any) and items the model was built for.
    fn sizes(&self) -> (Option<i64>, i64) {
        match self {
            Net::Mf(m) => (Some(m.config.n_users), m.config.n_items),
            Net::Fm { users, items, .. } => (Some(users.n_rows()), items.n_rows()),
            Net::Seq { model, .. } => (None, model.config.n_items),
        }
    }
    fn check_ids(&self, u: &[i64], i: &[i64]) -> Result<()> {
        match self {
            Net::Mf(m) => m.check_ids(u, i),
            Net::Fm { users, items, .. } => Fm::check_ids(users, items, u, i),
            Net::Seq { model, .. } => {
                let n = model.config.n_items;
                match i.iter().find(|&&x| x < 0 || x >= n) {
                    Some(x) => Err(RecforgeError::data(format!(
                        "item {x} is out of range (n_items = {n})"
                    ))),
                    None => Ok(()),
                }
            }
        }
    }
    fn predict(&self, u: &Tensor, i: &Tensor) -> Result<Tensor> {
        match self {
            Net::Mf(m) => m.predict(u, i),
            Net::Fm {
                fm, users, items, ..
            } => fm.score_pairs(&fm.aggregate(users, u)?, &fm.aggregate(items, i)?, false),
            Net::Seq { .. } => self
                .score_all(u, None)?
                .f_gather(1, &i.f_unsqueeze(1)?, false)?
                .f_squeeze_dim(1)
                .map_err(Into::into),
        }
    }
    /// Scores of every item for users `u`; a sequential model reads the users' histories from
    /// `history` (default: its training interactions).
    fn score_all(&self, u: &Tensor, history: Option<&Interactions>) -> Result<Tensor> {
        match self {
            Net::Mf(m) => m.score_all(u),
            Net::Fm {
                fm, users, items, ..
            } => fm.score_all(users, items, u),
            Net::Seq {
                model,
                history: own,
                ..
            } => {
                let h = history.or(own.as_deref()).ok_or_else(|| {
                    RecforgeError::config("this model has no interaction history: fit it first")
                })?;
                let users = Vec::<i64>::try_from(u.f_to(tch::Device::Cpu)?)?;
                let seq = sasrec::history_rows(h, &users, model.config.max_len)?;
                model.score_sequences(&seq.f_to(model.device())?)
            }
        }
    }
    /// Whether training uses ratings (else sampled negatives).
    fn on_ratings(&self, bpr: bool) -> bool {
        match self {
            Net::Mf(_) => !bpr,
            Net::Fm { objective, .. } => *objective == FmLoss::Mse,
            Net::Seq { .. } => false,
        }
    }
}

struct State {
    model: Net,
    opt: Optimizer,
    bpr: bool,
    reg: f64,
    batch_size: usize,
    seed: u64,
    data: Option<Data>,
}

/// A matrix-factorisation model and its optimiser: objective `"ratings"` (biased MF / SVD) or
/// `"bpr"` (BPR-MF). Used by `recforge.models.SVD` and `recforge.models.BPRMF`.
#[pyclass(module = "recforge._native", name = "_Factorization")]
pub struct PyFactorization {
    state: Mutex<State>,
}

impl PyFactorization {
    /// Wraps a built network with its optimiser and training settings.
    fn assemble(
        model: Net,
        optim: OptimConfig,
        bpr: bool,
        reg: f64,
        batch_size: usize,
        seed: u64,
    ) -> PyResult<Self> {
        if !(reg.is_finite() && reg >= 0.0) || batch_size == 0 {
            return Err(ConfigError::new_err("reg must be >= 0 and batch_size >= 1"));
        }
        let opt = Optimizer::new(optim, &model.params())?;
        let state = State {
            model,
            opt,
            bpr,
            reg,
            batch_size,
            seed,
            data: None,
        };
        Ok(Self {
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn ids(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<i64>> {
    Ok(convert::int64_array(obj, name)?.as_slice()?.to_vec())
}

#[pymethods]
impl PyFactorization {
    #[new]
    #[pyo3(signature = (objective, n_users, n_items, dim, biases, init_std, seed, device, optimizer, lr, weight_decay, momentum, clip_grad_norm, reg, batch_size))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        objective: &str,
        n_users: i64,
        n_items: i64,
        dim: i64,
        biases: bool,
        init_std: f64,
        seed: u64,
        device: &str,
        optimizer: &str,
        lr: f64,
        weight_decay: f64,
        momentum: f64,
        clip_grad_norm: f64,
        reg: f64,
        batch_size: usize,
    ) -> PyResult<Self> {
        let bpr = match objective {
            "ratings" => false,
            "bpr" => true,
            other => return Err(ConfigError::new_err(format!("unknown objective {other:?}"))),
        };
        let device = crate::device::resolve(device)?;
        let config = FactorsConfig {
            n_users,
            n_items,
            dim,
            biases,
            init_std,
            seed,
        };
        let model = Net::Mf(Factors::new(config, device)?);
        let optim = OptimConfig {
            kind: optimizer.parse()?,
            lr,
            weight_decay,
            momentum,
            clip_grad_norm,
            ..OptimConfig::default()
        };
        Self::assemble(model, optim, bpr, reg, batch_size, seed)
    }

    /// An FM (`hidden` empty) or NFM over padded user / item feature rows (`[rows, width]`
    /// row-major index and value buffers); `objective` is `mse`, `bpr` or `bce`.
    #[staticmethod]
    #[pyo3(signature = (objective, user_idx, user_val, user_width, item_idx, item_val, item_width, n_features, dim, hidden, dropout, init_std, seed, device, optimizer, lr, weight_decay, clip_grad_norm, reg, batch_size, batch_norm=false))]
    #[allow(clippy::too_many_arguments)]
    fn fm(
        objective: &str,
        user_idx: &Bound<'_, PyAny>,
        user_val: &Bound<'_, PyAny>,
        user_width: usize,
        item_idx: &Bound<'_, PyAny>,
        item_val: &Bound<'_, PyAny>,
        item_width: usize,
        n_features: i64,
        dim: i64,
        hidden: Vec<i64>,
        dropout: f64,
        init_std: f64,
        seed: u64,
        device: &str,
        optimizer: &str,
        lr: f64,
        weight_decay: f64,
        clip_grad_norm: f64,
        reg: f64,
        batch_size: usize,
        batch_norm: bool,
    ) -> PyResult<Self> {
        let objective = match objective {
            "mse" => FmLoss::Mse,
            "bpr" => FmLoss::Bpr,
            "bce" => FmLoss::Bce,
            other => {
                return Err(ConfigError::new_err(format!(
                    "loss must be 'mse', 'bpr' or 'bce', got {other:?}"
                )))
            }
        };
        let device = crate::device::resolve(device)?;
        let rows = |idx: &Bound<'_, PyAny>,
                    val: &Bound<'_, PyAny>,
                    width: usize|
         -> PyResult<FeatureRows> {
            let i = convert::int64_array(idx, "feature indices")?;
            let v = convert::float32_array(val, "feature values")?;
            Ok(FeatureRows::new(
                i.as_slice()?,
                v.as_slice()?,
                width,
                n_features,
                device,
            )?)
        };
        let users = rows(user_idx, user_val, user_width)?;
        let items = rows(item_idx, item_val, item_width)?;
        let config = FmConfig {
            n_features,
            dim,
            hidden,
            dropout,
            init_std,
            seed,
            batch_norm,
        };
        let fm = Fm::new(config, device)?;
        let optim = OptimConfig {
            kind: optimizer.parse()?,
            lr,
            weight_decay,
            clip_grad_norm,
            ..OptimConfig::default()
        };
        let bpr = objective != FmLoss::Mse;
        let model = Net::Fm {
            fm,
            users,
            items,
            objective,
        };
        Self::assemble(model, optim, bpr, reg, batch_size, seed)
    }

    /// A SASRec sequential model over `n_items` items; `objective` is `bce` or `ce`.
    #[staticmethod]
    #[pyo3(signature = (objective, n_items, dim, n_layers, n_heads, max_len, dropout, init_std, seed, device, optimizer, lr, weight_decay, clip_grad_norm, batch_size))]
    #[allow(clippy::too_many_arguments)]
    fn sasrec(
        objective: &str,
        n_items: i64,
        dim: i64,
        n_layers: i64,
        n_heads: i64,
        max_len: i64,
        dropout: f64,
        init_std: f64,
        seed: u64,
        device: &str,
        optimizer: &str,
        lr: f64,
        weight_decay: f64,
        clip_grad_norm: f64,
        batch_size: usize,
    ) -> PyResult<Self> {
        let objective = match objective {
            "bce" => SeqLoss::Bce,
            "ce" => SeqLoss::Ce,
            other => {
                return Err(ConfigError::new_err(format!(
                    "loss must be 'bce' or 'ce', got {other:?}"
                )))
            }
        };
        let device = crate::device::resolve(device)?;
        let config = SasRecConfig {
            n_items,
            dim,
            n_layers,
            n_heads,
            max_len,
            dropout,
            init_std,
            seed,
        };
        let model = Net::Seq {
            model: SasRec::new(config, device)?,
            objective,
            history: None,
        };
        let optim = OptimConfig {
            kind: optimizer.parse()?,
            lr,
            weight_decay,
            clip_grad_norm,
            betas: (0.9, 0.98),
            ..OptimConfig::default()
        };
        Self::assemble(model, optim, true, 0.0, batch_size, seed)
    }

    /// Sets the training interactions (moved to the model's device once); returns the number of
    /// batches an epoch has.
    fn set_train(&self, py: Python<'_>, train: &PyInteractions) -> PyResult<usize> {
        let train = train.inner.clone();
        let mut st = self.lock();
        let st = &mut *st;
        let (n_users, n_items) = st.model.sizes();
        if n_users.is_some_and(|n| n != train.n_users() as i64) || train.n_items() as i64 != n_items
        {
            return Err(super::errors::data_error(format!(
                "train has {} users x {} items but the model was built for {} x {}",
                train.n_users(),
                train.n_items(),
                n_users.map_or("any".to_string(), |n| n.to_string()),
                n_items
            )));
        }
        if let Net::Seq { history, model, .. } = &mut st.model {
            let rows = sasrec::training_rows(&train, None, model.config.max_len)?;
            let n = rows.input.size()[0] as usize;
            *history = Some(train.clone());
            st.data = Some(Data::Sequences(train));
            return Ok(n.div_ceil(st.batch_size));
        }
        let on_ratings = st.model.on_ratings(st.bpr);
        let dev = st.model.device();
        let data = without_gil(py, || -> Result<Data> {
            let c = train.to_columns();
            let users: Vec<i64> = c.users.iter().map(|&u| u as i64).collect();
            let items: Vec<i64> = c.items.iter().map(|&i| i as i64).collect();
            let u = Tensor::from_slice(&users).f_to(dev)?;
            let i = Tensor::from_slice(&items).f_to(dev)?;
            if !on_ratings {
                return Ok(Data::Implicit {
                    train: train.clone(),
                    users: u,
                    pos: i,
                });
            }
            let r = c.ratings.ok_or_else(|| {
                RecforgeError::data("a rating model needs interactions with ratings")
            })?;
            let mean = r.iter().map(|&x| x as f64).sum::<f64>() / r.len().max(1) as f64;
            Ok(Data::Ratings(svd::Ratings {
                users: u,
                items: i,
                ratings: Tensor::from_slice(&r).f_to(dev)?,
                mean,
            }))
        })?;
        if let (Data::Ratings(r), 0, Net::Mf(m)) = (&data, st.opt.steps(), &st.model) {
            // Start the global bias at the mean rating, as Funk SVD does.
            let g = m.get("global_bias")?;
            let _ =
                tch::no_grad(|| g.shallow_clone().f_fill_(r.mean)).map_err(RecforgeError::from)?;
        }
        let n = match &data {
            Data::Ratings(r) => r.ratings.size()[0],
            Data::Implicit { pos, .. } => pos.size()[0],
            Data::Sequences(_) => 0,
        } as usize;
        st.data = Some(data);
        Ok(n.div_ceil(st.batch_size))
    }

    /// Sets the learning-rate schedule over `total` optimiser steps: `name` is `constant`,
    /// `linear`, `cosine` (decaying to `end` times the rate) or `step` (times `gamma` every
    /// `every` steps), after `warmup` linear warm-up steps.
    #[pyo3(signature = (name, warmup, total, end=0.0, every=1, gamma=0.1))]
    fn set_schedule(
        &self,
        name: &str,
        warmup: u64,
        total: u64,
        end: f64,
        every: u64,
        gamma: f64,
    ) -> PyResult<()> {
        let schedule = match name {
            "constant" => Schedule::Constant,
            "linear" => Schedule::Linear { end },
            "cosine" => Schedule::Cosine { end },
            "step" => Schedule::Step { every, gamma },
            other => {
                return Err(ConfigError::new_err(format!(
                    "lr_schedule must be constant, linear, cosine or step, got {other:?}"
                )))
            }
        };
        self.lock().opt.set_schedule(Some(LrSchedule {
            schedule,
            warmup,
            total,
        }))?;
        Ok(())
    }

    /// The learning rate of the next optimiser step.
    #[getter]
    fn lr(&self) -> f64 {
        self.lock().opt.lr()
    }

    /// One epoch; returns `(mean loss, batches, interrupted)`. `progress(done, total, loss)` is
    /// called at most every 0.1 s and after the last batch; Ctrl-C ends the epoch between batches,
    /// and an exception raised by `progress` stops it and propagates.
    #[pyo3(signature = (epoch, progress=None))]
    fn train_epoch(
        &self,
        py: Python<'_>,
        epoch: u64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(f64, usize, bool)> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut failure: Option<PyErr> = None;
        let failed = &mut failure;
        let stats = without_gil(py, move || -> Result<train::EpochStats> {
            let mut last = Instant::now();
            let mut after = |done: usize, total: usize, loss: f64| -> bool {
                if done < total && last.elapsed() < Duration::from_millis(100) {
                    return false;
                }
                last = Instant::now();
                Python::attach(|py| {
                    if py.check_signals().is_err() {
                        return true;
                    }
                    match progress
                        .as_ref()
                        .map(|cb| cb.call1(py, (done, total, loss)))
                    {
                        Some(Err(e)) => {
                            *failed = Some(e);
                            true
                        }
                        _ => false,
                    }
                })
            };
            let (model, opt, reg, bs, seed) =
                (&st.model, &mut st.opt, st.reg, st.batch_size, st.seed);
            match (st.data.as_ref(), model) {
                (None, _) => Err(RecforgeError::config("call set_train before train_epoch")),
                (Some(Data::Ratings(d)), Net::Mf(m)) => train::run_epoch(
                    d.ratings.size()[0] as usize,
                    bs,
                    seed,
                    epoch,
                    opt,
                    |idx| svd::loss(m, d, idx, reg),
                    &mut after,
                ),
                (
                    Some(Data::Ratings(d)),
                    Net::Fm {
                        fm,
                        users,
                        items,
                        objective,
                    },
                ) => train::run_epoch(
                    d.ratings.size()[0] as usize,
                    bs,
                    seed,
                    epoch,
                    opt,
                    |idx| {
                        fm::loss(
                            fm,
                            users,
                            items,
                            &d.users,
                            &d.items,
                            Some(&d.ratings),
                            None,
                            *objective,
                            idx,
                            reg,
                        )
                    },
                    &mut after,
                ),
                (
                    Some(Data::Sequences(train)),
                    Net::Seq {
                        model, objective, ..
                    },
                ) => {
                    let neg = match objective {
                        SeqLoss::Bce => Some(sampling::training_negatives(
                            train,
                            1,
                            &Strategy::Uniform,
                            true,
                            seed,
                            epoch,
                        )?),
                        SeqLoss::Ce => None,
                    };
                    let rows = sasrec::training_rows(train, neg.as_deref(), model.config.max_len)?;
                    train::run_epoch(
                        rows.input.size()[0] as usize,
                        bs,
                        seed,
                        epoch,
                        opt,
                        |idx| model.loss(&rows, idx, *objective),
                        &mut after,
                    )
                }
                (Some(Data::Implicit { train, users, pos }), net) => {
                    let neg = sampling::training_negatives(
                        train,
                        1,
                        &Strategy::Uniform,
                        true,
                        seed,
                        epoch,
                    )?;
                    let neg = Tensor::from_slice(&neg).f_to(net.device())?;
                    let n = pos.size()[0] as usize;
                    match net {
                        Net::Mf(m) => {
                            let triples = bprmf::Triples {
                                users: users.shallow_clone(),
                                pos: pos.shallow_clone(),
                                neg,
                            };
                            train::run_epoch(
                                n,
                                bs,
                                seed,
                                epoch,
                                opt,
                                |idx| bprmf::loss(m, &triples, idx, reg),
                                &mut after,
                            )
                        }
                        Net::Fm {
                            fm,
                            users: ur,
                            items: ir,
                            objective,
                        } => train::run_epoch(
                            n,
                            bs,
                            seed,
                            epoch,
                            opt,
                            |idx| {
                                fm::loss(
                                    fm,
                                    ur,
                                    ir,
                                    users,
                                    pos,
                                    None,
                                    Some(&neg),
                                    *objective,
                                    idx,
                                    reg,
                                )
                            },
                            &mut after,
                        ),
                        Net::Seq { .. } => Err(RecforgeError::config(
                            "a sequential model needs sequence data",
                        )),
                    }
                }
                _ => Err(RecforgeError::config(
                    "this model cannot train on this kind of data",
                )),
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok((stats.loss, stats.batches, stats.interrupted))
    }

    /// Scores of (user, item) pairs as float32.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        users: &Bound<'py, PyAny>,
        items: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (u, i) = (ids(users, "users")?, ids(items, "items")?);
        if u.len() != i.len() {
            return Err(super::errors::data_error(format!(
                "users has {} entries but items has {}",
                u.len(),
                i.len()
            )));
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let out = without_gil(py, move || -> Result<Vec<f32>> {
            st.model.check_ids(&u, &i)?;
            let dev = st.model.device();
            let s = tch::no_grad(|| {
                st.model.predict(
                    &Tensor::from_slice(&u).f_to(dev)?,
                    &Tensor::from_slice(&i).f_to(dev)?,
                )
            })?;
            Ok(Vec::<f32>::try_from(s.f_to(tch::Device::Cpu)?)?)
        })?;
        Ok(out.into_pyarray(py))
    }

    /// Scores of every item for `users`: a `[B, n_items]` torch tensor on the model's device.
    /// A sequential model reads the users' histories from `history` (default: the training data).
    #[pyo3(signature = (users, history=None))]
    fn score_all(
        &self,
        py: Python<'_>,
        users: &Bound<'_, PyAny>,
        history: Option<PyRef<'_, PyInteractions>>,
    ) -> PyResult<PyTensor> {
        let u = ids(users, "users")?;
        let history = history.map(|h| h.inner.clone());
        let mut guard = self.lock();
        let st = &mut *guard;
        let t = without_gil(py, move || -> Result<Tensor> {
            st.model.check_ids(&u, &[])?;
            if let (Some(h), (_, n_items)) = (&history, st.model.sizes()) {
                if h.n_items() as i64 != n_items {
                    return Err(RecforgeError::data(format!(
                        "history has {} items but the model was built for {n_items}",
                        h.n_items()
                    )));
                }
            }
            let idx = Tensor::from_slice(&u).f_to(st.model.device())?;
            tch::no_grad(|| st.model.score_all(&idx, history.as_deref()))
        })?;
        Ok(PyTensor(t))
    }

    /// Scores of every item for a new user given `(items, ratings)` (rating models only).
    fn fold_in(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        ratings: &Bound<'_, PyAny>,
        reg: f64,
    ) -> PyResult<PyTensor> {
        let items = ids(items, "items")?;
        let ratings = convert::float32_array(ratings, "ratings")?
            .as_slice()?
            .to_vec();
        let mut guard = self.lock();
        let st = &mut *guard;
        let t = without_gil(py, move || match &st.model {
            Net::Mf(m) => svd::fold_in(m, &items, &ratings, reg),
            _ => Err(RecforgeError::config("fold_in is available for SVD only")),
        })?;
        Ok(PyTensor(t))
    }

    /// Copies of the parameters by name.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let st = self.lock();
        for (name, t) in st.model.params().into_iter().chain(st.model.buffers()) {
            let copy = t.detach().copy();
            d.set_item(name, PyTensor(copy))?;
        }
        Ok(d)
    }

    /// Loads parameters by name (a missing or mis-shaped tensor is a DataError).
    fn load_state_dict(&self, tensors: HashMap<String, PyTensor>) -> PyResult<()> {
        let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k, v.0)).collect();
        self.lock().model.load(&map)?;
        Ok(())
    }

    /// Writes a checkpoint folder: parameters + optimiser state, and `state_json`.
    fn save(&self, py: Python<'_>, dir: PathBuf, state_json: &str) -> PyResult<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        without_gil(py, move || {
            let mut tensors = st.model.params();
            tensors.extend(st.model.buffers());
            tensors.extend(st.opt.state_tensors());
            train::save_checkpoint(&dir, &tensors, state_json)
        })
    }

    /// Reads a checkpoint folder into this model and optimiser; returns its `state.json` text.
    fn load(&self, py: Python<'_>, dir: PathBuf) -> PyResult<String> {
        let mut guard = self.lock();
        let st = &mut *guard;
        without_gil(py, move || {
            let (tensors, state) = train::load_checkpoint(&dir)?;
            st.model.load(&tensors)?;
            if tensors.contains_key("optim.step") {
                st.opt.load_state(&tensors)?;
            }
            Ok(state)
        })
    }

    /// Optimiser steps taken.
    #[getter]
    fn steps(&self) -> u64 {
        self.lock().opt.steps()
    }

    /// The device name.
    #[getter]
    fn device(&self) -> String {
        crate::device::name(self.lock().model.device())
    }

    /// Number of parameters.
    #[getter]
    fn n_parameters(&self) -> i64 {
        self.lock()
            .model
            .params()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}
