//! The BERT encoder (`BertModel`): all-MiniLM, e5, bge and other BERT-family sentence encoders.
//!
//! Parameter names are those of `transformers`' `BertModel` (`embeddings.word_embeddings.weight`,
//! `encoder.layer.3.attention.self.query.weight`, ...); checkpoints of `BertFor*` heads load too
//! (their `bert.` prefix is stripped; the heads are ignored).

use serde_json::json;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::{checked_product, checked_sum, HfConfig};
use super::layers::{
    attend, layer_norm, layer_vec, linear, merge_heads, padding_mask, split_heads, Activation,
    Embedding, LayerNorm,
};
use super::weights::Layout;
use crate::error::{RecforgeError, Result};

/// Checkpoint names of the BERT family.
pub const LAYOUT: Layout = Layout {
    prefix: "bert.",
    unprefixed: &[],
    ignorable: &[
        "pooler.",
        "cls.",
        "embeddings.position_ids",
        "qa_outputs.",
        "classifier.",
    ],
};

/// The fields of `BertConfig` recforge uses.
#[derive(Debug, Clone)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Number of layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Feed-forward size.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Longest input.
    pub max_position_embeddings: i64,
    /// Segment vocabulary.
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Pad token id.
    pub pad_token_id: Option<i64>,
}

