//! The generic trainer: epochs of seeded mini-batches over any [`Model`], the optimiser and its
//! schedule, validation with early stopping and the best weights kept, checkpoints with exact
//! resume, divergence detection, and hooks for progress, callbacks and Ctrl-C.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use super::checkpoint::{load_checkpoint, save_checkpoint};
use super::epoch::run_epoch;
use super::model::{Model, Validation};
use super::optim::Optimizer;
use super::spec::{SideData, Spec};
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::eval::{self, Metric, RankingSpec, ScoreBatch, Ties};
use crate::models::FmModel;

/// What the trainer reports while it runs; each method returns `true` to stop training.
pub trait Hooks {
    /// After a batch: `done` of `total` batches of `epoch`, mean loss so far. Stopping here is
    /// an interruption (Ctrl-C): the epoch is not recorded.
    fn batch(&mut self, _epoch: u64, _done: usize, _total: usize, _loss: f64) -> bool {
        false
    }
    /// After an epoch was recorded (validated, checkpointed).
    fn epoch(&mut self, _log: &EpochLog) -> bool {
        false
    }
}

/// Hooks that never stop.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// One epoch's record: epoch, loss, lr and the validation metrics, in that order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog(pub Vec<(String, f64)>);

impl EpochLog {
    /// The value called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.0 {
            let v = if k == "epoch" {
                Value::from(*v as u64)
            } else {
                serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number)
            };
            m.insert(k.clone(), v);
        }
        Value::Object(m)
    }
    fn from_json(v: &Value) -> Result<Self> {
        let Value::Object(m) = v else {
            return Err(RecforgeError::data("a history entry must be an object"));
        };
        let mut out = Vec::new();
        for (k, v) in m {
            let x = match v {
                Value::Null => f64::NAN,
                other => other.as_f64().ok_or_else(|| {
                    RecforgeError::data(format!("history value {k} = {other} is not a number"))
                })?,
            };
            out.push((k.clone(), x));
        }
        // serde_json keeps keys sorted; put epoch, loss, lr first as the trainer writes them.
        out.sort_by_key(|(k, _)| match k.as_str() {
            "epoch" => 0,
            "loss" => 1,
            "lr" => 2,
            _ => 3,
        });
        Ok(Self(out))
    }
}

/// Options of one `fit`.
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Epochs (default: the spec's).
    pub epochs: Option<u64>,
    /// Stop once more than this many epochs in a row bring no better validation value (RecBole's
    /// `stopping_step` rule); the best weights are restored either way.
    pub patience: Option<u64>,
    /// Write `last` (every epoch) and `best` checkpoints here.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Continue from `checkpoint_dir/last`.
    pub resume: bool,
}

/// How a `fit` ended.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// A batch hook stopped it (Ctrl-C): the epoch in progress was dropped.
    pub interrupted: bool,
    /// An epoch hook stopped it (a callback raised, e.g. Optuna pruning).
    pub stopped: bool,
}

/// A model with its spec, optimiser, training data and history.
pub struct Trainer {
    spec: Spec,
    model: Box<dyn Model>,
    opt: Optimizer,
    train: Option<Arc<Interactions>>,
    n_users: i64,
    n_items: i64,
    /// Epoch records of the training so far.
    pub history: Vec<EpochLog>,
    /// The epoch whose weights are kept (with validation).
    pub best_epoch: Option<u64>,
    best_value: Option<f64>,
}

/// A mean training loss above this multiple of the run's first one (or of 1) is divergence.
const DIVERGENCE_FACTOR: f64 = 1e4;

impl Trainer {
    /// A freshly initialised model for `n_users` x `n_items`.
    pub fn new(
        spec: Spec,
        n_users: i64,
        n_items: i64,
        device: Device,
        side: Option<SideData>,
    ) -> Result<Self> {
        spec.validate()?;
        let model = spec.build(n_users, n_items, device, side)?;
        let opt = Optimizer::new(spec.optim_config()?, &model.params())?;
        Ok(Self {
            spec,
            model,
            opt,
            train: None,
            n_users,
            n_items,
            history: Vec::new(),
            best_epoch: None,
            best_value: None,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }
    /// The model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }
    /// The model, mutably (to load a state dict).
    pub fn model_mut(&mut self) -> &mut dyn Model {
        self.model.as_mut()
    }
    /// The optimiser.
    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }
    /// The training interactions of the last `fit` (or of the loaded checkpoint).
    pub fn train_data(&self) -> Option<&Arc<Interactions>> {
        self.train.as_ref()
    }
    /// Users and items the model was built for.
    pub fn sizes(&self) -> (i64, i64) {
        (self.n_users, self.n_items)
    }

    /// Deep copies of the parameters and buffers.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        self.model
            .params()
            .into_iter()
            .chain(self.model.buffers())
            .map(|(n, t)| {
                let d = t.f_detach()?;
                let mut c = d.f_zeros_like()?;
                tch::no_grad(|| c.f_copy_(&d))?;
                Ok((n, c))
            })
            .collect()
    }

