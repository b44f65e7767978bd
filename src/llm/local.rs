//! The in-process LLM: chat completions and embeddings from a [`CausalLm`] loaded from a Hugging
//! Face folder or a GGUF file, with the model's own chat template, continuous batching
//! ([`super::batcher`]), constrained answers ([`super::constrain`]) and the same results, report
//! and response cache as the server client ([`super::client`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use super::batcher::{self, GenRequest, Generated, RowConstraint};
use super::cache::{key_of, Entry, ResponseCache};
use super::client::{BatchReport, ChatRequest, ChatResult};
use super::constrain::{Grammar, Matcher, Vocab};
use super::usage::Usage;
use crate::error::{RecforgeError, Result};
use crate::text::causal_lm::{CausalLm, Input};
use crate::text::chat_template::ChatTemplate;
use crate::text::decoder::Sampling;
use crate::text::gguf_tokenizer;
use crate::text::tokenize::TextTokenizer;

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Rows decoded together at most.
    pub max_batch: usize,
    /// `max_tokens` of a request that gives none.
    pub default_max_tokens: usize,
    /// Nucleus threshold of sampled requests (temperature > 0).
    pub top_p: f64,
    /// Top-k of sampled requests (0: all tokens).
    pub top_k: i64,
    /// Seed of sampled requests (each request's own generator is seeded from it and the request).
    pub seed: u64,
    /// Generation ends before any of these strings.
    pub stop: Vec<String>,
    /// JSON-lines response cache.
    pub cache: Option<PathBuf>,
    /// Run the prompt prefix a batch's requests share once ([`super::batcher`]).
    pub prefix_cache: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            default_max_tokens: 512,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: vec![],
            cache: None,
            prefix_cache: true,
        }
    }
}

/// A language model answering chat requests in this process.
pub struct LocalLlm {
    lm: CausalLm,
    tok: TextTokenizer,
    template: ChatTemplate,
    eos: Vec<i64>,
    vocab: OnceLock<std::result::Result<Arc<Vocab>, String>>,
    /// What identifies the model in cache keys (file name and size, and the precision when it is
    /// not float32; never a secret).
    model_id: String,
    kind: Kind,
    config: LocalConfig,
    cache: Option<ResponseCache>,
}

fn model_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let bytes = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| size(&e.path())).sum::<u64>())
            .unwrap_or(0)
    } else {
        size(path)
    };
    format!("local:{name}:{bytes}")
}

impl LocalLlm {
    /// Loads a model folder (config.json, safetensors, tokenizer.json, tokenizer_config.json
    /// with its chat template) or a GGUF file (tokenizer and template from its metadata, unless
    /// `tokenizer` names a folder holding them).
    pub fn load(
        path: &Path,
        tokenizer: Option<&Path>,
        device: Device,
        kind: Kind,
        config: LocalConfig,
    ) -> Result<Self> {
        if config.max_batch == 0 {
            return Err(RecforgeError::config("max_batch must be >= 1"));
        }
        crate::device::reuse_freed_memory();
        let is_gguf = path.is_file();
        let lm = if is_gguf {
            CausalLm::from_gguf(path, device, kind)?
        } else {
            CausalLm::from_pretrained(path, device, kind)?
        };
        let tok_dir = tokenizer.unwrap_or(path);
        let (tok, template) = if tok_dir.is_dir() {
            let tok = TextTokenizer::from_file(&tok_dir.join("tokenizer.json"), None)?;
            let template = ChatTemplate::from_tokenizer_config(tok_dir)?.ok_or_else(|| {
                RecforgeError::config(format!(
                    "{} has no chat template (tokenizer_config.json chat_template)",
                    tok_dir.display()
                ))
            })?;
            (tok, template)
        } else {
            let tok = TextTokenizer::from_gguf(path)?;
            let source = gguf_tokenizer::chat_template(path)?.ok_or_else(|| {
                RecforgeError::config(format!(
                    "{} has no chat template (tokenizer.chat_template); pass tokenizer= a folder \
                     with one",
                    path.display()
                ))
            })?;
            let special = gguf_tokenizer::special_tokens(path)?;
            let named = [
                ("bos_token", special.bos),
                ("eos_token", special.eos),
                ("unk_token", special.unk),
                ("pad_token", special.pad),
            ];
            let named = named
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect();
            (tok, ChatTemplate::new(&source, named)?)
        };
        let mut eos = lm.eos.clone();
        if let Some(id) = template
            .special_token("eos_token")
            .and_then(|t| tok.token_to_id(t))
        {
            if !eos.contains(&i64::from(id)) {
                eos.push(i64::from(id));
            }
        }
        if eos.is_empty() {
            return Err(RecforgeError::config(
                "the model names no end-of-sequence token (config eos_token_id)",
            ));
        }
        let cache = config.cache.as_ref().map(ResponseCache::open).transpose()?;
        Ok(Self {
            lm,
            tok,
            template,
            eos,
            vocab: OnceLock::new(),
            // Lower precision answers differ at near-ties, so it is part of the key (float32
            // keys stay as they were).
            model_id: match kind {
                Kind::Float => model_id(path),
                other => format!(
                    "{}:{}",
                    model_id(path),
                    crate::text::layers::dtype_name(other)
                ),
            },
            kind,
            config,
            cache,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// The precision of the weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.lm.device()
    }

    /// End-of-sequence ids.
    pub fn eos(&self) -> &[i64] {
        &self.eos
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tok
    }

    /// Answers held by the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, ResponseCache::len)
    }

    /// Cache lines skipped on load.
    pub fn cache_skipped_lines(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.skipped_lines)
    }

