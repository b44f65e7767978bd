//! One spec per model: the hyperparameters of the network and of its training, parsed and
//! validated once (here, in Rust), saved as the checkpoint's config and shown in `repr`.
//!
//! A spec is a flat JSON object, as Python keyword arguments are: `{"model": "FM", "dim": 64,
//! "loss": "bpr", ..., "epochs": 20, "lr": 0.005, ...}`. The training keys (`epochs`,
//! `batch_size`, `lr`, `optimizer`, ...) form a [`TrainSpec`]; the rest belong to the model's own
//! spec, which refuses unknown keys.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::Device;

use super::model::Model;
use super::optim::{Kind as OptimKind, LrSchedule, OptimConfig, ParamGroup, Schedule};
use crate::error::{RecforgeError, Result};
use crate::models::fm::{FmConfig, FmLoss};
use crate::models::hierarchical::{
    HierLoss, HierarchicalConfig, HierarchicalModel, ItemInput, ItemMode, ItemPooling,
    NegativePool, Similarity, UserNorm, UserPooling,
};
use crate::models::mf::{MfModel, MfObjective};
use crate::models::sasrec::{SasRecConfig, SeqLoss};
use crate::models::soft_token::{
    BackboneMode, BackboneSource, Precision, SoftTokenConfig, SoftTokenModel,
};
use crate::models::{FactorsConfig, FmModel, SasRecModel};

/// The training keys of a flat spec.
const TRAIN_KEYS: [&str; 11] = [
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "clip_grad_norm",
    "lr_schedule",
    "seed",
    "reg",
    "momentum",
    "param_groups",
];

fn default_optimizer() -> String {
    "adam".into()
}

/// A learning-rate schedule in epochs, as users write it: a name, or a dict with `name`,
/// `warmup_epochs` (may be fractional), `end`, `every_epochs` and `gamma`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `constant`, `linear`, `cosine` or `step`.
    pub name: String,
    /// Linear warm-up, in epochs.
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Final factor of `linear` / `cosine`.
    #[serde(default)]
    pub end: f64,
    /// `step`: epochs between decays.
    #[serde(default = "one")]
    pub every_epochs: f64,
    /// `step`: decay factor.
    #[serde(default = "gamma")]
    pub gamma: f64,
}

fn one() -> f64 {
    1.0
}
fn gamma() -> f64 {
    0.1
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScheduleArg {
    Name(String),
    Full(ScheduleSpec),
}

fn schedule_arg<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<ScheduleSpec>, D::Error> {
    let arg: Option<Value> = Option::deserialize(d)?;
    let Some(v) = arg else { return Ok(None) };
    if let Value::Object(m) = &v {
        const KNOWN: [&str; 5] = ["name", "warmup_epochs", "end", "every_epochs", "gamma"];
        let unknown: Vec<&String> = m.keys().filter(|k| !KNOWN.contains(&k.as_str())).collect();
        if !unknown.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "lr_schedule has unknown keys {unknown:?}; known: {KNOWN:?}"
            )));
        }
    }
    match serde_json::from_value::<ScheduleArg>(v.clone()) {
        Ok(ScheduleArg::Name(name)) => Ok(Some(ScheduleSpec {
            name,
            warmup_epochs: 0.0,
            end: 0.0,
            every_epochs: 1.0,
            gamma: 0.1,
        })),
        Ok(ScheduleArg::Full(s)) => Ok(Some(s)),
        Err(_) => Err(serde::de::Error::custom(format!(
            "lr_schedule must be None, a name or a dict with 'name' and optionally 'warmup_epochs', 'end', 'every_epochs', 'gamma'; got {v}"
        ))),
    }
}

