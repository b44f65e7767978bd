//! Causal language models as backbones: GPT-2 or the Llama family loaded from a Hugging Face
//! folder (or initialised at random from a config), with hidden states, logits, soft-token input,
//! freezing, generation and `save_pretrained`.

use std::path::Path;

use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::HfConfig;
use super::decoder::{self, check_ids, Decoder, GenerateOptions};
use super::gpt2::{Gpt2, Gpt2Config};
use super::llama::{Llama, LlamaConfig};
use super::weights::{self, load_into, read_config, Checkpoint, Layout};
use crate::error::{RecforgeError, Result};

/// A decoder-only language model and its weights.
pub struct CausalLm {
    vs: VarStore,
    net: Box<dyn Decoder>,
    layout: Layout,
    config: Value,
    /// End-of-sequence ids from the config.
    pub eos: Vec<i64>,
    /// Pad id from the config (else the first end-of-sequence id, else 0).
    pub pad_id: i64,
}

/// A parsed and validated decoder configuration.
enum Arch {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

impl Arch {
    /// Reads and validates the config (no allocation).
    fn parse(config: &HfConfig) -> Result<Self> {
        match config.model_type()?.as_str() {
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_hf(config)?)),
            "llama" | "qwen2" | "mistral" => Ok(Self::Llama(LlamaConfig::from_hf(config)?)),
            other => Err(RecforgeError::config(format!(
                "config.json model_type {other:?} is not a supported decoder (gpt2, llama, qwen2, mistral)"
            ))),
        }
    }

    fn num_parameters(&self) -> Result<i64> {
        match self {
            Self::Gpt2(c) => c.num_parameters(),
            Self::Llama(c) => c.num_parameters(),
        }
    }

    /// Creates the parameters in `vs`.
    fn build(self, vs: &VarStore) -> Result<(Box<dyn Decoder>, Layout)> {
        let root = vs.root();
        Ok(match self {
            Self::Gpt2(c) => {
                let layout = c.layout();
                (Box::new(Gpt2::new(&root, c)?), layout)
            }
            Self::Llama(c) => {
                let layout = c.layout();
                (Box::new(Llama::new(&root, c)?), layout)
            }
        })
    }
}

/// Whether `path` names a `.gguf` file (by its extension, any case) rather than a model folder.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Sets a decoder config's block count (`num_hidden_layers`, GPT-2's `n_layer`) to `n`, which
/// must be between 1 and the count it has.
pub fn keep_blocks(config: &mut Value, n: i64) -> Result<()> {
    let hf = HfConfig::new(config.clone())?;
    let (key, have) = match Arch::parse(&hf)? {
        Arch::Gpt2(c) => ("n_layer", c.n_layer),
        Arch::Llama(c) => ("num_hidden_layers", c.num_hidden_layers),
    };
    if !(1..=have).contains(&n) {
        return Err(RecforgeError::config(format!(
            "the backbone has {have} transformer blocks, so the blocks to keep must be in 1..={have}, got {n}"
        )));
    }
    if let Value::Object(map) = config {
        map.insert(key.to_string(), Value::from(n));
    }
    Ok(())
}

