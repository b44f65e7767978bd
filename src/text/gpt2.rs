//! GPT-2 (`GPT2LMHeadModel`) as a backbone: learned absolute positions, pre-LN blocks, fused
//! `c_attn` projections stored as `Conv1D` (weights `[in, out]`), and a head tied to the token
//! embeddings.

use serde_json::json;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{checked_product, checked_sum, HfConfig};
use super::decoder::{attend_cached, Decoder, KvCache};
use std::sync::atomic::{AtomicBool, Ordering};

use super::layers::{
    causal_mask, dropout_if, layer_norm, layer_vec, lm_logits, merge_heads, param, split_heads,
    Activation, ComputeKind, Embedding, LayerNorm,
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
    /// Dropout after the embeddings (training mode).
    pub embd_pdrop: f64,
    /// Dropout on the attention weights (training mode).
    pub attn_pdrop: f64,
    /// Dropout on each residual branch (training mode).
    pub resid_pdrop: f64,
}

impl Gpt2Config {
    /// Reads a `config.json` of `model_type` `gpt2`.
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        c.require("add_cross_attention", &[json!(false)])?;
        let n_embd = c.size("n_embd", 768)?;
        let cfg = Self {
            vocab_size: c.int_req("vocab_size")?,
            n_positions: c.size("n_positions", 1024)?,
            n_embd,
            n_layer: c.size("n_layer", 12)?,
            n_head: c.size("n_head", 12)?,
            n_inner: match c.size_opt("n_inner")? {
                Some(n) => n,
                None => checked_product(&[4, n_embd])?,
            },
            activation: Activation::parse(
                &c.str("activation_function", "gelu_new")?,
                "activation_function",
            )?,
            layer_norm_epsilon: c.eps("layer_norm_epsilon", 1e-5)?,
            scale_attn_weights: c.bool("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: c.bool("scale_attn_by_inverse_layer_idx", false)?,
            tie_word_embeddings: c.bool("tie_word_embeddings", true)?,
            embd_pdrop: c.prob("embd_pdrop", 0.1)?,
            attn_pdrop: c.prob("attn_pdrop", 0.1)?,
            resid_pdrop: c.prob("resid_pdrop", 0.1)?,
        };
        if cfg.n_embd.checked_rem(cfg.n_head) != Some(0) {
            return Err(RecforgeError::config(format!(
                "config.json n_embd {} is not a multiple of n_head {}",
                cfg.n_embd, cfg.n_head
            )));
        }
        cfg.num_parameters()?;
        Ok(cfg)
    }

