//! `recforge.text`'s native classes: tokenizer, sentence encoder and causal language model.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use ndarray::{Array2, Array3};
use numpy::{
    IntoPyArray, PyArray2, PyArray3, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::gil::{with_progress, without_gil};
use crate::device;
use crate::error::{RecforgeError, Result};
use crate::text::causal_lm::{CausalLm, Input};
use crate::text::decoder::{GenerateOptions, Sampling};
use crate::text::encoder::{EncoderOptions, Pooling, SentenceEncoder};
use crate::text::layers::parse_dtype;
use crate::text::tokenize::{PaddingSide, TextTokenizer};
use crate::text::{gguf::GgufMetadata, gguf_tokenizer};
use tch::{Kind, Tensor};

/// A tensor copied once from a NumPy array (straight from its buffer when C-contiguous, as the
/// Python layer makes it).
fn array_tensor<T: numpy::Element + tch::kind::Element + Copy, D: ndarray::Dimension>(
    a: &numpy::PyReadonlyArray<'_, T, D>,
) -> Tensor {
    let view = a.as_array();
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    // `as_slice` also accepts Fortran order, whose buffer is not in row-major order.
    let row_major = if a.is_c_contiguous() {
        a.as_slice().ok()
    } else {
        None
    };
    let flat = match row_major {
        Some(s) => Tensor::from_slice(s),
        None => Tensor::from_slice(&view.iter().copied().collect::<Vec<T>>()),
    };
    flat.view(shape.as_slice())
}

fn ids_tensor(a: &PyReadonlyArray2<'_, i64>) -> Tensor {
    array_tensor(a)
}

fn embeds_tensor(a: &PyReadonlyArray3<'_, f32>) -> Tensor {
    array_tensor(a)
}

fn to_array3(t: &Tensor) -> Result<Array3<f32>> {
    let (a, b, c) = t.size3()?;
    let v: Vec<f32> = Vec::try_from(
        t.to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )?;
    Array3::from_shape_vec((a as usize, b as usize, c as usize), v)
        .map_err(|e| RecforgeError::data(e.to_string()))
}

fn to_array2_i64(t: &Tensor) -> Result<Array2<i64>> {
    let (a, b) = t.size2()?;
    let v: Vec<i64> = Vec::try_from(
        t.to_device(tch::Device::Cpu)
            .to_kind(Kind::Int64)
            .contiguous()
            .view([-1]),
    )?;
    Array2::from_shape_vec((a as usize, b as usize), v)
        .map_err(|e| RecforgeError::data(e.to_string()))
}

/// A `tokenizer.json` or GGUF tokenizer with batched, padded encoding.
#[pyclass(module = "recforge._native", name = "_Tokenizer")]
pub struct PyTokenizer {
    inner: TextTokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (path, pad_id=None))]
    fn new(path: PathBuf, pad_id: Option<u32>) -> PyResult<Self> {
        Ok(Self {
            inner: TextTokenizer::from_file(&path, pad_id)?,
        })
    }

    /// Reads the tokenizer a GGUF file carries in its metadata.
    #[staticmethod]
    #[pyo3(signature = (path, pad_id=None))]
    fn from_gguf(py: Python<'_>, path: PathBuf, pad_id: Option<u32>) -> PyResult<Self> {
        let inner = without_gil(py, || gguf_tokenizer::load(&path, pad_id))?;
        Ok(Self { inner })
    }

    /// Whether a GGUF file's metadata describes a tokenizer (`tokenizer.ggml.model`).
    #[staticmethod]
    fn gguf_has_tokenizer(py: Python<'_>, path: PathBuf) -> PyResult<bool> {
        let meta = without_gil(py, || GgufMetadata::read(&path))?;
        Ok(gguf_tokenizer::has_tokenizer(&meta))
    }

    /// For every id, the bytes the token adds to decoded text (None for special tokens).
    fn token_bytes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let all = without_gil(py, || self.inner.token_bytes())?;
        Ok(all
            .into_iter()
            .map(|b| b.map(|b| PyBytes::new(py, &b)))
            .collect())
    }

    /// Encodes and pads texts: `(input_ids, attention_mask)`, both int64 `[B, T]`.
    #[pyo3(signature = (texts, add_special_tokens=true, max_length=None, padding_side="right"))]
    #[allow(clippy::type_complexity)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        add_special_tokens: bool,
        max_length: Option<usize>,
        padding_side: &str,
    ) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<i64>>)> {
        let side = PaddingSide::parse(padding_side)?;
        let b = without_gil(py, || {
            self.inner
                .encode_batch(&texts, add_special_tokens, max_length, side)
        })?;
        let shape = (b.rows, b.cols);
        let ids =
            Array2::from_shape_vec(shape, b.ids).map_err(|e| RecforgeError::data(e.to_string()))?;
        let mask = Array2::from_shape_vec(shape, b.mask)
            .map_err(|e| RecforgeError::data(e.to_string()))?;
        Ok((ids.into_pyarray(py), mask.into_pyarray(py)))
    }

    /// Decodes ids to text.
    #[pyo3(signature = (ids, skip_special_tokens=true))]
    fn decode(&self, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        let vocab = self.inner.vocab_size() as i64;
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&u| (u as i64) < vocab)
                    .ok_or_else(|| {
                        RecforgeError::data(format!(
                            "token id {i} is out of range for a vocabulary of {vocab}"
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(self.inner.decode(&ids, skip_special_tokens)?)
    }

    /// The id of a token, or None.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn pad_id(&self) -> u32 {
        self.inner.pad_id()
    }
}

/// A BERT-family or T5 sentence encoder.
#[pyclass(module = "recforge._native", name = "_Encoder")]
pub struct PyEncoder {
    inner: Mutex<SentenceEncoder>,
}

impl PyEncoder {
    fn lock(&self) -> MutexGuard<'_, SentenceEncoder> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyEncoder {
    #[new]
    #[pyo3(signature = (path, device="auto", pooling=None, normalize=true, max_length=None, prefix="", dtype="float32"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        pooling: Option<&str>,
        normalize: bool,
        max_length: Option<usize>,
        prefix: &str,
        dtype: &str,
    ) -> PyResult<Self> {
        let opts = EncoderOptions {
            device: device::resolve(device)?,
            kind: parse_dtype(dtype)?,
            pooling: pooling.map(Pooling::parse).transpose()?,
            normalize,
            max_length,
            prefix: prefix.to_string(),
        };
        let enc = without_gil(py, || SentenceEncoder::from_pretrained(&path, opts))?;
        Ok(Self {
            inner: Mutex::new(enc),
        })
    }

    /// Embeds texts into float32 `[N, dim]`; `progress(done, total)` after each batch.
    #[pyo3(signature = (texts, batch_size=32, progress=None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let mut guard = self.lock();
        let enc = &mut *guard;
        let dim = enc.net.dim() as usize;
        let n = texts.len();
        let flat = with_progress(py, progress, move |step| {
            enc.encode(&texts, batch_size, step)
        })?;
        let out = Array2::from_shape_vec((n, dim), flat)
            .map_err(|e| RecforgeError::data(e.to_string()))?;
        Ok(out.into_pyarray(py))
    }

    /// Last hidden state float32 `[B, T, H]` of ids `[B, T]` and mask `[B, T]`.
    fn hidden_states<'py>(
        &self,
        py: Python<'py>,
        input_ids: PyReadonlyArray2<'py, i64>,
        attention_mask: PyReadonlyArray2<'py, i64>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let (ids, mask) = (ids_tensor(&input_ids), ids_tensor(&attention_mask));
        let mut guard = self.lock();
        let enc = &mut *guard;
        let out = without_gil(py, move || to_array3(&enc.hidden_states(&ids, &mask)?))?;
        Ok(out.into_pyarray(py))
    }

    #[getter]
    fn dim(&self) -> i64 {
        self.lock().net.dim()
    }
    #[getter]
    fn max_length(&self) -> usize {
        self.lock().max_length
    }
    #[getter]
    fn pooling(&self) -> &'static str {
        match self.lock().pooling {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
    #[getter]
    fn normalize(&self) -> bool {
        self.lock().normalize
    }
    #[getter]
    fn device(&self) -> String {
        device::name(self.lock().device())
    }
}

