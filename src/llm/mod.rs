//! The batched LLM client: OpenAI-compatible chat completions, many at once, on one tokio
//! runtime, with bounded concurrency, a request-rate limit, timeouts, retries with backoff, and a
//! crash-safe response cache. No PyO3 here; `src/python/llm.rs` binds it.
//!
//! Modules, leaves first: [`usage`] (token counts), [`secrets`] (what is never shown or stored),
//! [`endpoint`] (what a valid answer is), [`limits`] (request and token rates), [`cache`] (the
//! answers on disk), [`client`] (requests, retries, batches).

pub mod batcher;
pub mod cache;
pub mod client;
pub mod constrain;
pub mod endpoint;
pub mod limits;
pub mod local;
pub mod secrets;
pub mod usage;

pub use cache::ResponseCache;
pub use client::{BatchReport, ChatRequest, ChatResult, Client, ClientConfig, Message};
pub use usage::Usage;