impl ScheduleSpec {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !["constant", "linear", "cosine", "step"].contains(&self.name.as_str()) {
            return Err(RecforgeError::config(format!(
                "lr_schedule must be constant, linear, cosine or step, got {:?}",
                self.name
            )));
        }
        for (k, v) in [
            ("warmup_epochs", self.warmup_epochs),
            ("end", self.end),
            ("every_epochs", self.every_epochs),
            ("gamma", self.gamma),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(RecforgeError::config(format!(
                    "lr_schedule[{k:?}] must be a non-negative number, got {v}"
                )));
            }
        }
        if self.name == "step" && self.every_epochs <= 0.0 {
            return Err(RecforgeError::config(
                "lr_schedule 'step' needs every_epochs > 0",
            ));
        }
        Ok(())
    }

    /// The schedule in optimiser steps, for epochs of `batches` batches over `epochs` epochs.
    pub fn in_steps(&self, batches: usize, epochs: u64) -> Result<LrSchedule> {
        let b = batches as f64;
        let schedule = match self.name.as_str() {
            "constant" => Schedule::Constant,
            "linear" => Schedule::Linear { end: self.end },
            "cosine" => Schedule::Cosine { end: self.end },
            "step" => Schedule::Step {
                every: ((self.every_epochs * b).round() as u64).max(1),
                gamma: self.gamma,
            },
            other => {
                return Err(RecforgeError::config(format!(
                    "unknown lr_schedule {other:?}"
                )))
            }
        };
        let s = LrSchedule {
            schedule,
            warmup: (self.warmup_epochs * b).round() as u64,
            total: epochs.saturating_mul(batches as u64),
        };
        s.validate()?;
        Ok(s)
    }
}

/// How a model is trained: epochs, batches, the optimiser and its groups, the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Epochs of a `fit`.
    pub epochs: u64,
    /// Examples per batch.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// `adam`, `adamw`, `sgd` or `adagrad`.
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    /// Weight decay (L2 for Adam/SGD/Adagrad, decoupled for AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
    /// Clip the global gradient norm (0 = off).
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// Learning-rate schedule.
    #[serde(default, deserialize_with = "schedule_arg")]
    pub lr_schedule: Option<ScheduleSpec>,
    /// Initialisation, shuffling and sampling seed.
    #[serde(default)]
    pub seed: u64,
    /// L2 weight on the rows each example touches (models with embedding tables).
    #[serde(default)]
    pub reg: f64,
    /// Learning rate and weight decay by parameter-name prefix (the first match wins).
    #[serde(default)]
    pub param_groups: Vec<ParamGroup>,
}

impl TrainSpec {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.epochs < 1 || self.batch_size < 1 {
            return Err(RecforgeError::config(format!(
                "epochs and batch_size must be >= 1, got {} and {}",
                self.epochs, self.batch_size
            )));
        }
        if !(self.reg.is_finite() && self.reg >= 0.0) {
            return Err(RecforgeError::config(format!(
                "reg must be a non-negative number, got {}",
                self.reg
            )));
        }
        if let Some(s) = &self.lr_schedule {
            s.validate()?;
        }
        self.optim_config(Default::default())?.validate()
    }

    /// The optimiser settings; `betas` are the model's (SASRec uses 0.9 / 0.98).
    pub fn optim_config(&self, betas: Option<(f64, f64)>) -> Result<OptimConfig> {
        let base = OptimConfig::default();
        Ok(OptimConfig {
            kind: OptimKind::from_str(&self.optimizer)?,
            lr: self.lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            clip_grad_norm: self.clip_grad_norm,
            betas: betas.unwrap_or(base.betas),
            groups: self.param_groups.clone(),
            ..base
        })
    }
}

/// A value parsed with its `FromStr` (whose error names the allowed values).
fn from_str_arg<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = RecforgeError>,
{
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e: RecforgeError| serde::de::Error::custom(e.to_string()))
}

fn default_dim() -> i64 {
    64
}

/// Matrix factorisation (SVD with biases on ratings, BPR-MF without on implicit feedback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfSpec {
    /// Factor dimension.
    #[serde(default = "default_dim")]
    pub dim: i64,
    /// Standard deviation of the initial factors.
    #[serde(default = "init_std_default")]
    pub init_std: f64,
}

fn init_std_default() -> f64 {
    0.1
}