/// A GPT-2 or Llama-family causal language model.
#[pyclass(module = "recforge._native", name = "_CausalLM")]
pub struct PyCausalLm {
    inner: Mutex<CausalLm>,
}

impl PyCausalLm {
    fn lock(&self) -> MutexGuard<'_, CausalLm> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hidden states or logits, without autograd and with the GIL released.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        input_ids: Option<PyReadonlyArray2<'py, i64>>,
        inputs_embeds: Option<PyReadonlyArray3<'py, f32>>,
        attention_mask: Option<PyReadonlyArray2<'py, i64>>,
        logits: bool,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let inp = input(input_ids, inputs_embeds)?;
        let mask = attention_mask.map(|m| ids_tensor(&m));
        let mut guard = self.lock();
        let lm = &mut *guard;
        let out = without_gil(py, move || {
            tch::no_grad(|| {
                let out = if logits {
                    lm.logits(&inp, mask.as_ref())?
                } else {
                    lm.hidden_states(&inp, mask.as_ref())?
                };
                to_array3(&out)
            })
        })?;
        Ok(out.into_pyarray(py))
    }
}

fn input(
    ids: Option<PyReadonlyArray2<'_, i64>>,
    embeds: Option<PyReadonlyArray3<'_, f32>>,
) -> Result<Input> {
    match (ids, embeds) {
        (Some(i), None) => Ok(Input::Ids(ids_tensor(&i))),
        (None, Some(e)) => Ok(Input::Embeds(embeds_tensor(&e))),
        _ => Err(RecforgeError::config(
            "pass exactly one of input_ids and inputs_embeds",
        )),
    }
}

