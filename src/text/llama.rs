//! The Llama family as a backbone: Llama, SmolLM2, Qwen2 (q/k/v biases) and Mistral-style models
//! without a sliding window. RMSNorm before each sub-layer, rotary position embeddings (the
//! half-split `rotate_half` form of `transformers`), grouped-query attention and a SwiGLU
//! feed-forward block.

use serde_json::{json, Value};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{checked_product, checked_sum, HfConfig};
use super::decoder::{attend_cached, Decoder, KvCache};
use std::sync::atomic::{AtomicBool, Ordering};

use super::layers::{
    causal_mask, layer_vec, linear, linear_in, lm_logits, merge_heads, split_heads, Activation,
    ComputeKind, Embedding, RmsNorm,
};
use super::weights::Layout;
use crate::error::{RecforgeError, Result};

/// Checkpoint names with a head tied to the embeddings.
pub const LAYOUT: Layout = Layout {
    prefix: "model.",
    unprefixed: &["lm_head."],
    ignorable: &["rotary_emb.inv_freq", "lm_head.weight"],
};

/// Checkpoint names with a head of its own.
pub const LAYOUT_UNTIED: Layout = Layout {
    prefix: "model.",
    unprefixed: &["lm_head."],
    ignorable: &["rotary_emb.inv_freq"],
};

/// The fields of `LlamaConfig` / `Qwen2Config` recforge uses.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// `llama`, `qwen2` or `mistral`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width.
    pub hidden_size: i64,
    /// Feed-forward size.
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Biases on q, k, v.
    pub qkv_bias: bool,
    /// Bias on o.
    pub o_bias: bool,
    /// Biases in the feed-forward block.
    pub mlp_bias: bool,
    /// Share the head with the token embeddings.
    pub tie_word_embeddings: bool,
    /// Longest sequence the model was trained for (not enforced: rotary positions extrapolate).
    pub max_position_embeddings: i64,
    /// Dropout on the attention weights (training mode).
    pub attention_dropout: f64,
}

fn rope_settings(c: &HfConfig) -> Result<f64> {
    // transformers 5 keeps rotary settings in `rope_parameters`; 4.x in `rope_theta`/`rope_scaling`.
    let params = c.json.get("rope_parameters").filter(|v| !v.is_null());
    let scaling = c.json.get("rope_scaling").filter(|v| !v.is_null());
    for (field, v) in [("rope_parameters", params), ("rope_scaling", scaling)] {
        if let Some(v) = v {
            let kind = v
                .get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(RecforgeError::config(format!(
                    "config.json {field} rope_type {kind:?} is not supported by recforge (only \
                     \"default\" rotary embeddings)"
                )));
            }
        }
    }
    let from_params = params.and_then(|p| p.get("rope_theta"));
    match from_params {
        Some(t) => t
            .as_f64()
            .filter(|t| t.is_finite() && *t > 0.0)
            .ok_or_else(|| {
                RecforgeError::config(format!(
                    "config.json rope_parameters.rope_theta must be a finite number > 0, got {t}"
                ))
            }),
        None => c.positive("rope_theta", 10000.0),
    }
}

