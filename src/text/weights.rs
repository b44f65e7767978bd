//! Hugging Face checkpoints: `config.json` and safetensors weights, single file or sharded.
//!
//! A model builds its parameters in a [`tch::nn::VarStore`] under the names of the Hugging Face base
//! model (`encoder.layer.0.attention.self.query.weight`, `layers.3.mlp.up_proj.weight`, ...), then
//! [`load_into`] copies each one from the checkpoint, trying the head-model prefix (`bert.`,
//! `model.`, `transformer.`) first. A missing or mis-shaped tensor is an error that names it, and so
//! is a tensor in the file that the model does not use (unless its [`Layout`] lists it as ignorable):
//! nothing is silently dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
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
}
