//! Bindings of the batched LLM client (`recforge.llm`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;

use super::errors::ConfigError;
use super::gil::{with_progress, without_gil};
use crate::llm::local::{LocalConfig, LocalLlm};
use crate::llm::{ChatRequest, ChatResult, Client, ClientConfig, Message};

/// One request as Python sends it: `(messages as (role, content) pairs, temperature, max_tokens,
/// response_format as JSON text, frequency_penalty, presence_penalty)`.
type PyRequest = (
    Vec<(String, String)>,
    f64,
    Option<u64>,
    Option<String>,
    Option<f64>,
    Option<f64>,
);
/// One result: `(ok, text, error, (prompt_tokens, completion_tokens), cached, attempts, latency,
/// invalid_utf8, redacted, capped_waits)`.
type PyResultRow = (
    bool,
    Option<String>,
    Option<String>,
    Option<(u64, u64)>,
    bool,
    u32,
    f64,
    bool,
    bool,
    u32,
);

fn to_request(k: usize, r: PyRequest) -> PyResult<ChatRequest> {
    let (messages, temperature, max_tokens, fmt, frequency_penalty, presence_penalty) = r;
    let response_format = match fmt {
        Some(t) => Some(serde_json::from_str(&t).map_err(|e| {
            ConfigError::new_err(format!("request {k}: response_format is not JSON: {e}"))
        })?),
        None => None,
    };
    let messages = messages
        .into_iter()
        .map(|(role, content)| Message { role, content })
        .collect();
    Ok(ChatRequest {
        messages,
        temperature,
        max_tokens,
        response_format,
        frequency_penalty,
        presence_penalty,
    })
}

fn row(r: ChatResult) -> PyResultRow {
    let (ok, text, error) = match r.outcome {
        Ok(t) => (true, Some(t), None),
        Err(e) => (false, None, Some(e)),
    };
    let usage = r.usage.map(|u| (u.prompt_tokens, u.completion_tokens));
    (
        ok,
        text,
        error,
        usage,
        r.cached,
        r.attempts,
        r.latency,
        r.invalid_utf8,
        r.redacted,
        r.capped_waits,
    )
}

/// `seconds` as a Duration: finite, at least `min`, and small enough for one.
fn seconds(name: &str, seconds: f64, positive: bool) -> PyResult<Duration> {
    let ok = seconds.is_finite() && (seconds > 0.0 || (!positive && seconds == 0.0));
    ok.then(|| Duration::try_from_secs_f64(seconds).ok())
        .flatten()
        .ok_or_else(|| {
            let what = if positive { "positive" } else { "non-negative" };
            ConfigError::new_err(format!(
                "{name} must be a {what} number of seconds, got {seconds}"
            ))
        })
}

/// An OpenAI-compatible chat client; see `recforge.llm.Client`.
#[pyclass(module = "recforge._native", name = "_LlmClient")]
pub struct PyLlmClient {
    inner: Arc<Client>,
}