/// FM / NFM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FmSpec {
    /// Factor dimension.
    pub dim: i64,
    /// `mse`, `bpr` or `bce`.
    #[serde(deserialize_with = "from_str_arg")]
    pub loss: FmLoss,
    /// Hidden layers of the NFM's MLP (empty: FM).
    #[serde(default)]
    pub hidden: Vec<i64>,
    /// Dropout (NFM).
    #[serde(default)]
    pub dropout: f64,
    /// Batch normalisation in the MLP (NFM).
    #[serde(default)]
    pub batch_norm: bool,
    /// Standard deviation of the initial factors.
    #[serde(default = "init_std_default")]
    pub init_std: f64,
}

/// SASRec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SasRecSpec {
    /// Hidden size.
    pub dim: i64,
    /// Self-attention blocks.
    pub n_layers: i64,
    /// Attention heads.
    pub n_heads: i64,
    /// Longest sequence.
    pub max_len: i64,
    /// Dropout.
    pub dropout: f64,
    /// `ce` or `bce`.
    #[serde(deserialize_with = "from_str_arg")]
    pub loss: SeqLoss,
    /// Standard deviation of the initialisation.
    pub init_std: f64,
}

/// SoftTokenRec (collaborative soft tokens into a causal language model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftTokenSpec {
    /// A Hugging Face folder or `.gguf` path, or a config object.
    pub backbone: Value,
    /// `full`, `frozen` or `random`.
    pub backbone_mode: BackboneMode,
    /// Keep only the backbone's first transformer blocks (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_layers: Option<i64>,
    /// `fp32` or `bf16` (mixed precision in the backbone's blocks; absent in older specs: fp32).
    #[serde(default)]
    pub precision: Precision,
    /// Size of the user and item vectors.
    pub dim: i64,
    /// Longest input (user token + items).
    pub max_len: i64,
    /// Negatives per position for the BPR losses.
    pub n_negatives: i64,
    /// Weight of the all-item cross-entropy.
    pub ce_weight: f64,
    /// Weight of the context-item BPR loss.
    pub bpr_weight: f64,
    /// Weight of the user-item BPR loss.
    pub user_bpr_weight: f64,
    /// L2 weight on the batch's user and item rows.
    pub lambda_c: f64,
    /// Items per chunk of the cross-entropy.
    pub ce_chunk: i64,
    /// Dropout on the soft tokens in training.
    pub dropout: f64,
    /// Standard deviation of the tables' and projections' initialisation.
    pub init_std: f64,
}

/// HierarchicalRec (item LLM + rec LLM, S4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HierarchicalSpec {
    /// The rec LLM: a Hugging Face folder or `.gguf` path, or a config object.
    pub rec_backbone: Value,
    /// `full`, `frozen` or `random`.
    pub rec_mode: BackboneMode,
    /// Keep only the rec LLM's first transformer blocks (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rec_layers: Option<i64>,
    /// `fp32` or `bf16` (mixed precision in the rec LLM's and a fine-tuned item LLM's blocks;
    /// absent in older specs: fp32).
    #[serde(default)]
    pub precision: Precision,
    /// The item LLM inside the model (path or config), or what made the precomputed vectors.
    pub item_llm: Value,
    /// `frozen` or `finetune`.
    pub item_mode: ItemMode,
    /// `mean` or `item_token`.
    pub item_pooling: ItemPooling,
    /// `mean` or `last`.
    pub user_pooling: UserPooling,
    /// `none` or `batch` (absent in specs saved before it existed: `none`).
    #[serde(default)]
    pub user_norm: UserNorm,
    /// Longest item sequence.
    pub max_len: i64,
    /// `infonce` or `softmax`.
    pub loss: HierLoss,
    /// InfoNCE negatives.
    pub n_negatives: i64,
    /// `shared` or `per_position`.
    pub negatives: NegativePool,
    /// `dot` or `cosine`.
    pub similarity: Similarity,
    /// Softmax temperature.
    pub temperature: f64,
    /// Whether the temperature trains.
    pub learn_temperature: bool,
    /// Cosine above which a negative counts as a duplicate of the positive.
    pub dedup_threshold: f64,
    /// A learned per-item score bias.
    pub item_bias: bool,
    /// Retrieved items (RAG; 0: off).
    pub retrieve_k: i64,
    /// Items per chunk of the full softmax.
    pub ce_chunk: i64,
    /// Items per item-LLM forward when all items are encoded.
    pub item_batch: i64,
    /// Dropout on the rec LLM's inputs in training.
    pub dropout: f64,
    /// Standard deviation of the initialisation.
    pub init_std: f64,
}

