//! Hugging Face checkpoints: `config.json` and safetensors weights, single file or sharded.
//!
//! A model builds its parameters in a [`tch::nn::VarStore`] under the names of the Hugging Face base
//! model (`encoder.layer.0.attention.self.query.weight`, `layers.3.mlp.up_proj.weight`, ...), then
//! [`load_into`] copies each one from the checkpoint, trying the head-model prefix (`bert.`,
//! `model.`, `transformer.`) first. A missing or mis-shaped tensor is an error that names it, and so
//! is a tensor in the file that the model does not use (unless its [`Layout`] lists it as ignorable):
//! nothing is silently dropped.
//!
//! A safetensors file is read only after its header has been checked against the file's length
//! ([`check_safetensors`]), and a configuration is built only after [`Checkpoint::check_holds`]
//! has compared its parameter count with the values the checkpoint holds, so a corrupt file or a
//! config with absurd sizes is an error before anything large is allocated.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{RecforgeError, Result};

/// How one architecture's parameter names map to checkpoint names.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Prefix the task-head models put before the base model's names (`"model."` for
    /// `LlamaForCausalLM`), tried before the bare name.
    pub prefix: &'static str,
    /// Parameter names that never take the prefix (`"lm_head."`).
    pub unprefixed: &'static [&'static str],
    /// Checkpoint tensors the model may leave unused: buffers (`position_ids`, rotary `inv_freq`,
    /// GPT-2's causal `attn.bias`), task heads (BERT's pooler, the MLM head), tied copies, a T5
    /// decoder. A name matches when it starts with an entry ending in `.` or contains the entry.
    pub ignorable: &'static [&'static str],
}

impl Layout {
    /// The checkpoint name a parameter is saved under by `save_pretrained`.
    pub fn hf_name(&self, var: &str) -> String {
        if self.prefix.is_empty() || self.unprefixed.iter().any(|p| var.starts_with(p)) {
            var.to_string()
        } else {
            format!("{}{var}", self.prefix)
        }
    }

    fn candidates(&self, var: &str) -> Vec<String> {
        let mut c = vec![self.hf_name(var)];
        if c[0] != var {
            c.push(var.to_string());
        }
        // Old checkpoints name LayerNorm parameters gamma/beta.
        for (new, old) in [(".weight", ".gamma"), (".bias", ".beta")] {
            if let Some(stem) = var.strip_suffix(new) {
                if stem.ends_with("LayerNorm") || stem.ends_with("layer_norm") {
                    let alt = format!("{stem}{old}");
                    c.push(self.hf_name(&alt));
                    c.push(alt);
                }
            }
        }
        c
    }

    fn is_ignorable(&self, name: &str) -> bool {
        self.ignorable.iter().any(|p| {
            if p.ends_with('.') {
                name.starts_with(p) || name.starts_with(&format!("{}{p}", self.prefix))
            } else {
                name.contains(p)
            }
        })
    }
}