#[pymethods]
impl PyCausalLm {
    /// Loads a Hugging Face model folder.
    #[staticmethod]
    #[pyo3(signature = (path, device="auto", dtype="float32"))]
    fn from_pretrained(py: Python<'_>, path: PathBuf, device: &str, dtype: &str) -> PyResult<Self> {
        let (dev, kind) = (device::resolve(device)?, parse_dtype(dtype)?);
        let lm = without_gil(py, || CausalLm::from_pretrained(&path, dev, kind))?;
        Ok(Self {
            inner: Mutex::new(lm),
        })
    }

    /// Loads a llama-architecture GGUF file.
    #[staticmethod]
    #[pyo3(signature = (path, device="auto", dtype="float32"))]
    fn from_gguf(py: Python<'_>, path: PathBuf, device: &str, dtype: &str) -> PyResult<Self> {
        let (dev, kind) = (device::resolve(device)?, parse_dtype(dtype)?);
        let lm = without_gil(py, || CausalLm::from_gguf(&path, dev, kind))?;
        Ok(Self {
            inner: Mutex::new(lm),
        })
    }

    /// A randomly initialised model from a `config.json` text.
    #[staticmethod]
    #[pyo3(signature = (config_json, seed=0, device="auto", dtype="float32"))]
    fn from_config(
        py: Python<'_>,
        config_json: &str,
        seed: i64,
        device: &str,
        dtype: &str,
    ) -> PyResult<Self> {
        let (dev, kind) = (device::resolve(device)?, parse_dtype(dtype)?);
        let value: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| RecforgeError::config(format!("config is not valid JSON: {e}")))?;
        let lm = without_gil(py, || CausalLm::from_config(value, seed, dev, kind))?;
        Ok(Self {
            inner: Mutex::new(lm),
        })
    }

    /// Hidden states after the final norm, float32 `[B, T, H]`.
    #[pyo3(signature = (input_ids=None, inputs_embeds=None, attention_mask=None))]
    fn hidden_states<'py>(
        &self,
        py: Python<'py>,
        input_ids: Option<PyReadonlyArray2<'py, i64>>,
        inputs_embeds: Option<PyReadonlyArray3<'py, f32>>,
        attention_mask: Option<PyReadonlyArray2<'py, i64>>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        self.forward(py, input_ids, inputs_embeds, attention_mask, false)
    }

    /// Vocabulary logits, float32 `[B, T, V]`.
    #[pyo3(signature = (input_ids=None, inputs_embeds=None, attention_mask=None))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        input_ids: Option<PyReadonlyArray2<'py, i64>>,
        inputs_embeds: Option<PyReadonlyArray3<'py, f32>>,
        attention_mask: Option<PyReadonlyArray2<'py, i64>>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        self.forward(py, input_ids, inputs_embeds, attention_mask, true)
    }

    /// Token embeddings, float32 `[B, T, H]`.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        input_ids: PyReadonlyArray2<'py, i64>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let ids = ids_tensor(&input_ids);
        let mut guard = self.lock();
        let lm = &mut *guard;
        let out = without_gil(py, move || tch::no_grad(|| to_array3(&lm.embed(&ids)?)))?;
        Ok(out.into_pyarray(py))
    }

    /// New tokens int64 `[B, max_new_tokens]` after left-padded prompts.
    #[pyo3(signature = (input_ids, attention_mask=None, max_new_tokens=20, do_sample=false, temperature=1.0,
                        top_k=0, top_p=1.0, seed=0, eos_token_id=None, pad_token_id=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        input_ids: PyReadonlyArray2<'py, i64>,
        attention_mask: Option<PyReadonlyArray2<'py, i64>>,
        max_new_tokens: i64,
        do_sample: bool,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        seed: i64,
        eos_token_id: Option<Vec<i64>>,
        pad_token_id: Option<i64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let ids = ids_tensor(&input_ids);
        let mask = attention_mask.map(|m| ids_tensor(&m));
        let mut guard = self.lock();
        let lm = &mut *guard;
        let opts = GenerateOptions {
            max_new_tokens,
            sampling: if do_sample {
                Sampling::Sample {
                    temperature,
                    top_k,
                    top_p,
                }
            } else {
                Sampling::Greedy
            },
            seed,
            eos: eos_token_id.unwrap_or_else(|| lm.eos.clone()),
            pad_id: pad_token_id.unwrap_or(lm.pad_id),
        };
        let out = with_progress(py, progress, move |step| {
            to_array2_i64(&lm.generate(&ids, mask.as_ref(), &opts, step)?)
        })?;
        Ok(out.into_pyarray(py))
    }

    /// Stops gradient tracking of every parameter.
    fn freeze(&self) {
        self.lock().set_trainable(false);
    }

    /// Restarts gradient tracking of every parameter.
    fn unfreeze(&self) {
        self.lock().set_trainable(true);
    }

    /// Number of parameters (only trainable ones when asked).
    #[pyo3(signature = (trainable_only=false))]
    fn num_parameters(&self, trainable_only: bool) -> i64 {
        self.lock().num_parameters(trainable_only)
    }

    /// Writes config.json and model.safetensors under Hugging Face names.
    fn save_pretrained(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let mut guard = self.lock();
        let lm = &mut *guard;
        without_gil(py, move || lm.save_pretrained(&path))
    }

    #[getter]
    fn config_json(&self) -> String {
        self.lock().config().to_string()
    }
    #[getter]
    fn eos_token_ids(&self) -> Vec<i64> {
        self.lock().eos.clone()
    }
    #[getter]
    fn pad_token_id(&self) -> i64 {
        self.lock().pad_id
    }
    #[getter]
    fn hidden_size(&self) -> i64 {
        self.lock().net().hidden_size()
    }
    #[getter]
    fn vocab_size(&self) -> i64 {
        self.lock().net().vocab_size()
    }
    #[getter]
    fn device(&self) -> String {
        device::name(self.lock().device())
    }
}
