//! OpenAI-compatible chat completions in batches.
//!
//! [`Client::chat_batch`] sends a whole list of requests concurrently (at most `max_concurrency`
//! in flight, at most `requests_per_minute` started per minute) and returns one [`ChatResult`] per
//! request, in input order: an answer or that request's error, so one bad item never loses the
//! others. Connect errors, timeouts, 429, 5xx and a 200 whose body is not a valid completion are
//! retried with exponential backoff and jitter, honouring `Retry-After`; other 4xx are not. Answers
//! go to the [`ResponseCache`] as they arrive, so a batch restarted after a crash only sends what
//! is missing. The API key is sent as a bearer token and appears in no message.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::cache::{key_of, Entry, ResponseCache};
use crate::error::{RecforgeError, Result};
use crate::rng::Rng;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// One chat-completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Completion length limit.
    pub max_tokens: Option<u64>,
    /// `response_format` passed through (e.g. `{"type": "json_object"}`).
    pub response_format: Option<Value>,
}

/// Token counts reported by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResult {
    /// The completion text, or the error that ended this request.
    pub outcome: std::result::Result<String, String>,
    /// Token usage (when answered).
    pub usage: Option<Usage>,
    /// Whether the answer came from the cache.
    pub cached: bool,
    /// HTTP attempts made (0 for a cache hit).
    pub attempts: u32,
    /// Seconds from the first attempt to the outcome.
    pub latency: f64,
}

/// Totals of a batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchReport {
    /// Requests in the batch.
    pub requests: usize,
    /// Answered (from the server or the cache).
    pub ok: usize,
    /// Ended in an error.
    pub failed: usize,
    /// Answered from the cache.
    pub cache_hits: usize,
    /// Sent to the server.
    pub cache_misses: usize,
    /// Attempts beyond the first, over all requests.
    pub retries: u64,
    /// Prompt tokens of the answers received now.
    pub prompt_tokens: u64,
    /// Completion tokens of the answers received now.
    pub completion_tokens: u64,
    /// Latency percentiles (50, 90, 99) of requests sent, in seconds.
    pub latency_p50: f64,
    /// 90th percentile.
    pub latency_p90: f64,
    /// 99th percentile.
    pub latency_p99: f64,
    /// Wall-clock seconds of the batch.
    pub seconds: f64,
}

/// Settings of a client.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL up to the version, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// Bearer token, if the server needs one.
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Requests started per minute (None: no limit).
    pub requests_per_minute: Option<f64>,
    /// Tokens (prompt + completion) per minute (None: no limit): a token bucket charged with an
    /// estimate before each request (prompt characters / 4 + `max_tokens`) and corrected with
    /// the usage the server reports.
    pub tokens_per_minute: Option<f64>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff delay (doubles per retry, with jitter, capped at 30 s).
    pub backoff: Duration,
    /// Response cache file.
    pub cache: Option<PathBuf>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("cache", &self.cache)
            .finish()
    }
}

/// The runtime every client shares (created on first use).
pub fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("recforge-llm")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| RecforgeError::config(format!("cannot start the async runtime: {e}")))
}

/// Spaces request starts `60 / rpm` seconds apart.
#[derive(Debug)]
struct RateLimit {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// A token bucket refilled at `per_minute / 60` tokens a second, holding at most `per_minute`.
#[derive(Debug)]
struct TokenBucket {
    per_minute: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
    /// Wakes waiters when tokens come back early (a request used less than its estimate).
    refunded: tokio::sync::Notify,
}

impl TokenBucket {
    /// Waits until `n` tokens (at most the bucket's size) are available and takes them.
    async fn take(&self, n: f64) {
        let n = n.min(self.per_minute);
        let rate = self.per_minute / 60.0;
        loop {
            let wait = {
                let mut st = self.state.lock().await;
                let now = Instant::now();
                st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * rate).min(self.per_minute);
                st.1 = now;
                if st.0 >= n {
                    st.0 -= n;
                    return;
                }
                (n - st.0) / rate
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = self.refunded.notified() => {}
            }
        }
    }