    /// Loads parameters (and buffers) by name.
    pub fn load_state_dict(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.model.load(tensors)
    }

    fn check_data(&self, x: &Interactions, what: &str) -> Result<()> {
        let nu_ok = self.model.n_users().is_none_or(|n| n == x.n_users() as i64);
        if !nu_ok || x.n_items() as i64 != self.n_items {
            return Err(RecforgeError::data(format!(
                "{what} has {} users x {} items but the model was built for {} x {}",
                x.n_users(),
                x.n_items(),
                self.model
                    .n_users()
                    .map_or("any".to_string(), |n| n.to_string()),
                self.n_items
            )));
        }
        Ok(())
    }

    /// Sets the training interactions (what `score_all` of a sequential model and
    /// `recommend(exclude_seen=True)` read) without training.
    pub fn set_train(&mut self, train: Arc<Interactions>) -> Result<()> {
        self.check_data(&train, "train")?;
        self.model.set_train(train.clone(), self.opt.steps() == 0)?;
        self.train = Some(train);
        Ok(())
    }

    /// Trains on `train`, validating on `valid` after every epoch when given.
    pub fn fit(
        &mut self,
        train: Arc<Interactions>,
        valid: Option<&Interactions>,
        options: &FitOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<FitReport> {
        if let Some(v) = valid {
            if (v.n_users(), v.n_items()) != (train.n_users(), train.n_items()) {
                return Err(RecforgeError::data(
                    "train and valid must share one id space",
                ));
            }
        }
        let total = options.epochs.unwrap_or(self.spec.train.epochs);
        let ckpt = options.checkpoint_dir.as_deref();
        let mut start = 0;
        let mut best_state: Option<HashMap<String, Tensor>> = None;
        if options.resume {
            let dir = ckpt.ok_or_else(|| {
                RecforgeError::config(
                    "resume=True needs a checkpoint_dir holding a 'last' checkpoint",
                )
            })?;
            if !dir.join("last").join("state.json").is_file() {
                return Err(RecforgeError::config(
                    "resume=True needs a checkpoint_dir holding a 'last' checkpoint",
                ));
            }
            if dir.join("best").join("state.json").is_file() {
                self.restore(&dir.join("best"))?;
                best_state = Some(self.state_dict()?.into_iter().collect());
            }
            let state = self.restore(&dir.join("last"))?;
            start = state.epoch.map_or(0, |e| e + 1);
        } else {
            self.history.clear();
            self.best_epoch = None;
            self.best_value = None;
        }
        self.check_data(&train, "train")?;
        self.model.set_train(train.clone(), self.opt.steps() == 0)?;
        self.train = Some(train.clone());
        let seed = self.spec.train.seed;
        let bs = self.spec.train.batch_size;
        let validation = self.model.validation();
        let (_, higher) = validation.monitor();
        let mut since_best = 0u64;
        let mut report = FitReport {
            interrupted: false,
            stopped: false,
        };
        let mut schedule_set = false;
        let mut reference: Option<f64> = self.history.first().and_then(|h| h.get("loss"));
        let result = (|| -> Result<()> {
            for epoch in start..total {
                let n = self.model.start_epoch(seed, epoch)?;
                if !schedule_set {
                    if let Some(s) = &self.spec.train.lr_schedule {
                        self.opt
                            .set_schedule(Some(s.in_steps(n.div_ceil(bs), total)?))?;
                    }
                    schedule_set = true;
                }
                let model = &self.model;
                let mut diverged: Option<f64> = None;
                let stats = run_epoch(
                    n,
                    bs,
                    seed,
                    epoch,
                    &mut self.opt,
                    |idx| model.batch_loss(idx),
                    |done, total, loss| {
                        // The first mean loss of the run is the yardstick of divergence.
                        let base = *reference.get_or_insert(loss);
                        if loss.abs() > DIVERGENCE_FACTOR * base.abs().max(1.0) {
                            diverged = Some(loss);
                            return true;
                        }
                        hooks.batch(epoch, done, total, loss)
                    },
                )?;
                if let Some(loss) = diverged {
                    return Err(RecforgeError::data(format!(
                        "training diverged at epoch {epoch}: the mean loss grew from {:.4} to {loss:.4e}; lower the learning rate",
                        reference.unwrap_or(f64::NAN)
                    )));
                }
                if stats.interrupted {
                    report.interrupted = true;
                    return Ok(());
                }
                self.check_divergence(epoch)?;
                let mut log = vec![
                    ("epoch".to_string(), epoch as f64),
                    ("loss".to_string(), stats.loss),
                    ("lr".to_string(), self.opt.lr()),
                ];
                if let Some(v) = valid {
                    let metrics = self.validate(v, validation, epoch)?;
                    let value = metrics[0].1;
                    log.extend(metrics);
                    let better = match self.best_value {
                        None => true,
                        Some(b) if b.is_nan() => true,
                        Some(b) => {
                            if higher {
                                value > b
                            } else {
                                value < b
                            }
                        }
                    };
                    if better {
                        self.best_value = Some(value);
                        self.best_epoch = Some(epoch);
                        since_best = 0;
                        best_state = Some(self.state_dict()?.into_iter().collect());
                        if let Some(dir) = ckpt {
                            self.save_as(&dir.join("best"), Some(epoch))?;
                        }
                    } else {
                        since_best += 1;
                    }
                }
                let log = EpochLog(log);
                self.history.push(log.clone());
                if let Some(dir) = ckpt {
                    self.save_as(&dir.join("last"), Some(epoch))?;
                }
                if hooks.epoch(&log) {
                    report.stopped = true;
                    return Ok(());
                }
                if options
                    .patience
                    .is_some_and(|p| valid.is_some() && since_best > p)
                {
                    return Ok(());
                }
            }
            Ok(())
        })();
        if let Some(best) = best_state {
            self.model.load(&best)?;
        }
        result.map(|()| report)
    }

    /// Raises when training diverged into parameters that are no longer finite.
    fn check_divergence(&self, epoch: u64) -> Result<()> {
        for (name, p) in self.model.params() {
            if !p.requires_grad() {
                continue; // frozen: training does not change it
            }
            let finite = if super::fused::is_flat_f32(&p) {
                // SAFETY: a contiguous float32 CPU tensor, only read while no step runs.
                super::fused::all_finite(unsafe { super::fused::slice(&p) })
            } else {
                tch::no_grad(|| p.f_isfinite()?.f_all()?.f_int64_value(&[]))? == 1
            };
            if !finite {
                return Err(RecforgeError::data(format!(
                    "training diverged at epoch {epoch}: parameter {name} is no longer finite; lower the learning rate"
                )));
            }
        }
        Ok(())
    }

    /// Validation metrics, the monitored one first.
    pub fn validate(
        &self,
        valid: &Interactions,
        how: Validation,
        epoch: u64,
    ) -> Result<Vec<(String, f64)>> {
        self.check_data(valid, "valid")?;
        let dev = self.model.device();
        let diverged = || {
            RecforgeError::data(format!(
                "training diverged at epoch {epoch}: the model's scores are not finite; lower the learning rate"
            ))
        };
        tch::no_grad(|| match how {
            Validation::Rmse => {
                let c = valid.to_columns();
                let r = c
                    .ratings
                    .ok_or_else(|| RecforgeError::data("validation interactions need ratings"))?;
                if r.is_empty() {
                    return Err(RecforgeError::data("the validation interactions are empty"));
                }
                let mut sq = 0.0f64;
                for start in (0..r.len()).step_by(65_536) {
                    let end = (start + 65_536).min(r.len());
                    let u: Vec<i64> = c.users[start..end].iter().map(|&x| x as i64).collect();
                    let i: Vec<i64> = c.items[start..end].iter().map(|&x| x as i64).collect();
                    let p = self.model.predict(
                        &Tensor::from_slice(&u).f_to(dev)?,
                        &Tensor::from_slice(&i).f_to(dev)?,
                    )?;
                    let p = Vec::<f32>::try_from(p.f_to(Device::Cpu)?.f_to_kind(Kind::Float)?)?;
                    for (a, b) in p.iter().zip(&r[start..end]) {
                        if !a.is_finite() {
                            return Err(diverged());
                        }
                        sq += ((a - b) as f64).powi(2);
                    }
                }
                Ok(vec![("rmse".to_string(), (sq / r.len() as f64).sqrt())])
            }
            Validation::Ranking => {
                let train = self
                    .train
                    .as_ref()
                    .ok_or_else(|| RecforgeError::config("fit the model first"))?;
                let users: Vec<u32> = (0..valid.n_users())
                    .filter(|&u| !valid.user_range(u).is_empty())
                    .collect();
                if users.is_empty() {
                    return Err(RecforgeError::data("no user has a validation item"));
                }
                let spec = RankingSpec {
                    ks: vec![10],
                    metrics: vec![Metric::Ndcg, Metric::Hit],
                    ties: Ties::Expected,
                    top_k: None,
                };
                let n_items = self.n_items as usize;
                let per = (4_000_000 / n_items.max(1)).clamp(1, 1024);
                let mut sums = [0.0f64; 2];
                for chunk in users.chunks(per) {
                    let ids: Vec<i64> = chunk.iter().map(|&u| u as i64).collect();
                    let s = self
                        .model
                        .score_all(&Tensor::from_slice(&ids).f_to(dev)?, None)?;
                    let s = Vec::<f32>::try_from(
                        s.f_to(Device::Cpu)?
                            .f_to_kind(Kind::Float)?
                            .f_contiguous()?
                            .f_reshape([-1])?,
                    )?;
                    if s.iter().any(|x| !x.is_finite()) {
                        return Err(diverged());
                    }
                    let rows: Vec<usize> = (0..chunk.len()).collect();
                    let batch = ScoreBatch {
                        scores: &s,
                        n_items,
                        users: chunk,
                        rows: &rows,
                    };
                    let out = eval::full_ranking(&batch, valid, &[train.as_ref()], &spec)?;
                    for row in out.values.chunks(2) {
                        sums[0] += row[0];
                        sums[1] += row[1];
                    }
                }
                let n = users.len() as f64;
                Ok(vec![
                    ("ndcg@10".to_string(), sums[0] / n),
                    ("hit@10".to_string(), sums[1] / n),
                ])
            }
        })
    }

    fn state_json(&self, epoch: Option<u64>) -> String {
        let history: Vec<Value> = self.history.iter().map(EpochLog::to_json).collect();
        let num = |x: Option<f64>| {
            x.and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number)
        };
        serde_json::json!({
            "model": self.spec.name(),
            "config": self.spec.to_value(),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "epoch": epoch,
            "history": history,
            "best_epoch": self.best_epoch,
            "best_value": num(self.best_value),
        })
        .to_string()
    }

    fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut t = self.model.params();
        t.extend(self.model.buffers());
        t.extend(self.opt.state_tensors());
        if let Some(train) = &self.train {
            t.extend(train_tensors(train));
        }
        t
    }

    fn save_as(&self, dir: &Path, epoch: Option<u64>) -> Result<()> {
        save_checkpoint(dir, &self.tensors(), &self.state_json(epoch))
    }

    /// Writes the model, its optimiser state and its training interactions into folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_as(dir, self.history.len().checked_sub(1).map(|e| e as u64))
    }

    /// Reads a checkpoint folder and its checked `state.json`; a model other than `expect` (when
    /// given) is a `DataError`.
    fn read(dir: &Path, expect: Option<&str>) -> Result<(HashMap<String, Tensor>, SavedState)> {
        let (tensors, text) = load_checkpoint(dir)?;
        let state = SavedState::parse(&text, dir)?;
        if let Some(want) = expect.filter(|&w| w != state.model) {
            return Err(RecforgeError::data(format!(
                "{} holds a {}, not a {want}",
                dir.display(),
                state.model
            )));
        }
        Ok((tensors, state))
    }

    /// Sets weights, optimiser state, history and best epoch from a checkpoint.
    fn apply(&mut self, tensors: &HashMap<String, Tensor>, state: &SavedState) -> Result<()> {
        self.model.load(tensors)?;
        if tensors.contains_key("optim.step") {
            self.opt.load_state(tensors)?;
        }
        self.history = state.history.clone();
        self.best_epoch = state.best_epoch;
        self.best_value = state.best_value;
        Ok(())
    }

    /// Loads a checkpoint of this same model into it (weights, optimiser, history); the caller
    /// sets the training data.
    fn restore(&mut self, dir: &Path) -> Result<SavedState> {
        let (tensors, state) = Self::read(dir, Some(self.spec.name()))?;
        self.apply(&tensors, &state)?;
        Ok(state)
    }

    /// Reads a checkpoint folder written by [`Trainer::save`] into a new trainer on `device`.
    /// `expect` names the model class the caller wants (a different one is a `DataError`).
    pub fn load(dir: &Path, device: Device, expect: Option<&str>) -> Result<Self> {
        if !dir.join("state.json").is_file() {
            return Err(RecforgeError::data(format!(
                "{}: not a recforge model folder (no state.json)",
                dir.display()
            )));
        }
        let (tensors, state) = Self::read(dir, expect)?;
        let spec = Spec::from_json(&state.config.to_string())
            .map_err(|e| RecforgeError::data(format!("{}: state.json: {e}", dir.display())))?;
        let side = match spec.model {
            super::spec::ModelSpec::Fm { .. } => {
                FmModel::features_from(&tensors)?.map(SideData::Fm)
            }
            super::spec::ModelSpec::Hierarchical(_) => Some(SideData::Items(
                crate::models::hierarchical::Hierarchical::items_from(&tensors)?,
            )),
            _ => None,
        };
        let mut t = Trainer::new(spec, state.n_users, state.n_items, device, side)?;
        t.apply(&tensors, &state)?;
        if let Some(train) = train_from(&tensors, t.n_users, t.n_items)? {
            let train = Arc::new(train);
            t.model.set_train(train.clone(), false)?;
            t.train = Some(train);
        }
        Ok(t)
    }
}