#[pymethods]
impl PyLlmClient {
    #[new]
    #[pyo3(signature = (base_url, model, api_key=None, max_concurrency=16, requests_per_minute=None, tokens_per_minute=None, timeout=60.0, max_retries=5, backoff=0.5, max_retry_wait=60.0, cache=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        base_url: String,
        model: String,
        api_key: Option<String>,
        max_concurrency: usize,
        requests_per_minute: Option<f64>,
        tokens_per_minute: Option<f64>,
        timeout: f64,
        max_retries: u32,
        backoff: f64,
        max_retry_wait: f64,
        cache: Option<PathBuf>,
    ) -> PyResult<Self> {
        let config = ClientConfig {
            base_url,
            model,
            api_key,
            max_concurrency,
            requests_per_minute,
            tokens_per_minute,
            timeout: seconds("timeout", timeout, true)?,
            max_retries,
            backoff: seconds("backoff", backoff, false)?,
            max_retry_wait: seconds("max_retry_wait", max_retry_wait, false)?,
            cache,
        };
        Ok(Self {
            inner: Arc::new(Client::new(config)?),
        })
    }

    /// Runs the requests concurrently with the GIL released; returns one row per request (input
    /// order) and the batch report. `progress(done, total)` is called as results arrive.
    #[pyo3(signature = (requests, progress=None))]
    fn chat_batch(
        &self,
        py: Python<'_>,
        requests: Vec<PyRequest>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Vec<PyResultRow>, HashMap<String, f64>)> {
        let reqs = requests
            .into_iter()
            .enumerate()
            .map(|(k, r)| to_request(k, r))
            .collect::<PyResult<Vec<_>>>()?;
        let client = Arc::clone(&self.inner);
        let (results, report) = with_progress(py, progress, move |p| client.chat_batch(reqs, p))?;
        let rows = results.into_iter().map(row).collect();
        Ok((rows, report_dict(&report)))
    }

    /// Embeddings of `texts` (`batch_size` per request): one vector or None per text, the error of
    /// each failed text, and the batch report (in requests).
    #[pyo3(signature = (texts, batch_size=64, progress=None))]
    #[allow(clippy::type_complexity)]
    fn embed_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        batch_size: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(
        Vec<Option<Vec<f32>>>,
        Vec<Option<String>>,
        HashMap<String, f64>,
    )> {
        let client = Arc::clone(&self.inner);
        let (results, report) = with_progress(py, progress, move |p| {
            client.embed_batch(&texts, batch_size, p)
        })?;
        let (mut vecs, mut errs) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(v) => {
                    vecs.push(Some(v));
                    errs.push(None);
                }
                Err(e) => {
                    vecs.push(None);
                    errs.push(Some(e));
                }
            }
        }
        Ok((vecs, errs, report_dict(&report)))
    }

    /// One request as an awaitable (pyo3-async-runtimes on recforge's tokio runtime); resolves to
    /// the same row as `chat_batch` gives per request.
    #[pyo3(signature = (messages, temperature=0.0, max_tokens=None, response_format=None, frequency_penalty=None, presence_penalty=None))]
    #[allow(clippy::too_many_arguments)]
    fn chat<'py>(
        &self,
        py: Python<'py>,
        messages: Vec<(String, String)>,
        temperature: f64,
        max_tokens: Option<u64>,
        response_format: Option<String>,
        frequency_penalty: Option<f64>,
        presence_penalty: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = to_request(
            0,
            (
                messages,
                temperature,
                max_tokens,
                response_format,
                frequency_penalty,
                presence_penalty,
            ),
        )?;
        let rt = crate::llm::client::runtime()?;
        // Futures from Python run on recforge's runtime (set once; later calls keep it).
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(rt);
        let client = Arc::clone(&self.inner);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(row(client.chat(request).await))
        })
    }

    /// Answers held by the response cache.
    #[getter]
    fn cache_len(&self) -> usize {
        self.inner.cache_len()
    }

    /// Lines of the cache file skipped when it was opened (torn writes, invalid UTF-8).
    #[getter]
    fn cache_skipped_lines(&self) -> usize {
        self.inner.cache_skipped_lines()
    }
}

fn report_dict(report: &crate::llm::BatchReport) -> HashMap<String, f64> {
    HashMap::from([
        ("requests".to_string(), report.requests as f64),
        ("ok".to_string(), report.ok as f64),
        ("failed".to_string(), report.failed as f64),
        ("cache_hits".to_string(), report.cache_hits as f64),
        ("cache_misses".to_string(), report.cache_misses as f64),
        ("retries".to_string(), report.retries as f64),
        ("prompt_tokens".to_string(), report.prompt_tokens as f64),
        (
            "completion_tokens".to_string(),
            report.completion_tokens as f64,
        ),
        ("latency_p50".to_string(), report.latency_p50),
        ("latency_p90".to_string(), report.latency_p90),
        ("latency_p99".to_string(), report.latency_p99),
        ("seconds".to_string(), report.seconds),
        ("invalid_utf8".to_string(), report.invalid_utf8 as f64),
        ("redacted".to_string(), report.redacted as f64),
        ("capped_waits".to_string(), report.capped_waits as f64),
        (
            "interrupted".to_string(),
            f64::from(u8::from(report.interrupted)),
        ),
    ])
}

/// The in-process LLM; see `recforge.llm.LocalClient`.
#[pyclass(module = "recforge._native", name = "_LocalLlm")]
pub struct PyLocalLlm {
    inner: Arc<Mutex<LocalLlm>>,
}