    /// Returns `n` tokens (negative: charges more), after the real usage is known.
    async fn settle(&self, n: f64) {
        let mut st = self.state.lock().await;
        st.0 = (st.0 + n).min(self.per_minute);
        if n > 0.0 {
            self.refunded.notify_waiters();
        }
    }
}

/// One text's embedding, or the error of its request.
pub type Embedding = std::result::Result<Vec<f32>, String>;

/// Which API a request goes to, and what a valid answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `/chat/completions`: `choices[0].message.content`.
    Chat,
    /// `/embeddings` for `n` inputs: `data[k].embedding` for each, as JSON text.
    Embeddings(usize),
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings(_) => "embeddings",
        }
    }

    /// The answer text, or None when the body is not a valid answer.
    fn extract(self, v: &Value) -> Option<String> {
        match self {
            Endpoint::Chat => v
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string),
            Endpoint::Embeddings(n) => {
                let data = v.get("data")?.as_array()?;
                if data.len() != n {
                    return None;
                }
                let mut rows: Vec<(i64, Vec<f32>)> = Vec::with_capacity(n);
                for (k, d) in data.iter().enumerate() {
                    let e: Vec<f32> = serde_json::from_value(d.get("embedding")?.clone()).ok()?;
                    rows.push((
                        d.get("index").and_then(Value::as_i64).unwrap_or(k as i64),
                        e,
                    ));
                }
                rows.sort_by_key(|r| r.0);
                let dim = rows.first().map(|r| r.1.len())?;
                if dim == 0 || rows.iter().any(|r| r.1.len() != dim) {
                    return None;
                }
                serde_json::to_string(&rows.into_iter().map(|r| r.1).collect::<Vec<_>>()).ok()
            }
        }
    }
}

/// What one attempt got.
enum Attempt {
    Answer(String, Option<Usage>),
    /// Worth retrying, after at least the given delay (`Retry-After`).
    Retry(String, Option<Duration>),
    /// Not worth retrying as sent; the HTTP status when the server answered.
    Fail(String, Option<u16>),
}

/// The client.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    http: reqwest::Client,
    cache: Option<ResponseCache>,
    limit: Option<RateLimit>,
    tokens: Option<TokenBucket>,
    /// In-flight bound shared by every call of this client (batches and single calls).
    slots: Arc<Semaphore>,
    seed: Mutex<u64>,
}

/// Tokens a request may use: prompt characters / 4 plus `max_tokens` (256 when unset).
fn estimate_tokens(body: &Value) -> f64 {
    let chars: usize = body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| m["content"].as_str().map_or(0, str::len))
                .sum()
        })
        .unwrap_or(0);
    chars as f64 / 4.0 + body["max_tokens"].as_u64().unwrap_or(256) as f64
}