impl BertConfig {
    /// Reads a `config.json` of `model_type` `bert` (defaults as in `transformers`).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        c.require("position_embedding_type", &[json!("absolute")])?;
        c.require("is_decoder", &[json!(false)])?;
        c.require("add_cross_attention", &[json!(false)])?;
        let cfg = Self {
            vocab_size: c.int_req("vocab_size")?,
            hidden_size: c.size("hidden_size", 768)?,
            num_hidden_layers: c.size("num_hidden_layers", 12)?,
            num_attention_heads: c.size("num_attention_heads", 12)?,
            intermediate_size: c.size("intermediate_size", 3072)?,
            hidden_act: Activation::parse(&c.str("hidden_act", "gelu")?, "hidden_act")?,
            max_position_embeddings: c.size("max_position_embeddings", 512)?,
            type_vocab_size: c.size("type_vocab_size", 2)?,
            layer_norm_eps: c.eps("layer_norm_eps", 1e-12)?,
            pad_token_id: c.int_opt("pad_token_id")?,
        };
        // Sizes are at least 1 here, so the remainder is defined.
        if cfg.hidden_size.checked_rem(cfg.num_attention_heads) != Some(0) {
            return Err(RecforgeError::config(format!(
                "config.json hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        super::config::check_pad_id(cfg.pad_token_id, cfg.vocab_size)?;
        cfg.num_parameters()?;
        Ok(cfg)
    }

    /// Number of parameters the configuration describes (an error when it overflows).
    pub fn num_parameters(&self) -> Result<i64> {
        let h = self.hidden_size;
        let f = self.intermediate_size;
        let embeddings = checked_sum(&[
            checked_product(&[
                checked_sum(&[
                    self.vocab_size,
                    self.max_position_embeddings,
                    self.type_vocab_size,
                ])?,
                h,
            ])?,
            checked_product(&[2, h])?,
        ])?;
        let layer = checked_sum(&[
            checked_product(&[4, h, h])?,
            checked_product(&[4, h])?,
            checked_product(&[2, h, f])?,
            f,
            checked_product(&[5, h])?,
        ])?;
        checked_sum(&[
            embeddings,
            checked_product(&[self.num_hidden_layers, layer])?,
        ])
    }
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: LayerNorm,
}

/// A BERT encoder built in a var store under `BertModel`'s names.
#[derive(Debug)]
pub struct Bert {
    /// Its configuration.
    pub config: BertConfig,
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    /// Creates the parameters under `p` (randomly initialised; load a checkpoint over them).
    /// Fails when libtorch cannot allocate them.
    pub fn new(p: &nn::Path, config: BertConfig) -> Result<Self> {
        let (h, f, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let e = p / "embeddings";
        let emb = |name: &str, n: i64| {
            Embedding::new(
                &e / name,
                n,
                h,
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
        };
        let words = emb("word_embeddings", config.vocab_size)?;
        let positions = emb("position_embeddings", config.max_position_embeddings)?;
        let token_types = emb("token_type_embeddings", config.type_vocab_size)?;
        let emb_norm = layer_norm(&e / "LayerNorm", h, eps)?;
        let mut layers = layer_vec(config.num_hidden_layers)?;
        for i in 0..config.num_hidden_layers {
            let l = p / "encoder" / "layer" / i;
            let a = &l / "attention";
            layers.push(Layer {
                query: linear(&a / "self" / "query", h, h, true)?,
                key: linear(&a / "self" / "key", h, h, true)?,
                value: linear(&a / "self" / "value", h, h, true)?,
                attn_out: linear(&a / "output" / "dense", h, h, true)?,
                attn_norm: layer_norm(&a / "output" / "LayerNorm", h, eps)?,
                intermediate: linear(&l / "intermediate" / "dense", h, f, true)?,
                output: linear(&l / "output" / "dense", f, h, true)?,
                out_norm: layer_norm(&l / "output" / "LayerNorm", h, eps)?,
            });
        }
        Ok(Self {
            config,
            words,
            positions,
            token_types,
            emb_norm,
            layers,
        })
    }

    /// Last hidden state `[B, T, H]` of ids `[B, T]` with a 0/1 mask `[B, T]` (right padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.size2()?;
        if t > self.config.max_position_embeddings {
            return Err(RecforgeError::data(format!(
                "input of {t} tokens is longer than max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        let dev = ids.device();
        let pos = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
        let x = self.words.forward(ids)
            + self.positions.forward(&pos)
            + self.token_types.forward(&ids.zeros_like());
        let mut x = self.emb_norm.forward(&x);
        let attn_mask = padding_mask(mask);
        let heads = self.config.num_attention_heads;
        let hd = self
            .config
            .hidden_size
            .checked_div(heads)
            .ok_or_else(|| RecforgeError::config("num_attention_heads must be positive"))?;
        for l in &self.layers {
            let q = split_heads(&l.query.forward(&x), heads, hd)?;
            let k = split_heads(&l.key.forward(&x), heads, hd)?;
            let v = split_heads(&l.value.forward(&x), heads, hd)?;
            let a = merge_heads(&attend(&q, &k, &v, Some(&attn_mask), None))?;
            x = l.attn_norm.forward(&(l.attn_out.forward(&a) + &x));
            let f = self.config.hidden_act.apply(&l.intermediate.forward(&x));
            x = l.out_norm.forward(&(l.output.forward(&f) + &x));
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_negative_sizes_are_config_errors_not_panics() {
        // num_attention_heads 0 divided by zero ("attempt to calculate the remainder").
        for (field, value) in [
            ("num_attention_heads", json!(0)),
            ("num_attention_heads", json!(-4)),
            ("intermediate_size", json!(-1)),
            ("layer_norm_eps", json!(-1e-12)),
            ("pad_token_id", json!(64)),
        ] {
            let mut j = json!({"model_type": "bert", "vocab_size": 64, "hidden_size": 32,
                               "num_attention_heads": 4});
            j[field] = value;
            let e = BertConfig::from_hf(&HfConfig::new(j).unwrap()).unwrap_err();
            assert!(matches!(e, RecforgeError::Config(_)), "{field}: {e}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        let ok = json!({"model_type": "bert", "vocab_size": 64, "hidden_size": 32,
                        "num_attention_heads": 4, "intermediate_size": 37, "num_hidden_layers": 2,
                        "max_position_embeddings": 40});
        let cfg = BertConfig::from_hf(&HfConfig::new(ok).unwrap()).unwrap();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let n = cfg.num_parameters().unwrap();
        let _bert = Bert::new(&vs.root(), cfg).unwrap();
        let built: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
        assert_eq!(
            n, built,
            "num_parameters must count exactly what new() creates"
        );
    }
}