impl LlamaConfig {
    /// Reads a `config.json` of `model_type` `llama`, `qwen2` or `mistral`.
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let model_type = c.model_type()?;
        let qwen = model_type == "qwen2";
        if qwen || model_type == "mistral" {
            c.require("use_sliding_window", &[json!(false)])?;
        }
        if model_type == "mistral" {
            c.require("sliding_window", &[Value::Null])?;
        }
        c.require("pretraining_tp", &[json!(1)])?;
        let hidden = c.int_req("hidden_size")?;
        let heads = c.int_req("num_attention_heads")?;
        let attention_bias = c.bool("attention_bias", false)?;
        let cfg = Self {
            vocab_size: c.int_req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: c.int_req("intermediate_size")?,
            num_hidden_layers: c.int_req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: c.size("num_key_value_heads", heads)?,
            // heads >= 1, so the division is defined; hidden / heads >= 0.
            head_dim: match c.size_opt("head_dim")? {
                Some(d) => d,
                None => hidden.checked_div(heads).unwrap_or(0),
            },
            rms_norm_eps: c.eps("rms_norm_eps", 1e-6)?,
            rope_theta: rope_settings(c)?,
            hidden_act: Activation::parse(&c.str("hidden_act", "silu")?, "hidden_act")?,
            qkv_bias: qwen || attention_bias,
            o_bias: !qwen && attention_bias,
            mlp_bias: c.bool("mlp_bias", false)?,
            tie_word_embeddings: c.bool("tie_word_embeddings", false)?,
            max_position_embeddings: c.size("max_position_embeddings", 2048)?,
            attention_dropout: c.prob("attention_dropout", 0.0)?,
            model_type,
        };
        if cfg.num_attention_heads.checked_rem(cfg.num_key_value_heads) != Some(0) {
            return Err(RecforgeError::config(format!(
                "config.json num_attention_heads {} is not a multiple of num_key_value_heads {}",
                cfg.num_attention_heads, cfg.num_key_value_heads
            )));
        }
        if cfg.head_dim % 2 != 0 || cfg.head_dim < 2 {
            return Err(RecforgeError::config(format!(
                "rotary embeddings need an even head_dim of at least 2, got {} (head_dim or \
                 hidden_size / num_attention_heads)",
                cfg.head_dim
            )));
        }
        cfg.num_parameters()?;
        Ok(cfg)
    }

    /// Number of parameters the configuration describes (an error when it overflows).
    pub fn num_parameters(&self) -> Result<i64> {
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = checked_product(&[self.num_attention_heads, self.head_dim])?;
        let kv = checked_product(&[self.num_key_value_heads, self.head_dim])?;
        let bias = |on: bool, n: i64| if on { n } else { 0 };
        let layer = checked_sum(&[
            checked_product(&[2, h])?,
            checked_product(&[checked_sum(&[q, kv, kv])?, h])?,
            bias(self.qkv_bias, checked_sum(&[q, kv, kv])?),
            checked_product(&[q, h])?,
            bias(self.o_bias, h),
            checked_product(&[3, h, f])?,
            bias(self.mlp_bias, checked_sum(&[f, f, h])?),
        ])?;
        let embeddings = checked_product(&[v, h])?;
        checked_sum(&[
            embeddings,
            if self.tie_word_embeddings {
                0
            } else {
                embeddings
            },
            h,
            checked_product(&[self.num_hidden_layers, layer])?,
        ])
    }

    /// The checkpoint layout for this configuration.
    pub fn layout(&self) -> Layout {
        if self.tie_word_embeddings {
            LAYOUT
        } else {
            LAYOUT_UNTIED
        }
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    post_norm: RmsNorm,
    gate: nn::Linear,
    up: nn::Linear,
    down: nn::Linear,
}