    /// Number of parameters the configuration describes (an error when it overflows).
    pub fn num_parameters(&self) -> Result<i64> {
        let (n, f, v) = (self.n_embd, self.n_inner, self.vocab_size);
        let block = checked_sum(&[
            checked_product(&[4, n])?,
            checked_product(&[4, n, n])?,
            checked_product(&[4, n])?,
            checked_product(&[2, n, f])?,
            f,
            n,
        ])?;
        let wte = checked_product(&[v, n])?;
        checked_sum(&[
            wte,
            checked_product(&[self.n_positions, n])?,
            checked_product(&[self.n_layer, block])?,
            checked_product(&[2, n])?,
            if self.tie_word_embeddings { 0 } else { wte },
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

/// `Conv1D` of `transformers`: `x @ weight + bias` with `weight` `[in, out]`.
#[derive(Debug)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(p: nn::Path, input: i64, output: i64) -> Result<Self> {
        Ok(Self {
            weight: param(
                &p,
                "weight",
                &[input, output],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            bias: param(&p, "bias", &[output], nn::Init::Const(0.0))?,
        })
    }
    /// `x W + b`, in `low` when given (input, weight and bias cast to it; one `addmm`, so the
    /// bias joins the products before the result is rounded to `low`, as in `transformers`).
    fn forward(&self, x: &Tensor, low: Option<Kind>) -> Tensor {
        match low {
            Some(k) if self.weight.kind() != k => {
                let w = self.weight.to_kind(k);
                let (rows, out) = (w.size()[0], w.size()[1]);
                let mut size = x.size();
                if let Some(last) = size.last_mut() {
                    *last = out;
                }
                self.bias
                    .to_kind(k)
                    .addmm(&x.to_kind(k).reshape([-1, rows]), &w)
                    .reshape(size.as_slice())
            }
            _ => x.matmul(&self.weight) + &self.bias,
        }
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// GPT-2 built under `GPT2Model`'s names (plus `lm_head` when untied).
#[derive(Debug)]
pub struct Gpt2 {
    /// Its configuration.
    pub config: Gpt2Config,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Option<nn::Linear>,
    training: AtomicBool,
    compute: ComputeKind,
}

impl Gpt2 {
    /// Creates the parameters under `p` (GPT-2's initialisation: normal(0, 0.02)); fails when
    /// libtorch cannot allocate them.
    pub fn new(p: &nn::Path, config: Gpt2Config) -> Result<Self> {
        let (n, f, eps) = (config.n_embd, config.n_inner, config.layer_norm_epsilon);
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let wte = Embedding::new(p / "wte", config.vocab_size, n, init)?;
        let wpe = Embedding::new(p / "wpe", config.n_positions, n, init)?;
        let mut blocks = layer_vec(config.n_layer)?;
        for i in 0..config.n_layer {
            let b = p / "h" / i;
            blocks.push(Block {
                ln_1: layer_norm(&b / "ln_1", n, eps)?,
                c_attn: Conv1D::new(&b / "attn" / "c_attn", n, checked_product(&[3, n])?)?,
                attn_proj: Conv1D::new(&b / "attn" / "c_proj", n, n)?,
                ln_2: layer_norm(&b / "ln_2", n, eps)?,
                c_fc: Conv1D::new(&b / "mlp" / "c_fc", n, f)?,
                mlp_proj: Conv1D::new(&b / "mlp" / "c_proj", f, n)?,
            });
        }
        let ln_f = layer_norm(p / "ln_f", n, eps)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(super::layers::linear(
                p / "lm_head",
                n,
                config.vocab_size,
                false,
            )?)
        };
        Ok(Self {
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            training: AtomicBool::new(false),
            compute: ComputeKind::default(),
        })
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
    ) -> Result<Tensor> {
        let c = &self.config;
        let hd = c
            .n_embd
            .checked_div(c.n_head)
            .ok_or_else(|| RecforgeError::config("n_head must be positive"))?;
        let heads = c.n_head;
        let (_, tq, _) = embeds.size3()?;
        let mask = causal_mask(key_mask, tq);
        let train = self.training.load(Ordering::Relaxed);
        // Mixed precision (`compute`): the blocks' linear layers in the lower kind, attention
        // and the residual stream in the parameters' own (see `Llama`'s forward).
        let low = self.compute.get();
        let mut x = dropout_if(embeds + self.wpe.forward(positions), c.embd_pdrop, train)?;
        let attn_p = if train { c.attn_pdrop } else { 0.0 };
        for (i, b) in self.blocks.iter().enumerate() {
            let qkv = b
                .c_attn
                .forward(&b.ln_1.forward(&x), low)
                .to_kind(x.kind())
                .f_split(c.n_embd, -1)?;
            let [q, k, v] = qkv.as_slice() else {
                return Err(RecforgeError::data(
                    "c_attn output does not split into q, k, v",
                ));
            };
            let q = split_heads(q, heads, hd)?;
            let k = split_heads(k, heads, hd)?;
            let v = split_heads(v, heads, hd)?;
            let mut scale = if c.scale_attn_weights {
                1.0 / (hd as f64).sqrt()
            } else {
                1.0
            };
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            let slot = cache.as_deref_mut().and_then(|c| c.get_mut(i));
            let a = merge_heads(&attend_cached(slot, &q, k, v, &mask, Some(scale), attn_p)?)?;
            x = &x + dropout_if(b.attn_proj.forward(&a, low), c.resid_pdrop, train)?;
            let f = c
                .activation
                .apply(&b.c_fc.forward(&b.ln_2.forward(&x), low));
            x = &x + dropout_if(b.mlp_proj.forward(&f, low), c.resid_pdrop, train)?;
        }
        Ok(self.ln_f.forward(&x))
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
    fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }
    fn set_bf16_products(&self, on: bool) {
        self.compute.set_bf16(on);
    }
}
