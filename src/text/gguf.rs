//! Llama-architecture GGUF files (llama.cpp's format) as backbones: the metadata becomes a
//! `LlamaConfig`, and the tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are de-quantised to float32
//! under Hugging Face names, with llama.cpp's rotary row permutation of q/k undone.
//!
//! Format: a header (`GGUF`, version 2 or 3, tensor and metadata counts), typed key/value
//! metadata, tensor descriptors (name, dims innermost first, type, offset), then the data,
//! aligned to `general.alignment` (32 by default).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use crate::error::{RecforgeError, Result};

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> RecforgeError {
        RecforgeError::data(format!(
            "GGUF file {} is malformed: {what} (at byte {})",
            self.path.display(),
            self.pos
        ))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.bad("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| self.bad("a string is not UTF-8"))
    }
    fn value(&mut self, kind: u32, depth: usize) -> Result<Value> {
        let b = |r: &mut Self, n| r.take(n).map(|s: &[u8]| s.to_vec());
        Ok(match kind {
            0 => json!(b(self, 1)?[0]),
            1 => json!(b(self, 1)?[0] as i8),
            2 => json!(u16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            3 => json!(i16::from_le_bytes(b(self, 2)?.try_into().expect("2"))),
            4 => json!(self.u32()?),
            5 => json!(self.u32()? as i32),
            6 => json!(f32::from_le_bytes(b(self, 4)?.try_into().expect("4")) as f64),
            7 => json!(b(self, 1)?[0] != 0),
            8 => json!(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.bad("arrays nested too deep"));
                }
                let inner = self.u32()?;
                let n = self.u64()? as usize;
                if n > self.buf.len() {
                    return Err(self.bad("array longer than the file"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => json!(self.u64()?),
            11 => json!(self.u64()? as i64),
            12 => json!(f64::from_le_bytes(b(self, 8)?.try_into().expect("8"))),
            _ => return Err(self.bad(&format!("unknown metadata type {kind}"))),
        })
    }
}

fn f16(bytes: &[u8]) -> f32 {
    half_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// IEEE half precision to f32.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// De-quantises `n` values of ggml type `kind` from `data`.
pub fn dequantize(kind: u32, data: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let need = |block: usize, bytes: usize| -> std::result::Result<(), String> {
        if n % block != 0 {
            return Err(format!("{n} values are not whole blocks of {block}"));
        }
        if data.len() < n / block * bytes {
            return Err("tensor data runs past the end of the file".into());
        }
        Ok(())
    };
    let mut out = Vec::with_capacity(n);
    match kind {
        0 => {
            need(1, 4)?;
            out.extend(
                data[..4 * n]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4"))),
            );
        }
        1 => {
            need(1, 2)?;
            out.extend(data[..2 * n].chunks_exact(2).map(f16));
        }
        30 => {
            need(1, 2)?;
            out.extend(
                data[..2 * n]
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
            );
        }
        2 => {
            // Q4_0: d (f16), 16 bytes of nibbles; x = (q - 8) * d, low nibbles first.
            need(32, 18)?;
            for blk in data[..n / 32 * 18].chunks_exact(18) {
                let d = f16(&blk[0..2]);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|q| ((q & 0xf) as f32 - 8.0) * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as f32 - 8.0) * d));
            }
        }
        3 => {
            // Q4_1: d, m (f16), 16 bytes of nibbles; x = q * d + m.
            need(32, 20)?;
            for blk in data[..n / 32 * 20].chunks_exact(20) {
                let (d, m) = (f16(&blk[0..2]), f16(&blk[2..4]));
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
        }
        8 => {
            // Q8_0: d (f16), 32 signed bytes; x = q * d.
            need(32, 34)?;
            for blk in data[..n / 32 * 34].chunks_exact(34) {
                let d = f16(&blk[0..2]);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        other => {
            return Err(format!(
                "ggml type {other} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
            ))
        }
    }
    Ok(out)
}

fn bytes_for(kind: u32, n: usize) -> Option<usize> {
    Some(match kind {
        0 => 4 * n,
        1 | 30 => 2 * n,
        2 => n / 32 * 18,
        3 => n / 32 * 20,
        8 => n / 32 * 34,
        _ => return None,
    })
}

/// Undoes llama.cpp's permutation of q/k rows (it interleaves the two rotary halves per head).
fn unpermute(w: Tensor, heads: i64) -> Tensor {
    let size = w.size();
    let rows = size[0];
    w.view([heads, rows / heads / 2, 2, size[1]])
        .transpose(1, 2)
        .reshape(&size)
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}"))
}

/// Reads a llama-architecture GGUF file: a `config.json`-like value and float32 tensors under
/// Hugging Face `LlamaForCausalLM` names.
pub fn read(path: &Path) -> Result<(Value, HashMap<String, Tensor>)> {
    let buf = std::fs::read(path).map_err(|source| RecforgeError::Io {
        context: format!("GGUF file {}", path.display()),
        source,
    })?;
    let mut r = Reader {
        buf: &buf,
        pos: 0,
        path,
    };
    if r.take(4).ok() != Some(b"GGUF".as_slice()) {
        return Err(RecforgeError::data(format!(
            "{} is not a GGUF file (no GGUF magic)",
            path.display()
        )));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(RecforgeError::data(format!(
            "{}: GGUF version {version} is not supported (2, 3)",
            path.display()
        )));
    }
    let (n_tensors, n_kv) = (r.u64()? as usize, r.u64()? as usize);
    let mut meta = Map::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let kind = r.u32()?;
        let v = r.value(kind, 0)?;
        meta.insert(key, v);
    }
    let arch = meta
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if arch != "llama" {
        return Err(RecforgeError::config(format!(
            "{}: general.architecture {arch:?} is not supported (llama)",
            path.display()
        )));
    }
    let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()? as usize;
        if n_dims > 4 {
            return Err(r.bad("a tensor has more than 4 dimensions"));
        }
        let dims: Vec<u64> = (0..n_dims).map(|_| r.u64()).collect::<Result<_>>()?;
        let kind = r.u32()?;
        let offset = r.u64()? as usize;
        infos.push((name, dims, kind, offset));
    }
    let align = meta
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(32) as usize;
    let data_start = r.pos.div_ceil(align.max(1)) * align.max(1);
    let get = |k: &str| {
        meta.get(&format!("llama.{k}"))
            .and_then(Value::as_u64)
            .map(|v| v as i64)
    };
    let need = |k: &str| {
        get(k).ok_or_else(|| {
            RecforgeError::data(format!("{}: metadata llama.{k} is missing", path.display()))
        })
    };
    let heads = need("attention.head_count")?;
    let kv_heads = get("attention.head_count_kv").unwrap_or(heads);
    let mut tensors = HashMap::new();
    for (name, dims, kind, offset) in infos {
        let n: usize = dims.iter().product::<u64>() as usize;
        let start = data_start
            .checked_add(offset)
            .filter(|&s| s <= buf.len())
            .ok_or_else(|| {
                RecforgeError::data(format!(
                    "{}: tensor {name} starts past the end of the file",
                    path.display()
                ))
            })?;
        let len = bytes_for(kind, n).unwrap_or(0).min(buf.len() - start);
        let values = dequantize(kind, &buf[start..start + len], n)
            .map_err(|e| RecforgeError::data(format!("{}: tensor {name}: {e}", path.display())))?;
        let shape: Vec<i64> = dims.iter().rev().map(|&d| d as i64).collect();
        let mut t = Tensor::from_slice(&values).view(shape.as_slice());
        let Some(hf) = hf_name(&name) else {
            if name == "rope_freqs.weight" {
                continue;
            }
            return Err(RecforgeError::config(format!(
                "{}: tensor {name} has no Hugging Face Llama counterpart known to recforge",
                path.display()
            )));
        };
        if name.ends_with("attn_q.weight") {
            t = unpermute(t, heads);
        } else if name.ends_with("attn_k.weight") {
            t = unpermute(t, kv_heads);
        }
        tensors.insert(hf, t.to_kind(Kind::Float));
    }
    let embd = need("embedding_length")?;
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .map(|t| t.size()[0])
        .ok_or_else(|| {
            RecforgeError::data(format!("{}: no token_embd.weight tensor", path.display()))
        })?;
    let tok = |k: &str| {
        meta.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
    };
    let mut config = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": embd,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": get("rope.dimension_count").unwrap_or(embd / heads),
        "max_position_embeddings": get("context_length").unwrap_or(2048),
        "rms_norm_eps": meta.get("llama.attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-6),
        "rope_theta": meta.get("llama.rope.freq_base").and_then(Value::as_f64).unwrap_or(10000.0),
        "tie_word_embeddings": !tensors.contains_key("lm_head.weight"),
        "attention_bias": tensors.contains_key("model.layers.0.self_attn.q_proj.bias"),
    });
    for (field, key) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(id) = tok(key) {
            config[field] = json!(id);
        }
    }
    if let Some(scaling) = meta.get("llama.rope.scaling.type").and_then(Value::as_str) {
        if scaling != "none" {
            config["rope_scaling"] = json!({"rope_type": scaling});
        }
    }
    Ok((config, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(x: f32) -> [u8; 2] {
        // Exact for the values used below (small integers and halves).
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        if x == 0.0 {
            return sign.to_le_bytes();
        }
        let exp = (((bits >> 23) & 0xff) as i32 - 127 + 15) as u16;
        let frac = ((bits >> 13) & 0x3ff) as u16;
        (sign | (exp << 10) | frac).to_le_bytes()
    }

    #[test]
    fn half_precision_by_hand() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x3800), 0.5);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16(&half(0.25)), 0.25);
    }

    #[test]
    fn q4_0_q4_1_and_q8_0_blocks_by_hand() {
        let nibbles: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut q40 = half(0.5).to_vec();
        q40.extend(&nibbles);
        let v = dequantize(2, &q40, 32).unwrap();
        assert_eq!(v[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(v[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(v[16], 3.5); // high nibble of byte 0 is 15
        assert_eq!(v[31], -4.0);
        let mut q41 = half(2.0).to_vec();
        q41.extend(half(-1.0));
        q41.extend(&nibbles);
        let v = dequantize(3, &q41, 32).unwrap();
        assert_eq!((v[0], v[1], v[16]), (-1.0, 1.0, 29.0));
        let mut q80 = half(0.25).to_vec();
        q80.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let v = dequantize(8, &q80, 32).unwrap();
        assert_eq!((v[0], v[16], v[31]), (-4.0, 0.0, 3.75));
        assert!(dequantize(3, &q41[..10], 32).is_err());
        assert!(dequantize(12, &q41, 32).unwrap_err().contains("12"));
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(h, 2, r/h/2, c).swapaxes(1, 2).reshape(r, c)
        let w = Tensor::arange(8 * 3, (Kind::Float, tch::Device::Cpu)).view([8, 3]);
        let permuted = w.view([2, 2, 2, 3]).transpose(1, 2).reshape([8, 3]);
        assert!(unpermute(permuted, 2).equal(&w));
    }

    #[test]
    fn not_gguf_is_a_data_error() {
        let p = std::env::temp_dir().join(format!("recforge-not-{}.gguf", std::process::id()));
        std::fs::write(&p, b"GGML1234").unwrap();
        let e = read(&p).err().unwrap().to_string();
        assert!(e.contains("not a GGUF"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