/// The parts of `state.json` the trainer reads back, checked.
#[derive(Debug, Clone)]
struct SavedState {
    model: String,
    config: Value,
    n_users: i64,
    n_items: i64,
    epoch: Option<u64>,
    history: Vec<EpochLog>,
    best_epoch: Option<u64>,
    best_value: Option<f64>,
}

impl SavedState {
    fn parse(text: &str, dir: &Path) -> Result<Self> {
        let bad =
            |what: &str| RecforgeError::data(format!("{}: state.json: {what}", dir.display()));
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
        let field = |k: &str| v.get(k).ok_or_else(|| bad(&format!("no {k:?}")));
        let size = |k: &str| -> Result<i64> {
            field(k)?
                .as_i64()
                .filter(|&n| n >= 1 && n <= u32::MAX as i64)
                .ok_or_else(|| bad(&format!("{k:?} must be a positive integer")))
        };
        let opt_u64 = |k: &str| -> Result<Option<u64>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| bad(&format!("{k:?} must be a non-negative integer"))),
            }
        };
        let history = match field("history")? {
            Value::Array(items) => items
                .iter()
                .map(EpochLog::from_json)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| bad(&e.to_string()))?,
            _ => return Err(bad("\"history\" must be a list")),
        };
        Ok(Self {
            model: field("model")?
                .as_str()
                .ok_or_else(|| bad("\"model\" must be a string"))?
                .to_string(),
            config: field("config")?.clone(),
            n_users: size("n_users")?,
            n_items: size("n_items")?,
            epoch: opt_u64("epoch")?,
            history,
            best_epoch: opt_u64("best_epoch")?,
            best_value: v.get("best_value").and_then(Value::as_f64),
        })
    }
}