impl Client {
    /// A client; fails on a malformed base URL or an unreadable cache file.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let url = config.base_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RecforgeError::config(format!(
                "base_url must start with http:// or https://, got {url:?}"
            )));
        }
        if config.model.is_empty() {
            return Err(RecforgeError::config("model must not be empty"));
        }
        if config.max_concurrency == 0 {
            return Err(RecforgeError::config("max_concurrency must be >= 1"));
        }
        let limit = match config.requests_per_minute {
            Some(r) if !(r.is_finite() && r > 0.0) => {
                return Err(RecforgeError::config(format!(
                    "requests_per_minute must be positive, got {r}"
                )))
            }
            Some(r) => Some(RateLimit {
                interval: Duration::from_secs_f64(60.0 / r),
                next: tokio::sync::Mutex::new(Instant::now()),
            }),
            None => None,
        };
        let tokens = match config.tokens_per_minute {
            Some(t) if !(t.is_finite() && t >= 1.0) => {
                return Err(RecforgeError::config(format!(
                    "tokens_per_minute must be >= 1, got {t}"
                )))
            }
            Some(t) => Some(TokenBucket {
                per_minute: t,
                state: tokio::sync::Mutex::new((t, Instant::now())),
                refunded: tokio::sync::Notify::new(),
            }),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .build()
            .map_err(|e| RecforgeError::config(format!("cannot build the HTTP client: {e}")))?;
        let cache = config.cache.as_ref().map(ResponseCache::open).transpose()?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ std::process::id() as u64;
        Ok(Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            config,
            http,
            cache,
            limit,
            tokens,
            seed: Mutex::new(seed),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Answers held by the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, ResponseCache::len)
    }

    fn body(&self, r: &ChatRequest) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": r.messages,
            "temperature": r.temperature,
        });
        if let Some(m) = r.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(f) = &r.response_format {
            body["response_format"] = f.clone();
        }
        body
    }

    fn cache_key(&self, body: &Value) -> String {
        key_of(&json!({ "base_url": self.config.base_url.trim_end_matches('/'), "request": body }))
    }

    /// Removes the API key from a text that will be shown (e.g. a server's error body).
    fn redact(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(k) if !k.is_empty() => text.replace(k.as_str(), "***"),
            _ => text.to_string(),
        }
    }

    async fn attempt(&self, endpoint: Endpoint, body: &Value) -> Attempt {
        let url = format!(
            "{}/{}",
            self.config.base_url.trim().trim_end_matches('/'),
            endpoint.path()
        );
        let mut req = self.http.post(&url).json(body);
        if let Some(k) = &self.config.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::Retry("timed out".into(), None),
            Err(e) => {
                let what = if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                return Attempt::Retry(format!("{what}: {}", self.redact(&e.to_string())), None);
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(300.0)));
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) if e.is_timeout() => return Attempt::Retry("timed out reading".into(), None),
            Err(e) => {
                return Attempt::Retry(
                    format!(
                        "reading the response failed: {}",
                        self.redact(&e.to_string())
                    ),
                    None,
                )
            }
        };
        let snippet = || {
            let s: String = text.chars().take(200).collect();
            self.redact(&s)
        };
        if status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Retry(format!("HTTP {status}: {}", snippet()), retry_after);
        }
        if !status.is_success() {
            return Attempt::Fail(
                format!("HTTP {status}: {}", snippet()),
                Some(status.as_u16()),
            );
        }
        let parsed: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                return Attempt::Retry(format!("the response is not JSON: {:?}", snippet()), None)
            }
        };
        let Some(content) = endpoint.extract(&parsed) else {
            return Attempt::Retry(
                format!("the response holds no valid answer: {:?}", snippet()),
                None,
            );
        };
        let usage = parsed
            .get("usage")
            .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
        Attempt::Answer(content, usage)
    }

    fn jitter(&self) -> f64 {
        let mut s = self.seed.lock().unwrap_or_else(|e| e.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        Rng::new(*s, 7).unit_f64()
    }

    async fn run_one(&self, endpoint: Endpoint, mut body: Value, key: String) -> ChatResult {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut dropped_format = false;
        loop {
            if let Some(l) = &self.limit {
                l.wait().await;
            }
            let estimate = self.tokens.as_ref().map(|_| estimate_tokens(&body));
            if let (Some(b), Some(e)) = (&self.tokens, estimate) {
                b.take(e).await;
            }
            attempts += 1;
            let attempt = self.attempt(endpoint, &body).await;
            if let (Some(b), Some(e)) = (&self.tokens, estimate) {
                let used = match &attempt {
                    Attempt::Answer(_, Some(u)) => (u.prompt_tokens + u.completion_tokens) as f64,
                    _ => e,
                };
                b.settle(e - used).await;
            }
            let (msg, after) = match attempt {
                Attempt::Answer(text, usage) => {
                    let stored = self.cache.as_ref().map(|c| {
                        c.put(Entry {
                            key,
                            text: text.clone(),
                            usage,
                        })
                    });
                    let outcome = match stored {
                        Some(Err(e)) => Err(format!("answered, but the cache write failed: {e}")),
                        _ => Ok(text),
                    };
                    return ChatResult {
                        outcome,
                        usage,
                        cached: false,
                        attempts,
                        latency: start.elapsed().as_secs_f64(),
                    };
                }
                // Many OpenAI-compatible servers reject `response_format` with 400 or 422: ask
                // once more without it (the answer is still validated by the caller's parser).
                Attempt::Fail(_, Some(400 | 422))
                    if !dropped_format && body.get("response_format").is_some() =>
                {
                    if let Some(obj) = body.as_object_mut() {
                        obj.remove("response_format");
                    }
                    dropped_format = true;
                    continue;
                }
                Attempt::Fail(msg, _) if dropped_format => {
                    (format!("{msg} (also asked without response_format)"), None)
                }
                Attempt::Fail(msg, _) => (msg, None),
                Attempt::Retry(msg, after) if attempts <= self.config.max_retries => {
                    (msg, Some(after))
                }
                Attempt::Retry(msg, _) => (format!("{msg} (after {attempts} attempts)"), None),
            };
            let Some(after) = after else {
                return ChatResult {
                    outcome: Err(msg),
                    usage: None,
                    cached: false,
                    attempts,
                    latency: start.elapsed().as_secs_f64(),
                };
            };
            let base = self.config.backoff.as_secs_f64() * 2f64.powi(attempts as i32 - 1);
            let delay = (base * (0.5 + self.jitter())).min(30.0);
            let delay = after.map_or(delay, |a| a.as_secs_f64().max(delay.min(1.0)));
            tokio::time::sleep(Duration::from_secs_f64(delay)).await;
        }
    }

    /// One request, for async callers (run on [`runtime`]): the cached answer, or the server's
    /// (within the client's concurrency bound and rate limit).
    pub async fn chat(self: Arc<Self>, request: ChatRequest) -> ChatResult {
        let body = self.body(&request);
        let key = self.cache_key(&body);
        if let Some(e) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return ChatResult {
                outcome: Ok(e.text),
                usage: e.usage,
                cached: true,
                attempts: 0,
                latency: 0.0,
            };
        }
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(_permit) => self.run_one(Endpoint::Chat, body, key).await,
            Err(_) => ChatResult {
                outcome: Err("the client was closed".into()),
                usage: None,
                cached: false,
                attempts: 0,
                latency: 0.0,
            },
        }
    }

    /// Sends every request (cache hits excepted) and returns the results in input order.
    /// `progress(done, total)` is called on the calling thread as results arrive and at least
    /// every 0.2 s; when it returns `true` the call returns `Interrupted` at once (requests in
    /// flight still finish in the background and their answers still reach the cache).
    pub fn chat_batch(
        self: &Arc<Self>,
        requests: Vec<ChatRequest>,
        progress: impl FnMut(usize, usize) -> bool,
    ) -> Result<(Vec<ChatResult>, BatchReport)> {
        let bodies = requests
            .iter()
            .map(|r| (Endpoint::Chat, self.body(r)))
            .collect();
        self.run_batch(bodies, progress)
    }

    /// Embeddings of `texts` from `/embeddings`, `batch_size` texts per request (requests run
    /// concurrently, retried and cached like chat requests). Returns one vector or error per text,
    /// in input order, and the report (counted in requests).
    pub fn embed_batch(
        self: &Arc<Self>,
        texts: &[String],
        batch_size: usize,
        progress: impl FnMut(usize, usize) -> bool,
    ) -> Result<(Vec<Embedding>, BatchReport)> {
        if batch_size == 0 {
            return Err(RecforgeError::config("batch_size must be >= 1"));
        }
        let bodies = texts
            .chunks(batch_size)
            .map(|c| {
                let body = json!({ "model": self.config.model, "input": c });
                (Endpoint::Embeddings(c.len()), body)
            })
            .collect();
        let (results, report) = self.run_batch(bodies, progress)?;
        let mut out = Vec::with_capacity(texts.len());
        for (chunk, r) in texts.chunks(batch_size).zip(results) {
            let rows: std::result::Result<Vec<Vec<f32>>, String> = r.outcome.and_then(|t| {
                serde_json::from_str(&t).map_err(|e| format!("cached embeddings unreadable: {e}"))
            });
            match rows {
                Ok(rows) => out.extend(rows.into_iter().map(Ok)),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        Ok((out, report))
    }

    fn run_batch(
        self: &Arc<Self>,
        bodies: Vec<(Endpoint, Value)>,
        mut progress: impl FnMut(usize, usize) -> bool,
    ) -> Result<(Vec<ChatResult>, BatchReport)> {
        let started = Instant::now();
        let n = bodies.len();
        let mut results: Vec<Option<ChatResult>> = vec![None; n];
        let mut pending = Vec::new();
        for (i, (endpoint, body)) in bodies.into_iter().enumerate() {
            let key = self.cache_key(&body);
            match self.cache.as_ref().and_then(|c| c.get(&key)) {
                Some(e) => {
                    results[i] = Some(ChatResult {
                        outcome: Ok(e.text),
                        usage: e.usage,
                        cached: true,
                        attempts: 0,
                        latency: 0.0,
                    })
                }
                None => pending.push((i, endpoint, body, key)),
            }
        }
        let mut done = n - pending.len();
        let interrupted = || RecforgeError::config("interrupted");
        if progress(done, n) {
            return Err(interrupted());
        }
        let rt = runtime()?;
        let sem = Arc::clone(&self.slots);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, endpoint, body, key) in pending {
            let (me, sem, tx) = (Arc::clone(self), Arc::clone(&sem), tx.clone());
            rt.spawn(async move {
                let result = match sem.acquire_owned().await {
                    Ok(_permit) => me.run_one(endpoint, body, key).await,
                    Err(_) => ChatResult {
                        outcome: Err("the batch was cancelled".into()),
                        usage: None,
                        cached: false,
                        attempts: 0,
                        latency: 0.0,
                    },
                };
                let _ = tx.send((i, result));
            });
        }
        drop(tx);
        loop {
            let next = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            });
            match next {
                Ok(Some((i, r))) => {
                    results[i] = Some(r);
                    done += 1;
                }
                Ok(None) => break,
                Err(_) => {}
            }
            if progress(done, n) {
                return Err(interrupted());
            }
        }
        let results: Vec<ChatResult> = results
            .into_iter()
            .map(|r| {
                r.unwrap_or(ChatResult {
                    outcome: Err("the request task ended without a result".into()),
                    usage: None,
                    cached: false,
                    attempts: 0,
                    latency: 0.0,
                })
            })
            .collect();
        let mut report = BatchReport {
            requests: n,
            seconds: started.elapsed().as_secs_f64(),
            ..BatchReport::default()
        };
        let mut lat = Vec::new();
        for r in &results {
            if r.outcome.is_ok() {
                report.ok += 1;
            } else {
                report.failed += 1;
            }
            if r.cached {
                report.cache_hits += 1;
                continue;
            }
            report.cache_misses += 1;
            report.retries += r.attempts.saturating_sub(1) as u64;
            if let Some(u) = r.usage {
                report.prompt_tokens += u.prompt_tokens;
                report.completion_tokens += u.completion_tokens;
            }
            lat.push(r.latency);
        }
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if lat.is_empty() {
                0.0
            } else {
                lat[((p * (lat.len() - 1) as f64).round() as usize).min(lat.len() - 1)]
            }
        };
        (report.latency_p50, report.latency_p90, report.latency_p99) = (q(0.5), q(0.9), q(0.99));
        Ok((results, report))
    }
}