/// The network part of a spec, by model name.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// Biased MF on ratings.
    Svd(MfSpec),
    /// MF with the BPR loss.
    BprMf(MfSpec),
    /// Factorization Machine (`name` is `FM` or `NFM`).
    Fm {
        /// `FM` or `NFM` (the class that saved it).
        name: String,
        /// The options.
        spec: FmSpec,
    },
    /// SASRec.
    SasRec(SasRecSpec),
    /// SoftTokenRec.
    SoftToken(SoftTokenSpec),
    /// HierarchicalRec.
    Hierarchical(HierarchicalSpec),
}

/// A model's whole spec: network and training.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The network.
    pub model: ModelSpec,
    /// The training.
    pub train: TrainSpec,
}

/// Data-dependent inputs of a model, beside its spec.
#[derive(Debug)]
pub enum SideData {
    /// An FM's feature rows.
    Fm(FmFeatures),
    /// HierarchicalRec's item side (item-LLM vectors or item token ids).
    Items(ItemInput),
}

/// Padded `[rows, width]` feature rows, row-major: indices, values, width.
pub type FeatureBuffers = (Vec<i64>, Vec<f32>, usize);

/// Side features of an FM: padded `[rows, width]` index and value buffers for users and items.
#[derive(Debug, Clone)]
pub struct FmFeatures {
    /// User rows.
    pub users: FeatureBuffers,
    /// Item rows.
    pub items: FeatureBuffers,
    /// Number of features.
    pub n_features: i64,
}

fn parse<T: serde::de::DeserializeOwned>(model: &str, v: Map<String, Value>) -> Result<T> {
    serde_path_to_error::deserialize(Value::Object(v)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            RecforgeError::config(format!("{model}: {inner}"))
        } else {
            RecforgeError::config(format!("{model}: {path}: {inner}"))
        }
    })
}

