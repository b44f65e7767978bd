//! Checkpoints: a folder with `weights.safetensors` (model parameters and optimiser state) and
//! `state.json` (configuration, epoch, anything the caller keeps). Both are written to temporary
//! files and renamed into place, weights first, so a crash never leaves a half-written checkpoint
//! behind a complete-looking `state.json`.

use std::collections::HashMap;
use std::path::Path;

use tch::Tensor;

use crate::error::{RecforgeError, Result};

fn io(context: &Path, source: std::io::Error) -> RecforgeError {
    RecforgeError::Io {
        context: context.display().to_string(),
        source,
    }
}

/// Writes `tensors` and `state` into folder `dir` (created if needed).
pub fn save_checkpoint(dir: &Path, tensors: &[(String, Tensor)], state: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let weights = dir.join("weights.safetensors");
    let tmp = dir.join("weights.safetensors.tmp");
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_to(tch::Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&cpu, &tmp)?;
    std::fs::rename(&tmp, &weights).map_err(|e| io(&weights, e))?;
    let json = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, state).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &json).map_err(|e| io(&json, e))?;
    Ok(())
}

/// Reads a checkpoint folder: `(tensors by name, state.json text)`.
pub fn load_checkpoint(dir: &Path) -> Result<(HashMap<String, Tensor>, String)> {
    let json = dir.join("state.json");
    let state = std::fs::read_to_string(&json).map_err(|e| io(&json, e))?;
    let weights = dir.join("weights.safetensors");
    if !weights.is_file() {
        return Err(RecforgeError::data(format!(
            "{}: no weights.safetensors",
            dir.display()
        )));
    }
    let tensors = Tensor::read_safetensors(&weights)?.into_iter().collect();
    Ok((tensors, state))
}
