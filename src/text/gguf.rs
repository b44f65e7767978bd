//! Llama-architecture GGUF files (llama.cpp's format) as backbones: the metadata becomes a
//! `LlamaConfig`, and the tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are de-quantised to float32
//! under Hugging Face names, with llama.cpp's rotary row permutation of q/k undone.
//! [`GgufMetadata::read`] reads only the metadata (the tokenizer's arrays included), streaming
//! the file and stopping before the tensor descriptors, for [`super::gguf_tokenizer`] and any
//! other reader of keys.
//!
//! Format: a header (`GGUF`, version 2 or 3, tensor and metadata counts), typed key/value
//! metadata, tensor descriptors (name, dims innermost first, type, offset), then the data,
//! aligned to `general.alignment` (32 by default).
//!
//! The file is hostile until proven otherwise: every count and size read from it (metadata and
//! array lengths, string lengths, tensor dimensions and offsets, the layer count) is checked
//! against the bytes that remain before anything is allocated, all arithmetic on them is checked,
//! and metadata of the wrong type is reported with its type. A malformed file is a
//! [`RecforgeError::Data`] naming the problem and the byte where it was found, never a panic or
//! an abort.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::Tensor;

use crate::error::{RecforgeError, Result};

/// GGUF metadata value types, by their number in the file.
pub fn type_name(kind: u32) -> &'static str {
    match kind {
        0 => "uint8",
        1 => "int8",
        2 => "uint16",
        3 => "int16",
        4 => "uint32",
        5 => "int32",
        6 => "float32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "uint64",
        11 => "int64",
        12 => "float64",
        _ => "unknown",
    }
}

/// The fewest bytes one value of a metadata type takes in the file (a string: its 8-byte length;
/// an array: its 4-byte type and 8-byte length).
fn min_size(kind: u32) -> Option<usize> {
    Some(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// One GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// A `uint8`, `uint16`, `uint32` or `uint64`.
    UInt(u64),
    /// An `int8`, `int16`, `int32` or `int64`.
    Int(i64),
    /// A `float32` (widened exactly) or `float64`, NaN and infinities kept as read.
    Float(f64),
    /// A `bool` (any non-zero byte is true).
    Bool(bool),
    /// A UTF-8 `string`.
    String(String),
    /// An `array`: the GGUF type number of its elements, and the elements.
    Array(u32, Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF type number this value is written with when it is built in code (the narrowest of
    /// `uint32`/`uint64`, `int32`/`int64`; `float32`).
    pub fn natural_kind(&self) -> u32 {
        match self {
            Self::UInt(v) if u32::try_from(*v).is_ok() => 4,
            Self::UInt(_) => 10,
            Self::Int(v) if i32::try_from(*v).is_ok() => 5,
            Self::Int(_) => 11,
            Self::Float(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(..) => 9,
        }
    }
}

/// Reads the file's bytes in order from any source (the whole file in memory, or streamed from
/// disk), knowing the file's length so that every size is checked before anything is allocated.
struct Reader<'p, R> {
    src: R,
    scratch: Vec<u8>,
    pos: usize,
    len: usize,
    path: &'p Path,
}

impl<R: Read> Reader<'_, R> {
    fn bad(&self, what: &str) -> RecforgeError {
        RecforgeError::data(format!(
            "GGUF file {} is malformed: {what} (at byte {})",
            self.path.display(),
            self.pos
        ))
    }
    fn remaining(&self) -> usize {
        self.len.saturating_sub(self.pos)
    }
    /// The next `n` bytes (at most the rest of the file: checked before the buffer grows).
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                self.bad(&format!(
                    "{n} bytes needed but only {} remain (truncated?)",
                    self.remaining()
                ))
            })?;
        self.scratch.clear();
        self.scratch.resize(n, 0);
        if let Err(e) = self.src.read_exact(&mut self.scratch) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.bad("the file ended early (did it change while being read?)")
            } else {
                RecforgeError::Io {
                    context: format!("GGUF file {}", self.path.display()),
                    source: e,
                }
            });
        }
        self.pos = end;
        Ok(&self.scratch)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = <[u8; N]>::try_from(self.take(N)?).ok();
        bytes.ok_or_else(|| self.bad("truncated"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count read from the file that says how many items of at least `item_bytes` bytes each
    /// follow: more than the rest of the file can hold is an error, before any allocation.
    fn count(&mut self, what: &str, item_bytes: usize) -> Result<usize> {
        let n = self.u64()?;
        let fits = self.remaining().checked_div(item_bytes.max(1)).unwrap_or(0);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= fits)
            .ok_or_else(|| {
                self.bad(&format!(
                    "{what} {n} needs more than the {} bytes left in the file",
                    self.remaining()
                ))
            })
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count("string length", 1)?;
        let s = std::str::from_utf8(self.take(n)?).ok().map(str::to_string);
        s.ok_or_else(|| self.bad("a string is not UTF-8"))
    }
    fn value(&mut self, kind: u32, depth: usize) -> Result<GgufValue> {
        Ok(match kind {
            0 => GgufValue::UInt(u64::from(u8::from_le_bytes(self.array()?))),
            1 => GgufValue::Int(i64::from(i8::from_le_bytes(self.array()?))),
            2 => GgufValue::UInt(u64::from(u16::from_le_bytes(self.array()?))),
            3 => GgufValue::Int(i64::from(i16::from_le_bytes(self.array()?))),
            4 => GgufValue::UInt(u64::from(self.u32()?)),
            5 => GgufValue::Int(i64::from(i32::from_le_bytes(self.array()?))),
            6 => GgufValue::Float(f64::from(f32::from_le_bytes(self.array()?))),
            7 => GgufValue::Bool(u8::from_le_bytes(self.array()?) != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.bad("arrays nested too deep"));
                }
                let inner = self.u32()?;
                let size = min_size(inner)
                    .ok_or_else(|| self.bad(&format!("unknown array element type {inner}")))?;
                let n = self.count("array length", size)?;
                let mut items = Vec::new();
                items
                    .try_reserve_exact(n)
                    .map_err(|_| self.bad(&format!("cannot allocate an array of {n} values")))?;
                for _ in 0..n {
                    items.push(self.value(inner, depth.saturating_add(1))?);
                }
                GgufValue::Array(inner, items)
            }
            10 => GgufValue::UInt(self.u64()?),
            11 => GgufValue::Int(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::Float(f64::from_le_bytes(self.array()?)),
            _ => return Err(self.bad(&format!("unknown metadata type {kind}"))),
        })
    }

    /// The header and the metadata: checks the magic and version, reads every key/value pair,
    /// and returns the tensor count (checked against the bytes left) with the metadata. The
    /// reader is left at the first tensor descriptor.
    fn header(&mut self) -> Result<(usize, GgufMetadata)> {
        let path = self.path;
        if self.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(RecforgeError::data(format!(
                "{} is not a GGUF file (no GGUF magic)",
                path.display()
            )));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(RecforgeError::data(format!(
                "{}: GGUF version {version} is not supported (2, 3)",
                path.display()
            )));
        }
        // A tensor descriptor takes at least 24 bytes (name length, dimension count, type,
        // offset) and a metadata entry at least 13 (key length, type, one byte of value).
        let n_tensors = self.count("tensor count", 24)?;
        let n_kv = self.count("metadata count", 13)?;
        let mut entries = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = self.string()?;
            let kind = self.u32()?;
            let v = self.value(kind, 0)?;
            if entries.insert(key.clone(), (kind, v)).is_some() {
                return Err(self.bad(&format!("metadata key {key} appears twice")));
            }
        }
        let meta = GgufMetadata {
            entries,
            path: path.to_path_buf(),
            version,
            tensor_count: n_tensors,
        };
        Ok((n_tensors, meta))
    }
}