impl CausalLm {
    fn new(
        config: Value,
        device: Device,
        kind: Kind,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Self> {
        let hf = HfConfig::new(config)?;
        let arch = Arch::parse(&hf)?;
        if let Some(ckpt) = checkpoint {
            ckpt.check_holds(arch.num_parameters()?)?;
        }
        let mut vs = VarStore::new(device);
        let (net, layout) = arch.build(&vs)?;
        if let Some(ckpt) = checkpoint {
            load_into(&vs, ckpt, &layout)?;
        }
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let eos = hf.ids("eos_token_id")?;
        let pad_id = hf
            .int_opt("pad_token_id")?
            .or(eos.first().copied())
            .unwrap_or(0);
        Ok(Self {
            vs,
            net,
            layout,
            config: hf.json,
            eos,
            pad_id,
        })
    }

    /// Loads a model folder or a `.gguf` file, keeping only its first `blocks` transformer
    /// blocks when given (the final norm and the embeddings kept: what `transformers` builds
    /// from the same weights with `num_hidden_layers=blocks`). The later blocks' weights are
    /// dropped unread.
    pub fn from_path(path: &Path, device: Device, kind: Kind, blocks: Option<i64>) -> Result<Self> {
        Self::load(path, is_gguf(path), device, kind, blocks)
    }

    /// Loads a model folder (`config.json` plus safetensors weights, possibly sharded), with
    /// weights of the given dtype.
    pub fn from_pretrained(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load(dir, false, device, kind, None)
    }

    /// Loads a llama-architecture GGUF file (llama.cpp's format), de-quantised to float32.
    pub fn from_gguf(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load(path, true, device, kind, None)
    }

    fn load(
        path: &Path,
        gguf: bool,
        device: Device,
        kind: Kind,
        blocks: Option<i64>,
    ) -> Result<Self> {
        let (mut config, mut ckpt) = if gguf {
            let (config, tensors) = super::gguf::read(path)?;
            (
                config,
                Checkpoint::from_tensors(path.to_path_buf(), tensors),
            )
        } else {
            if !path.is_dir() {
                return Err(RecforgeError::Io {
                    context: format!("model folder {}", path.display()),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
                });
            }
            let config = read_config(path)?;
            // Check the configuration before reading gigabytes of weights.
            Arch::parse(&HfConfig::new(config.clone())?)?;
            (config, Checkpoint::open(path)?)
        };
        if let Some(n) = blocks {
            keep_blocks(&mut config, n)?;
            ckpt.drop_blocks_from(n);
        }
        Self::new(config, device, kind, Some(&ckpt))
    }

    /// A randomly initialised model from a config (seeded through libtorch's generator).
    pub fn from_config(config: Value, seed: i64, device: Device, kind: Kind) -> Result<Self> {
        tch::manual_seed(seed);
        Self::new(config, device, kind, None)
    }

    /// The network.
    pub fn net(&self) -> &dyn Decoder {
        self.net.as_ref()
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The config it was built from.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Switches the dropout its config describes on (training) or off (evaluation, the
    /// default); see [`Training`] for a scope that switches it back.
    pub fn set_training(&self, on: bool) {
        self.net.set_training(on);
    }

    /// Runs the transformer blocks' linear layers in bfloat16 (`true`: mixed precision;
    /// parameters, attention, the residual stream and everything outside the blocks keep their
    /// own kind) or in the parameters' own kind (`false`, as loaded).
    pub fn set_bf16_products(&self, on: bool) {
        self.net.set_bf16_products(on);
    }

    /// Stops (`false`) or restarts (`true`) gradient tracking of every parameter.
    pub fn set_trainable(&mut self, trainable: bool) {
        if trainable {
            self.vs.unfreeze();
        } else {
            self.vs.freeze();
        }
    }

    /// Every weight under its Hugging Face name (what `save_pretrained` writes), sorted by name;
    /// shallow handles, so a copy into one changes the model.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, t)| (self.layout.hf_name(&name), t))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Number of parameters (only those that track gradients when `trainable_only`).
    pub fn num_parameters(&self, trainable_only: bool) -> i64 {
        self.vs
            .variables()
            .values()
            .filter(|t| !trainable_only || t.requires_grad())
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Token embeddings of ids `[B, T]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        check_ids(ids, self.net.vocab_size())?;
        Ok(self.net.embed(&ids.to_device(self.device())))
    }

    /// Hidden states after the final norm of token ids or soft tokens `[B, T, H]`; `mask`
    /// defaults to all ones.
    pub fn hidden_states(&self, input: &Input, mask: Option<&Tensor>) -> Result<Tensor> {
        let embeds = match input {
            Input::Ids(ids) => {
                if ids.dim() != 2 {
                    return Err(RecforgeError::data(format!(
                        "input_ids must be [batch, tokens], got {:?}",
                        ids.size()
                    )));
                }
                self.embed(ids)?
            }
            Input::Embeds(e) => e.to_device(self.device()).to_kind(self.vs.kind()),
        };
        let size = embeds.size();
        let mask = match mask {
            Some(m) => m.to_device(self.device()),
            None => Tensor::ones(
                &size[..size.len().min(2)],
                (tch::Kind::Int64, self.device()),
            ),
        };
        decoder::hidden_states(self.net.as_ref(), &embeds, &mask)
    }

    /// Vocabulary logits `[B, T, V]`.
    pub fn logits(&self, input: &Input, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.net.logits(&self.hidden_states(input, mask)?))
    }

    /// Generates after left-padded prompts; see [`decoder::generate`].
    pub fn generate(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        opts: &GenerateOptions,
        step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Tensor> {
        let dev = self.device();
        let ids = ids.to_device(dev);
        let mask = match mask {
            Some(m) => m.to_device(dev),
            None => ids.ones_like(),
        };
        tch::no_grad(|| decoder::generate(self.net.as_ref(), &ids, &mask, opts, step))
    }

    /// Writes `config.json` and `model.safetensors` under Hugging Face names, so `transformers`
    /// (and [`CausalLm::from_pretrained`]) can load the model.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| RecforgeError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let text = serde_json::to_string_pretty(&self.config)
            .map_err(|e| RecforgeError::data(format!("cannot serialise config: {e}")))?;
        let file = dir.join("config.json");
        std::fs::write(&file, text).map_err(|source| RecforgeError::Io {
            context: file.display().to_string(),
            source,
        })?;
        weights::save(&self.vs, &self.layout, &dir.join("model.safetensors"))
    }
}

/// What a forward pass reads: token ids `[B, T]` or embeddings `[B, T, H]`.
pub enum Input {
    /// Token ids.
    Ids(Tensor),
    /// Soft tokens (`inputs_embeds`).
    Embeds(Tensor),
}

/// Training mode (dropout on) for a set of language models while it lives; evaluation mode
/// again when dropped, even on an early return.
pub struct Training<'a>(Vec<&'a CausalLm>);

impl<'a> Training<'a> {
    /// Switches `models` to training mode.
    pub fn on(models: Vec<&'a CausalLm>) -> Self {
        for m in &models {
            m.set_training(true);
        }
        Self(models)
    }
}

impl Drop for Training<'_> {
    fn drop(&mut self) {
        for m in &self.0 {
            m.set_training(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::decoder::Sampling;
    use serde_json::json;
    use tch::Kind;

    fn tiny(kind: &str) -> CausalLm {
        let config = match kind {
            "gpt2" => {
                json!({"model_type": "gpt2", "vocab_size": 50, "n_positions": 64, "n_embd": 16,
                             "n_layer": 2, "n_head": 2, "eos_token_id": 49})
            }
            _ => {
                json!({"model_type": kind, "vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "eos_token_id": 49, "tie_word_embeddings": kind == "qwen2"})
            }
        };
        CausalLm::from_config(config, 7, Device::Cpu, Kind::Float).unwrap()
    }

    fn ids(rows: &[&[i64]]) -> Tensor {
        let t = rows[0].len() as i64;
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, t])
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Training mode applies the dropout the config describes (GPT-2's embd/attn/resid_pdrop,
    /// Llama's attention_dropout) and the guard restores evaluation mode; probabilities of 0
    /// (Llama's default) leave training mode identical to evaluation.
    #[test]
    fn training_mode_applies_the_configs_dropout() {
        let x = ids(&[&[3, 9, 4, 1, 7]]);
        for (config, drops) in [
            (
                json!({"model_type": "gpt2", "vocab_size": 50, "n_positions": 64, "n_embd": 16,
                    "n_layer": 2, "n_head": 2}),
                true,
            ),
            (
                json!({"model_type": "gpt2", "vocab_size": 50, "n_positions": 64, "n_embd": 16,
                    "n_layer": 2, "n_head": 2, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                    "resid_pdrop": 0.0}),
                false,
            ),
            (
                json!({"model_type": "llama", "vocab_size": 50, "hidden_size": 16,
                    "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "attention_dropout": 0.5}),
                true,
            ),
            (
                json!({"model_type": "llama", "vocab_size": 50, "hidden_size": 16,
                    "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4}),
                false,
            ),
        ] {
            let lm = CausalLm::from_config(config.clone(), 7, Device::Cpu, Kind::Float).unwrap();
            let eval = lm
                .hidden_states(&Input::Ids(x.shallow_clone()), None)
                .unwrap();
            let train = {
                let _t = Training::on(vec![&lm]);
                lm.hidden_states(&Input::Ids(x.shallow_clone()), None)
                    .unwrap()
            };
            let again = lm
                .hidden_states(&Input::Ids(x.shallow_clone()), None)
                .unwrap();
            assert!(again.equal(&eval), "{config}: evaluation mode not restored");
            assert_eq!(max_diff(&train, &eval) > 1e-4, drops, "{config}");
        }
        let bad = json!({"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 1,
                         "n_head": 2, "attn_pdrop": 1.5});
        let Err(err) = CausalLm::from_config(bad, 7, Device::Cpu, Kind::Float) else {
            panic!("attn_pdrop 1.5 was accepted");
        };
        assert!(err.to_string().contains("attn_pdrop"), "{err}");
    }

    #[test]
    fn left_padding_gives_each_sequence_its_unpadded_outputs() {
        for kind in ["gpt2", "llama", "qwen2"] {
            let lm = tiny(kind);
            let alone = lm.logits(&Input::Ids(ids(&[&[5, 6, 7]])), None).unwrap();
            let batch = ids(&[&[0, 0, 5, 6, 7], &[1, 2, 3, 4, 5]]);
            let mask = ids(&[&[0, 0, 1, 1, 1], &[1, 1, 1, 1, 1]]);
            let padded = lm.logits(&Input::Ids(batch), Some(&mask)).unwrap();
            let d = max_diff(&padded.get(0).narrow(0, 2, 3), &alone.get(0));
            assert!(d < 1e-5, "{kind}: {d}");
        }
    }

    #[test]
    fn soft_tokens_equal_token_ids_through_embeddings() {
        let lm = tiny("llama");
        let x = ids(&[&[3, 9, 27, 4]]);
        let a = lm
            .hidden_states(&Input::Ids(x.shallow_clone()), None)
            .unwrap();
        let b = lm
            .hidden_states(&Input::Embeds(lm.embed(&x).unwrap()), None)
            .unwrap();
        assert!(max_diff(&a, &b) < 1e-6);
    }

    #[test]
    fn cached_greedy_generation_equals_recomputing_the_whole_prefix() {
        for kind in ["gpt2", "llama"] {
            let lm = tiny(kind);
            let prompt = ids(&[&[0, 11, 12], &[13, 14, 15]]);
            let mask = ids(&[&[0, 1, 1], &[1, 1, 1]]);
            let opts = GenerateOptions {
                max_new_tokens: 6,
                sampling: Sampling::Greedy,
                seed: 0,
                eos: vec![],
                pad_id: 0,
            };
            let fast = lm
                .generate(&prompt, Some(&mask), &opts, &mut |_, _| false)
                .unwrap();
            // Slow reference: full forward pass over the growing sequence, argmax of the last row.
            let (mut seq, mut m) = (prompt.shallow_clone(), mask.shallow_clone());
            for step in 0..6 {
                let logits = tch::no_grad(|| {
                    lm.logits(&Input::Ids(seq.shallow_clone()), Some(&m))
                        .unwrap()
                });
                let next = logits.select(1, seq.size()[1] - 1).argmax(-1, false);
                assert_eq!(
                    Vec::<i64>::try_from(&next).unwrap(),
                    Vec::<i64>::try_from(fast.select(1, step)).unwrap(),
                    "{kind} step {step}"
                );
                seq = Tensor::cat(&[seq, next.unsqueeze(1)], 1);
                m = Tensor::cat(&[m, Tensor::ones([2, 1], (Kind::Int64, Device::Cpu))], 1);
            }
        }
    }

    #[test]
    fn rows_after_eos_are_padding_and_sampling_is_seeded() {
        let lm = tiny("llama");
        let prompt = ids(&[&[1, 2, 3]]);
        let greedy = GenerateOptions {
            max_new_tokens: 4,
            sampling: Sampling::Greedy,
            seed: 0,
            eos: vec![],
            pad_id: 0,
        };
        let first = lm
            .generate(&prompt, None, &greedy, &mut |_, _| false)
            .unwrap();
        let stop_at = first.int64_value(&[0, 0]);
        let opts = GenerateOptions {
            eos: vec![stop_at],
            pad_id: 99,
            ..greedy
        };
        let out: Vec<i64> = Vec::try_from(
            lm.generate(&prompt, None, &opts, &mut |_, _| false)
                .unwrap()
                .view([-1]),
        )
        .unwrap();
        assert_eq!(out, vec![stop_at, 99, 99, 99]);
        let sample = |seed| {
            let o = GenerateOptions {
                max_new_tokens: 8,
                sampling: Sampling::Sample {
                    temperature: 1.5,
                    top_k: 10,
                    top_p: 0.9,
                },
                seed,
                eos: vec![],
                pad_id: 0,
            };
            Vec::<i64>::try_from(
                lm.generate(&prompt, None, &o, &mut |_, _| false)
                    .unwrap()
                    .view([-1]),
            )
            .unwrap()
        };
        assert_eq!(sample(3), sample(3));
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        let lm = tiny("gpt2");
        let e = lm
            .logits(&Input::Ids(ids(&[&[1, 50]])), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("50") && e.contains("vocabulary"), "{e}");
        let wide = Tensor::zeros([1, 2, 8], (Kind::Float, Device::Cpu));
        let e = lm
            .hidden_states(&Input::Embeds(wide), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("hidden size 8"), "{e}");
        let long = Tensor::ones([1, 65], (Kind::Int64, Device::Cpu));
        assert!(lm.logits(&Input::Ids(long), None).is_err());
        let right_padded = ids(&[&[1, 2, 0]]);
        let mask = ids(&[&[1, 1, 0]]);
        let opts = GenerateOptions {
            max_new_tokens: 2,
            sampling: Sampling::Greedy,
            seed: 0,
            eos: vec![],
            pad_id: 0,
        };
        let e = lm
            .generate(&right_padded, Some(&mask), &opts, &mut |_, _| false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("left-padded"), "{e}");
        let e = CausalLm::from_config(json!({"model_type": "mamba"}), 0, Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("mamba"), "{e}");
        let e = CausalLm::from_config(
            json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}),
            0,
            Device::Cpu,
            Kind::Float,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn config_parameter_counts_equal_what_is_built() {
        // check_holds compares these counts with a checkpoint, so they must be exact.
        for kind in ["gpt2", "llama", "qwen2"] {
            for tie in [false, true] {
                let mut lm = tiny(kind);
                let mut config = lm.config().clone();
                config["tie_word_embeddings"] = json!(tie);
                config["mlp_bias"] = json!(kind == "llama");
                config["attention_bias"] = json!(kind == "llama");
                lm = CausalLm::from_config(config.clone(), 0, Device::Cpu, Kind::Float).unwrap();
                let counted = Arch::parse(&HfConfig::new(config).unwrap())
                    .unwrap()
                    .num_parameters()
                    .unwrap();
                assert_eq!(counted, lm.num_parameters(false), "{kind} tied={tie}");
            }
        }
    }

    #[test]
    fn hostile_configs_are_config_errors_naming_the_field() {
        let base = json!({"model_type": "llama", "vocab_size": 50, "hidden_size": 16,
                          "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "num_key_value_heads": 2});
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            c
        };
        let cases = [
            (with("num_attention_heads", json!(0)), "num_attention_heads"),
            (
                with("num_attention_heads", json!(-4)),
                "num_attention_heads",
            ),
            (with("num_key_value_heads", json!(0)), "num_key_value_heads"),
            (with("intermediate_size", json!(-24)), "intermediate_size"),
            (with("vocab_size", json!(1u64 << 40)), "vocab_size"),
            (
                with("num_hidden_layers", json!(1u64 << 40)),
                "num_hidden_layers",
            ),
            (with("rms_norm_eps", json!(-1e-6)), "rms_norm_eps"),
            (with("rope_theta", json!(0)), "rope_theta"),
            (with("head_dim", json!(3)), "head_dim"),
            (
                json!({"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_head": 0}),
                "n_head",
            ),
            (
                json!({"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_head": 2,
                       "layer_norm_epsilon": -1.0}),
                "layer_norm_epsilon",
            ),
        ];
        for (config, field) in cases {
            let e = CausalLm::from_config(config, 0, Device::Cpu, Kind::Float)
                .err()
                .unwrap();
            assert!(matches!(e, RecforgeError::Config(_)), "{field}: {e}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        // Sizes whose parameter count overflows, and a model too large to allocate (8 PiB):
        // errors, where tch's constructors would panic.
        let mut c = with("hidden_size", json!(i32::MAX));
        c["intermediate_size"] = json!(i32::MAX);
        c["num_attention_heads"] = json!(1);
        c["num_key_value_heads"] = json!(1);
        c["head_dim"] = json!(2);
        let e = CausalLm::from_config(c, 0, Device::Cpu, Kind::Float)
            .err()
            .unwrap();
        assert!(e.to_string().contains("64-bit"), "{e}");
        let mut c = with("vocab_size", json!(i32::MAX));
        c["hidden_size"] = json!(1 << 20);
        let e = CausalLm::from_config(c, 0, Device::Cpu, Kind::Float)
            .err()
            .unwrap();
        assert!(matches!(e, RecforgeError::Config(_)), "{e}");
        assert!(
            e.to_string()
                .contains("cannot create parameter embed_tokens.weight"),
            "{e}"
        );
        // A config that asks for more parameters than the checkpoint holds fails before building.
        let lm = tiny("llama");
        let dir = std::env::temp_dir().join(format!("recforge-lm-holds-{}", std::process::id()));
        lm.save_pretrained(&dir).unwrap();
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        cfg["num_hidden_layers"] = json!(100_000);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let e = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float)
            .err()
            .unwrap()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("holds only"), "{e}");
    }

    #[test]
    fn a_pad_id_outside_the_vocabulary_only_marks_finished_rows() {
        // Row 0 stops at its first token while row 1 goes on: its pad id (-1, or past the
        // vocabulary) was fed back through the embeddings, an index panic.
        let lm = tiny("llama");
        let mut greedy = GenerateOptions {
            max_new_tokens: 4,
            sampling: Sampling::Greedy,
            seed: 0,
            eos: vec![],
            pad_id: 0,
        };
        // A second prompt that never emits row 0's first token.
        let (prompts, free, stop) = (3..50)
            .find_map(|t| {
                let prompts = ids(&[&[1, 2, 3], &[t, (t * 7) % 50, (t * 13) % 50]]);
                let free = lm
                    .generate(&prompts, None, &greedy, &mut |_, _| false)
                    .unwrap();
                let stop = free.int64_value(&[0, 0]);
                (0..4)
                    .all(|j| free.int64_value(&[1, j]) != stop)
                    .then_some((prompts, free, stop))
            })
            .unwrap();
        for pad in [-1, 50, 1 << 40] {
            greedy.eos = vec![stop];
            greedy.pad_id = pad;
            let out = lm
                .generate(&prompts, None, &greedy, &mut |_, _| false)
                .unwrap();
            let row0: Vec<i64> = Vec::try_from(out.get(0)).unwrap();
            assert_eq!(row0, vec![stop, pad, pad, pad]);
            assert!(out.get(1).equal(&free.get(1)), "row 1 must not change");
        }
    }

    #[test]
    fn soft_tokens_train_through_a_frozen_backbone() {
        // The CLLM4Rec pattern: trainable soft-token embeddings in front of a frozen decoder.
        // Gradients must reach the soft tokens, the loss must fall, the backbone must not move.
        let mut lm = tiny("llama");
        lm.set_trainable(false);
        assert_eq!(lm.num_parameters(true), 0);
        let snapshot: Vec<(String, Tensor)> = lm
            .vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.detach().copy()))
            .collect();
        let soft_vs = tch::nn::VarStore::new(Device::Cpu);
        let soft = soft_vs.root().randn("soft", &[1, 3, 16], 0.0, 0.02);
        let mut opt =
            tch::nn::OptimizerConfig::build(tch::nn::Adam::default(), &soft_vs, 0.05).unwrap();
        let target = ids(&[&[7, 8, 9]]);
        let text = lm.embed(&target).unwrap();
        let loss_of = |soft: &Tensor| {
            let embeds = Tensor::cat(&[soft, &text], 1);
            let logits = lm.logits(&Input::Embeds(embeds), None).unwrap();
            // Predict tokens 8 and 9 from positions 3 and 4 (after the soft prefix and token 7),
            // and token 7 from the last soft position.
            let pred = logits.narrow(1, 2, 3).reshape([3, 50]);
            pred.cross_entropy_for_logits(&target.view([3]))
        };
        let first = loss_of(&soft).double_value(&[]);
        for _ in 0..30 {
            let loss = loss_of(&soft);
            opt.backward_step(&loss);
        }
        let last = loss_of(&soft).double_value(&[]);
        assert!(last < first - 0.5, "loss {first} -> {last}");
        for (name, old) in snapshot {
            let now = &lm.vs.variables()[&name];
            assert!(now.equal(&old), "{name} changed");
        }
    }

    #[test]
    fn save_pretrained_round_trips_and_freezing_counts_parameters() {
        let mut lm = tiny("qwen2");
        let dir = std::env::temp_dir().join(format!("recforge-lm-{}", std::process::id()));
        lm.save_pretrained(&dir).unwrap();
        let back = CausalLm::from_pretrained(&dir, Device::Cpu, Kind::Float).unwrap();
        let x = Input::Ids(ids(&[&[4, 5, 6]]));
        assert!(
            max_diff(
                &lm.logits(&x, None).unwrap(),
                &back.logits(&x, None).unwrap()
            ) < 1e-7
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let all = lm.num_parameters(false);
        assert!(all > 0 && lm.num_parameters(true) == all);
        lm.set_trainable(false);
        assert_eq!(lm.num_parameters(true), 0);
        lm.set_trainable(true);
        assert_eq!(lm.num_parameters(true), all);
    }
}