impl PyLocalLlm {
    fn lock(&self) -> MutexGuard<'_, LocalLlm> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl PyLocalLlm {
    #[new]
    #[pyo3(signature = (path, tokenizer=None, device="auto", dtype="auto", max_batch=32, max_tokens=512, top_p=1.0, top_k=0, seed=0, stop=None, cache=None, prefix_cache=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        tokenizer: Option<PathBuf>,
        device: &str,
        dtype: &str,
        max_batch: usize,
        max_tokens: usize,
        top_p: f64,
        top_k: i64,
        seed: u64,
        stop: Option<Vec<String>>,
        cache: Option<PathBuf>,
        prefix_cache: bool,
    ) -> PyResult<Self> {
        let dev = crate::device::resolve(device)?;
        let kind = match dtype {
            // Half precision where a GPU runs it; float32 on the CPU.
            "auto" if dev.is_cuda() => tch::Kind::BFloat16,
            "auto" => tch::Kind::Float,
            other => crate::text::layers::parse_dtype(other)?,
        };
        if !(top_p > 0.0 && top_p <= 1.0) || top_k < 0 {
            return Err(ConfigError::new_err(format!(
                "top_p must be in (0, 1] and top_k >= 0, got {top_p} and {top_k}"
            )));
        }
        let config = LocalConfig {
            max_batch,
            default_max_tokens: max_tokens,
            top_p,
            top_k,
            seed,
            stop: stop.unwrap_or_default(),
            cache,
            prefix_cache,
        };
        let llm = without_gil(py, move || {
            LocalLlm::load(&path, tokenizer.as_deref(), dev, kind, config)
        })?;
        Ok(Self {
            inner: Arc::new(Mutex::new(llm)),
        })
    }

    /// Generates the answers with the GIL released; the same rows and report as
    /// `_LlmClient.chat_batch`. `progress(done, total)` is called after each decoding step.
    #[pyo3(signature = (requests, progress=None))]
    fn chat_batch(
        &self,
        py: Python<'_>,
        requests: Vec<PyRequest>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(Vec<PyResultRow>, HashMap<String, f64>)> {
        let reqs = requests
            .into_iter()
            .enumerate()
            .map(|(k, r)| to_request(k, r))
            .collect::<PyResult<Vec<_>>>()?;
        let llm = Arc::clone(&self.inner);
        let (results, report) = with_progress(py, progress, move |p| {
            let llm = llm.lock().unwrap_or_else(PoisonError::into_inner);
            llm.chat_batch(reqs, p)
        })?;
        let rows = results.into_iter().map(row).collect();
        Ok((rows, report_dict(&report)))
    }

    /// Mean-pooled, L2-normalised hidden states of each text.
    #[pyo3(signature = (texts, batch_size=64))]
    fn embed(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        batch_size: usize,
    ) -> PyResult<Vec<Vec<f32>>> {
        let llm = Arc::clone(&self.inner);
        without_gil(py, move || {
            let llm = llm.lock().unwrap_or_else(PoisonError::into_inner);
            llm.embed(&texts, batch_size)
        })
    }

    /// The prompt text of a conversation: the chat template with the generation prompt.
    fn render(&self, messages: Vec<(String, String)>) -> PyResult<String> {
        Ok(self.lock().render(&messages)?)
    }

    /// Answers held by the response cache.
    #[getter]
    fn cache_len(&self) -> usize {
        self.lock().cache_len()
    }

    /// Lines of the cache file skipped when it was opened.
    #[getter]
    fn cache_skipped_lines(&self) -> usize {
        self.lock().cache_skipped_lines()
    }

    /// The device of the weights.
    #[getter]
    fn device(&self) -> String {
        crate::device::name(self.lock().device())
    }

    /// The precision of the weights: `float32`, `bfloat16` or `float16`.
    #[getter]
    fn dtype(&self) -> String {
        crate::text::layers::dtype_name(self.lock().kind())
    }

    /// End-of-sequence ids.
    #[getter]
    fn eos_token_ids(&self) -> Vec<i64> {
        self.lock().eos().to_vec()
    }
}