impl Spec {
    /// Parses and validates a flat JSON spec.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| RecforgeError::config(format!("a model spec must be JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(RecforgeError::config("a model spec must be a JSON object"));
        };
        let name = match map.remove("model") {
            Some(Value::String(s)) => s,
            other => {
                return Err(RecforgeError::config(format!(
                    "a model spec needs \"model\": a model name, got {other:?}"
                )))
            }
        };
        let mut train = Map::new();
        for k in TRAIN_KEYS {
            if let Some(v) = map.remove(k) {
                train.insert(k.to_string(), v);
            }
        }
        let train: TrainSpec = parse(&name, train)?;
        let model = match name.as_str() {
            "SVD" => ModelSpec::Svd(parse(&name, map)?),
            "BPRMF" => ModelSpec::BprMf(parse(&name, map)?),
            "FM" | "NFM" => ModelSpec::Fm {
                name: name.clone(),
                spec: parse(&name, map)?,
            },
            "SASRec" => ModelSpec::SasRec(parse(&name, map)?),
            "SoftTokenRec" => ModelSpec::SoftToken(parse(&name, map)?),
            "HierarchicalRec" => ModelSpec::Hierarchical(parse(&name, map)?),
            other => {
                return Err(RecforgeError::config(format!(
                    "unknown model {other:?}: expected SVD, BPRMF, FM, NFM, SASRec, SoftTokenRec or HierarchicalRec"
                )))
            }
        };
        let spec = Spec { model, train };
        spec.validate()?;
        Ok(spec)
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        match &self.model {
            ModelSpec::Svd(_) => "SVD",
            ModelSpec::BprMf(_) => "BPRMF",
            ModelSpec::Fm { name, .. } => name,
            ModelSpec::SasRec(_) => "SASRec",
            ModelSpec::SoftToken(_) => "SoftTokenRec",
            ModelSpec::Hierarchical(_) => "HierarchicalRec",
        }
    }

    /// The flat JSON object (what `from_json` reads back).
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("model".into(), Value::String(self.name().to_string()));
        let model = match &self.model {
            ModelSpec::Svd(s) | ModelSpec::BprMf(s) => serde_json::to_value(s),
            ModelSpec::Fm { spec, .. } => serde_json::to_value(spec),
            ModelSpec::SasRec(s) => serde_json::to_value(s),
            ModelSpec::SoftToken(s) => serde_json::to_value(s),
            ModelSpec::Hierarchical(s) => serde_json::to_value(s),
        };
        for v in [model, serde_json::to_value(&self.train)] {
            if let Ok(Value::Object(m)) = v {
                out.extend(m);
            }
        }
        Value::Object(out)
    }

    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        let check_std = |v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(RecforgeError::config(format!(
                    "init_std must be a non-negative number, got {v}"
                )))
            }
        };
        match &self.model {
            ModelSpec::Svd(s) | ModelSpec::BprMf(s) => {
                if s.dim < 1 {
                    return Err(RecforgeError::config(format!(
                        "dim must be >= 1, got {}",
                        s.dim
                    )));
                }
                check_std(s.init_std)
            }
            ModelSpec::Fm { spec, .. } => {
                if spec.dim < 1 || spec.hidden.iter().any(|&h| h < 1) {
                    return Err(RecforgeError::config(format!(
                        "dim and hidden sizes must be >= 1, got dim {} and hidden {:?}",
                        spec.dim, spec.hidden
                    )));
                }
                if !(0.0..1.0).contains(&spec.dropout) {
                    return Err(RecforgeError::config(format!(
                        "dropout must be in [0, 1), got {}",
                        spec.dropout
                    )));
                }
                if spec.batch_norm && spec.hidden.is_empty() {
                    return Err(RecforgeError::config(
                        "batch_norm applies to the MLP: it needs hidden layers (an NFM)",
                    ));
                }
                check_std(spec.init_std)
            }
            ModelSpec::SasRec(s) => self.sasrec_config(s, 1).validate(),
            ModelSpec::SoftToken(s) => {
                BackboneSource::from_value(&s.backbone)?;
                check_blocks("backbone_layers", s.backbone_layers)?;
                self.soft_token_config(s, 1, 1).validate()
            }
            ModelSpec::Hierarchical(s) => {
                BackboneSource::from_value(&s.rec_backbone)?;
                check_blocks("rec_layers", s.rec_layers)?;
                self.hierarchical_config(s, 1).validate()
            }
        }
    }

    fn hierarchical_config(&self, s: &HierarchicalSpec, n_items: i64) -> HierarchicalConfig {
        HierarchicalConfig {
            n_items,
            max_len: s.max_len,
            user_pooling: s.user_pooling,
            user_norm: s.user_norm,
            item_mode: s.item_mode,
            item_pooling: s.item_pooling,
            rec_mode: s.rec_mode,
            loss: s.loss,
            n_negatives: s.n_negatives,
            negatives: s.negatives,
            similarity: s.similarity,
            temperature: s.temperature,
            learn_temperature: s.learn_temperature,
            dedup_threshold: s.dedup_threshold,
            item_bias: s.item_bias,
            retrieve_k: s.retrieve_k,
            ce_chunk: s.ce_chunk,
            item_batch: s.item_batch,
            dropout: s.dropout,
            init_std: s.init_std,
            seed: self.train.seed,
        }
    }

    fn soft_token_config(&self, s: &SoftTokenSpec, n_users: i64, n_items: i64) -> SoftTokenConfig {
        SoftTokenConfig {
            n_users,
            n_items,
            dim: s.dim,
            max_len: s.max_len,
            n_negatives: s.n_negatives,
            ce_weight: s.ce_weight,
            bpr_weight: s.bpr_weight,
            user_bpr_weight: s.user_bpr_weight,
            lambda_c: s.lambda_c,
            ce_chunk: s.ce_chunk,
            dropout: s.dropout,
            mode: s.backbone_mode,
            init_std: s.init_std,
            seed: self.train.seed,
        }
    }

    fn sasrec_config(&self, s: &SasRecSpec, n_items: i64) -> SasRecConfig {
        SasRecConfig {
            n_items,
            dim: s.dim,
            n_layers: s.n_layers,
            n_heads: s.n_heads,
            max_len: s.max_len,
            dropout: s.dropout,
            init_std: s.init_std,
            seed: self.train.seed,
        }
    }

    /// The optimiser settings for this model.
    pub fn optim_config(&self) -> Result<OptimConfig> {
        let betas = matches!(self.model, ModelSpec::SasRec(_)).then_some((0.9, 0.98));
        self.train.optim_config(betas)
    }

    /// A freshly initialised model for `n_users` x `n_items` on `device`; an FM takes its side
    /// features from `side` (default: the user and item ids alone), HierarchicalRec its item
    /// side (required).
    pub fn build(
        &self,
        n_users: i64,
        n_items: i64,
        device: Device,
        side: Option<SideData>,
    ) -> Result<Box<dyn Model>> {
        let seed = self.train.seed;
        let reg = self.train.reg;
        let mf = |s: &MfSpec, objective: MfObjective| -> Result<Box<dyn Model>> {
            let config = FactorsConfig {
                n_users,
                n_items,
                dim: s.dim,
                biases: objective == MfObjective::Ratings,
                init_std: s.init_std,
                seed,
            };
            Ok(Box::new(MfModel::new(config, objective, reg, device)?))
        };
        let (features, items) = match side {
            None => (None, None),
            Some(SideData::Fm(f)) => (Some(f), None),
            Some(SideData::Items(i)) => (None, Some(i)),
        };
        if features.is_some() && !matches!(self.model, ModelSpec::Fm { .. }) {
            return Err(RecforgeError::config(format!(
                "{} takes no side features",
                self.name()
            )));
        }
        if items.is_some() && !matches!(self.model, ModelSpec::Hierarchical(_)) {
            return Err(RecforgeError::config(format!(
                "{} takes no item vectors or item tokens",
                self.name()
            )));
        }
        match &self.model {
            ModelSpec::Svd(s) => mf(s, MfObjective::Ratings),
            ModelSpec::BprMf(s) => mf(s, MfObjective::Bpr),
            ModelSpec::Fm { spec, .. } => {
                let features = match features {
                    Some(f) => f,
                    None => FmFeatures::ids_only(n_users, n_items)?,
                };
                let config = FmConfig {
                    n_features: features.n_features,
                    dim: spec.dim,
                    hidden: spec.hidden.clone(),
                    dropout: spec.dropout,
                    init_std: spec.init_std,
                    seed,
                    batch_norm: spec.batch_norm,
                };
                Ok(Box::new(FmModel::new(
                    config, features, spec.loss, reg, device,
                )?))
            }
            ModelSpec::SasRec(s) => {
                let config = self.sasrec_config(s, n_items);
                Ok(Box::new(SasRecModel::new(config, s.loss, device)?))
            }
            ModelSpec::SoftToken(s) => {
                let config = self.soft_token_config(s, n_users, n_items);
                config.validate()?;
                let backbone = BackboneSource::from_value(&s.backbone)?.load(
                    s.backbone_mode,
                    seed,
                    device,
                    s.backbone_layers,
                )?;
                backbone.set_bf16_products(s.precision == Precision::Bf16);
                Ok(Box::new(SoftTokenModel::new(config, backbone)?))
            }
            ModelSpec::Hierarchical(s) => {
                let config = self.hierarchical_config(s, n_items);
                config.validate()?;
                let items = items.ok_or_else(|| {
                    RecforgeError::config(
                        "HierarchicalRec needs its item side: item-LLM vectors or item token ids",
                    )
                })?;
                let item_llm = match &items {
                    ItemInput::Vectors(_) => None,
                    ItemInput::Tokens { .. } => {
                        Some(BackboneSource::from_value(&s.item_llm)?.load(
                            BackboneMode::Full,
                            seed,
                            device,
                            None,
                        )?)
                    }
                };
                let rec = BackboneSource::from_value(&s.rec_backbone)?.load(
                    s.rec_mode,
                    seed,
                    device,
                    s.rec_layers,
                )?;
                for llm in std::iter::once(&rec).chain(item_llm.as_ref()) {
                    llm.set_bf16_products(s.precision == Precision::Bf16);
                }
                Ok(Box::new(HierarchicalModel::new(
                    config, rec, item_llm, items,
                )?))
            }
        }
    }
}

