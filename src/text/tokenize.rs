//! Batched tokenization with the Hugging Face `tokenizers` crate, from a `tokenizer.json`.
//!
//! Texts are encoded in parallel on recforge's thread pool, truncated to a maximum length the way
//! `transformers` does (content first, special tokens kept), and padded into `[batch, longest]`
//! id and attention-mask matrices on either side.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{RecforgeError, Result};

/// Which side padding goes on: encoders pad on the right, decoders that generate on the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Pad after the text.
    Right,
    /// Pad before the text, so every sequence ends at the last column.
    Left,
}

impl PaddingSide {
    /// Parses `"right"` or `"left"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "right" => Ok(Self::Right),
            "left" => Ok(Self::Left),
            _ => Err(RecforgeError::config(format!(
                "padding_side must be 'right' or 'left', got {s:?}"
            ))),
        }
    }
}

/// A padded batch: row-major `[rows, cols]` ids and 0/1 attention mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Token ids, `rows * cols`, pad id where the mask is 0.
    pub ids: Vec<i64>,
    /// 1 for a real token, 0 for padding.
    pub mask: Vec<i64>,
    /// Number of texts.
    pub rows: usize,
    /// Length of the longest text (after truncation).
    pub cols: usize,
}

/// A tokenizer read from `tokenizer.json`, with its own padding and truncation turned off (recforge
/// applies them per call).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    path: PathBuf,
}

impl TextTokenizer {
    /// Reads a `tokenizer.json` (or the one inside a model folder). `pad_id` overrides the pad
    /// token; otherwise it comes from the file's padding settings, the folder's
    /// `tokenizer_config.json` `pad_token` or `config.json` `pad_token_id`, a `[PAD]`/`<pad>`
    /// token, or 0.
    pub fn from_file(path: &Path, pad_id: Option<u32>) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(RecforgeError::Io {
                context: format!("tokenizer {}", file.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let mut inner = Tokenizer::from_file(&file).map_err(|e| {
            RecforgeError::data(format!("cannot read tokenizer {}: {e}", file.display()))
        })?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let pad_id = pad_id
            .or_else(|| inner.get_padding().map(|p| p.pad_id))
            .or_else(|| configured_pad(dir, &inner))
            .or_else(|| ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t)))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| RecforgeError::data(format!("tokenizer {}: {e}", file.display())))?;
        Ok(Self {
            inner,
            pad_id,
            path: file,
        })
    }

    /// Wraps a tokenizer built in code (for example from GGUF metadata, see
    /// [`super::gguf_tokenizer`]), with its padding and truncation turned off; `source` names it
    /// in errors.
    pub fn from_tokenizer(mut inner: Tokenizer, pad_id: u32, source: PathBuf) -> Result<Self> {
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| RecforgeError::data(format!("tokenizer {}: {e}", source.display())))?;
        Ok(Self {
            inner,
            pad_id,
            path: source,
        })
    }

    /// The Hugging Face tokenizer inside.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }

    /// The file it was read from.
    pub fn source(&self) -> &Path {
        &self.path
    }

    /// The id used for padding.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes each text (in parallel), truncated to `max_length` tokens including special tokens.
    pub fn encode_each(
        &self,
        texts: &[String],
        add_special_tokens: bool,
        max_length: Option<usize>,
    ) -> Result<Vec<Vec<u32>>> {
        let tok = self.truncating(max_length)?;
        let tok = tok.as_ref().unwrap_or(&self.inner);
        texts
            .par_iter()
            .enumerate()
            .map(|(i, t)| {
                tok.encode_fast(t.as_str(), add_special_tokens)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| {
                        RecforgeError::data(format!(
                            "tokenizer {} failed on text {i}: {e}",
                            self.path.display()
                        ))
                    })
            })
            .collect()
    }

    /// Encodes and pads a batch of texts.
    pub fn encode_batch(
        &self,
        texts: &[String],
        add_special_tokens: bool,
        max_length: Option<usize>,
        side: PaddingSide,
    ) -> Result<Batch> {
        let seqs = self.encode_each(texts, add_special_tokens, max_length)?;
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        Ok(pad(&refs, self.pad_id as i64, side))
    }

    /// Decodes ids back to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| RecforgeError::data(format!("cannot decode ids: {e}")))
    }

    fn truncating(&self, max_length: Option<usize>) -> Result<Option<Tokenizer>> {
        let Some(max_length) = max_length else {
            return Ok(None);
        };
        if max_length == 0 {
            return Err(RecforgeError::config("max_length must be at least 1"));
        }
        let mut tok = self.inner.clone();
        tok.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| RecforgeError::config(format!("max_length {max_length}: {e}")))?;
        Ok(Some(tok))
    }
}

/// The pad token the model folder declares, as `transformers` finds it: `pad_token` of
/// `tokenizer_config.json` (a string or `{"content": ...}`), else `pad_token_id` of `config.json`.
fn configured_pad(dir: &Path, tok: &Tokenizer) -> Option<u32> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    let from_tokenizer_config = read("tokenizer_config.json").and_then(|c| {
        let pad = c.get("pad_token")?;
        let token = pad
            .as_str()
            .or_else(|| pad.get("content").and_then(|v| v.as_str()))?;
        tok.token_to_id(token)
    });
    from_tokenizer_config.or_else(|| {
        let id = read("config.json")?.get("pad_token_id")?.as_u64()?;
        u32::try_from(id).ok()
    })
}

/// Pads token sequences into `[rows, longest]` matrices of ids and attention mask.
pub fn pad(seqs: &[&[u32]], pad_id: i64, side: PaddingSide) -> Batch {
    let rows = seqs.len();
    let cols = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.saturating_mul(cols));
    let mut mask = Vec::with_capacity(rows.saturating_mul(cols));
    for s in seqs {
        let fill = cols.saturating_sub(s.len());
        let tokens = s.iter().map(|&t| i64::from(t));
        let pads = std::iter::repeat_n(pad_id, fill);
        let (ones, zeros) = (
            std::iter::repeat_n(1i64, s.len()),
            std::iter::repeat_n(0i64, fill),
        );
        match side {
            PaddingSide::Right => {
                ids.extend(tokens.chain(pads));
                mask.extend(ones.chain(zeros));
            }
            PaddingSide::Left => {
                ids.extend(pads.chain(tokens));
                mask.extend(zeros.chain(ones));
            }
        }
    }
    Batch {
        ids,
        mask,
        rows,
        cols,
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_and_left_by_hand() {
        let a: &[u32] = &[5, 6, 7];
        let b: &[u32] = &[8];
        let r = pad(&[a, b], 0, PaddingSide::Right);
        assert_eq!((r.rows, r.cols), (2, 3));
        assert_eq!(r.ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(r.mask, vec![1, 1, 1, 1, 0, 0]);
        let l = pad(&[a, b], 9, PaddingSide::Left);
        assert_eq!(l.ids, vec![5, 6, 7, 9, 9, 8]);
        assert_eq!(l.mask, vec![1, 1, 1, 0, 0, 1]);
        let empty = pad(&[], 0, PaddingSide::Right);
        assert_eq!((empty.rows, empty.cols), (0, 0));
    }

    #[test]
    fn bad_padding_side_and_missing_file_are_errors() {
        assert!(PaddingSide::parse("middle").is_err());
        let e = TextTokenizer::from_file(Path::new("/no/tokenizer.json"), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("/no/tokenizer.json"));
    }
}
