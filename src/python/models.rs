//! Bindings of the generic trainer (`recforge._native._Trainer`): argument and result conversion
//! only; the models, their training and their checkpoints live in `crate::train` and
//! `crate::models`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tch::Tensor;

use super::convert;
use super::data::PyInteractions;
use super::errors::ConfigError;
use super::gil::{without_gil, Bridge};
use super::tensor::PyTensor;
use crate::error::Result;
use crate::models::hierarchical::ItemInput;
use crate::train::{EpochLog, FitOptions, FmFeatures, Hooks, SideData, Spec, Trainer};

/// A model of `recforge.models` with its optimiser, spec, history and training data.
#[pyclass(module = "recforge._native", name = "_Trainer")]
pub struct PyTrainer {
    inner: Mutex<Trainer>,
}

fn ids(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<i64>> {
    Ok(convert::int64_array(obj, name)?.as_slice()?.to_vec())
}

fn log_dict<'py>(py: Python<'py>, log: &EpochLog) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in &log.0 {
        if k == "epoch" {
            d.set_item(k, *v as u64)?;
        } else {
            d.set_item(k, *v)?;
        }
    }
    Ok(d)
}

/// Training hooks that call back into Python through the one progress / Ctrl-C bridge.
struct PyHooks<'a> {
    bridge: &'a mut Bridge,
    on_batch: Option<Py<PyAny>>,
    on_epoch: Option<Py<PyAny>>,
}

impl Hooks for PyHooks<'_> {
    fn batch(&mut self, _epoch: u64, done: usize, total: usize, loss: f64) -> bool {
        let cb = &self.on_batch;
        self.bridge.call(done < total, |py| match cb {
            Some(cb) => cb.call1(py, (done, total, loss)).map(|_| ()),
            None => Ok(()),
        })
    }
    fn epoch(&mut self, log: &EpochLog) -> bool {
        let cb = &self.on_epoch;
        self.bridge.call(false, |py| match cb {
            Some(cb) => {
                let epoch = log.get("epoch").unwrap_or(0.0) as u64;
                cb.call1(py, (epoch, log_dict(py, log)?)).map(|_| ())
            }
            None => Ok(()),
        })
    }
}

type FeatureArgs<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    usize,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    usize,
    i64,
);

impl PyTrainer {
    /// The trainer, or a clear error while `fit` holds it (a callback calling back into the
    /// model it is training).
    fn lock(&self) -> PyResult<MutexGuard<'_, Trainer>> {
        match self.inner.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(TryLockError::WouldBlock) => Err(ConfigError::new_err(
                "the model is busy (training or scoring in another call); use it after fit() returns",
            )),
        }
    }
}