    /// The prompt text of a conversation (the chat template with the generation prompt).
    pub fn render(&self, messages: &[(String, String)]) -> Result<String> {
        self.template.render(messages, true)
    }

    fn vocab(&self) -> std::result::Result<Arc<Vocab>, String> {
        self.vocab
            .get_or_init(|| {
                let bytes = self.tok.token_bytes().map_err(|e| e.to_string())?;
                let eos = self.eos.iter().map(|&e| e as u32).collect();
                Vocab::new(bytes, eos)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    fn body(&self, r: &ChatRequest) -> Value {
        let c = &self.config;
        let mut body = json!({
            "model": self.model_id,
            "messages": r.messages,
            "temperature": r.temperature,
            "max_tokens": r.max_tokens.map_or(c.default_max_tokens as u64, |m| m),
        });
        if let Some(f) = &r.response_format {
            body["response_format"] = f.clone();
        }
        if r.temperature > 0.0 {
            body["top_p"] = json!(c.top_p);
            body["top_k"] = json!(c.top_k);
            body["seed"] = json!(c.seed);
        }
        if !c.stop.is_empty() {
            body["stop"] = json!(c.stop);
        }
        // Only when set and not zero: a zero penalty changes nothing, so its answer is cached
        // under the same key as the request without one.
        if let Some(p) = r.frequency_penalty.filter(|&p| p != 0.0) {
            body["frequency_penalty"] = json!(p);
        }
        if let Some(p) = r.presence_penalty.filter(|&p| p != 0.0) {
            body["presence_penalty"] = json!(p);
        }
        body
    }

    /// A generation request for `r`, or why it cannot be run.
    fn request(&self, r: &ChatRequest, key: &str) -> std::result::Result<GenRequest, String> {
        let c = &self.config;
        if !(r.temperature >= 0.0 && r.temperature.is_finite()) {
            return Err(format!(
                "temperature must be a number >= 0, got {}",
                r.temperature
            ));
        }
        for (name, p) in [
            ("frequency_penalty", r.frequency_penalty),
            ("presence_penalty", r.presence_penalty),
        ] {
            if let Some(p) = p.filter(|p| !p.is_finite()) {
                return Err(format!("{name} must be a finite number, got {p}"));
            }
        }
        let pairs: Vec<(String, String)> = r
            .messages
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect();
        let text = self.render(&pairs).map_err(|e| e.to_string())?;
        let prompt = self
            .tok
            .encode_each(&[text], false, None)
            .map_err(|e| e.to_string())?
            .remove(0)
            .into_iter()
            .map(i64::from)
            .collect();
        let max_tokens = r
            .max_tokens
            .map_or(Ok(c.default_max_tokens), usize::try_from)
            .map_err(|_| "max_tokens is too large".to_string())?;
        let sampling = if r.temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature: r.temperature,
                top_k: c.top_k,
                top_p: c.top_p,
            }
        };
        let constraint: Option<Box<dyn RowConstraint>> = match &r.response_format {
            None => None,
            Some(f) => match Grammar::from_response_format(f).map_err(|e| e.to_string())? {
                None => None,
                Some(g) => {
                    let need = g.min_tokens();
                    if need > max_tokens {
                        return Err(format!(
                            "max_tokens ({max_tokens}) is too small for the response_format: its \
                             shortest valid answer takes {need} tokens"
                        ));
                    }
                    let vocab = self.vocab()?;
                    Some(Box::new(Constrained {
                        matcher: Matcher::new(Arc::new(g)),
                        vocab,
                    }))
                }
            },
        };
        // The request's own seed: the same answer whatever shares its batch.
        let seed = u64::from_str_radix(&key[..16], 16).unwrap_or(0) ^ c.seed;
        Ok(GenRequest {
            prompt,
            max_tokens,
            sampling,
            seed,
            stop: c.stop.clone(),
            constraint,
            frequency_penalty: r.frequency_penalty.unwrap_or(0.0),
            presence_penalty: r.presence_penalty.unwrap_or(0.0),
        })
    }

    /// Answers every request (cache hits excepted) with continuous batching, in input order.
    /// Each answer reaches the cache as soon as it is generated; `progress(done, total)` is called
    /// after each decoding step and stops the batch when it returns `true` (the report says
    /// `interrupted`, unanswered requests fail with "interrupted").
    pub fn chat_batch(
        &self,
        requests: Vec<ChatRequest>,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<(Vec<ChatResult>, BatchReport)> {
        let started = Instant::now();
        let n = requests.len();
        let mut results: Vec<Option<ChatResult>> = vec![None; n];
        let mut gens = Vec::new();
        let mut slots = Vec::new();
        let mut keys = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let key = key_of(&self.body(r));
            if let Some(e) = self.cache.as_ref().and_then(|c| c.get(&key)) {
                results[i] = Some(ChatResult::from_cache(e));
                continue;
            }
            match self.request(r, &key) {
                Ok(g) => {
                    gens.push(g);
                    slots.push(i);
                    keys.push(key);
                }
                Err(e) => results[i] = Some(ChatResult::failed(e, 1, 0.0)),
            }
        }
        let cached = n - gens.len();
        let decode = |ids: &[i64]| -> Result<String> {
            let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            self.tok.decode(&ids, true)
        };
        let model = batcher::Model {
            net: self.lm.net(),
            eos: &self.eos,
            decode: &decode,
            max_batch: self.config.max_batch,
            device: self.lm.device(),
            prefix_cache: self.config.prefix_cache,
        };
        let prompt_lens: Vec<usize> = gens.iter().map(|g| g.prompt.len()).collect();
        let mut cache_error = None;
        let mut done = |j: usize, out: std::result::Result<Generated, String>| {
            let i = slots[j];
            let latency = started.elapsed().as_secs_f64();
            results[i] = Some(match out {
                Ok(g) => {
                    let usage = Usage {
                        prompt_tokens: prompt_lens[j] as u64,
                        completion_tokens: g.completion_tokens as u64,
                    };
                    if let Some(c) = &self.cache {
                        let entry = Entry {
                            key: keys[j].clone(),
                            text: g.text.clone(),
                            usage: Some(usage),
                            invalid_utf8: false,
                        };
                        if let Err(e) = c.put(entry) {
                            cache_error.get_or_insert(e);
                        }
                    }
                    ChatResult {
                        outcome: Ok(g.text),
                        usage: Some(usage),
                        cached: false,
                        attempts: 1,
                        latency,
                        invalid_utf8: false,
                        redacted: false,
                        capped_waits: 0,
                    }
                }
                Err(e) => ChatResult::failed(e, 1, latency),
            });
        };
        let mut tick = |d: usize, _t: usize| progress(cached + d, n);
        let interrupted = batcher::generate(&model, gens, &mut done, &mut tick)?;
        if let Some(e) = cache_error {
            return Err(e);
        }
        Ok(BatchReport::summarise(results, started, interrupted))
    }

    /// Mean-pooled, L2-normalised last hidden states of each text (no chat template), in batches.
    pub fn embed(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        if batch_size == 0 {
            return Err(RecforgeError::config("batch_size must be >= 1"));
        }
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size) {
            let ids = self.tok.encode_each(chunk, true, None)?;
            let t = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
            let (mut flat, mut mask) = (vec![0i64; chunk.len() * t], vec![0i64; chunk.len() * t]);
            for (r, row) in ids.iter().enumerate() {
                for (c, &id) in row.iter().enumerate() {
                    flat[r * t + c] = i64::from(id);
                    mask[r * t + c] = 1;
                }
            }
            let shape = [chunk.len() as i64, t as i64];
            let ids = Tensor::from_slice(&flat).view(shape);
            let mask = Tensor::from_slice(&mask).view(shape);
            let pooled = tch::no_grad(|| -> Result<Tensor> {
                let dev = self.lm.device();
                let m = mask.to_device(dev);
                let h = self
                    .lm
                    .hidden_states(&Input::Ids(ids), Some(&m))?
                    .to_kind(Kind::Float);
                let mf = m.to_kind(Kind::Float).unsqueeze(-1);
                let sum = (h * &mf).sum_dim_intlist(1, false, Kind::Float);
                let mean = sum / mf.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
                let norm = mean.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
                Ok((mean / norm).to_device(Device::Cpu).contiguous())
            })?;
            let dim = pooled.size()[1] as usize;
            let flat: Vec<f32> = Vec::try_from(pooled.view([-1]))?;
            out.extend(flat.chunks(dim.max(1)).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}

/// A row's grammar matcher over the model's vocabulary.
struct Constrained {
    matcher: Matcher,
    vocab: Arc<Vocab>,
}

impl RowConstraint for Constrained {
    fn allowed(&mut self, budget: usize) -> Result<Vec<u32>> {
        self.matcher.allowed(&self.vocab, budget)
    }
    fn advance(&mut self, token: u32) -> Result<()> {
        self.matcher.advance(&self.vocab, token)
    }
    fn finished(&self) -> bool {
        self.matcher.is_finished()
    }
}
