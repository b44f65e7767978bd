//! The T5 encoder (`T5EncoderModel`), the "item LLM" of hierarchical sequential recommenders.
//!
//! T5 differs from BERT in three ways, all reproduced here: attention logits are not scaled by
//! `1/sqrt(d)` and get a learned bias per relative-position bucket (computed in the first layer
//! and shared by all); the layer norm only rescales (root mean square, no bias, no centring) and
//! comes before each sub-layer; and the feed-forward block is ReLU or gated GELU. Checkpoints of
//! `T5Model` and `T5ForConditionalGeneration` load too: their decoder is ignored.

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::{checked_product, checked_sum, HfConfig};
use super::layers::{
    attend, layer_vec, linear, merge_heads, split_heads, Activation, Embedding, RmsNorm,
};
use super::weights::Layout;
use crate::error::{RecforgeError, Result};

/// Checkpoint names of the T5 encoder.
pub const LAYOUT: Layout = Layout {
    prefix: "",
    unprefixed: &[],
    ignorable: &["decoder.", "lm_head.", "encoder.embed_tokens.weight"],
};

/// The fields of `T5Config` the encoder uses.
#[derive(Debug, Clone)]
pub struct T5Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Model width.
    pub d_model: i64,
    /// Width of one attention head.
    pub d_kv: i64,
    /// Feed-forward size.
    pub d_ff: i64,
    /// Encoder layers.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// Relative-position buckets.
    pub relative_attention_num_buckets: i64,
    /// Distance beyond which all positions share the last bucket.
    pub relative_attention_max_distance: i64,
    /// Layer-norm epsilon.
    pub layer_norm_epsilon: f64,
    /// Feed-forward activation.
    pub act: Activation,
    /// Whether the feed-forward block is gated (`gated-gelu`, `gated-silu`, ...).
    pub gated: bool,
    /// Pad token id.
    pub pad_token_id: Option<i64>,
}

impl T5Config {
    /// Reads a `config.json` of `model_type` `t5` (defaults as in `transformers`).
    pub fn from_hf(c: &HfConfig) -> Result<Self> {
        let proj = c.str("feed_forward_proj", "relu")?;
        let (gated, act) = match proj.strip_prefix("gated-") {
            Some(a) => (true, a),
            None => (false, proj.as_str()),
        };
        // transformers maps T5's "gelu" in gated-gelu to the tanh approximation.
        let act = if gated && act == "gelu" {
            "gelu_new"
        } else {
            act
        };
        let act = Activation::parse(act, "feed_forward_proj")?;
        let cfg = Self {
            vocab_size: c.int_req("vocab_size")?,
            d_model: c.size("d_model", 512)?,
            d_kv: c.size("d_kv", 64)?,
            d_ff: c.size("d_ff", 2048)?,
            num_layers: c.size("num_layers", 6)?,
            num_heads: c.size("num_heads", 8)?,
            relative_attention_num_buckets: c.size("relative_attention_num_buckets", 32)?,
            relative_attention_max_distance: c.size("relative_attention_max_distance", 128)?,
            layer_norm_epsilon: c.eps("layer_norm_epsilon", 1e-6)?,
            act,
            gated,
            pad_token_id: c.int_opt("pad_token_id")?.or(Some(0)),
        };
        if cfg.relative_attention_num_buckets < 4 {
            return Err(RecforgeError::config(format!(
                "config.json relative_attention_num_buckets must be at least 4, got {}",
                cfg.relative_attention_num_buckets
            )));
        }
        super::config::check_pad_id(cfg.pad_token_id, cfg.vocab_size)?;
        cfg.num_parameters()?;
        Ok(cfg)
    }

    /// Number of parameters the encoder's configuration describes (an error when it overflows).
    pub fn num_parameters(&self) -> Result<i64> {
        let d = self.d_model;
        let inner = checked_product(&[self.num_heads, self.d_kv])?;
        let ff = checked_product(&[if self.gated { 3 } else { 2 }, d, self.d_ff])?;
        let block = checked_sum(&[
            checked_product(&[4, d, inner])?,
            ff,
            checked_product(&[2, d])?,
        ])?;
        checked_sum(&[
            checked_product(&[self.vocab_size, d])?,
            checked_product(&[self.relative_attention_num_buckets, self.num_heads])?,
            checked_product(&[self.num_layers, block])?,
            d,
        ])
    }
}

/// The bidirectional relative-position bucket of `relative = key - query`, as in T5: half the
/// buckets for each direction; exact buckets for small distances, then logarithmically wider ones
/// up to `max_distance`.
pub fn relative_bucket(relative: i64, num_buckets: i64, max_distance: i64) -> i64 {
    let half = num_buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let large = max_exact as f32
            + ((n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
                * (half - max_exact) as f32);
        // Clamped below too: a max_distance under max_exact would make the log ratio negative
        // (or infinite), and the bucket an out-of-range index.
        bucket += (large as i64).clamp(max_exact, half - 1);
    }
    bucket
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    ff_norm: RmsNorm,
    wi: Vec<nn::Linear>,
    wo: nn::Linear,
}

/// A T5 encoder built in a var store under `T5EncoderModel`'s names.
#[derive(Debug)]
pub struct T5Encoder {
    /// Its configuration.
    pub config: T5Config,
    shared: Embedding,
    relative_bias: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
}

