//! Checkpoints: a folder with `state.json` (configuration, epoch, anything the caller keeps) and
//! the tensors (model parameters, buffers, optimiser state) in a safetensors file named after
//! its content, `weights-<sha256 prefix>.safetensors`.
//!
//! `state.json` names that file and its full SHA-256, and it is the last thing written: the new
//! weights go to a new file first, then `state.json` is replaced by one rename (the commit
//! point), then the old weights file is removed. A crash at any step leaves `state.json` naming
//! a complete weights file that matches it, the old pair or the new one; and `load` verifies
//! the checksum, so a damaged or swapped weights file is an error, never silently loaded.
//! Checkpoints written before this layout (`weights.safetensors`, no checksum) still load.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::error::{RecforgeError, Result};

fn io(context: &Path, source: std::io::Error) -> RecforgeError {
    RecforgeError::Io {
        context: context.display().to_string(),
        source,
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

/// Test hook: with `RECFORGE_TEST_CRASH_AT=<step>` the process aborts at that step of a
/// checkpoint write (1: weights written, 2: weights renamed, 3: state written, 4: state renamed),
/// the way `kill -9` would, so the crash tests can stop it at every file-system step.
fn crash_point(step: u32) {
    if std::env::var("RECFORGE_TEST_CRASH_AT").is_ok_and(|v| v == step.to_string()) {
        std::process::abort();
    }
}

/// Writes `tensors` and `state` (a JSON object) into folder `dir` (created if needed).
pub fn save_checkpoint(dir: &Path, tensors: &[(String, Tensor)], state: &str) -> Result<()> {
    let mut state: Value = serde_json::from_str(state)
        .map_err(|e| RecforgeError::config(format!("checkpoint state must be JSON: {e}")))?;
    let Value::Object(fields) = &mut state else {
        return Err(RecforgeError::config(
            "checkpoint state must be a JSON object",
        ));
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = dir.join("weights.safetensors.tmp");
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_to(tch::Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&cpu, &tmp)?;
    sync(&tmp)?;
    crash_point(1);
    let digest = sha256_file(&tmp)?;
    let name = format!("weights-{}.safetensors", &digest[..16]);
    let weights = dir.join(&name);
    std::fs::rename(&tmp, &weights).map_err(|e| io(&weights, e))?;
    crash_point(2);
    fields.insert("weights".into(), Value::String(name.clone()));
    fields.insert("weights_sha256".into(), Value::String(digest));
    let json = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(state.to_string().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
    }
    crash_point(3);
    std::fs::rename(&tmp, &json).map_err(|e| io(&json, e))?;
    crash_point(4);
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    // Older weights files are unreferenced now.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let stale = n.starts_with("weights") && n.ends_with(".safetensors") && n != name;
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Reads a checkpoint folder: `(tensors by name, state.json text)`. The weights file must match
/// the checksum `state.json` gives for it.
pub fn load_checkpoint(dir: &Path) -> Result<(HashMap<String, Tensor>, String)> {
    let json = dir.join("state.json");
    let bytes = std::fs::read(&json).map_err(|e| io(&json, e))?;
    let state = String::from_utf8(bytes)
        .map_err(|_| RecforgeError::data(format!("{}: not valid UTF-8", json.display())))?;
    let parsed: Value = serde_json::from_str(&state)
        .map_err(|e| RecforgeError::data(format!("{}: not valid JSON ({e})", json.display())))?;
    let (file, sha) = match (parsed.get("weights"), parsed.get("weights_sha256")) {
        (Some(Value::String(f)), Some(Value::String(s))) => (f.clone(), Some(s.clone())),
        (None, None) => ("weights.safetensors".to_string(), None),
        _ => {
            return Err(RecforgeError::data(format!(
                "{}: \"weights\" and \"weights_sha256\" must both be strings",
                json.display()
            )))
        }
    };
    if file.contains('/') || file.contains('\\') || file.starts_with('.') {
        return Err(RecforgeError::data(format!(
            "{}: weights file name {file:?} is not a plain file name",
            json.display()
        )));
    }
    let weights = dir.join(&file);
    if !weights.is_file() {
        return Err(RecforgeError::data(format!("{}: no {file}", dir.display())));
    }
    if let Some(want) = sha {
        let got = sha256_file(&weights)?;
        if got != want {
            return Err(RecforgeError::data(format!(
                "{}: the checksum of {file} does not match state.json (the file is damaged or was replaced)",
                dir.display()
            )));
        }
    }
    let tensors = Tensor::read_safetensors(&weights)
        .map_err(|e| RecforgeError::data(format!("{}: {e}", weights.display())))?
        .into_iter()
        .collect();
    Ok((tensors, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_replaces_old_weights_and_detects_damage() {
        let dir = std::env::temp_dir().join(format!("recforge-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        save_checkpoint(&dir, &[("a".into(), a.shallow_clone())], r#"{"epoch": 0}"#).unwrap();
        let b = Tensor::from_slice(&[4.0f32, 5.0, 6.0]);
        save_checkpoint(&dir, &[("a".into(), b.shallow_clone())], r#"{"epoch": 1}"#).unwrap();
        let files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("weights"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let (t, state) = load_checkpoint(&dir).unwrap();
        assert!(t["a"].equal(&b));
        assert!(state.contains("\"epoch\":1"));
        // Flip one byte of the weights: the checksum catches it.
        let path = dir.join(&files[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let err = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(save_checkpoint(&dir, &[], "[1]").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