#[pymethods]
impl PyTrainer {
    /// A fresh model from its JSON spec for `n_users` x `n_items` on `device`; an FM / NFM takes
    /// `features = (user_idx, user_val, user_width, item_idx, item_val, item_width, n_features)`
    /// (row-major padded feature rows); a HierarchicalRec takes `items`: a float32
    /// `[n_items, dim]` torch tensor of item-LLM vectors, or `(ids, mask)` int64 `[n_items, T]`
    /// token tensors for an item LLM inside the model.
    #[new]
    #[pyo3(signature = (spec, n_users, n_items, device="auto", features=None, items=None))]
    fn new(
        spec: &str,
        n_users: i64,
        n_items: i64,
        device: &str,
        features: Option<FeatureArgs<'_>>,
        items: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let spec = Spec::from_json(spec)?;
        let device = crate::device::resolve(device)?;
        let features = match features {
            None => None,
            Some((ui, uv, uw, ii, iv, iw, n)) => {
                let i64s = |x: &Bound<'_, PyAny>| ids(x, "feature indices");
                let f32s = |x: &Bound<'_, PyAny>| -> PyResult<Vec<f32>> {
                    Ok(convert::float32_array(x, "feature values")?
                        .as_slice()?
                        .to_vec())
                };
                Some(SideData::Fm(FmFeatures {
                    users: (i64s(&ui)?, f32s(&uv)?, uw),
                    items: (i64s(&ii)?, f32s(&iv)?, iw),
                    n_features: n,
                }))
            }
        };
        let side = match items {
            None => features,
            Some(_) if features.is_some() => {
                return Err(ConfigError::new_err(
                    "pass either features (FM) or items (HierarchicalRec), not both",
                ))
            }
            Some(obj) => Some(SideData::Items(
                if let Ok((ids, mask)) = obj.extract::<(PyTensor, PyTensor)>() {
                    ItemInput::Tokens {
                        ids: ids.0,
                        mask: mask.0,
                    }
                } else {
                    ItemInput::Vectors(obj.extract::<PyTensor>()?.0)
                },
            )),
        };
        Ok(Self {
            inner: Mutex::new(Trainer::new(spec, n_users, n_items, device, side)?),
        })
    }

    /// Parses and validates a JSON spec; returns it normalised (every key, defaults filled).
    #[staticmethod]
    fn check_spec(spec: &str) -> PyResult<String> {
        Ok(Spec::from_json(spec)?.to_value().to_string())
    }

    /// Reads a model folder written by `save` (or a checkpoint) onto `device`; `expect` is the
    /// model class the caller wants.
    #[staticmethod]
    #[pyo3(signature = (path, device="auto", expect=None))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, expect: Option<String>) -> PyResult<Self> {
        let device = crate::device::resolve(device)?;
        let t = without_gil(py, move || Trainer::load(&path, device, expect.as_deref()))?;
        Ok(Self {
            inner: Mutex::new(t),
        })
    }

    /// Trains; returns whether Ctrl-C interrupted it. `on_batch(done, total, loss)` is called at
    /// most every 0.1 s and after an epoch's last batch, `on_epoch(epoch, logs)` after every
    /// epoch; an exception raised by either stops training (the best weights are kept) and
    /// propagates.
    #[pyo3(signature = (train, valid=None, epochs=None, patience=None, checkpoint_dir=None, resume=false, on_batch=None, on_epoch=None))]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        &self,
        py: Python<'_>,
        train: &PyInteractions,
        valid: Option<PyRef<'_, PyInteractions>>,
        epochs: Option<u64>,
        patience: Option<u64>,
        checkpoint_dir: Option<PathBuf>,
        resume: bool,
        on_batch: Option<Py<PyAny>>,
        on_epoch: Option<Py<PyAny>>,
    ) -> PyResult<bool> {
        let train = train.inner.clone();
        let valid = valid.map(|v| v.inner.clone());
        let options = FitOptions {
            epochs,
            patience,
            checkpoint_dir,
            resume,
        };
        let mut guard = self.lock()?;
        let trainer = &mut *guard;
        let mut bridge = Bridge::new(Duration::from_millis(100));
        let b = &mut bridge;
        let out = without_gil(py, move || {
            let mut hooks = PyHooks {
                bridge: b,
                on_batch,
                on_epoch,
            };
            trainer.fit(train, valid.as_deref(), &options, &mut hooks)
        });
        let interrupted = bridge.interrupted();
        let report = bridge.finish(out, false)?;
        Ok(interrupted || report.interrupted)
    }

    /// Sets the training interactions without training (histories of a sequential model, the
    /// items `recommend` skips).
    fn set_train(&self, train: &PyInteractions) -> PyResult<()> {
        Ok(self.lock()?.set_train(train.inner.clone())?)
    }

    /// The training interactions (None before `fit`).
    #[getter]
    fn train(&self) -> PyResult<Option<PyInteractions>> {
        Ok(self
            .lock()?
            .train_data()
            .map(|t| PyInteractions { inner: t.clone() }))
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
        let mut guard = self.lock()?;
        let t = &mut *guard;
        let out = without_gil(py, move || -> Result<Vec<f32>> {
            let model = t.model();
            model.check_ids(&u, &i)?;
            let dev = model.device();
            let s = tch::no_grad(|| {
                model.predict(
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
        let mut guard = self.lock()?;
        let t = &mut *guard;
        let t = without_gil(py, move || -> Result<Tensor> {
            let model = t.model();
            model.check_ids(&u, &[])?;
            let idx = Tensor::from_slice(&u).f_to(model.device())?;
            tch::no_grad(|| model.score_all(&idx, history.as_deref()))
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
        let mut guard = self.lock()?;
        let t = &mut *guard;
        let t = without_gil(py, move || t.model().fold_in(&items, &ratings, reg))?;
        Ok(PyTensor(t))
    }

    /// Copies of the parameters and buffers by name.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, t) in self.lock()?.state_dict()? {
            d.set_item(name, PyTensor(t))?;
        }
        Ok(d)
    }

    /// Loads parameters by name (a missing or mis-shaped tensor is a DataError).
    fn load_state_dict(&self, tensors: HashMap<String, PyTensor>) -> PyResult<()> {
        let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k, v.0)).collect();
        self.lock()?.load_state_dict(&map)?;
        Ok(())
    }

    /// Writes the model folder: weights, optimiser state, training interactions, `state.json`.
    fn save(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        let mut guard = self.lock()?;
        let t = &mut *guard;
        without_gil(py, move || t.save(&dir))
    }

    /// The normalised spec as JSON.
    #[getter]
    fn spec(&self) -> PyResult<String> {
        Ok(self.lock()?.spec().to_value().to_string())
    }

    /// The epoch records of the training so far.
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let guard = self.lock()?;
        let items = guard
            .history
            .iter()
            .map(|log| log_dict(py, log))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// The epoch whose weights are kept (with validation).
    #[getter]
    fn best_epoch(&self) -> PyResult<Option<u64>> {
        Ok(self.lock()?.best_epoch)
    }

    /// `(n_users, n_items)` the model was built for.
    #[getter]
    fn sizes(&self) -> PyResult<(i64, i64)> {
        Ok(self.lock()?.sizes())
    }

    /// The learning rate of the next optimiser step.
    #[getter]
    fn lr(&self) -> PyResult<f64> {
        Ok(self.lock()?.optimizer().lr())
    }

    /// Optimiser steps taken.
    #[getter]
    fn steps(&self) -> PyResult<u64> {
        Ok(self.lock()?.optimizer().steps())
    }

    /// The device name.
    #[getter]
    fn device(&self) -> PyResult<String> {
        Ok(crate::device::name(self.lock()?.model().device()))
    }

    /// Number of trained parameters.
    #[getter]
    fn n_parameters(&self) -> PyResult<i64> {
        Ok(self
            .lock()?
            .model()
            .params()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum())
    }
}