/// The metadata of a GGUF file: each key with its GGUF type number and value.
///
/// The typed accessors return `Ok(None)` for an absent key and a [`RecforgeError::Data`] naming
/// the key, its type and the file for a value of the wrong type.
#[derive(Debug, Clone)]
pub struct GgufMetadata {
    entries: HashMap<String, (u32, GgufValue)>,
    path: PathBuf,
    version: u32,
    tensor_count: usize,
}

impl GgufMetadata {
    /// Reads the header and the metadata of a GGUF file (every key, the big tokenizer arrays
    /// included), streaming the file and stopping at the tensor descriptors: the tensor data is
    /// never read. Every count is checked against the file's length before allocation.
    pub fn read(path: &Path) -> Result<Self> {
        let io = |source| RecforgeError::Io {
            context: format!("GGUF file {}", path.display()),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|_| {
            RecforgeError::data(format!(
                "GGUF file {} has {len} bytes, more than this machine can address",
                path.display()
            ))
        })?;
        let mut r = Reader {
            src: std::io::BufReader::with_capacity(1 << 16, file),
            scratch: Vec::new(),
            pos: 0,
            len,
            path,
        };
        Ok(r.header()?.1)
    }

    /// Empty metadata for building in code (tests, conversions); `path` only names it in errors.
    pub fn new(path: &Path) -> Self {
        Self {
            entries: HashMap::new(),
            path: path.to_path_buf(),
            version: 3,
            tensor_count: 0,
        }
    }

    /// Sets `key` to `value` (typed by [`GgufValue::natural_kind`]), replacing any value it had.
    pub fn insert(&mut self, key: impl Into<String>, value: GgufValue) {
        self.entries
            .insert(key.into(), (value.natural_kind(), value));
    }

