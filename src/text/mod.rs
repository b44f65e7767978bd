//! Text encoders and language-model backbones on libtorch, reading Hugging Face checkpoints.
//!
//! - [`tokenize`]: `tokenizer.json` tokenizers, batched and padded in parallel.
//! - [`weights`], [`config`]: safetensors checkpoints (sharded too) and `config.json`.
//! - Networks, each under the `transformers` parameter names: [`bert`] (BERT family encoders),
//!   [`t5`] (the T5 encoder), [`gpt2`] and [`llama`] (Llama, Qwen2, SmolLM2 decoders).
//! - [`encoder`]: texts to pooled, normalised embeddings; [`causal_lm`] and [`decoder`]: backbones
//!   with soft-token input, a key/value cache and generation.

pub mod bert;
pub mod causal_lm;
pub mod chat_template;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gpt2;
pub mod layers;
pub mod llama;
pub mod t5;
pub mod tokenize;
pub mod weights;
