//! OpenAI-compatible chat completions in batches.
//!
//! [`Client::chat_batch`] sends a whole list of requests concurrently (at most `max_concurrency`
//! in flight, at most `requests_per_minute` started per minute) and returns one [`ChatResult`] per
//! request, in input order: an answer or that request's error, so one bad item never loses the
//! others. Connect errors, timeouts, 429, 5xx and a 200 whose body is not a valid completion are
//! retried with exponential backoff and jitter, honouring `Retry-After` up to
//! [`ClientConfig::max_retry_wait`] (a longer wait asked for is cut to it and counted); other 4xx
//! are not. Answers go to the [`ResponseCache`] as they arrive, so a batch restarted after a crash
//! only sends what is missing.
//!
//! Secrets: the API key is sent as a bearer token and a password in the base URL as basic auth;
//! neither appears in a message, in `Debug` output or in the cache (see [`super::secrets`]). A
//! server's reply that is not valid UTF-8 is decoded with replacement characters and flagged
//! ([`ChatResult::invalid_utf8`], counted in [`BatchReport::invalid_utf8`]), never passed silently.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::cache::{key_of, Entry, ResponseCache};
use super::endpoint::Endpoint;
use super::limits::{estimate_tokens, RateLimit, TokenBucket};
use super::secrets::{display_url, Secrets};
use super::usage::Usage;
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
    /// OpenAI's `frequency_penalty` (sent when set).
    pub frequency_penalty: Option<f64>,
    /// OpenAI's `presence_penalty` (sent when set).
    pub presence_penalty: Option<f64>,
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
    /// The server's reply was not valid UTF-8: the text holds U+FFFD where its bad bytes were.
    pub invalid_utf8: bool,
    /// The answer held one of the client's secrets (API key, URL password), replaced by `***`
    /// before it was returned or cached.
    pub redacted: bool,
    /// Waits a server asked for (`Retry-After`) that were longer than `max_retry_wait` and were
    /// cut to it.
    pub capped_waits: u32,
}

impl ChatResult {
    /// A request that ended in `error` after `attempts` HTTP attempts.
    pub fn failed(error: impl Into<String>, attempts: u32, latency: f64) -> Self {
        Self {
            outcome: Err(error.into()),
            usage: None,
            cached: false,
            attempts,
            latency,
            invalid_utf8: false,
            redacted: false,
            capped_waits: 0,
        }
    }

    /// An answer taken from the cache.
    pub fn from_cache(entry: Entry) -> Self {
        Self {
            outcome: Ok(entry.text),
            usage: entry.usage,
            cached: true,
            attempts: 0,
            latency: 0.0,
            invalid_utf8: entry.invalid_utf8,
            redacted: false,
            capped_waits: 0,
        }
    }
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
    /// Answers whose reply was not valid UTF-8 (decoded with replacement characters).
    pub invalid_utf8: usize,
    /// Answers in which a secret of the client was found and masked.
    pub redacted: usize,
    /// `Retry-After` waits cut to `max_retry_wait`, over all requests.
    pub capped_waits: u64,
    /// The batch was stopped by its progress callback: requests without an outcome yet failed
    /// with "interrupted" and are not sent (those in flight finish in the background and reach
    /// the cache).
    pub interrupted: bool,
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
    /// First backoff delay (doubles per retry, with jitter, capped at [`MAX_BACKOFF`]).
    pub backoff: Duration,
    /// The longest wait before a retry: a server's `Retry-After` longer than this is cut to it
    /// (and counted in [`ChatResult::capped_waits`]), and so is the backoff.
    pub max_retry_wait: Duration,
    /// Response cache file.
    pub cache: Option<PathBuf>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &display_url(&self.base_url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_retry_wait", &self.max_retry_wait)
            .field("cache", &self.cache)
            .finish()
    }
}

/// The longest exponential-backoff delay (jitter included).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The error of a request that a batch's interruption stopped.
const INTERRUPTED: &str = "interrupted before this request had an outcome";

/// The longest error body quoted in a message, in characters (cut after redaction).
const SNIPPET_CHARS: usize = 200;

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

/// One text's embedding, or the error of its request.
pub type Embedding = std::result::Result<Vec<f32>, String>;