/// A block count to keep, when given, is at least 1 (its upper bound, the backbone's own
/// count, is checked when the backbone is read).
fn check_blocks(name: &str, n: Option<i64>) -> Result<()> {
    match n {
        Some(n) if n < 1 => Err(RecforgeError::config(format!(
            "{name} must be >= 1 (transformer blocks to keep), got {n}"
        ))),
        _ => Ok(()),
    }
}

impl FmFeatures {
    /// The plain layout: user ids, then item ids, one feature each.
    pub fn ids_only(n_users: i64, n_items: i64) -> Result<Self> {
        if n_users < 1 || n_items < 1 {
            return Err(RecforgeError::config(format!(
                "n_users and n_items must be >= 1, got {n_users} and {n_items}"
            )));
        }
        Ok(Self {
            users: ((0..n_users).collect(), vec![1.0; n_users as usize], 1),
            items: (
                (n_users..n_users + n_items).collect(),
                vec![1.0; n_items as usize],
                1,
            ),
            n_features: n_users + n_items,
        })
    }
}

impl FromStr for FmLoss {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mse" => Ok(FmLoss::Mse),
            "bpr" => Ok(FmLoss::Bpr),
            "bce" => Ok(FmLoss::Bce),
            other => Err(RecforgeError::config(format!(
                "loss must be 'mse', 'bpr' or 'bce', got {other:?}"
            ))),
        }
    }
}

