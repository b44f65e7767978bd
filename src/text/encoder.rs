//! Sentence encoders: a BERT or T5 encoder with its tokenizer, pooling and normalisation, turning
//! texts into embedding rows the way `sentence-transformers` does.
//!
//! Texts are tokenized in parallel, sorted by length so each batch pads little, run through the
//! network without autograd, pooled (mean over real tokens, the first token, or the max), L2
//! normalised if asked, and returned in input order.

use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::bert::{self, Bert, BertConfig};
use super::config::HfConfig;
use super::t5::{self, T5Config, T5Encoder};
use super::tokenize::{pad, PaddingSide, TextTokenizer};
use super::weights::{load_into, read_config, read_text, Checkpoint};
use crate::error::{RecforgeError, Result};

/// How token states become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the real (unmasked) tokens.
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
    /// Element-wise max over the real tokens.
    Max,
}

impl Pooling {
    /// Parses `"mean"`, `"cls"` or `"max"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Self::Mean),
            "cls" => Ok(Self::Cls),
            "max" => Ok(Self::Max),
            _ => Err(RecforgeError::config(format!(
                "pooling must be 'mean', 'cls' or 'max', got {s:?}"
            ))),
        }
    }

    /// The pooling a `sentence-transformers` folder declares in `1_Pooling/config.json`.
    pub fn from_folder(dir: &Path) -> Result<Option<Self>> {
        let file = dir.join("1_Pooling").join("config.json");
        if !file.is_file() {
            return Ok(None);
        }
        let json: serde_json::Value = serde_json::from_str(&read_text(&file)?).map_err(|e| {
            RecforgeError::data(format!("{} is not valid JSON: {e}", file.display()))
        })?;
        let on = |k: &str| json.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let modes = [
            ("pooling_mode_mean_tokens", Self::Mean),
            ("pooling_mode_cls_token", Self::Cls),
            ("pooling_mode_max_tokens", Self::Max),
        ];
        let chosen: Vec<Self> = modes
            .iter()
            .filter(|(k, _)| on(k))
            .map(|(_, m)| *m)
            .collect();
        let unsupported = [
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ];
        if let Some(k) = unsupported.iter().find(|k| on(k)) {
            return Err(RecforgeError::config(format!(
                "{} sets {k}, which recforge does not support",
                file.display()
            )));
        }
        match chosen.as_slice() {
            [one] => Ok(Some(*one)),
            [] => Ok(None),
            _ => Err(RecforgeError::config(format!(
                "{} turns on several pooling modes; recforge supports exactly one",
                file.display()
            ))),
        }
    }

    /// Pools `[B, T, H]` states with a 0/1 mask `[B, T]` into `[B, H]`.
    pub fn apply(self, states: &Tensor, mask: &Tensor) -> Tensor {
        let m = mask.to_kind(states.kind()).unsqueeze(-1);
        match self {
            Self::Mean => {
                (states * &m).sum_dim_intlist(1, false, states.kind())
                    / m.sum_dim_intlist(1, false, states.kind()).clamp_min(1e-9)
            }
            Self::Cls => states.select(1, 0),
            Self::Max => states.masked_fill(&m.eq(0.0), -1e9).amax(1, false),
        }
    }
}

/// The network behind an encoder.
#[derive(Debug)]
pub enum EncoderNet {
    /// BERT family.
    Bert(Bert),
    /// T5 encoder.
    T5(T5Encoder),
}

impl EncoderNet {
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Self::Bert(m) => m.forward(ids, mask),
            Self::T5(m) => m.forward(ids, mask),
        }
    }

    fn vocab_size(&self) -> i64 {
        match self {
            Self::Bert(m) => m.config.vocab_size,
            Self::T5(m) => m.config.vocab_size,
        }
    }

    /// Output width.
    pub fn dim(&self) -> i64 {
        match self {
            Self::Bert(m) => m.config.hidden_size,
            Self::T5(m) => m.config.d_model,
        }
    }
}