/// An answer as received.
struct Answered {
    text: String,
    usage: Option<Usage>,
    invalid_utf8: bool,
}

/// What one attempt got.
enum Attempt {
    Answer(Answered),
    /// Worth retrying, after at least the `Retry-After` seconds the server asked for.
    Retry(String, Option<f64>),
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
    secrets: Secrets,
}

impl Client {
    /// A client; fails on a malformed base URL, a setting out of range or an unreadable cache
    /// file.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let secrets = Secrets::new(&config.base_url, config.api_key.as_deref());
        let url = config.base_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RecforgeError::config(format!(
                "base_url must start with http:// or https://, got {:?}",
                secrets.redact_message(&display_url(url))
            )));
        }
        if config.model.is_empty() {
            return Err(RecforgeError::config("model must not be empty"));
        }
        if config.max_concurrency == 0 || config.max_concurrency > Semaphore::MAX_PERMITS {
            return Err(RecforgeError::config(format!(
                "max_concurrency must be in 1..={}, got {}",
                Semaphore::MAX_PERMITS,
                config.max_concurrency
            )));
        }
        let limit = match config.requests_per_minute {
            // At least one start a year: a slower rate is a mistake (and overflows a Duration).
            Some(r) if !(r.is_finite() && r >= 1e-5) => {
                return Err(RecforgeError::config(format!(
                    "requests_per_minute must be at least 1e-5 (one a year) and finite, got {r}"
                )))
            }
            Some(r) => Some(RateLimit::new(r)),
            None => None,
        };
        let tokens = match config.tokens_per_minute {
            Some(t) if !(t.is_finite() && t >= 1.0) => {
                return Err(RecforgeError::config(format!(
                    "tokens_per_minute must be >= 1, got {t}"
                )))
            }
            Some(t) => Some(TokenBucket::new(t)),
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
            secrets,
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

    /// Lines of the cache file skipped when it was opened (torn writes, invalid UTF-8).
    pub fn cache_skipped_lines(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.skipped_lines)
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
        if let Some(p) = r.frequency_penalty {
            body["frequency_penalty"] = json!(p);
        }
        if let Some(p) = r.presence_penalty {
            body["presence_penalty"] = json!(p);
        }
        body
    }

    /// The cache key of a request: its body and the base URL (with any password masked, so the
    /// key, which is stored, depends on no secret).
    fn cache_key(&self, body: &Value) -> String {
        let url = display_url(&self.config.base_url);
        key_of(&json!({ "base_url": url.trim_end_matches('/'), "request": body }))
    }

    /// A text that will be shown (an error), without secrets.
    fn redact(&self, text: &str) -> String {
        self.secrets.redact_message(text)
    }

    /// The start of a server's reply for a message: secrets removed from the whole reply first,
    /// then cut to [`SNIPPET_CHARS`] characters, so no part of a secret survives the cut.
    fn snippet(&self, body: &str) -> String {
        self.redact(body).chars().take(SNIPPET_CHARS).collect()
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
            .filter(|s| s.is_finite() && *s >= 0.0);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
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
        // JSON on the wire is UTF-8 (RFC 8259 section 8.1): bad bytes are replaced and flagged.
        let (text, invalid_utf8) = match std::str::from_utf8(&bytes) {
            Ok(t) => (t.to_string(), false),
            Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), true),
        };
        if status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Retry(
                format!("HTTP {status}: {}", self.snippet(&text)),
                retry_after,
            );
        }
        if !status.is_success() {
            return Attempt::Fail(
                format!("HTTP {status}: {}", self.snippet(&text)),
                Some(status.as_u16()),
            );
        }
        let parsed: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                return Attempt::Retry(
                    format!("the response is not JSON: {:?}", self.snippet(&text)),
                    None,
                )
            }
        };
        let Some(content) = endpoint.extract(&parsed) else {
            return Attempt::Retry(
                format!(
                    "the response holds no valid answer: {:?}",
                    self.snippet(&text)
                ),
                None,
            );
        };
        let usage = parsed
            .get("usage")
            .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok());
        Attempt::Answer(Answered {
            text: content,
            usage,
            invalid_utf8,
        })
    }

    fn jitter(&self) -> f64 {
        let mut s = self.seed.lock().unwrap_or_else(|e| e.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        Rng::new(*s, 7).unit_f64()
    }

    /// The wait before retry number `attempts` (1-based): exponential backoff with jitter, or
    /// at least what the server asked for (`retry_after`, seconds), never more than
    /// `max_retry_wait`. Also says whether the server's wish was cut.
    fn retry_delay(&self, attempts: u32, retry_after: Option<f64>) -> (Duration, bool) {
        let doublings = attempts.saturating_sub(1).min(62) as i32;
        let base = self.config.backoff.as_secs_f64() * 2f64.powi(doublings);
        let backoff = (base * (0.5 + self.jitter())).min(MAX_BACKOFF.as_secs_f64());
        let delay = retry_after.map_or(backoff, |a| a.max(backoff.min(1.0)));
        let cap = self.config.max_retry_wait.as_secs_f64();
        let capped = retry_after.is_some_and(|a| a > cap);
        // `delay` is finite and non-negative here, and the cap is a valid Duration.
        let delay =
            Duration::try_from_secs_f64(delay.min(cap)).unwrap_or(self.config.max_retry_wait);
        (delay, capped)
    }

    /// One request with its retries. Once `stop` is set (the batch was interrupted), no further
    /// attempt is sent: an attempt under way finishes (and its answer is cached), the others end
    /// as "interrupted".
    async fn run_one(
        &self,
        endpoint: Endpoint,
        mut body: Value,
        key: String,
        stop: &AtomicBool,
    ) -> ChatResult {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut dropped_format = false;
        let mut capped_waits = 0u32;
        let mut longest_asked: f64 = 0.0;
        loop {
            if let Some(l) = &self.limit {
                l.wait().await;
            }
            let estimate = self.tokens.as_ref().map(|_| estimate_tokens(&body));
            if let (Some(b), Some(e)) = (&self.tokens, estimate) {
                b.take(e).await;
            }
            if stop.load(Ordering::Relaxed) {
                let latency = start.elapsed().as_secs_f64();
                return ChatResult::failed(INTERRUPTED, attempts, latency);
            }
            attempts = attempts.saturating_add(1);
            let attempt = self.attempt(endpoint, &body).await;
            if let (Some(b), Some(e)) = (&self.tokens, estimate) {
                let used = match &attempt {
                    Attempt::Answer(Answered { usage: Some(u), .. }) => u.total() as f64,
                    _ => e,
                };
                b.settle(e - used).await;
            }
            let (msg, after) = match attempt {
                Attempt::Answer(a) => return self.answered(a, key, attempts, start, capped_waits),
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
                let msg = if capped_waits > 0 {
                    format!(
                        "{msg}; the server asked to wait up to {longest_asked} s before retrying, \
                         cut to max_retry_wait = {} s",
                        self.config.max_retry_wait.as_secs_f64()
                    )
                } else {
                    msg
                };
                let failed = ChatResult::failed(msg, attempts, start.elapsed().as_secs_f64());
                return ChatResult {
                    capped_waits,
                    ..failed
                };
            };
            let (delay, capped) = self.retry_delay(attempts, after);
            if capped {
                capped_waits += 1;
                longest_asked = longest_asked.max(after.unwrap_or(0.0));
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// The result of an answer: secrets masked, stored in the cache (as returned).
    fn answered(
        &self,
        a: Answered,
        key: String,
        attempts: u32,
        start: Instant,
        capped_waits: u32,
    ) -> ChatResult {
        let (text, redacted) = self.secrets.redact_answer(&a.text);
        let stored = self.cache.as_ref().map(|c| {
            c.put(Entry {
                key,
                text: text.clone(),
                usage: a.usage,
                invalid_utf8: a.invalid_utf8,
            })
        });
        let outcome = match stored {
            Some(Err(e)) => Err(format!("answered, but the cache write failed: {e}")),
            _ => Ok(text),
        };
        ChatResult {
            outcome,
            usage: a.usage,
            cached: false,
            attempts,
            latency: start.elapsed().as_secs_f64(),
            invalid_utf8: a.invalid_utf8,
            redacted,
            capped_waits,
        }
    }

    /// One request, for async callers (run on [`runtime`]): the cached answer, or the server's
    /// (within the client's concurrency bound and rate limit).
    pub async fn chat(self: Arc<Self>, request: ChatRequest) -> ChatResult {
        let body = self.body(&request);
        let key = self.cache_key(&body);
        if let Some(e) = self.cache.as_ref().and_then(|c| c.get(&key)) {
            return ChatResult::from_cache(e);
        }
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(_permit) => {
                let never = AtomicBool::new(false);
                self.run_one(Endpoint::Chat, body, key, &never).await
            }
            Err(_) => ChatResult::failed("the client was closed", 0, 0.0),
        }
    }

    /// Sends every request (cache hits excepted) and returns the results in input order.
    /// `progress(done, total)` is called on the calling thread as results arrive and at least
    /// every 0.2 s; when it returns `true` the call returns at once with
    /// [`BatchReport::interrupted`] set: the results received so far, and an "interrupted" error
    /// for the others. No request (or retry) is sent after that; requests in flight still finish
    /// in the background and their answers still reach the cache, so the same batch run again
    /// sends only what is missing.
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
                Some(e) => results[i] = Some(ChatResult::from_cache(e)),
                None => pending.push((i, endpoint, body, key)),
            }
        }
        let mut done = n - pending.len();
        if progress(done, n) {
            return Ok(Self::finish(results, started, true));
        }
        let rt = runtime()?;
        let sem = Arc::clone(&self.slots);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, endpoint, body, key) in pending {
            let (me, sem, tx) = (Arc::clone(self), Arc::clone(&sem), tx.clone());
            let stop = Arc::clone(&stop);
            rt.spawn(async move {
                let result = match sem.acquire_owned().await {
                    Ok(_permit) => me.run_one(endpoint, body, key, &stop).await,
                    Err(_) => ChatResult::failed("the batch was cancelled", 0, 0.0),
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
                stop.store(true, Ordering::Relaxed);
                return Ok(Self::finish(results, started, true));
            }
        }
        Ok(Self::finish(results, started, false))
    }

    /// The results (a missing one fails, saying why) and their report.
    fn finish(
        results: Vec<Option<ChatResult>>,
        started: Instant,
        interrupted: bool,
    ) -> (Vec<ChatResult>, BatchReport) {
        BatchReport::summarise(results, started, interrupted)
    }
}

