//! GPT-2 (`GPT2LMHeadModel`) as a backbone: learned absolute positions, pre-LN blocks, fused
//! `c_attn` projections stored as `Conv1D` (weights `[in, out]`), and a head tied to the token
//! embeddings.

use serde_json::json;
use tch::nn::{self, Module};
use tch::Tensor;

use super::config::HfConfig;
use super::decoder::{extend_cache, Decoder, KvCache};
use super::layers::{
    attend, causal_mask, layer_norm, lm_logits, merge_heads, split_heads, Activation,
};
use super::weights::Layout;
use crate::error::{RecforgeError, Result};

/// Checkpoint names of GPT-2 with the usual tied head.
pub const LAYOUT: Layout = Layout {
    prefix: "transformer.",
    unprefixed: &["lm_head."],
    ignorable: &[".attn.bias", ".attn.masked_bias", "lm_head.weight"],
};

/// Checkpoint names of GPT-2 with its own head (`tie_word_embeddings: false`).
pub const LAYOUT_UNTIED: Layout = Layout {
    prefix: "transformer.",
    unprefixed: &["lm_head."],
    ignorable: &[".attn.bias", ".attn.masked_bias"],
};

/// The fields of `GPT2Config` recforge uses.
#[derive(Debug, Clone)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Longest sequence.
    pub n_positions: i64,
    /// Width.
    pub n_embd: i64,
    /// Layers.
    pub n_layer: i64,
    /// Heads.
    pub n_head: i64,
    /// Feed-forward size (`n_inner`, default 4 * width).
    pub n_inner: i64,
    /// Activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Scale attention logits by 1/sqrt(head size).
    pub scale_attn_weights: bool,
    /// Also scale them by 1/(layer index + 1).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Share the head with the token embeddings.
    pub tie_word_embeddings: bool,
}

impl Gpt2Config {
    /// Reads a `config.json` of `model_type` `gpt2`.
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        c.require("add_cross_attention", &[json!(false)])?;
        let n_embd = c.int("n_embd", 768)?;
        let cfg = Self {
            vocab_size: c.int_req("vocab_size")?,
            n_positions: c.int("n_positions", 1024)?,
            n_embd,
            n_layer: c.int("n_layer", 12)?,
            n_head: c.int("n_head", 12)?,
            n_inner: c.int("n_inner", 4 * n_embd)?,
            activation: Activation::parse(
                &c.str("activation_function", "gelu_new")?,
                "activation_function",
            )?,
            layer_norm_epsilon: c.float("layer_norm_epsilon", 1e-5)?,
            scale_attn_weights: c.bool("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: c.bool("scale_attn_by_inverse_layer_idx", false)?,
            tie_word_embeddings: c.bool("tie_word_embeddings", true)?,
        };
        if cfg.n_embd % cfg.n_head != 0 {
            return Err(RecforgeError::config(format!(
                "config.json n_embd {} is not a multiple of n_head {}",
                cfg.n_embd, cfg.n_head
            )));
        }
        Ok(cfg)
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

/// `Conv1D` of `transformers`: `x @ weight + bias` with `weight` `[in, out]`.
#[derive(Debug)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(p: nn::Path, input: i64, output: i64) -> Self {
        Self {
            weight: p.var(
                "weight",
                &[input, output],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            bias: p.zeros("bias", &[output]),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

#[derive(Debug)]
struct Block {
    ln_1: nn::LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: nn::LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// GPT-2 built under `GPT2Model`'s names (plus `lm_head` when untied).
#[derive(Debug)]
pub struct Gpt2 {
    /// Its configuration.
    pub config: Gpt2Config,
    wte: nn::Embedding,
    wpe: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    lm_head: Option<nn::Linear>,
}

impl Gpt2 {
    /// Creates the parameters under `p` (GPT-2's initialisation: normal(0, 0.02)).
    pub fn new(p: &nn::Path, config: Gpt2Config) -> Self {
        let (n, eps) = (config.n_embd, config.layer_norm_epsilon);
        let init = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let wte = nn::embedding(p / "wte", config.vocab_size, n, init);
        let wpe = nn::embedding(p / "wpe", config.n_positions, n, init);
        let blocks = (0..config.n_layer)
            .map(|i| {
                let b = p / "h" / i;
                Block {
                    ln_1: layer_norm(&b / "ln_1", n, eps),
                    c_attn: Conv1D::new(&b / "attn" / "c_attn", n, 3 * n),
                    attn_proj: Conv1D::new(&b / "attn" / "c_proj", n, n),
                    ln_2: layer_norm(&b / "ln_2", n, eps),
                    c_fc: Conv1D::new(&b / "mlp" / "c_fc", n, config.n_inner),
                    mlp_proj: Conv1D::new(&b / "mlp" / "c_proj", config.n_inner, n),
                }
            })
            .collect();
        let ln_f = layer_norm(p / "ln_f", n, eps);
        let lm_head = (!config.tie_word_embeddings)
            .then(|| super::layers::linear(p / "lm_head", n, config.vocab_size, false));
        Self {
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
        }
    }
}

impl Decoder for Gpt2 {
    fn embed(&self, ids: &Tensor) -> Tensor {
        self.wte.forward(ids)
    }

    fn forward(
        &self,
        embeds: &Tensor,
        key_mask: &Tensor,
        positions: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let c = &self.config;
        let (heads, hd) = (c.n_head, c.n_embd / c.n_head);
        let tq = embeds.size()[1];
        let mask = causal_mask(key_mask, tq);
        let mut x = embeds + self.wpe.forward(positions);
        for (i, b) in self.blocks.iter().enumerate() {
            let qkv = b.c_attn.forward(&b.ln_1.forward(&x)).split(c.n_embd, -1);
            let q = split_heads(&qkv[0], heads, hd);
            let k = split_heads(&qkv[1], heads, hd);
            let v = split_heads(&qkv[2], heads, hd);
            let (k, v) = extend_cache(cache.as_deref_mut().map(|c| &mut c[i]), k, v);
            let mut scale = if c.scale_attn_weights {
                1.0 / (hd as f64).sqrt()
            } else {
                1.0
            };
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            let a = merge_heads(&attend(&q, &k, &v, Some(&mask), Some(scale)));
            x = &x + b.attn_proj.forward(&a);
            let f = c.activation.apply(&b.c_fc.forward(&b.ln_2.forward(&x)));
            x = &x + b.mlp_proj.forward(&f);
        }
        self.ln_f.forward(&x)
    }

    fn logits(&self, hidden: &Tensor) -> Tensor {
        lm_logits(hidden, self.lm_head.as_ref(), &self.wte)
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }
    fn hidden_size(&self) -> i64 {
        self.config.n_embd
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
    fn max_positions(&self) -> Option<i64> {
        Some(self.config.n_positions)
    }
}