impl T5Encoder {
    /// Creates the parameters under `p`; fails when libtorch cannot allocate them.
    pub fn new(p: &nn::Path, config: T5Config) -> Result<Self> {
        let (d, f, eps) = (config.d_model, config.d_ff, config.layer_norm_epsilon);
        let inner = checked_product(&[config.num_heads, config.d_kv])?;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let shared = Embedding::new(p / "shared", config.vocab_size, d, init)?;
        let relative_bias = Embedding::new(
            p / "encoder" / "block" / 0 / "layer" / 0 / "SelfAttention" / "relative_attention_bias",
            config.relative_attention_num_buckets,
            config.num_heads,
            init,
        )?;
        let mut blocks = layer_vec(config.num_layers)?;
        for i in 0..config.num_layers {
            let b = p / "encoder" / "block" / i;
            let a = &b / "layer" / 0;
            let ffl = &b / "layer" / 1;
            let sa = &a / "SelfAttention";
            let dense = &ffl / "DenseReluDense";
            let wi = if config.gated {
                vec![
                    linear(&dense / "wi_0", d, f, false)?,
                    linear(&dense / "wi_1", d, f, false)?,
                ]
            } else {
                vec![linear(&dense / "wi", d, f, false)?]
            };
            blocks.push(Block {
                attn_norm: RmsNorm::new(&a / "layer_norm", d, eps)?,
                q: linear(&sa / "q", d, inner, false)?,
                k: linear(&sa / "k", d, inner, false)?,
                v: linear(&sa / "v", d, inner, false)?,
                o: linear(&sa / "o", inner, d, false)?,
                ff_norm: RmsNorm::new(&ffl / "layer_norm", d, eps)?,
                wi,
                wo: linear(&dense / "wo", f, d, false)?,
            });
        }
        let final_norm = RmsNorm::new(p / "encoder" / "final_layer_norm", d, eps)?;
        Ok(Self {
            config,
            shared,
            relative_bias,
            blocks,
            final_norm,
        })
    }

    /// `[1, heads, T, T]` position bias.
    fn position_bias(&self, t: i64, dev: tch::Device) -> Tensor {
        let c = &self.config;
        let buckets: Vec<i64> = (0..t)
            .flat_map(|q| {
                (0..t).map(move |k| {
                    relative_bucket(
                        k - q,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_slice(&buckets).view([t, t]).to_device(dev);
        self.relative_bias
            .forward(&buckets)
            .permute([2, 0, 1])
            .unsqueeze(0)
    }

    /// Last hidden state `[B, T, d_model]` of ids `[B, T]` with a 0/1 mask `[B, T]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.size2()?;
        let mut x = self.shared.forward(ids);
        let neg = f32::MIN as f64;
        let pad_bias = (mask.ne(0).logical_not().to_kind(x.kind()) * neg)
            .unsqueeze(1)
            .unsqueeze(1);
        let bias = self.position_bias(t, ids.device()).to_kind(x.kind()) + pad_bias;
        let (h, dk) = (self.config.num_heads, self.config.d_kv);
        for b in &self.blocks {
            let n = b.attn_norm.forward(&x);
            let q = split_heads(&b.q.forward(&n), h, dk)?;
            let k = split_heads(&b.k.forward(&n), h, dk)?;
            let v = split_heads(&b.v.forward(&n), h, dk)?;
            let a = merge_heads(&attend(&q, &k, &v, Some(&bias), Some(1.0)))?;
            x = &x + b.o.forward(&a);
            let n = b.ff_norm.forward(&x);
            let hidden = match b.wi.as_slice() {
                [gate, up] => self.config.act.apply(&gate.forward(&n)) * up.forward(&n),
                [wi] => self.config.act.apply(&wi.forward(&n)),
                _ => unreachable!("one or two input projections"),
            };
            x = &x + b.wo.forward(&hidden);
        }
        Ok(self.final_norm.forward(&x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_parameter_counts_equal_what_is_built_and_bad_sizes_are_errors() {
        for proj in ["relu", "gated-gelu"] {
            let j = json!({"model_type": "t5", "vocab_size": 40, "d_model": 16, "d_kv": 4,
                           "d_ff": 24, "num_layers": 2, "num_heads": 2, "feed_forward_proj": proj});
            let cfg = T5Config::from_hf(&HfConfig::new(j).unwrap()).unwrap();
            let n = cfg.num_parameters().unwrap();
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _t5 = T5Encoder::new(&vs.root(), cfg).unwrap();
            let built: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
            assert_eq!(n, built, "{proj}");
        }
        for (field, value) in [
            ("num_heads", json!(0)),
            ("d_kv", json!(-1)),
            ("layer_norm_epsilon", json!(-1.0)),
            ("relative_attention_num_buckets", json!(2)),
            ("pad_token_id", json!(40)),
        ] {
            let mut j = json!({"model_type": "t5", "vocab_size": 40});
            j[field] = value;
            let e = T5Config::from_hf(&HfConfig::new(j).unwrap()).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        // A max_distance below the exact range used to give negative (out-of-table) buckets.
        for rel in -200..200 {
            let b = relative_bucket(rel, 32, 3);
            assert!((0..32).contains(&b), "{rel}: {b}");
        }
    }

    #[test]
    fn buckets_match_hand_computed_t5_values() {
        // num_buckets 32, max_distance 128: 16 per direction, exact below 8.
        assert_eq!(relative_bucket(0, 32, 128), 0);
        assert_eq!(relative_bucket(-3, 32, 128), 3);
        assert_eq!(relative_bucket(3, 32, 128), 19);
        // n = 8: 8 + floor(ln(1)/ln(16) * 8) = 8.
        assert_eq!(relative_bucket(-8, 32, 128), 8);
        // n = 32: 8 + floor(ln(4)/ln(16) * 8) = 8 + 4 = 12.
        assert_eq!(relative_bucket(-32, 32, 128), 12);
        // Far away: clamped to the last bucket of the direction.
        assert_eq!(relative_bucket(-1000, 32, 128), 15);
        assert_eq!(relative_bucket(1000, 32, 128), 31);
    }
}