/// A Llama-family decoder under `LlamaModel`'s names (plus `lm_head` when untied).
#[derive(Debug)]
pub struct Llama {
    /// Its configuration.
    pub config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<nn::Linear>,
    inv_freq: Tensor,
    training: AtomicBool,
    compute: ComputeKind,
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

impl Llama {
    /// Creates the parameters under `p`; fails when libtorch cannot allocate them.
    pub fn new(p: &nn::Path, config: LlamaConfig) -> Result<Self> {
        let (h, f, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.rms_norm_eps,
        );
        let q_out = checked_product(&[config.num_attention_heads, config.head_dim])?;
        let kv_out = checked_product(&[config.num_key_value_heads, config.head_dim])?;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embed_tokens = Embedding::new(p / "embed_tokens", config.vocab_size, h, init)?;
        let mut layers = layer_vec(config.num_hidden_layers)?;
        for i in 0..config.num_hidden_layers {
            let l = p / "layers" / i;
            let a = &l / "self_attn";
            let m = &l / "mlp";
            layers.push(Layer {
                input_norm: RmsNorm::new(&l / "input_layernorm", h, eps)?,
                q: linear(&a / "q_proj", h, q_out, config.qkv_bias)?,
                k: linear(&a / "k_proj", h, kv_out, config.qkv_bias)?,
                v: linear(&a / "v_proj", h, kv_out, config.qkv_bias)?,
                o: linear(&a / "o_proj", q_out, h, config.o_bias)?,
                post_norm: RmsNorm::new(&l / "post_attention_layernorm", h, eps)?,
                gate: linear(&m / "gate_proj", h, f, config.mlp_bias)?,
                up: linear(&m / "up_proj", h, f, config.mlp_bias)?,
                down: linear(&m / "down_proj", f, h, config.mlp_bias)?,
            });
        }
        let norm = RmsNorm::new(p / "norm", h, eps)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(linear(p / "lm_head", h, config.vocab_size, false)?)
        };
        // inv_freq[j] = 1 / theta^(2j / head_dim), computed in float32 as transformers does.
        let d = config.head_dim;
        let exponents = Tensor::f_arange_start_step(0, d, 2, (Kind::Int64, p.device()))?
            .to_kind(Kind::Float)
            / d as f64;
        let inv_freq = Tensor::pow_scalar(config.rope_theta, &exponents).reciprocal();
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            training: AtomicBool::new(false),
            compute: ComputeKind::default(),
        })
    }

    /// cos and sin `[B, 1, T, head_dim]` of positions `[B, T]`.
    fn rotary(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

impl Decoder for Llama {
    fn embed(&self, ids: &Tensor) -> Tensor {
        self.embed_tokens.forward(ids)
    }

    fn forward(
        &self,
        embeds: &Tensor,
        key_mask: &Tensor,
        positions: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (_, tq, _) = embeds.size3()?;
        let mask = causal_mask(key_mask, tq);
        // Under mixed precision (`compute`, see `ComputeKind`) each block's linear layers run
        // in the lower kind; the rotary rotation of q and k (their products with the float32
        // angles), attention and the residual stream `x` stay float32.
        let low = self.compute.get();
        let (cos, sin) = self.rotary(positions, embeds.kind());
        let rope = |x: &Tensor| x * &cos + rotate_half(x) * &sin;
        let lin = |l: &nn::Linear, x: &Tensor| linear_in(l, x, low);
        let mut x = embeds.shallow_clone();
        let attn_p = if self.training.load(Ordering::Relaxed) {
            c.attention_dropout
        } else {
            0.0
        };
        for (i, l) in self.layers.iter().enumerate() {
            let n = l.input_norm.forward(&x);
            let q = rope(&split_heads(
                &lin(&l.q, &n),
                c.num_attention_heads,
                c.head_dim,
            )?);
            let k = rope(&split_heads(
                &lin(&l.k, &n),
                c.num_key_value_heads,
                c.head_dim,
            )?);
            let v = split_heads(
                &lin(&l.v, &n).to_kind(x.kind()),
                c.num_key_value_heads,
                c.head_dim,
            )?;
            let slot = cache.as_deref_mut().and_then(|c| c.get_mut(i));
            let a = merge_heads(&attend_cached(slot, &q, k, v, &mask, None, attn_p)?)?;
            x = &x + lin(&l.o, &a);
            let n = l.post_norm.forward(&x);
            let f = c.hidden_act.apply(&lin(&l.gate, &n)) * lin(&l.up, &n);
            x = &x + lin(&l.down, &f);
        }
        Ok(self.norm.forward(&x))
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        lm_logits(hidden, self.lm_head.as_ref(), &self.embed_tokens)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }
    fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
    fn max_positions(&self) -> Option<i64> {
        None
    }
    fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }
    fn set_bf16_products(&self, on: bool) {
        self.compute.set_bf16(on);
    }
}
