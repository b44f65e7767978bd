//! The batched LLM client: OpenAI-compatible chat completions, many at once, on one tokio
//! runtime, with bounded concurrency, a request-rate limit, timeouts, retries with backoff, and a
//! crash-safe response cache. No PyO3 here; `src/python/llm.rs` binds it.

pub mod cache;
pub mod client;

pub use cache::ResponseCache;
pub use client::{BatchReport, ChatRequest, ChatResult, Client, ClientConfig, Message, Usage};