    /// Removes `key`, returning its value if it had one.
    pub fn remove(&mut self, key: &str) -> Option<GgufValue> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    /// The file the metadata was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The number of tensors the header announces.
    pub fn tensor_count(&self) -> usize {
        self.tensor_count
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// The GGUF type number of `key`'s value (see [`type_name`]), if present.
    pub fn kind(&self, key: &str) -> Option<u32> {
        self.entries.get(key).map(|(k, _)| *k)
    }

    fn wrong_type(&self, key: &str, want: &str) -> RecforgeError {
        let got = match self.entries.get(key) {
            Some((9, GgufValue::Array(inner, _))) => format!("array of {}", type_name(*inner)),
            Some((kind, _)) => type_name(*kind).to_string(),
            None => "nothing".to_string(),
        };
        RecforgeError::data(format!(
            "{}: GGUF metadata {key} has type {got}, expected {want}",
            self.path.display()
        ))
    }

    fn too_big(&self, key: &str, v: u64) -> RecforgeError {
        RecforgeError::data(format!(
            "{}: GGUF metadata {key} = {v} does not fit in a 64-bit integer",
            self.path.display()
        ))
    }

    /// An integer of any integer type; `None` when the key is absent.
    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.entries.get(key) {
            None => Ok(None),
            Some((_, GgufValue::Int(v))) => Ok(Some(*v)),
            Some((_, GgufValue::UInt(v))) => i64::try_from(*v)
                .map(Some)
                .map_err(|_| self.too_big(key, *v)),
            Some(_) => Err(self.wrong_type(key, "an integer")),
        }
    }