impl FromStr for SeqLoss {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bce" => Ok(SeqLoss::Bce),
            "ce" => Ok(SeqLoss::Ce),
            other => Err(RecforgeError::config(format!(
                "loss must be 'bce' or 'ce', got {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_validate_and_round_trip() {
        let text = r#"{"model": "NFM", "dim": 8, "loss": "bce", "hidden": [8], "dropout": 0.2,
            "epochs": 3, "batch_size": 64, "lr": 0.01, "optimizer": "Adam", "seed": 4,
            "lr_schedule": "cosine"}"#;
        let spec = Spec::from_json(text).unwrap();
        assert_eq!(spec.name(), "NFM");
        assert_eq!(spec.train.lr_schedule.as_ref().unwrap().name, "cosine");
        let again = Spec::from_json(&spec.to_value().to_string()).unwrap();
        assert_eq!(again, spec);
        for (bad, needle) in [
            (
                r#"{"model": "FM", "dim": 8, "loss": "hinge", "epochs": 1, "batch_size": 1, "lr": 0.1}"#,
                "hinge",
            ),
            (
                r#"{"model": "FM", "dim": 8, "loss": "bpr", "epochs": 1, "batch_size": 1, "lr": 0.1, "dimm": 3}"#,
                "dimm",
            ),
            (
                r#"{"model": "SVD", "epochs": 0, "batch_size": 1, "lr": 0.1}"#,
                "epochs",
            ),
            (
                r#"{"model": "SVD", "epochs": 1, "batch_size": 1, "lr": -0.1}"#,
                "lr",
            ),
            (
                r#"{"model": "SVD", "epochs": 1, "batch_size": 1, "lr": 0.1, "optimizer": "lbfgs"}"#,
                "lbfgs",
            ),
            (
                r#"{"model": "SVD", "epochs": 1, "batch_size": 1, "lr": 0.1, "lr_schedule": "warm"}"#,
                "warm",
            ),
            (
                r#"{"model": "SASRec", "dim": 6, "n_layers": 1, "n_heads": 4, "max_len": 5, "dropout": 0.1, "loss": "ce", "init_std": 0.02, "epochs": 1, "batch_size": 1, "lr": 0.1}"#,
                "n_heads",
            ),
            (
                r#"{"model": "ALS", "epochs": 1, "batch_size": 1, "lr": 0.1}"#,
                "ALS",
            ),
        ] {
            let err = Spec::from_json(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