/// The training interactions as checkpoint tensors (`train.users`, `train.items`, and
/// `train.ratings` when rated), in CSR order, so a loaded model keeps each user's history order.
fn train_tensors(train: &Interactions) -> Vec<(String, Tensor)> {
    let c = train.to_columns();
    let users: Vec<i64> = c.users.iter().map(|&u| u as i64).collect();
    let items: Vec<i64> = c.items.iter().map(|&i| i as i64).collect();
    let mut out = vec![
        ("train.users".to_string(), Tensor::from_slice(&users)),
        ("train.items".to_string(), Tensor::from_slice(&items)),
    ];
    if let Some(r) = c.ratings {
        out.push(("train.ratings".to_string(), Tensor::from_slice(&r)));
    }
    out
}

fn train_from(
    tensors: &HashMap<String, Tensor>,
    n_users: i64,
    n_items: i64,
) -> Result<Option<Interactions>> {
    let (Some(u), Some(i)) = (tensors.get("train.users"), tensors.get("train.items")) else {
        return Ok(None);
    };
    let u = Vec::<i64>::try_from(u.f_to_kind(Kind::Int64)?.f_reshape([-1])?)?;
    let i = Vec::<i64>::try_from(i.f_to_kind(Kind::Int64)?.f_reshape([-1])?)?;
    let r = match tensors.get("train.ratings") {
        Some(r) => Some(Vec::<f32>::try_from(
            r.f_to_kind(Kind::Float)?.f_reshape([-1])?,
        )?),
        None => None,
    };
    let x = Interactions::from_arrays(
        &u,
        &i,
        r.as_deref(),
        None,
        Some(n_users as u64),
        Some(n_items as u64),
    )
    .map_err(|e| RecforgeError::data(format!("checkpoint training interactions: {e}")))?;
    Ok(Some(x))
}