impl BatchReport {
    /// The results (a missing one failed with "interrupted" when `interrupted`, else saying
    /// it ended without a result) and their report; latencies count requests that were sent
    /// (`attempts > 0`).
    pub fn summarise(
        results: Vec<Option<ChatResult>>,
        started: Instant,
        interrupted: bool,
    ) -> (Vec<ChatResult>, BatchReport) {
        let missing = if interrupted {
            INTERRUPTED
        } else {
            "the request task ended without a result"
        };
        let results: Vec<ChatResult> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ChatResult::failed(missing, 0, 0.0)))
            .collect();
        let mut report = BatchReport {
            requests: results.len(),
            seconds: started.elapsed().as_secs_f64(),
            interrupted,
            ..BatchReport::default()
        };
        let mut lat = Vec::new();
        for r in &results {
            if r.outcome.is_ok() {
                report.ok += 1;
            } else {
                report.failed += 1;
            }
            report.invalid_utf8 += usize::from(r.invalid_utf8);
            report.redacted += usize::from(r.redacted);
            report.capped_waits += u64::from(r.capped_waits);
            if r.cached {
                report.cache_hits += 1;
                continue;
            }
            report.cache_misses += 1;
            report.retries += u64::from(r.attempts.saturating_sub(1));
            if let Some(u) = r.usage {
                report.prompt_tokens = report.prompt_tokens.saturating_add(u.prompt_tokens);
                report.completion_tokens =
                    report.completion_tokens.saturating_add(u.completion_tokens);
            }
            if r.attempts > 0 {
                lat.push(r.latency);
            }
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
        (results, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base_url: &str) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            model: "m".into(),
            api_key: Some("sk-test-0123456789".into()),
            max_concurrency: 4,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout: Duration::from_secs(2),
            max_retries: 3,
            backoff: Duration::from_millis(100),
            max_retry_wait: Duration::from_secs(2),
            cache: None,
        }
    }

    fn requests(n: usize) -> Vec<ChatRequest> {
        (0..n)
            .map(|k| ChatRequest {
                messages: vec![Message {
                    role: "user".into(),
                    content: format!("q{k}"),
                }],
                temperature: 0.0,
                max_tokens: None,
                response_format: None,
                frequency_penalty: None,
                presence_penalty: None,
            })
            .collect()
    }

    #[test]
    fn an_interrupted_batch_says_so_and_sends_nothing_more() {
        // A server that accepts connections and never answers: requests stay in flight.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", silent.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn({
            let accepted = Arc::clone(&accepted);
            move || {
                let mut held = Vec::new();
                for conn in silent.incoming().flatten() {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    held.push(conn);
                }
            }
        });
        let mut c = config(&url);
        (c.max_concurrency, c.timeout, c.backoff) = (2, Duration::from_millis(300), Duration::ZERO);
        let client = Arc::new(Client::new(c).unwrap());
        // Stopped before anything was sent.
        let (results, report) = client.chat_batch(requests(3), |_, _| true).unwrap();
        assert!(report.interrupted && report.failed == 3 && report.ok == 0);
        assert!(results
            .iter()
            .all(|r| r.outcome.as_ref().unwrap_err().contains("interrupted")));
        // Stopped while two requests are in flight: they time out, and neither they nor the
        // four queued requests are sent again.
        let mut calls = 0;
        let (results, report) = client
            .chat_batch(requests(6), |_, _| {
                calls += 1;
                calls > 1
            })
            .unwrap();
        assert!(report.interrupted && results.len() == 6 && report.failed == 6);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let (_, done) = client.chat_batch(Vec::new(), |_, _| false).unwrap();
        assert!(!done.interrupted && done.requests == 0);
    }

    #[test]
    fn retry_waits_never_exceed_max_retry_wait() {
        let client = Client::new(config("http://127.0.0.1:9/v1")).unwrap();
        let (d, capped) = client.retry_delay(1, Some(100_000.0));
        assert_eq!((d, capped), (Duration::from_secs(2), true));
        let (d, capped) = client.retry_delay(1, Some(1.5));
        assert!(!capped && d >= Duration::from_secs_f64(1.5) && d <= Duration::from_secs(2));
        let (d, capped) = client.retry_delay(1, None);
        assert!(!capped && d <= Duration::from_millis(150), "{d:?}");
        // Backoff doubling is bounded too, and a huge attempt count neither overflows nor NaNs.
        for attempts in [30, u32::MAX] {
            let (d, capped) = client.retry_delay(attempts, None);
            assert!(!capped && d <= Duration::from_secs(2), "{d:?}");
        }
        let mut zero = config("http://127.0.0.1:9/v1");
        zero.backoff = Duration::ZERO;
        let zero = Client::new(zero).unwrap();
        assert_eq!(zero.retry_delay(u32::MAX, None).0, Duration::ZERO);
    }

    #[test]
    fn settings_out_of_range_are_config_errors_that_show_no_secret() {
        let mut c = config("ftp://ann:hunter2hunter2@host/v1");
        let err = Client::new(c.clone()).unwrap_err().to_string();
        assert!(err.contains("http://") && !err.contains("hunter2"), "{err}");
        c.base_url = "http://h/v1".into();
        for (field, value) in [
            ("requests_per_minute", 1e-300),
            ("requests_per_minute", f64::NAN),
        ] {
            let mut bad = c.clone();
            bad.requests_per_minute = Some(value);
            let err = Client::new(bad).unwrap_err();
            assert!(matches!(err, RecforgeError::Config(_)) && err.to_string().contains(field));
        }
        let mut bad = c.clone();
        bad.max_concurrency = usize::MAX;
        assert!(Client::new(bad)
            .unwrap_err()
            .to_string()
            .contains("max_concurrency"));
        c.base_url = "http://ann:hunter2hunter2@h/v1".into();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("sk-test"),
            "{shown}"
        );
        // The cache key does not depend on the password.
        let a = Client::new(c.clone()).unwrap();
        c.base_url = "http://ann:other-password@h/v1".into();
        let b = Client::new(c).unwrap();
        let body = a.body(&requests(1)[0]);
        assert_eq!(a.cache_key(&body), b.cache_key(&body));
    }
}