/// The tensors of a checkpoint folder, by checkpoint name.
pub struct Checkpoint {
    /// Where it was read from (for error messages).
    pub dir: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads `model.safetensors`, or every shard listed in `model.safetensors.index.json`, from a
    /// folder (or a `.safetensors` file given directly).
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, files) = if path.is_file() {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                vec![path.to_path_buf()],
            )
        } else if path.is_dir() {
            (path.to_path_buf(), weight_files(path)?)
        } else {
            return Err(RecforgeError::Io {
                context: format!("model path {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        };
        let mut tensors = HashMap::new();
        for file in files {
            check_safetensors(&file)?;
            let named = Tensor::read_safetensors(&file).map_err(|e| {
                RecforgeError::data(format!(
                    "cannot read safetensors file {}: {e}",
                    file.display()
                ))
            })?;
            tensors.extend(named);
        }
        Ok(Self { dir, tensors })
    }

    /// A checkpoint from tensors in memory (tests, GGUF conversion).
    pub fn from_tensors(dir: PathBuf, tensors: HashMap<String, Tensor>) -> Self {
        Self { dir, tensors }
    }

    /// Fails with a [`RecforgeError::Config`] when a configuration of `needed` parameters asks
    /// for more than twice the values this checkpoint holds: every parameter needs a tensor of
    /// its own shape, so the config's sizes do not describe these weights (a layer count of
    /// 2^30, say). Checked before the model is built, so absurd sizes never reach the allocator;
    /// a near miss (one missing or mis-shaped tensor) is left to [`load_into`], which names it.
    pub fn check_holds(&self, needed: i64) -> Result<()> {
        let held = self.tensors.values().fold(0i64, |acc, t| {
            acc.saturating_add(t.numel().try_into().unwrap_or(i64::MAX))
        });
        if needed > held.saturating_mul(2) {
            return Err(RecforgeError::config(format!(
                "the configuration describes {needed} parameters, but the checkpoint {} holds \
                 only {held} values: its sizes (vocabulary, width, layers, heads) do not match \
                 these weights",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Drops the tensors of transformer blocks `n` and later: names with a `layers.K.` (Llama,
    /// Qwen2) or `h.K.` (GPT-2) part where `K >= n`, under any prefix.
    pub fn drop_blocks_from(&mut self, n: i64) {
        self.tensors.retain(|name, _| {
            let parts: Vec<&str> = name.split('.').collect();
            !parts.windows(2).any(|w| {
                matches!(w[0], "layers" | "h") && w[1].parse::<i64>().is_ok_and(|k| k >= n)
            })
        });
    }

    /// Names of all tensors in the checkpoint, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.tensors.keys().cloned().collect();
        n.sort();
        n
    }
}

/// The safetensors files of a folder: `model.safetensors`, or the shards of its index.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = read_text(&index)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            RecforgeError::data(format!("{} is not valid JSON: {e}", index.display()))
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                RecforgeError::data(format!("{} has no \"weight_map\" object", index.display()))
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(RecforgeError::Io {
                context: format!("shard {} listed in {}", missing.display(), index.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        return Ok(files);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(RecforgeError::data(format!(
            "{} holds only pytorch_model.bin; recforge reads safetensors: convert it with \
             transformers (model.save_pretrained(dir, safe_serialization=True))",
            dir.display()
        )));
    }
    Err(RecforgeError::Io {
        context: format!("model weights in {}", dir.display()),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "neither model.safetensors nor model.safetensors.index.json found",
        ),
    })
}

/// The largest safetensors header accepted (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Checks a safetensors file's header against its length before the tensors are read: the
/// 8-byte header length, the JSON header itself, and every tensor's `data_offsets` (in order,
/// within the data that follows the header). Errors are [`RecforgeError::Data`] naming the file
/// and, where there is one, the tensor.
pub fn check_safetensors(file: &Path) -> Result<()> {
    let bad = |what: String| {
        RecforgeError::data(format!(
            "safetensors file {} is malformed: {what}",
            file.display()
        ))
    };
    let io = |source| RecforgeError::Io {
        context: format!("safetensors file {}", file.display()),
        source,
    };
    let mut f = std::fs::File::open(file).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = [0u8; 8];
    f.read_exact(&mut head).map_err(|_| {
        bad(format!(
            "{len} bytes is shorter than the 8-byte header length"
        ))
    })?;
    let n = u64::from_le_bytes(head);
    let data_len = len
        .checked_sub(8)
        .and_then(|rest| rest.checked_sub(n))
        .filter(|_| n <= MAX_HEADER)
        .ok_or_else(|| {
            bad(format!(
                "the header length {n} does not fit in the file's {len} bytes (at most \
                 {MAX_HEADER})"
            ))
        })?;
    let mut text = Vec::new();
    f.take(n).read_to_end(&mut text).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("the header is not valid JSON: {e}")))?;
    let entries = header
        .as_object()
        .ok_or_else(|| bad("the header is not a JSON object".into()))?;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(entries.len());
    for (name, info) in entries {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| match o.as_slice() {
                [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| bad(format!("tensor {name:?} has no valid data_offsets")))?;
        if offsets.0 > offsets.1 || offsets.1 > data_len {
            return Err(bad(format!(
                "tensor {name:?} has data_offsets [{}, {}] outside the {data_len} bytes of data",
                offsets.0, offsets.1
            )));
        }
        spans.push((offsets.0, offsets.1, name));
    }
    spans.sort_unstable();
    let mut end = 0u64;
    for (start, stop, name) in spans {
        if start != end {
            return Err(bad(format!(
                "tensor {name:?} starts at byte {start} of the data, expected {end} (tensors \
                 must be contiguous and not overlap)"
            )));
        }
        end = stop;
    }
    if end != data_len {
        return Err(bad(format!(
            "the tensors cover {end} bytes, but {data_len} bytes of data follow the header"
        )));
    }
    Ok(())
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| RecforgeError::Io {
        context: path.display().to_string(),
        source,
    })
}

/// Reads `config.json` of a model folder (or the file itself) as JSON.
pub fn read_config(path: &Path) -> Result<serde_json::Value> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = read_text(&file)?;
    serde_json::from_str(&text)
        .map_err(|e| RecforgeError::data(format!("{} is not valid JSON: {e}", file.display())))
}

/// Copies every parameter of `vs` from the checkpoint (converting the dtype) and returns nothing
/// on success. Errors name the missing tensor, the mis-shaped one with both shapes, or the
/// checkpoint tensors the model would not use.
pub fn load_into(vs: &VarStore, ckpt: &Checkpoint, layout: &Layout) -> Result<()> {
    let mut used: HashSet<&str> = HashSet::new();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (name, var) in &vars {
        let candidates = layout.candidates(name);
        let Some((key, src)) = candidates
            .iter()
            .find_map(|c| ckpt.tensors.get_key_value(c.as_str()))
        else {
            return Err(RecforgeError::data(format!(
                "checkpoint {} has no tensor {:?} (the configuration needs it{})",
                ckpt.dir.display(),
                candidates[0],
                if candidates.len() > 1 {
                    format!("; also tried {:?}", &candidates[1..])
                } else {
                    String::new()
                }
            )));
        };
        if src.size() != var.size() {
            return Err(RecforgeError::data(format!(
                "tensor {key:?} in checkpoint {} has shape {:?}, but the configuration needs {:?}",
                ckpt.dir.display(),
                src.size(),
                var.size()
            )));
        }
        if !is_float(src.kind()) {
            return Err(RecforgeError::data(format!(
                "tensor {key:?} in checkpoint {} has dtype {:?}; a floating-point weight is needed",
                ckpt.dir.display(),
                src.kind()
            )));
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(src))?;
        used.insert(key.as_str());
    }
    let mut unused: Vec<&String> = ckpt
        .tensors
        .keys()
        .filter(|k| !used.contains(k.as_str()) && !layout.is_ignorable(k))
        .collect();
    if !unused.is_empty() {
        unused.sort();
        let shown: Vec<&String> = unused.iter().take(8).copied().collect();
        return Err(RecforgeError::config(format!(
            "checkpoint {} has {} tensor(s) this configuration does not use, e.g. {:?}: the \
             config.json does not describe these weights",
            ckpt.dir.display(),
            unused.len(),
            shown
        )));
    }
    Ok(())
}

/// The parameters of `vs` under their checkpoint names, contiguous and on the CPU, for
/// `save_pretrained`. Tied parameters appear once.
pub fn save(vs: &VarStore, layout: &Layout, file: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let named: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, t)| {
            (
                layout.hf_name(n),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&named, file)
        .map_err(|e| RecforgeError::data(format!("cannot write {}: {e}", file.display())))
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        prefix: "model.",
        unprefixed: &["lm_head."],
        ignorable: &["rotary_emb.inv_freq"],
    };

    fn store() -> VarStore {
        let vs = VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let _ = root.sub("layers").sub(0).zeros("weight", &[2, 3]);
        let _ = root.sub("lm_head").zeros("weight", &[4, 2]);
        vs
    }

    fn ckpt(entries: Vec<(&str, Tensor)>) -> Checkpoint {
        Checkpoint::from_tensors(
            PathBuf::from("/ckpt"),
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    #[test]
    fn loads_prefixed_and_bare_names_and_converts_dtype() {
        let vs = store();
        let c = ckpt(vec![
            (
                "model.layers.0.weight",
                Tensor::ones([2, 3], (Kind::Half, tch::Device::Cpu)),
            ),
            (
                "lm_head.weight",
                Tensor::full([4, 2], 2.0, (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "model.layers.0.rotary_emb.inv_freq",
                Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
            ),
        ]);
        load_into(&vs, &c, &LAYOUT).unwrap();
        let v = vs.variables();
        assert_eq!(v["layers.0.weight"].sum(Kind::Float).double_value(&[]), 6.0);
        assert_eq!(v["layers.0.weight"].kind(), Kind::Float);
        assert_eq!(v["lm_head.weight"].sum(Kind::Float).double_value(&[]), 16.0);
    }

    /// Blocks 2 and later go, under any prefix and for both naming schemes; block 1, block 12's
    /// look-alikes that are not block indices, and the non-block tensors stay.
    #[test]
    fn drop_blocks_from_keeps_the_first_blocks_only() {
        let names = [
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.2.input_layernorm.weight",
            "model.layers.12.mlp.down_proj.weight",
            "layers.3.mlp.gate_proj.weight",
            "transformer.h.1.attn.c_attn.weight",
            "transformer.h.2.ln_1.bias",
            "h.10.mlp.c_fc.weight",
            "model.norm.weight",
            "model.embed_tokens.weight",
            "lm_head.weight",
            "transformer.wpe.weight",
            "model.layers.x.odd",
        ];
        let tensors = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
                )
            })
            .collect();
        let mut ckpt = Checkpoint::from_tensors(PathBuf::from("mem"), tensors);
        ckpt.drop_blocks_from(2);
        assert_eq!(
            ckpt.names(),
            [
                "lm_head.weight",
                "model.embed_tokens.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.layers.1.self_attn.q_proj.weight",
                "model.layers.x.odd",
                "model.norm.weight",
                "transformer.h.1.attn.c_attn.weight",
                "transformer.wpe.weight",
            ]
        );
    }

    #[test]
    fn names_missing_misshaped_and_unused_tensors() {
        let vs = store();
        let lm = || {
            (
                "lm_head.weight",
                Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu)),
            )
        };
        let e = load_into(&vs, &ckpt(vec![lm()]), &LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"model.layers.0.weight\""), "{e}");
        let bad = (
            "layers.0.weight",
            Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu)),
        );
        let e = load_into(&vs, &ckpt(vec![lm(), bad]), &LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3, 2]") && e.contains("[2, 3]"), "{e}");
        let ok = (
            "layers.0.weight",
            Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)),
        );
        let extra = (
            "model.extra.weight",
            Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
        );
        let e = load_into(&vs, &ckpt(vec![lm(), ok, extra]), &LAYOUT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.extra.weight"), "{e}");
    }

    #[test]
    fn missing_folder_is_an_io_error_naming_it() {
        let e = Checkpoint::open(Path::new("/no/such/model")).err().unwrap();
        assert!(matches!(e, RecforgeError::Io { .. }));
        assert!(e.to_string().contains("/no/such/model"));
    }

    #[test]
    fn save_then_open_round_trips_with_hf_names() {
        let vs = store();
        let dir = std::env::temp_dir().join(format!("recforge-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        save(&vs, &LAYOUT, &dir.join("model.safetensors")).unwrap();
        let c = Checkpoint::open(&dir).unwrap();
        assert_eq!(c.names(), vec!["lm_head.weight", "model.layers.0.weight"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_holds_refuses_only_configs_far_larger_than_the_checkpoint() {
        let c = ckpt(vec![(
            "a",
            Tensor::zeros([2, 5], (Kind::Float, tch::Device::Cpu)),
        )]);
        assert!(c.check_holds(20).is_ok()); // a near miss is left to load_into, which names it
        let e = c.check_holds(21).unwrap_err();
        assert!(matches!(e, RecforgeError::Config(_)) && e.to_string().contains("holds only 10"));
    }

    #[test]
    fn corrupt_safetensors_headers_are_data_errors_naming_the_file() {
        let vs = store();
        let dir = std::env::temp_dir().join(format!("recforge-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.safetensors");
        save(&vs, &LAYOUT, &file).unwrap();
        let good = std::fs::read(&file).unwrap();
        check_safetensors(&file).unwrap();
        let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&good[8..8 + n]).unwrap().to_string();
        let with_header = |h: &str| {
            let mut v = (h.len() as u64).to_le_bytes().to_vec();
            v.extend(h.as_bytes());
            v.extend(&good[8 + n..]);
            v
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..5].to_vec(), "shorter than the 8-byte header length"),
            (good[..40].to_vec(), "header length"),
            (
                [&(1u64 << 63).to_le_bytes()[..], &good[8..]].concat(),
                "header length",
            ),
            (good[..good.len() - 1].to_vec(), "outside"),
            ([&good[..], &[0u8; 4][..]].concat(), "bytes of data follow"),
            (with_header("{nope"), "not valid JSON"),
            (with_header("[1, 2]"), "not a JSON object"),
            (
                with_header(&header.replace("data_offsets", "offsets")),
                "no valid data_offsets",
            ),
        ];
        for (bytes, want) in cases {
            std::fs::write(&file, &bytes).unwrap();
            let e = Checkpoint::open(&dir).err().expect(want);
            assert!(matches!(e, RecforgeError::Data(_)), "{want}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(want) && msg.contains("model.safetensors"),
                "{want}: {msg}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