/// Options of [`SentenceEncoder::from_pretrained`].
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// Where the weights live.
    pub device: Device,
    /// Weight dtype (float32, or float16/bfloat16 to halve memory, mainly on CUDA).
    pub kind: Kind,
    /// Pooling; `None` takes `1_Pooling/config.json`, else mean.
    pub pooling: Option<Pooling>,
    /// L2-normalise the vectors.
    pub normalize: bool,
    /// Truncation length; `None` takes `sentence_bert_config.json` `max_seq_length`, else the
    /// model's position limit (512 for T5).
    pub max_length: Option<usize>,
    /// Text put before every input (`"query: "` / `"passage: "` for e5).
    pub prefix: String,
}

/// A text encoder ready to embed texts.
pub struct SentenceEncoder {
    vs: VarStore,
    /// The network.
    pub net: EncoderNet,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Pooling in use.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised.
    pub normalize: bool,
    /// Truncation length in tokens.
    pub max_length: usize,
    /// Text put before every input.
    pub prefix: String,
}

impl SentenceEncoder {
    /// Loads an encoder folder: `config.json`, safetensors weights and `tokenizer.json`.
    pub fn from_pretrained(dir: &Path, opts: EncoderOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(RecforgeError::Io {
                context: format!("model folder {}", dir.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            });
        }
        let config = HfConfig::new(read_config(dir)?)?;
        let model_type = config.model_type()?;
        enum Arch {
            Bert(BertConfig),
            T5(T5Config),
        }
        let arch = match model_type.as_str() {
            "bert" => Arch::Bert(BertConfig::from_hf(&config)?),
            "t5" | "mt5" => Arch::T5(T5Config::from_hf(&config)?),
            other => {
                return Err(RecforgeError::config(format!(
                    "config.json model_type {other:?} is not a supported encoder (bert, t5)"
                )))
            }
        };
        let ckpt = Checkpoint::open(dir)?;
        ckpt.check_holds(match &arch {
            Arch::Bert(c) => c.num_parameters()?,
            Arch::T5(c) => c.num_parameters()?,
        })?;
        let mut vs = VarStore::new(opts.device);
        let (net, layout, pad_id, limit) = match arch {
            Arch::Bert(c) => {
                let (pad, limit) = (c.pad_token_id, c.max_position_embeddings);
                (
                    EncoderNet::Bert(Bert::new(&vs.root(), c)?),
                    bert::LAYOUT,
                    pad,
                    usize::try_from(limit).unwrap_or(usize::MAX),
                )
            }
            Arch::T5(c) => {
                let pad = c.pad_token_id;
                (
                    EncoderNet::T5(T5Encoder::new(&vs.root(), c)?),
                    t5::LAYOUT,
                    pad,
                    512,
                )
            }
        };
        load_into(&vs, &ckpt, &layout)?;
        drop(ckpt);
        if opts.kind != Kind::Float {
            vs.set_kind(opts.kind);
        }
        vs.freeze();
        // The config's pad id was checked against its vocabulary when it was read.
        let pad_id = pad_id.and_then(|p| u32::try_from(p).ok());
        let tokenizer = TextTokenizer::from_file(dir, pad_id)?;
        if tokenizer.vocab_size() as i64 > net.vocab_size() {
            return Err(RecforgeError::config(format!(
                "tokenizer {} has {} tokens but the model's vocab_size is {}: they do not belong together",
                dir.join("tokenizer.json").display(),
                tokenizer.vocab_size(),
                net.vocab_size()
            )));
        }
        if i64::from(tokenizer.pad_id()) >= net.vocab_size() {
            return Err(RecforgeError::config(format!(
                "tokenizer {} pads with id {}, outside the model's vocabulary of {}",
                dir.join("tokenizer.json").display(),
                tokenizer.pad_id(),
                net.vocab_size()
            )));
        }
        let max_length = match opts.max_length {
            Some(n) => n,
            None => sentence_max_length(dir)?.unwrap_or(limit),
        };
        if max_length == 0 || (max_length > limit && model_type == "bert") {
            return Err(RecforgeError::config(format!(
                "max_length must be between 1 and the model's {limit} positions, got {max_length}"
            )));
        }
        let pooling = match opts.pooling {
            Some(p) => p,
            None => Pooling::from_folder(dir)?.unwrap_or(Pooling::Mean),
        };
        Ok(Self {
            vs,
            net,
            tokenizer,
            pooling,
            normalize: opts.normalize,
            max_length,
            prefix: opts.prefix,
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Last hidden state `[B, T, H]` for ids and 0/1 mask (row-major `[rows, cols]`).
    pub fn hidden_states(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        super::decoder::check_ids(ids, self.net.vocab_size())?;
        super::decoder::check_mask(mask, &ids.size())?;
        let dev = self.device();
        tch::no_grad(|| self.net.forward(&ids.to_device(dev), &mask.to_device(dev)))
    }

    /// Embeds texts into `[N, dim]` float32 rows (row-major), in input order. `step(done, total)`
    /// is called after each batch; returning true stops early with an error.
    pub fn encode(
        &self,
        texts: &[String],
        batch_size: usize,
        step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<f32>> {
        if batch_size == 0 {
            return Err(RecforgeError::config("batch_size must be at least 1"));
        }
        let dim = self.net.dim() as usize;
        let n = texts.len();
        let prefixed: Vec<String>;
        let texts = if self.prefix.is_empty() {
            texts
        } else {
            prefixed = texts
                .iter()
                .map(|t| format!("{}{t}", self.prefix))
                .collect();
            &prefixed
        };
        let seqs = self
            .tokenizer
            .encode_each(texts, true, Some(self.max_length))?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out = vec![0f32; n * dim];
        let dev = self.device();
        let pad_id = self.tokenizer.pad_id() as i64;
        for (b, rows) in order.chunks(batch_size).enumerate() {
            let batch: Vec<&[u32]> = rows.iter().map(|&i| seqs[i].as_slice()).collect();
            let p = pad(&batch, pad_id, PaddingSide::Right);
            let shape = [p.rows as i64, p.cols as i64];
            let ids = Tensor::from_slice(&p.ids).f_view(shape)?.to_device(dev);
            let mask = Tensor::from_slice(&p.mask).f_view(shape)?.to_device(dev);
            // A tokenizer.json whose vocabulary has ids past its size would index outside the
            // embedding table.
            super::decoder::check_ids(&ids, self.net.vocab_size())?;
            let pooled = tch::no_grad(|| -> Result<Tensor> {
                let states = self.net.forward(&ids, &mask)?;
                let mut v = self.pooling.apply(&states, &mask).to_kind(Kind::Float);
                if self.normalize {
                    let norm = v.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
                    v = &v / norm;
                }
                Ok(v.to_device(Device::Cpu).contiguous())
            })?;
            let flat: Vec<f32> = Vec::try_from(pooled.view([-1]))?;
            for (r, &i) in rows.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&flat[r * dim..(r + 1) * dim]);
            }
            let done = (b * batch_size + rows.len()).min(n);
            if step(done, n) {
                return Err(RecforgeError::data("encoding stopped"));
            }
        }
        Ok(out)
    }
}

/// `max_seq_length` of a `sentence-transformers` folder's `sentence_bert_config.json`.
fn sentence_max_length(dir: &Path) -> Result<Option<usize>> {
    let file = dir.join("sentence_bert_config.json");
    if !file.is_file() {
        return Ok(None);
    }
    let json: serde_json::Value = serde_json::from_str(&read_text(&file)?)
        .map_err(|e| RecforgeError::data(format!("{} is not valid JSON: {e}", file.display())))?;
    Ok(json
        .get("max_seq_length")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize))
}