    /// A finite number of any numeric type; `None` when absent.
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        let v = match self.entries.get(key) {
            None => return Ok(None),
            Some((_, GgufValue::Float(v))) => *v,
            Some((_, GgufValue::Int(v))) => *v as f64,
            Some((_, GgufValue::UInt(v))) => *v as f64,
            Some(_) => return Err(self.wrong_type(key, "a number")),
        };
        if v.is_finite() {
            Ok(Some(v))
        } else {
            Err(RecforgeError::data(format!(
                "{}: GGUF metadata {key} is not a finite number",
                self.path.display()
            )))
        }
    }

    /// A boolean; `None` when absent.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.entries.get(key) {
            None => Ok(None),
            Some((_, GgufValue::Bool(b))) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a bool")),
        }
    }

    /// A string; `None` when absent.
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.entries.get(key) {
            None => Ok(None),
            Some((_, GgufValue::String(s))) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(key, "a string")),
        }
    }

    /// The items of an array of `want` elements, or the right error.
    fn items(&self, key: &str, want: &str, ok: fn(u32) -> bool) -> Result<Option<&[GgufValue]>> {
        match self.entries.get(key) {
            None => Ok(None),
            Some((_, GgufValue::Array(inner, items))) if ok(*inner) => Ok(Some(items)),
            Some(_) => Err(self.wrong_type(key, want)),
        }
    }

    /// An array of strings; `None` when absent.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(items) = self.items(key, "an array of strings", |k| k == 8)? else {
            return Ok(None);
        };
        let out = items
            .iter()
            .map(|v| match v {
                GgufValue::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>();
        out.map(Some)
            .ok_or_else(|| self.wrong_type(key, "an array of strings"))
    }

    /// An array of integers of any integer type; `None` when absent.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let want = "an array of integers";
        let Some(items) = self.items(key, want, |k| matches!(k, 0..=5 | 10 | 11))? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                GgufValue::Int(i) => Ok(*i),
                GgufValue::UInt(u) => i64::try_from(*u).map_err(|_| self.too_big(key, *u)),
                _ => Err(self.wrong_type(key, want)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of numbers of any numeric type, as read (NaN and infinities included); `None`
    /// when absent.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let want = "an array of numbers";
        let Some(items) = self.items(key, want, |k| matches!(k, 0..=6 | 10..=12))? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                GgufValue::Float(f) => Ok(*f),
                GgufValue::Int(i) => Ok(*i as f64),
                GgufValue::UInt(u) => Ok(*u as f64),
                _ => Err(self.wrong_type(key, want)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A size (an integer in `1..=i32::MAX`, as config sizes are); `None` when absent.
    fn size(&self, key: &str) -> Result<Option<i64>> {
        match self.int(key)? {
            Some(n) if !(1..=i64::from(i32::MAX)).contains(&n) => {
                Err(RecforgeError::data(format!(
                    "{}: GGUF metadata {key} must be between 1 and {}, got {n}",
                    self.path.display(),
                    i32::MAX
                )))
            }
            other => Ok(other),
        }
    }

    /// A required size.
    fn need(&self, key: &str) -> Result<i64> {
        self.size(key)?.ok_or_else(|| {
            RecforgeError::data(format!(
                "{}: GGUF metadata {key} is missing",
                self.path.display()
            ))
        })
    }
}

fn f16(bytes: [u8; 2]) -> f32 {
    half_to_f32(u16::from_le_bytes(bytes))
}

/// IEEE half precision to f32 (exact: every half is an f32).
fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 == 0 { 1.0f32 } else { -1.0 };
    let exp = (h >> 10) & 0x1f;
    let frac = f32::from(h & 0x3ff);
    match exp {
        // Subnormal: frac / 1024 * 2^-14.
        0 => sign * frac * 2f32.powi(-24),
        0x1f if frac == 0.0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(i32::from(e)) * 2f32.powi(-15),
    }
}

/// Bytes of `n` values of ggml type `kind` (`Err` for a type recforge cannot read, or a count
/// that is not whole blocks or overflows).
fn bytes_for(kind: u32, n: usize) -> std::result::Result<usize, String> {
    let (block, bytes) = match kind {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        8 => (32, 34),
        other => {
            return Err(format!(
                "ggml type {other} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
            ))
        }
    };
    if n.checked_rem(block) != Some(0) {
        return Err(format!("{n} values are not whole blocks of {block}"));
    }
    n.checked_div(block)
        .and_then(|blocks| blocks.checked_mul(bytes))
        .ok_or_else(|| format!("{n} values of ggml type {kind} overflow a byte count"))
}

/// De-quantises `n` values of ggml type `kind` from `data`. The length of `data` is checked
/// before the output is allocated.
pub fn dequantize(kind: u32, data: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let bytes = bytes_for(kind, n)?;
    let data = data
        .get(..bytes)
        .ok_or("tensor data runs past the end of the file")?;
    let mut out = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| format!("cannot allocate {n} values"))?;
    let pair = |c: &[u8]| {
        [
            c.first().copied().unwrap_or(0),
            c.get(1).copied().unwrap_or(0),
        ]
    };
    match kind {
        0 => out.extend(data.chunks_exact(4).map(|c| {
            f32::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
                c.get(2).copied().unwrap_or(0),
                c.get(3).copied().unwrap_or(0),
            ])
        })),
        1 => out.extend(data.chunks_exact(2).map(|c| f16(pair(c)))),
        30 => out.extend(
            data.chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes(pair(c))) << 16)),
        ),
        2 => {
            // Q4_0: d (f16), 16 bytes of nibbles; x = (q - 8) * d, low nibbles first.
            for blk in data.chunks_exact(18) {
                let (d, qs) = blk.split_at(2);
                let d = f16(pair(d));
                out.extend(qs.iter().map(|q| (f32::from(q & 0xf) - 8.0) * d));
                out.extend(qs.iter().map(|q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        3 => {
            // Q4_1: d, m (f16), 16 bytes of nibbles; x = q * d + m.
            for blk in data.chunks_exact(20) {
                let (dm, qs) = blk.split_at(4);
                let (d, m) = dm.split_at(2);
                let (d, m) = (f16(pair(d)), f16(pair(m)));
                out.extend(qs.iter().map(|q| f32::from(q & 0xf) * d + m));
                out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
            }
        }
        8 => {
            // Q8_0: d (f16), 32 signed bytes; x = q * d.
            for blk in data.chunks_exact(34) {
                let (d, qs) = blk.split_at(2);
                let d = f16(pair(d));
                out.extend(qs.iter().map(|&q| f32::from(i8::from_le_bytes([q])) * d));
            }
        }
        other => return Err(format!("ggml type {other} is not supported")),
    }
    Ok(out)
}

/// Undoes llama.cpp's permutation of q/k rows (it interleaves the two rotary halves per head).
/// `name` and `key` name the tensor and the head count for the error when the rows do not split
/// into heads.
fn unpermute(w: Tensor, heads: i64, name: &str, key: &str) -> Result<Tensor> {
    let size = w.size();
    let (rows, cols) = match size.as_slice() {
        [r, c] => (*r, *c),
        _ => {
            return Err(RecforgeError::data(format!(
                "GGUF tensor {name} has shape {size:?}, expected 2 dimensions"
            )))
        }
    };
    let per_head = heads
        .checked_mul(2)
        .and_then(|h2| {
            rows.checked_rem(h2)
                .filter(|&r| r == 0)
                .and(rows.checked_div(h2))
        })
        .ok_or_else(|| {
            RecforgeError::data(format!(
                "GGUF tensor {name} has {rows} rows, not a multiple of 2 x {key} ({heads})"
            ))
        })?;
    Ok(w.f_view([heads, per_head, 2, cols])?
        .f_transpose(1, 2)?
        .f_reshape(&size)?)
}

/// The layer index of a `blk.N.` tensor name.
fn block_of(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
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

/// One tensor descriptor: name, dimensions (innermost first), ggml type, data offset.
struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    kind: u32,
    offset: u64,
}

/// Reads a llama-architecture GGUF file: a `config.json`-like value and float32 tensors under
/// Hugging Face `LlamaForCausalLM` names.
pub fn read(path: &Path) -> Result<(Value, HashMap<String, Tensor>)> {
    let buf = std::fs::read(path).map_err(|source| RecforgeError::Io {
        context: format!("GGUF file {}", path.display()),
        source,
    })?;
    let mut r = Reader {
        src: buf.as_slice(),
        scratch: Vec::new(),
        pos: 0,
        len: buf.len(),
        path,
    };
    let (n_tensors, meta) = r.header()?;
    let arch = meta.str("general.architecture")?.unwrap_or("");
    if arch != "llama" {
        return Err(RecforgeError::config(format!(
            "{}: general.architecture {arch:?} is not supported (llama)",
            path.display()
        )));
    }
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 4 {
            return Err(r.bad(&format!(
                "tensor {name} has {n_dims} dimensions (at most 4)"
            )));
        }
        let dims: Vec<u64> = (0..n_dims).map(|_| r.u64()).collect::<Result<_>>()?;
        let kind = r.u32()?;
        let offset = r.u64()?;
        infos.push(TensorInfo {
            name,
            dims,
            kind,
            offset,
        });
    }
    let align = match meta.int("general.alignment")? {
        None => 32,
        Some(a) => usize::try_from(a)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| {
                RecforgeError::data(format!(
                    "{}: GGUF metadata general.alignment must be a power of two, got {a}",
                    path.display()
                ))
            })?,
    };
    let data_start = r
        .pos
        .checked_next_multiple_of(align)
        .filter(|&s| s <= buf.len())
        .ok_or_else(|| r.bad("the tensor data would start past the end of the file"))?;
    let heads = meta.need("llama.attention.head_count")?;
    let kv_heads = meta.size("llama.attention.head_count_kv")?.unwrap_or(heads);
    let mut tensors = HashMap::with_capacity(infos.len());
    let mut blocks = BTreeSet::new();
    for TensorInfo {
        name,
        dims,
        kind,
        offset,
    } in infos
    {
        let bad =
            |what: String| RecforgeError::data(format!("{}: tensor {name} {what}", path.display()));
        // Each dimension is at least 1 and their product a count of values that fits in memory
        // indices; the bytes they need are then checked against the file.
        let n = dims
            .iter()
            .try_fold(
                1u64,
                |acc, &d| if d == 0 { None } else { acc.checked_mul(d) },
            )
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(format!("has dimensions {dims:?} (zero or overflowing)")))?;
        let bytes = bytes_for(kind, n).map_err(bad)?;
        let data = usize::try_from(offset)
            .ok()
            .and_then(|o| data_start.checked_add(o))
            .and_then(|start| Some(start..start.checked_add(bytes)?))
            .and_then(|span| buf.get(span))
            .ok_or_else(|| {
                bad(format!(
                    "has {bytes} bytes of data at offset {offset} after the header's {data_start} \
                     bytes, past the end of the file ({} bytes)",
                    buf.len()
                ))
            })?;
        let values = dequantize(kind, data, n).map_err(bad)?;
        // Every dimension is at most n, which fits in usize and was read from an i64-sized file.
        let shape: Vec<i64> = dims
            .iter()
            .rev()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("has dimensions {dims:?} too large")))?;
        let mut t = Tensor::f_from_slice(&values)?.f_view(shape.as_slice())?;
        drop(values);
        let Some(hf) = hf_name(&name) else {
            if name == "rope_freqs.weight" {
                continue;
            }
            return Err(RecforgeError::config(format!(
                "{}: tensor {name} has no Hugging Face Llama counterpart known to recforge",
                path.display()
            )));
        };
        if let Some(b) = block_of(&name) {
            blocks.insert(b);
        }
        if name.ends_with("attn_q.weight") {
            t = unpermute(t, heads, &name, "llama.attention.head_count")?;
        } else if name.ends_with("attn_k.weight") {
            t = unpermute(t, kv_heads, &name, "llama.attention.head_count_kv")?;
        }
        if tensors.insert(hf, t).is_some() {
            return Err(bad("appears twice".into()));
        }
    }
    let block_count = meta.need("llama.block_count")?;
    let expected: BTreeSet<usize> = (0..usize::try_from(block_count).unwrap_or(usize::MAX))
        .take(blocks.len().saturating_add(1))
        .collect();
    if blocks != expected {
        return Err(RecforgeError::data(format!(
            "{}: GGUF metadata llama.block_count is {block_count}, but the file holds tensors of \
             {} block(s) numbered {:?}",
            path.display(),
            blocks.len(),
            blocks.iter().take(8).collect::<Vec<_>>()
        )));
    }
    let embd = meta.need("llama.embedding_length")?;
    let vocab = tensors
        .get("model.embed_tokens.weight")
        .and_then(|t| t.size().first().copied())
        .ok_or_else(|| {
            RecforgeError::data(format!("{}: no token_embd.weight tensor", path.display()))
        })?;
    let head_dim = match meta.size("llama.rope.dimension_count")? {
        Some(d) => d,
        None => embd.checked_div(heads).unwrap_or(0),
    };
    // An epsilon may be 0; a rotary base must be positive.
    let number = |key: &str, default: f64, zero_ok: bool| -> Result<f64> {
        match meta.float(key)? {
            None => Ok(default),
            Some(v) if v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)) => Ok(v),
            Some(v) => Err(RecforgeError::data(format!(
                "{}: GGUF metadata {key} must be a finite number {} 0, got {v}",
                path.display(),
                if zero_ok { ">=" } else { ">" }
            ))),
        }
    };
    let mut config = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": embd,
        "intermediate_size": meta.need("llama.feed_forward_length")?,
        "num_hidden_layers": block_count,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": meta.size("llama.context_length")?.unwrap_or(2048),
        "rms_norm_eps": number("llama.attention.layer_norm_rms_epsilon", 1e-6, true)?,
        "rope_theta": number("llama.rope.freq_base", 10000.0, false)?,
        "tie_word_embeddings": !tensors.contains_key("lm_head.weight"),
        "attention_bias": tensors.contains_key("model.layers.0.self_attn.q_proj.bias"),
    });
    for (field, key) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(id) = meta.int(&format!("tokenizer.ggml.{key}"))? {
            config[field] = json!(id);
        }
    }
    if let Some(scaling) = meta.str("llama.rope.scaling.type")? {
        if scaling != "none" {
            config["rope_scaling"] = json!({"rope_type": scaling});
        }
    }
    Ok((config, tensors))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use tch::Kind;

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
        assert_eq!(f16(half(0.25)), 0.25);
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
        assert!(unpermute(permuted, 2, "q", "heads").unwrap().equal(&w));
    }

    #[test]
    fn not_gguf_is_a_data_error() {
        let p = std::env::temp_dir().join(format!("recforge-not-{}.gguf", std::process::id()));
        std::fs::write(&p, b"GGML1234").unwrap();
        let e = read(&p).err().unwrap().to_string();
        assert!(e.contains("not a GGUF"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    /// The bit-level half-to-float conversion recforge used before (kept as the reference).
    fn half_bits_reference(h: u16) -> f32 {
        let sign = ((h >> 15) as u32) << 31;
        let exp = ((h >> 10) & 0x1f) as u32;
        let frac = (h & 0x3ff) as u32;
        let bits = match (exp, frac) {
            (0, 0) => sign,
            (0, f) => {
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

    #[test]
    fn every_half_converts_exactly() {
        for h in 0..=u16::MAX {
            let (got, want) = (half_to_f32(h), half_bits_reference(h));
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}: {got} vs {want}");
            }
        }
    }

    /// A GGUF file described field by field, so tests can corrupt any one of them.
    struct Spec {
        version: u32,
        n_tensors: Option<u64>,
        n_kv: Option<u64>,
        meta: Vec<(String, u32, Vec<u8>)>,
        /// name, dims (innermost first), ggml type, data offset (None: next aligned slot).
        tensors: Vec<(String, Vec<u64>, u32, Option<u64>)>,
        cut: Option<usize>,
    }

    fn gguf_str(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    fn u32_le(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// A one-block Llama: width 8, 2 heads, feed-forward 16, vocabulary 10, all F32.
    fn tiny() -> Spec {
        let m = |k: &str, v: u32| (k.to_string(), 4, u32_le(v));
        // An array of 2 strings.
        let mut tokens = [8u32.to_le_bytes().to_vec(), 2u64.to_le_bytes().to_vec()].concat();
        tokens.extend(gguf_str("a"));
        tokens.extend(gguf_str("b"));
        let meta = vec![
            ("general.architecture".to_string(), 8, gguf_str("llama")),
            m("llama.block_count", 1),
            m("llama.embedding_length", 8),
            m("llama.feed_forward_length", 16),
            m("llama.attention.head_count", 2),
            m("llama.attention.head_count_kv", 2),
            (
                "llama.attention.layer_norm_rms_epsilon".to_string(),
                6,
                1e-5f32.to_le_bytes().to_vec(),
            ),
            ("tokenizer.ggml.tokens".to_string(), 9, tokens),
            m("tokenizer.ggml.eos_token_id", 2),
        ];
        let t = |n: &str, dims: &[u64]| (n.to_string(), dims.to_vec(), 0, None);
        let tensors = vec![
            t("token_embd.weight", &[8, 10]),
            t("blk.0.attn_norm.weight", &[8]),
            t("blk.0.attn_q.weight", &[8, 8]),
            t("blk.0.attn_k.weight", &[8, 8]),
            t("blk.0.attn_v.weight", &[8, 8]),
            t("blk.0.attn_output.weight", &[8, 8]),
            t("blk.0.ffn_norm.weight", &[8]),
            t("blk.0.ffn_gate.weight", &[8, 16]),
            t("blk.0.ffn_up.weight", &[8, 16]),
            t("blk.0.ffn_down.weight", &[16, 8]),
            t("output_norm.weight", &[8]),
        ];
        Spec {
            version: 3,
            n_tensors: None,
            n_kv: None,
            meta,
            tensors,
            cut: None,
        }
    }

    fn build(spec: &Spec) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(spec.version.to_le_bytes());
        out.extend(
            spec.n_tensors
                .unwrap_or(spec.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend(spec.n_kv.unwrap_or(spec.meta.len() as u64).to_le_bytes());
        for (k, kind, v) in &spec.meta {
            out.extend(gguf_str(k));
            out.extend(kind.to_le_bytes());
            out.extend(v);
        }
        let mut data = Vec::new();
        for (name, dims, kind, offset) in &spec.tensors {
            out.extend(gguf_str(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(kind.to_le_bytes());
            out.extend(offset.unwrap_or(data.len() as u64).to_le_bytes());
            let n: u64 = dims.iter().product();
            if n < 1 << 20 {
                data.extend((0..n).flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes()));
                data.resize(data.len().div_ceil(32) * 32, 0);
            }
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(data);
        out.truncate(spec.cut.unwrap_or(usize::MAX));
        out
    }

    fn read_spec(spec: &Spec) -> Result<(Value, HashMap<String, Tensor>)> {
        let p = std::env::temp_dir().join(format!(
            "recforge-gguf-{}-{:?}.gguf",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&p, build(spec)).unwrap();
        let out = read(&p);
        std::fs::remove_file(&p).unwrap();
        out
    }

    fn error_of(spec: &Spec) -> String {
        match read_spec(spec) {
            Ok(_) => panic!("the file was read"),
            Err(e) => e.to_string(),
        }
    }

    fn set(spec: &mut Spec, key: &str, kind: u32, value: Vec<u8>) {
        let entry = spec.meta.iter_mut().find(|(k, _, _)| k == key).unwrap();
        entry.1 = kind;
        entry.2 = value;
    }

    #[test]
    fn a_tiny_llama_file_reads_and_loads() {
        let (config, tensors) = read_spec(&tiny()).unwrap();
        assert_eq!(config["num_hidden_layers"], 1);
        assert_eq!(config["vocab_size"], 10);
        assert_eq!(config["head_dim"], 4);
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(
            tensors["model.layers.0.mlp.up_proj.weight"].size(),
            vec![16, 8]
        );
        let p = std::env::temp_dir().join(format!("recforge-gguf-lm-{}.gguf", std::process::id()));
        std::fs::write(&p, build(&tiny())).unwrap();
        let lm = crate::text::causal_lm::CausalLm::from_gguf(&p, tch::Device::Cpu, Kind::Float);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(lm.unwrap().net().vocab_size(), 10);
    }

    #[test]
    fn sizes_past_the_end_of_the_file_are_errors_before_allocation() {
        // The repro: a dimension of 2^30 asked for 2^33 floats (an abort).
        let mut s = tiny();
        s.tensors[0].1[1] = 1 << 30;
        let e = error_of(&s);
        assert!(
            e.contains("token_embd.weight") && e.contains("past the end"),
            "{e}"
        );
        let mut s = tiny();
        s.tensors[0].1 = vec![1 << 40, 1 << 40];
        assert!(error_of(&s).contains("overflowing"));
        let mut s = tiny();
        s.tensors[2].1[0] = 0;
        assert!(error_of(&s).contains("blk.0.attn_q.weight"));
        let mut s = tiny();
        s.tensors[3].3 = Some(u64::MAX - 3);
        assert!(error_of(&s).contains("blk.0.attn_k.weight"));
        let mut s = tiny();
        s.tensors[3].2 = 99;
        assert!(error_of(&s).contains("ggml type 99"));
        let mut s = tiny();
        s.n_tensors = Some(1 << 60);
        assert!(error_of(&s).contains("tensor count"));
        let mut s = tiny();
        s.n_kv = Some(u64::MAX);
        assert!(error_of(&s).contains("metadata count"));
        let mut s = tiny();
        let mut huge_array = [
            8u32.to_le_bytes().to_vec(),
            (1u64 << 40).to_le_bytes().to_vec(),
        ]
        .concat();
        huge_array.extend(gguf_str("a"));
        set(&mut s, "tokenizer.ggml.tokens", 9, huge_array);
        assert!(error_of(&s).contains("array length"));
        let mut s = tiny();
        set(
            &mut s,
            "general.architecture",
            8,
            (1u64 << 63).to_le_bytes().to_vec(),
        );
        assert!(error_of(&s).contains("string length"));
        let mut s = tiny();
        s.meta.push(("general.alignment".into(), 4, u32_le(48)));
        assert!(error_of(&s).contains("power of two"));
    }

    #[test]
    fn metadata_values_are_checked_and_wrong_types_named() {
        let mut s = tiny();
        set(&mut s, "llama.attention.head_count", 8, gguf_str("two"));
        let e = error_of(&s);
        assert!(
            e.contains("llama.attention.head_count has type string, expected an integer"),
            "{e}"
        );
        let mut s = tiny();
        set(&mut s, "llama.attention.head_count", 4, u32_le(0));
        assert!(error_of(&s).contains("llama.attention.head_count must be between 1"));
        let mut s = tiny();
        set(
            &mut s,
            "llama.attention.head_count",
            5,
            (-2i32).to_le_bytes().to_vec(),
        );
        assert!(error_of(&s).contains("got -2"));
        let mut s = tiny();
        set(&mut s, "llama.attention.head_count_kv", 4, u32_le(3));
        assert!(error_of(&s).contains("head_count_kv"));
        let mut s = tiny();
        set(&mut s, "llama.block_count", 4, u32_le(1 << 30));
        assert!(error_of(&s).contains("llama.block_count is 1073741824"));
        let mut s = tiny();
        set(
            &mut s,
            "llama.embedding_length",
            6,
            8f32.to_le_bytes().to_vec(),
        );
        assert!(error_of(&s).contains("has type float32"));
        let mut s = tiny();
        set(
            &mut s,
            "llama.attention.layer_norm_rms_epsilon",
            6,
            (-1f32).to_le_bytes().to_vec(),
        );
        assert!(error_of(&s).contains("layer_norm_rms_epsilon"));
        let mut s = tiny();
        set(
            &mut s,
            "llama.attention.layer_norm_rms_epsilon",
            6,
            f32::NAN.to_le_bytes().to_vec(),
        );
        assert!(error_of(&s).contains("not a finite number"));
        let mut s = tiny();
        set(&mut s, "general.architecture", 4, u32_le(7));
        assert!(error_of(&s).contains("general.architecture has type uint32, expected a string"));
        let mut s = tiny();
        s.meta.push(("llama.block_count".into(), 4, u32_le(1)));
        assert!(error_of(&s).contains("appears twice"));
        let mut s = tiny();
        s.meta.retain(|(k, _, _)| k != "llama.feed_forward_length");
        assert!(error_of(&s).contains("llama.feed_forward_length is missing"));
    }

    #[test]
    fn metadata_alone_is_read_streaming_and_checked() {
        let spec = tiny();
        let full = build(&spec);
        let p =
            std::env::temp_dir().join(format!("recforge-gguf-meta-{}.gguf", std::process::id()));
        std::fs::write(&p, &full).unwrap();
        let meta = GgufMetadata::read(&p).unwrap();
        assert_eq!((meta.version(), meta.tensor_count()), (3, 11));
        assert_eq!(
            meta.strings("tokenizer.ggml.tokens").unwrap(),
            Some(vec!["a", "b"])
        );
        assert_eq!(meta.int("tokenizer.ggml.eos_token_id").unwrap(), Some(2));
        assert_eq!(
            meta.get("general.architecture"),
            Some(&GgufValue::String("llama".into()))
        );
        assert_eq!(meta.kind("llama.block_count"), Some(4));
        assert!(meta
            .ints("general.architecture")
            .unwrap_err()
            .to_string()
            .contains("has type string"));
        assert_eq!(meta.keys().count(), 9);
        // The metadata ends after the header (24 bytes) and the entries; the tensor descriptors
        // and data after it are never read, so a cut there still reads.
        let end = spec
            .meta
            .iter()
            .fold(24, |n, (k, _, v)| n + 8 + k.len() + 4 + v.len());
        for cut in 0..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            match GgufMetadata::read(&p) {
                Ok(_) => assert!(cut >= end, "cut at {cut} read"),
                Err(RecforgeError::Data(_)) => assert!(cut < end, "cut at {cut}"),
                Err(e) => panic!("cut at {cut}: {e}"),
            }
        }
        std::fs::remove_file(&p).unwrap();
        let e = GgufMetadata::read(Path::new("/no/such.gguf")).unwrap_err();
        assert!(matches!(e, RecforgeError::Io { .. }), "{e}");
    }

    #[test]
    fn a_file_cut_at_any_byte_is_a_data_error() {
        let full = build(&tiny());
        for cut in 0..full.len() {
            let mut s = tiny();
            s.cut = Some(cut);
            match read_spec(&s) {
                Err(RecforgeError::Data(_)) => {}
                Err(e) => panic!("cut at {cut}: {e}"),
                Ok(_) => panic!("cut at {cut}: the file was read"),
            }
        }
    }
}
