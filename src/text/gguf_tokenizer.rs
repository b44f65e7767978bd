//! Tokenizers read from GGUF metadata alone, and the bytes every token stands for.
//!
//! A GGUF file carries its tokenizer as metadata (`tokenizer.ggml.*`). [`GgufVocab`] reads and
//! checks it; [`GgufVocab::build`] turns it into a Hugging Face [`Tokenizer`] the way
//! `transformers`' GGUF converter (`integrations/gguf/gguf_tokenizer_mapping.py`) does, for the
//! two vocabularies llama.cpp writes for Llama-architecture models:
//!
//! - `gpt2`: byte-level BPE. The vocabulary (tokens outside the GPT-2 byte alphabet respelled
//!   byte by byte, as `transformers` does) and `tokenizer.ggml.merges`; the text is split before
//!   BPE by the regex `tokenizer.ggml.pre` names, as llama.cpp (`llama-vocab.cpp`) chooses it:
//!   - absent, `default`, `gpt2`, `gpt-2`, `phi-2`, `mpt`, `olmo`, `jais`, `roberta-bpe`,
//!     `gigachat`, `jina-*`: GPT-2's regex (ByteLevel's own);
//!   - `smollm`, `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva-7b`: every
//!     `\p{N}` character alone, then GPT-2's regex (llama.cpp's choice, and the SmolLM2
//!     `tokenizer.json`'s `Digits(individual_digits)`; `transformers` uses GPT-2's regex alone,
//!     which differs on numbers after a space and on characters such as `½` and `①`);
//!   - `llama3`, `llama-v3`, `llama-bpe`, `falcon3` (with whole-word lookup before merging,
//!     `ignore_merges`, as llama.cpp and Llama 3's `tokenizer.json` do), `dbrx`, `smaug-bpe`:
//!     Llama 3's regex (numbers in groups of up to three);
//!   - `qwen2`, `deepseek-r1-qwen`, `stablelm2`, `megrez`: Qwen2's regex (each digit alone).
//!
//!   Any other `pre` is a [`RecforgeError::Config`] naming it: a wrong split would tokenize
//!   silently differently from the model's training.
//! - `llama`: SentencePiece as BPE with byte fallback: the vocabulary as written, the merges from
//!   `tokenizer.ggml.merges` or, as `transformers` does, recovered from `tokenizer.ggml.scores`
//!   (every split of a token into two tokens, best score first); spaces become `▁` and one is
//!   prepended to the text (unless `tokenizer.ggml.add_space_prefix` is false, which llama.cpp
//!   honours and `transformers` ignores); characters outside the vocabulary become `<0xNN>` byte
//!   tokens; `tokenizer.ggml.unknown_token_id` is the unknown token.
//!
//! For both, tokens of type 3 (control) and the tokens that `bos_token_id`, `eos_token_id`,
//! `unknown_token_id` and `padding_token_id` name become special added tokens (matched whole in
//! text, skipped by `decode(skip_special_tokens=true)`), tokens of type 4 (user-defined) plain
//! added tokens. The beginning-of-sequence token is added before each text when
//! `tokenizer.ggml.add_bos_token` says so, by default for `llama` and not for `gpt2` (as
//! `transformers` does); `tokenizer.ggml.add_eos_token` likewise adds the end-of-sequence token.
//!
//! [`token_bytes`] gives, for every id of any byte-level or SentencePiece-style tokenizer (from a
//! GGUF or a `tokenizer.json`), the exact bytes the token adds to decoded text, for constrained
//! decoding.
//!
//! Every array length, id and merge is checked: a malformed vocabulary is a
//! [`RecforgeError::Data`] naming the key, never a panic.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::gguf::GgufMetadata;
use super::tokenize::TextTokenizer;
use crate::error::{RecforgeError, Result};

/// SentencePiece's stand-in for a space.
const SPM_SPACE: char = '\u{2581}';

/// Llama 3's split (`transformers`' `_LLAMA3_SPLIT`; llama.cpp's LLAMA3 regex).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (`transformers`' Qwen2 `PRETOKENIZE_REGEX`; llama.cpp's QWEN2 regex).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The two vocabularies llama.cpp writes for Llama-architecture models
/// (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with merges.
    BytePair,
    /// `llama`: SentencePiece (scores, byte fallback, `▁` for spaces).
    SentencePiece,
}

/// How a byte-level vocabulary splits text before BPE (from `tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreSplit {
    /// GPT-2's regex.
    Gpt2,
    /// Every `\p{N}` character alone, then GPT-2's regex.
    DigitsThenGpt2,
    /// Llama 3's regex; `ignore_merges`: a piece found whole in the vocabulary is not merged.
    Llama3 {
        /// Look each piece up whole before merging.
        ignore_merges: bool,
    },
    /// Qwen2's regex.
    Qwen2,
}

impl PreSplit {
    /// The `tokenizer.ggml.pre` values recforge knows, as llama.cpp maps them.
    pub const KNOWN: &'static [&'static str] = &[
        "default",
        "gpt2",
        "gpt-2",
        "phi-2",
        "mpt",
        "olmo",
        "jais",
        "roberta-bpe",
        "gigachat",
        "jina-v1-en",
        "jina-es",
        "jina-de",
        "jina-v2-es",
        "jina-v2-de",
        "jina-v2-code",
        "smollm",
        "starcoder",
        "refact",
        "command-r",
        "codeshell",
        "exaone",
        "minerva-7b",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "dbrx",
        "smaug-bpe",
        "qwen2",
        "deepseek-r1-qwen",
        "stablelm2",
        "megrez",
    ];

    /// The split for a `tokenizer.ggml.pre` value (`None`: absent); `None` for an unknown one.
    pub fn from_pre(pre: Option<&str>) -> Option<Self> {
        Some(match pre {
            None
            | Some(
                "default" | "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "roberta-bpe"
                | "gigachat" | "jina-v1-en" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de"
                | "jina-v2-code",
            ) => Self::Gpt2,
            Some(
                "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
                | "minerva-7b",
            ) => Self::DigitsThenGpt2,
            Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3") => Self::Llama3 {
                ignore_merges: true,
            },
            Some("dbrx" | "smaug-bpe") => Self::Llama3 {
                ignore_merges: false,
            },
            Some("qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez") => Self::Qwen2,
            Some(_) => return None,
        })
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let split = |regex: &str| -> Result<PreTokenizerWrapper> {
            let s = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| RecforgeError::config(format!("pre-tokenizer regex {regex:?}: {e}")))?;
            Ok(PreTokenizerWrapper::Split(s))
        };
        let byte_level =
            |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
        Ok(match self {
            Self::Gpt2 => byte_level(true),
            Self::DigitsThenGpt2 => PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                split(r"\p{N}")?,
                byte_level(true),
            ])),
            Self::Llama3 { .. } => PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                split(LLAMA3_SPLIT)?,
                byte_level(false),
            ])),
            Self::Qwen2 => PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                split(QWEN2_SPLIT)?,
                byte_level(false),
            ])),
        })
    }
}

/// GPT-2's map from bytes to printable characters (`bytes_to_unicode`): printable Latin-1 bytes
/// stand for themselves, the other 68 bytes for the characters from U+0100 on, in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in (0u32..).zip(out.iter_mut()) {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let code = if printable {
            b
        } else {
            let c = next;
            next = next.saturating_add(1);
            c
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    out
}

/// A tokenizer as a GGUF file's metadata describes it, checked.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// The file it was read from (named in errors).
    pub path: PathBuf,
    /// `tokenizer.ggml.model`.
    pub kind: VocabKind,
    /// `tokenizer.ggml.pre` (byte-level only).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte), when present.
    pub token_types: Option<Vec<i64>>,
    /// `tokenizer.ggml.scores`, one per token, when present.
    pub scores: Option<Vec<f64>>,
    /// `tokenizer.ggml.merges` (`"left right"`), when present.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`, checked to be a token id.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// Whether the beginning-of-sequence token starts each encoded text
    /// (`tokenizer.ggml.add_bos_token`; default: true for `llama`, false for `gpt2`).
    pub add_bos: bool,
    /// Whether the end-of-sequence token ends each encoded text
    /// (`tokenizer.ggml.add_eos_token`; default false).
    pub add_eos: bool,
    /// Whether a `llama` vocabulary prepends a space to the text
    /// (`tokenizer.ggml.add_space_prefix`; default true).
    pub add_space_prefix: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// The special tokens a GGUF file names, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GgufSpecialTokens {
    /// The beginning-of-sequence token (`tokenizer.ggml.bos_token_id`).
    pub bos: Option<String>,
    /// The end-of-sequence token (`tokenizer.ggml.eos_token_id`).
    pub eos: Option<String>,
    /// The unknown token (`tokenizer.ggml.unknown_token_id`).
    pub unk: Option<String>,
    /// The padding token (`tokenizer.ggml.padding_token_id`).
    pub pad: Option<String>,
}

/// Whether the metadata describes a tokenizer (`tokenizer.ggml.model` present and not llama.cpp's
/// `none`/`no_vocab`).
pub fn has_tokenizer(meta: &GgufMetadata) -> bool {
    !matches!(
        meta.str("tokenizer.ggml.model"),
        Ok(None | Some("none" | "no_vocab"))
    )
}

impl GgufVocab {
    /// Reads the tokenizer metadata of a GGUF file (not its tensors).
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_metadata(&GgufMetadata::read(path)?)
    }

    /// The tokenizer the metadata describes, checked: a known model, tokens present, the
    /// per-token arrays as long as the token list, ids in range, the merges or scores the kind
    /// needs.
    pub fn from_metadata(meta: &GgufMetadata) -> Result<Self> {
        let path = meta.path().display().to_string();
        let data = |what: String| RecforgeError::data(format!("{path}: {what}"));
        let kind =
            match meta.str("tokenizer.ggml.model")? {
                Some("gpt2") => VocabKind::BytePair,
                Some("llama") => VocabKind::SentencePiece,
                Some(other) => {
                    return Err(RecforgeError::config(format!(
                    "{path}: GGUF tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"
                )))
                }
                None => return Err(data(
                    "GGUF metadata tokenizer.ggml.model is missing: the file carries no tokenizer"
                        .into(),
                )),
            };
        let tokens: Vec<String> = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| data("GGUF metadata tokenizer.ggml.tokens is missing".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(data(format!(
                "GGUF metadata tokenizer.ggml.tokens has {n} tokens (1 to {} expected)",
                u32::MAX
            )));
        }
        let same_length = |key: &str, len: usize| -> Result<()> {
            if len == n {
                Ok(())
            } else {
                Err(data(format!(
                    "GGUF metadata {key} has {len} entries but tokenizer.ggml.tokens has {n}"
                )))
            }
        };
        let token_types = meta.ints("tokenizer.ggml.token_type")?;
        if let Some(t) = &token_types {
            same_length("tokenizer.ggml.token_type", t.len())?;
        }
        let scores = meta.floats("tokenizer.ggml.scores")?;
        if let Some(s) = &scores {
            same_length("tokenizer.ggml.scores", s.len())?;
        }
        let merges: Option<Vec<String>> = meta
            .strings("tokenizer.ggml.merges")?
            .map(|m| m.into_iter().map(str::to_string).collect());
        match kind {
            VocabKind::BytePair if merges.is_none() => {
                return Err(data(
                    "GGUF metadata tokenizer.ggml.merges is missing (a gpt2 tokenizer needs it)"
                        .into(),
                ))
            }
            VocabKind::SentencePiece if merges.is_none() && scores.is_none() => {
                return Err(data(
                    "GGUF metadata tokenizer.ggml.scores and tokenizer.ggml.merges are both \
                     missing (a llama tokenizer needs one)"
                        .into(),
                ))
            }
            _ => {}
        }
        let id = |key: &str| -> Result<Option<u32>> {
            let key = format!("tokenizer.ggml.{key}");
            match meta.int(&key)? {
                None => Ok(None),
                Some(v) => u32::try_from(v)
                    .ok()
                    .filter(|&u| (u as usize) < n)
                    .map(Some)
                    .ok_or_else(|| {
                        data(format!(
                            "GGUF metadata {key} = {v} is not a token id (the vocabulary has {n} \
                             tokens)"
                        ))
                    }),
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            Ok(meta
                .bool(&format!("tokenizer.ggml.{key}"))?
                .unwrap_or(default))
        };
        Ok(Self {
            path: meta.path().to_path_buf(),
            kind,
            pre: meta.str("tokenizer.ggml.pre")?.map(str::to_string),
            bos_id: id("bos_token_id")?,
            eos_id: id("eos_token_id")?,
            unk_id: id("unknown_token_id")?,
            pad_id: id("padding_token_id")?,
            add_bos: flag("add_bos_token", kind == VocabKind::SentencePiece)?,
            add_eos: flag("add_eos_token", false)?,
            add_space_prefix: flag("add_space_prefix", true)?,
            chat_template: meta.str("tokenizer.chat_template")?.map(str::to_string),
            tokens,
            token_types,
            scores,
            merges,
        })
    }

    /// The text of token `id`, if it is one.
    pub fn token(&self, id: Option<u32>) -> Option<&str> {
        self.tokens
            .get(usize::try_from(id?).ok()?)
            .map(String::as_str)
    }

    /// The special tokens the metadata names, as text.
    pub fn special_tokens(&self) -> GgufSpecialTokens {
        let text = |id| self.token(id).map(str::to_string);
        GgufSpecialTokens {
            bos: text(self.bos_id),
            eos: text(self.eos_id),
            unk: text(self.unk_id),
            pad: text(self.pad_id),
        }
    }

    /// The id to pad with: `padding_token_id` (what `transformers` makes `pad_token`), else the
    /// end-of-sequence id (as [`super::causal_lm::CausalLm`] pads), else 0.
    pub fn default_pad_id(&self) -> u32 {
        self.pad_id.or(self.eos_id).unwrap_or(0)
    }

    fn data(&self, what: String) -> RecforgeError {
        RecforgeError::data(format!("{}: {what}", self.path.display()))
    }

    /// The merges, each checked to name two tokens whose concatenation is a token.
    fn file_merges(&self, merges: &[String], vocab: &Vocab) -> Result<Merges> {
        let mut out = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first character.
            let pair = m
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .and_then(|(at, _)| m.split_at_checked(at))
                .and_then(|(a, rest)| Some((a, rest.strip_prefix(' ')?)));
            let Some((a, b)) = pair else {
                return Err(self.data(format!(
                    "GGUF metadata tokenizer.ggml.merges[{i}] = {m:?} is not two tokens \
                     separated by a space"
                )));
            };
            let joined = format!("{a}{b}");
            for part in [a, b, joined.as_str()] {
                if !vocab.contains_key(part) {
                    return Err(self.data(format!(
                        "GGUF metadata tokenizer.ggml.merges[{i}] = {m:?} needs the token {part:?}, \
                         which is not in tokenizer.ggml.tokens"
                    )));
                }
            }
            out.push((a.to_string(), b.to_string()));
        }
        Ok(out)
    }

    /// Builds the Hugging Face tokenizer (see the module documentation for what is built).
    pub fn build(&self) -> Result<Tokenizer> {
        let table = bytes_to_unicode();
        let alphabet: HashSet<char> = table.iter().copied().collect();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let byte_level = self.kind == VocabKind::BytePair;
        let mut vocab = Vocab::default();
        for (id, t) in (0u32..).zip(&self.tokens) {
            // The last of repeated tokens wins, as in `transformers`' vocabulary dict.
            let spelled = if !byte_level || in_alphabet(t) {
                t.clone()
            } else {
                t.bytes().map(|b| table[usize::from(b)]).collect()
            };
            vocab.insert(spelled, id);
        }
        let bpe_error =
            |e: tokenizers::Error| self.data(format!("cannot build the GGUF tokenizer: {e}"));
        let (model, pre, decoder) = match self.kind {
            VocabKind::BytePair => {
                let split = PreSplit::from_pre(self.pre.as_deref()).ok_or_else(|| {
                    RecforgeError::config(format!(
                        "{}: GGUF tokenizer.ggml.pre {:?} is not supported; known: {}",
                        self.path.display(),
                        self.pre.as_deref().unwrap_or(""),
                        PreSplit::KNOWN.join(", ")
                    ))
                })?;
                let merges = self.file_merges(self.merges.as_deref().unwrap_or(&[]), &vocab)?;
                let ignore_merges = matches!(
                    split,
                    PreSplit::Llama3 {
                        ignore_merges: true
                    }
                );
                let model = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(ignore_merges)
                    .build()
                    .map_err(bpe_error)?;
                let decoder = DecoderWrapper::ByteLevel(ByteLevel::default());
                (model, split.pre_tokenizer()?, decoder)
            }
            VocabKind::SentencePiece => {
                let merges = match (&self.merges, &self.scores) {
                    (Some(m), _) => self.file_merges(m, &vocab)?,
                    (None, Some(s)) => merges_from_scores(&self.tokens, s),
                    (None, None) => Vec::new(),
                };
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .fuse_unk(true)
                    .byte_fallback(true);
                if let Some(unk) = self.token(self.unk_id) {
                    builder = builder.unk_token(unk.to_string());
                }
                let model = builder.build().map_err(bpe_error)?;
                let scheme = if self.add_space_prefix {
                    PrependScheme::First
                } else {
                    PrependScheme::Never
                };
                let pre = PreTokenizerWrapper::Metaspace(Metaspace::new(SPM_SPACE, scheme, false));
                let replace = Replace::new(SPM_SPACE.to_string(), " ")
                    .map_err(|e| RecforgeError::config(format!("decoder: {e}")))?;
                let mut steps = vec![
                    DecoderWrapper::Replace(replace),
                    DecoderWrapper::ByteFallback(ByteFallback::new()),
                    DecoderWrapper::Fuse(Fuse::new()),
                ];
                if self.add_space_prefix {
                    steps.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
                }
                let decoder = DecoderWrapper::Sequence(DecoderSequence::new(steps));
                (model, pre, decoder)
            }
        };
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(decoder));
        self.add_tokens(&mut tok, &in_alphabet)?;
        if let Some(post) = self.post_processor()? {
            tok.with_post_processor(Some(post));
        }
        Ok(tok)
    }

    /// Control tokens and the named special tokens as special added tokens, user-defined tokens
    /// as plain ones (each only if the model's vocabulary has it, so no id is invented).
    fn add_tokens(&self, tok: &mut Tokenizer, in_alphabet: &dyn Fn(&str) -> bool) -> Result<()> {
        let types = self.token_types.as_deref().unwrap_or(&[]);
        let byte_level = self.kind == VocabKind::BytePair;
        let known = |t: &str| tok.token_to_id(t).is_some();
        let mut special: Vec<&str> = self
            .tokens
            .iter()
            .zip(types)
            .filter(|&(t, &ty)| ty == 3 && (!byte_level || in_alphabet(t)))
            .map(|(t, _)| t.as_str())
            .collect();
        for id in [self.bos_id, self.eos_id, self.unk_id, self.pad_id] {
            special.extend(self.token(id));
        }
        let mut seen = HashSet::new();
        let special: Vec<AddedToken> = special
            .into_iter()
            .filter(|t| !t.is_empty() && known(t) && seen.insert(*t))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        let user: Vec<AddedToken> = self
            .tokens
            .iter()
            .zip(types)
            .filter(|&(t, &ty)| ty == 4 && !t.is_empty() && known(t) && !seen.contains(t.as_str()))
            .map(|(t, _)| AddedToken::from(t.as_str(), false).normalized(false))
            .collect();
        let err = |e: tokenizers::Error| self.data(format!("cannot add GGUF special tokens: {e}"));
        tok.add_special_tokens(special).map_err(err)?;
        tok.add_tokens(user).map_err(err)?;
        Ok(())
    }

    /// `[bos] $A [eos]` (each when asked for and named), as `transformers` writes it.
    fn post_processor(&self) -> Result<Option<TemplateProcessing>> {
        let bos = self
            .bos_id
            .filter(|_| self.add_bos)
            .and_then(|id| Some((self.token(Some(id))?, id)));
        let eos = self
            .eos_id
            .filter(|_| self.add_eos)
            .and_then(|id| Some((self.token(Some(id))?, id)));
        if bos.is_none() && eos.is_none() {
            return Ok(None);
        }
        let piece = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let template = |id: &str, type_id: u32| -> Vec<Value> {
            let mut out: Vec<Value> = bos.iter().map(|(t, _)| piece(t, type_id)).collect();
            out.push(seq(id, type_id));
            out.extend(eos.iter().map(|(t, _)| piece(t, type_id)));
            out
        };
        let mut pair = template("A", 0);
        pair.extend(template("B", 1));
        let mut special = serde_json::Map::new();
        for (t, id) in bos.iter().chain(eos.iter()) {
            special.insert(
                (*t).to_string(),
                json!({"id": t, "ids": [id], "tokens": [t]}),
            );
        }
        let spec = json!({
            "type": "TemplateProcessing",
            "single": template("A", 0),
            "pair": pair,
            "special_tokens": special,
        });
        serde_json::from_value(spec)
            .map(Some)
            .map_err(|e| self.data(format!("cannot build the GGUF post-processor: {e}")))
    }
}

/// BPE merges recovered from SentencePiece scores, as `transformers`' `generate_merges(vocab,
/// scores)`: for each distinct token (first-appearance order, its last score), every split into
/// two tokens (ordered by their ids), then all sorted by score, left length, right length (in
/// characters), largest first, ties kept in order.
pub fn merges_from_scores(tokens: &[String], scores: &[f64]) -> Merges {
    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in (0u32..).zip(tokens) {
        ids.insert(t.as_str(), id);
    }
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        // A total order that agrees with Python's float comparison (NaN, which Python cannot
        // order, goes last; -0.0 equals 0.0).
        let s = if s.is_nan() {
            f64::NEG_INFINITY
        } else {
            s + 0.0
        };
        if score_of.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    struct Merge<'a> {
        left: &'a str,
        right: &'a str,
        score: f64,
        left_len: usize,
        right_len: usize,
    }
    let mut merges: Vec<Merge<'_>> = Vec::new();
    for t in order {
        let score = score_of.get(t).copied().unwrap_or(f64::NEG_INFINITY);
        let mut local: Vec<(u32, u32, &str, &str)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = t.split_at_checked(at)?;
                Some((*ids.get(l)?, *ids.get(r)?, l, r))
            })
            .collect();
        local.sort_by_key(|&(a, b, _, _)| (a, b));
        merges.extend(local.into_iter().map(|(_, _, left, right)| Merge {
            left,
            right,
            score,
            left_len: left.chars().count(),
            right_len: right.chars().count(),
        }));
    }
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_len.cmp(&a.left_len))
            .then(b.right_len.cmp(&a.right_len))
    });
    merges
        .into_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect()
}

/// Reads the tokenizer of a GGUF file; `pad_id` overrides [`GgufVocab::default_pad_id`].
pub fn load(path: &Path, pad_id: Option<u32>) -> Result<TextTokenizer> {
    let vocab = GgufVocab::read(path)?;
    let tok = vocab.build()?;
    let pad = pad_id.unwrap_or_else(|| vocab.default_pad_id());
    TextTokenizer::from_tokenizer(tok, pad, path.to_path_buf())
}

/// The chat template of a GGUF file (`tokenizer.chat_template`), if it has one.
pub fn chat_template(path: &Path) -> Result<Option<String>> {
    Ok(GgufMetadata::read(path)?
        .str("tokenizer.chat_template")?
        .map(str::to_string))
}

/// The beginning/end-of-sequence, unknown and padding tokens a GGUF file names, as text.
pub fn special_tokens(path: &Path) -> Result<GgufSpecialTokens> {
    Ok(GgufVocab::read(path)?.special_tokens())
}

impl TextTokenizer {
    /// Reads the tokenizer of a GGUF file from its metadata alone (see
    /// [`super::gguf_tokenizer`]); the pad id is `padding_token_id`, else `eos_token_id`, else 0.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        load(path, None)
    }

    /// For every id, the exact bytes the token adds to decoded text (`None` for special tokens
    /// and unused ids); see [`token_bytes`].
    pub fn token_bytes(&self) -> Result<Vec<Option<Vec<u8>>>> {
        token_bytes(self.tokenizer())
    }
}

/// One step of a decoder, as [`token_bytes`] follows it token by token.
enum Step {
    Replace(String, String),
    ByteFallback,
    ByteLevel,
}

fn decoder_steps(v: &Value, fused: &mut bool, steps: &mut Vec<Step>) -> Result<()> {
    let unsupported = |what: &str| {
        RecforgeError::config(format!(
            "token_bytes needs a byte-level or SentencePiece-style decoder (ByteLevel, or \
             Replace/ByteFallback/Fuse/Strip/Metaspace); this tokenizer's decoder has {what}, \
             whose output depends on neighbouring tokens (WordPiece, BPE suffixes, CTC), so its \
             tokens have no bytes of their own"
        ))
    };
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for d in v
                .get("decoders")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                decoder_steps(d, fused, steps)?;
            }
        }
        Some("ByteLevel") => steps.push(Step::ByteLevel),
        Some("ByteFallback") => steps.push(Step::ByteFallback),
        Some("Fuse") => *fused = true,
        // After Fuse, Strip trims the whole text's ends: SentencePiece's leading space.
        Some("Strip") if *fused => {}
        Some("Metaspace") => {
            let r = v
                .get("replacement")
                .and_then(Value::as_str)
                .unwrap_or("\u{2581}");
            steps.push(Step::Replace(r.to_string(), " ".into()));
        }
        Some("Replace") => {
            let pattern = v
                .get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str);
            let content = v.get("content").and_then(Value::as_str);
            match (pattern, content) {
                (Some(p), Some(c)) => steps.push(Step::Replace(p.to_string(), c.to_string())),
                _ => return Err(unsupported("a regex Replace")),
            }
        }
        Some(other) => return Err(unsupported(other)),
        None => return Err(unsupported("an unnamed step")),
    }
    Ok(())
}

/// `<0xNN>` as `tokenizers`' ByteFallback decoder reads it.
fn byte_token(t: &str) -> Option<u8> {
    if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
        u8::from_str_radix(t.get(3..5)?, 16).ok()
    } else {
        None
    }
}

/// For every id of `tok` (0 to the largest id), the exact bytes the token adds to decoded text:
/// decoding a sequence of ids is the concatenation of their bytes, read as UTF-8. Byte-level
/// BPE: the GPT-2 byte-to-character map inverted (a token with a character outside it: its own
/// UTF-8, as the ByteLevel decoder does); SentencePiece style: `▁` is a space and `<0xNN>` the
/// byte NN. The one exception is the leading space of SentencePiece's first token, which
/// `decode` strips (`Strip` after `Fuse`) and the bytes keep. Special tokens and ids without a
/// token are `None`.
///
/// A [`RecforgeError::Config`] for a tokenizer whose decoder makes a token's text depend on its
/// neighbours (WordPiece, as BERT/MiniLM encoders use; BPE end-of-word suffixes; CTC) or that has
/// no decoder (tokens joined by spaces).
pub fn token_bytes(tok: &Tokenizer) -> Result<Vec<Option<Vec<u8>>>> {
    let decoder = tok.get_decoder().ok_or_else(|| {
        RecforgeError::config(
            "token_bytes needs a decoder: without one, decode joins tokens with spaces",
        )
    })?;
    let spec = serde_json::to_value(decoder)
        .map_err(|e| RecforgeError::config(format!("cannot read the tokenizer's decoder: {e}")))?;
    let mut steps = Vec::new();
    decoder_steps(&spec, &mut false, &mut steps)?;
    let inverse: HashMap<char, u8> = (0u8..=255)
        .zip(bytes_to_unicode())
        .map(|(b, c)| (c, b))
        .collect();
    let special: HashSet<u32> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let n = tok
        .get_vocab(true)
        .values()
        .max()
        .map_or(0, |&m| (m as usize).saturating_add(1));
    let mut out = Vec::with_capacity(n);
    for id in (0u32..).take(n) {
        if special.contains(&id) {
            out.push(None);
            continue;
        }
        let Some(token) = tok.id_to_token(id) else {
            out.push(None);
            continue;
        };
        out.push(Some(apply_steps(token, &steps, &inverse)));
    }
    Ok(out)
}

fn apply_steps(token: String, steps: &[Step], inverse: &HashMap<char, u8>) -> Vec<u8> {
    enum Piece {
        Text(String),
        Bytes(Vec<u8>),
    }
    let mut piece = Piece::Text(token);
    for step in steps {
        piece = match (step, piece) {
            (Step::Replace(from, to), Piece::Text(t)) => Piece::Text(t.replace(from.as_str(), to)),
            (Step::ByteFallback, Piece::Text(t)) => match byte_token(&t) {
                Some(b) => Piece::Bytes(vec![b]),
                None => Piece::Text(t),
            },
            (Step::ByteLevel, Piece::Text(t)) => {
                let mapped: Option<Vec<u8>> = t.chars().map(|c| inverse.get(&c).copied()).collect();
                Piece::Bytes(mapped.unwrap_or_else(|| t.into_bytes()))
            }
            (_, bytes @ Piece::Bytes(_)) => bytes,
        };
    }
    match piece {
        Piece::Text(t) => t.into_bytes(),
        Piece::Bytes(b) => b,
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
    use crate::text::gguf::GgufValue;

    fn strs(v: &[&str]) -> GgufValue {
        GgufValue::Array(
            8,
            v.iter().map(|s| GgufValue::String(s.to_string())).collect(),
        )
    }
    fn ints(v: &[i64]) -> GgufValue {
        GgufValue::Array(5, v.iter().map(|&i| GgufValue::Int(i)).collect())
    }
    fn floats(v: &[f64]) -> GgufValue {
        GgufValue::Array(6, v.iter().map(|&f| GgufValue::Float(f)).collect())
    }
    fn string(s: &str) -> GgufValue {
        GgufValue::String(s.to_string())
    }

    /// The 256 byte characters (id = byte), three special/added tokens, and merged tokens.
    const BYTE_LEVEL_EXTRA: [&str; 11] = [
        "<|endoftext|>", // 256, control
        "<|im_start|>",  // 257, control
        "<think>",       // 258, user-defined
        "he",
        "ll",
        "hell",
        "hello",
        "\u{120}w", // "Ġw"
        "12",
        "123",
        "1234",
    ];

    fn byte_level(pre: Option<&str>) -> GgufMetadata {
        let mut tokens: Vec<String> = bytes_to_unicode().iter().map(|c| c.to_string()).collect();
        tokens.extend(BYTE_LEVEL_EXTRA.iter().map(|s| s.to_string()));
        let mut types = vec![1i64; tokens.len()];
        types[256] = 3;
        types[257] = 3;
        types[258] = 4;
        let mut m = GgufMetadata::new(Path::new("byte-level.gguf"));
        m.insert("tokenizer.ggml.model", string("gpt2"));
        if let Some(p) = pre {
            m.insert("tokenizer.ggml.pre", string(p));
        }
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        m.insert("tokenizer.ggml.tokens", strs(&refs));
        m.insert("tokenizer.ggml.token_type", ints(&types));
        m.insert(
            "tokenizer.ggml.merges",
            strs(&[
                "h e",
                "l l",
                "he ll",
                "hell o",
                "\u{120} w",
                "1 2",
                "12 3",
                "123 4",
            ]),
        );
        m.insert("tokenizer.ggml.eos_token_id", GgufValue::UInt(256));
        m
    }

    fn id(tok: &Tokenizer, t: &str) -> u32 {
        tok.token_to_id(t).unwrap()
    }

    fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, true).unwrap().get_ids().to_vec()
    }

    fn build(m: &GgufMetadata) -> Result<Tokenizer> {
        GgufVocab::from_metadata(m)?.build()
    }

    #[test]
    fn gpt2_byte_map_is_the_byte_level_alphabet() {
        let table = bytes_to_unicode();
        let mine: HashSet<char> = table.iter().copied().collect();
        let theirs: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        assert_eq!(mine, theirs);
        assert_eq!(
            (table[b'a' as usize], table[b' ' as usize]),
            ('a', '\u{120}')
        );
        assert_eq!((table[0], table[255]), ('\u{100}', '\u{ff}'));
    }

    #[test]
    fn byte_level_bpe_merges_and_splits_by_pre() {
        let tok = build(&byte_level(None)).unwrap();
        assert_eq!(
            encode(&tok, "hello world"),
            vec![id(&tok, "hello"), id(&tok, "\u{120}w"), 111, 114, 108, 100]
        );
        assert_eq!(
            tok.decode(&encode(&tok, "hello world"), true).unwrap(),
            "hello world"
        );
        // GPT-2's regex keeps "1234" whole; a space before a number joins it.
        assert_eq!(encode(&tok, "1234"), vec![id(&tok, "1234")]);
        assert_eq!(encode(&tok, " 1234"), vec![32, id(&tok, "1234")]);
        let by = |pre: &str, text: &str| encode(&build(&byte_level(Some(pre))).unwrap(), text);
        // Llama 3: numbers in groups of up to three.
        assert_eq!(by("llama-bpe", "1234"), vec![id(&tok, "123"), 52]);
        // Qwen2 and SmolLM: each digit alone; SmolLM also `½` and the space before a digit.
        assert_eq!(by("qwen2", "1234"), vec![49, 50, 51, 52]);
        assert_eq!(by("smollm", "1234"), vec![49, 50, 51, 52]);
        assert_eq!(by("smollm", " 1234"), vec![32, 49, 50, 51, 52]);
        assert_eq!(by("gpt-2", "1234"), vec![id(&tok, "1234")]);
        let e = build(&byte_level(Some("no-such-pre"))).unwrap_err();
        assert!(matches!(e, RecforgeError::Config(_)), "{e}");
        assert!(e.to_string().contains("\"no-such-pre\""), "{e}");
    }

    #[test]
    fn byte_level_special_and_user_defined_tokens() {
        let tok = build(&byte_level(None)).unwrap();
        let ids = encode(&tok, "<|im_start|>hello<think><|endoftext|>");
        assert_eq!(ids, vec![257, id(&tok, "hello"), 258, 256]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello<think>");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "<|im_start|>hello<think><|endoftext|>"
        );
        // No beginning-of-sequence token by default for gpt2; added when the file says so.
        let mut m = byte_level(None);
        m.insert("tokenizer.ggml.bos_token_id", GgufValue::UInt(257));
        assert_eq!(encode(&build(&m).unwrap(), "he"), vec![id(&tok, "he")]);
        m.insert("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
        m.insert("tokenizer.ggml.add_eos_token", GgufValue::Bool(true));
        let with = build(&m).unwrap();
        assert_eq!(encode(&with, "he"), vec![257, id(&tok, "he"), 256]);
        assert_eq!(
            with.encode("he", false).unwrap().get_ids(),
            &[id(&tok, "he")]
        );
    }

    #[test]
    fn token_bytes_of_a_byte_level_vocabulary() {
        let mut m = byte_level(None);
        // A token with a real space is respelled into the byte alphabet, as transformers does.
        let mut tokens = m.strings("tokenizer.ggml.tokens").unwrap().unwrap();
        tokens.push("a b");
        let tokens: Vec<String> = tokens.into_iter().map(str::to_string).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut types = m.ints("tokenizer.ggml.token_type").unwrap().unwrap();
        types.push(1);
        m.insert("tokenizer.ggml.tokens", strs(&refs));
        m.insert("tokenizer.ggml.token_type", ints(&types));
        let tok = build(&m).unwrap();
        assert_eq!(tok.token_to_id("a\u{120}b"), Some(267));
        let bytes = token_bytes(&tok).unwrap();
        assert_eq!(bytes.len(), 268);
        assert_eq!(bytes[32].as_deref(), Some(&b" "[..]));
        assert_eq!(bytes[0xc3].as_deref(), Some(&[0xc3u8][..]));
        assert_eq!(bytes[259].as_deref(), Some(&b"he"[..]));
        assert_eq!(bytes[263].as_deref(), Some(&b" w"[..]));
        assert_eq!(bytes[258].as_deref(), Some(&b"<think>"[..]));
        assert_eq!(bytes[267].as_deref(), Some(&b"a b"[..]));
        assert_eq!((bytes[256].as_ref(), bytes[257].as_ref()), (None, None));
        // Joined, the bytes of an encoding are its decoded text, split UTF-8 included.
        for text in [
            "hello world 1234",
            "caf\u{e9} \u{1f600} \u{bd}",
            " he  ll\n",
        ] {
            let ids = encode(&tok, text);
            let joined: Vec<u8> = ids
                .iter()
                .flat_map(|&i| bytes[i as usize].clone().unwrap())
                .collect();
            assert_eq!(joined, text.as_bytes());
            assert_eq!(tok.decode(&ids, true).unwrap(), text);
        }
    }

    /// `<unk>`, `<s>`, `</s>`, the 256 byte tokens (id = 3 + byte), then pieces with scores.
    fn spm() -> GgufMetadata {
        let pieces = [
            ("\u{2581}", -1.0),
            ("h", -2.0),
            ("e", -3.0),
            ("l", -4.0),
            ("o", -5.0),
            ("ll", -6.0),
            ("he", -7.0),
            ("llo", -8.0),
            ("\u{2581}he", -9.0),
            ("\u{2581}hello", -10.0),
        ];
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(pieces.iter().map(|(t, _)| t.to_string()));
        let mut scores = vec![0.0; 259];
        scores.extend(pieces.iter().map(|(_, s)| *s));
        let mut types = vec![2i64, 3, 3];
        types.extend([6; 256]);
        types.extend([1; 10]);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut m = GgufMetadata::new(Path::new("spm.gguf"));
        m.insert("tokenizer.ggml.model", string("llama"));
        m.insert("tokenizer.ggml.tokens", strs(&refs));
        m.insert("tokenizer.ggml.scores", floats(&scores));
        m.insert("tokenizer.ggml.token_type", ints(&types));
        m.insert("tokenizer.ggml.bos_token_id", GgufValue::UInt(1));
        m.insert("tokenizer.ggml.eos_token_id", GgufValue::UInt(2));
        m.insert("tokenizer.ggml.unknown_token_id", GgufValue::UInt(0));
        m
    }

    #[test]
    fn merges_are_recovered_from_scores_best_first() {
        let v = GgufVocab::from_metadata(&spm()).unwrap();
        let merges = merges_from_scores(&v.tokens, v.scores.as_deref().unwrap());
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("l", "l"),
                ("h", "e"),
                ("ll", "o"),
                ("\u{2581}", "he"),
                ("\u{2581}he", "llo"),
            ]
        );
        // Equal scores: longer left piece first, then longer right piece, then token order
        // (transformers' generate_merges gives the same list).
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let merges = merges_from_scores(
            &t(&["a", "b", "c", "ab", "bc", "abc"]),
            &[0.0, 0.0, 0.0, -1.0, -1.0, -1.0],
        );
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]
        );
        // NaN and -0.0 scores order without a panic.
        let m = merges_from_scores(&t(&["a", "b", "ab", "ba"]), &[0.0, 0.0, f64::NAN, -0.0]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], ("b".to_string(), "a".to_string()));
    }

    #[test]
    fn sentencepiece_encodes_with_bos_prefix_space_and_byte_fallback() {
        let tok = build(&spm()).unwrap();
        let hello = id(&tok, "\u{2581}hello");
        assert_eq!(encode(&tok, "hello"), vec![1, hello]);
        assert_eq!(tok.decode(&[1, hello], true).unwrap(), "hello");
        // é is not in the vocabulary: its two UTF-8 bytes.
        let ids = encode(&tok, "h\u{e9}");
        let (space, h) = (id(&tok, "\u{2581}"), id(&tok, "h"));
        assert_eq!(ids, vec![1, space, h, 3 + 0xc3, 3 + 0xa9]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "h\u{e9}");
        assert_eq!(tok.decode(&ids, false).unwrap(), "<s> h\u{e9}");
        let bytes = token_bytes(&tok).unwrap();
        assert_eq!(
            (bytes[0].as_ref(), bytes[1].as_ref(), bytes[2].as_ref()),
            (None, None, None)
        );
        assert_eq!(bytes[3 + 0xc3].as_deref(), Some(&[0xc3u8][..]));
        assert_eq!(bytes[hello as usize].as_deref(), Some(&b" hello"[..]));
        let joined: Vec<u8> = ids[1..]
            .iter()
            .flat_map(|&i| bytes[i as usize].clone().unwrap())
            .collect();
        assert_eq!(joined, " h\u{e9}".as_bytes());
        // The bos and eos tokens are special and matched whole; as in transformers, no space is
        // prepended after a special token (llama.cpp prepends one).
        assert_eq!(encode(&tok, "<s>he</s>"), vec![1, 1, id(&tok, "he"), 2]);
    }

    #[test]
    fn sentencepiece_flags_bos_eos_and_space_prefix() {
        let mut m = spm();
        m.insert("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
        m.insert("tokenizer.ggml.add_eos_token", GgufValue::Bool(true));
        let tok = build(&m).unwrap();
        assert_eq!(encode(&tok, "hello"), vec![id(&tok, "\u{2581}hello"), 2]);
        m.insert("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false));
        let tok = build(&m).unwrap();
        let ids = encode(&tok, "hello");
        assert_eq!(ids, vec![id(&tok, "he"), id(&tok, "llo"), 2]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello");
        assert_eq!(tok.decode(&encode(&tok, " he"), true).unwrap(), " he");
        // Merges written in the file win over the scores.
        let mut m = spm();
        m.insert("tokenizer.ggml.merges", strs(&["h e"]));
        let tok = build(&m).unwrap();
        assert_eq!(
            encode(&tok, "hello"),
            vec![
                1,
                id(&tok, "\u{2581}"),
                id(&tok, "he"),
                id(&tok, "l"),
                id(&tok, "l"),
                id(&tok, "o")
            ]
        );
    }

    fn data_error(m: &GgufMetadata) -> String {
        match GgufVocab::from_metadata(m).and_then(|v| v.build()) {
            Err(RecforgeError::Data(e)) => e,
            Err(e) => panic!("not a data error: {e}"),
            Ok(_) => panic!("built"),
        }
    }

    #[test]
    fn malformed_vocabularies_are_data_errors() {
        let mut m = spm();
        m.insert("tokenizer.ggml.scores", floats(&[0.0, 1.0]));
        let e = data_error(&m);
        assert!(
            e.contains("tokenizer.ggml.scores has 2 entries but tokenizer.ggml.tokens has 269"),
            "{e}"
        );
        let mut m = spm();
        m.insert("tokenizer.ggml.token_type", ints(&[1; 300]));
        assert!(data_error(&m).contains("token_type has 300 entries"));
        let mut m = byte_level(None);
        m.insert("tokenizer.ggml.merges", strs(&["h e", "h zz"]));
        let e = data_error(&m);
        assert!(
            e.contains("merges[1] = \"h zz\"") && e.contains("\"zz\""),
            "{e}"
        );
        m.insert("tokenizer.ggml.merges", strs(&["he"]));
        assert!(data_error(&m).contains("not two tokens"));
        m.insert("tokenizer.ggml.merges", strs(&["o h"]));
        assert!(
            data_error(&m).contains("\"oh\""),
            "the merged token must exist"
        );
        let mut m = spm();
        m.insert("tokenizer.ggml.merges", strs(&["\u{2581} nope"]));
        assert!(data_error(&m).contains("\"nope\""));
        let mut m = spm();
        m.insert("tokenizer.ggml.bos_token_id", GgufValue::UInt(269));
        assert!(data_error(&m).contains("bos_token_id = 269 is not a token id"));
        m.insert("tokenizer.ggml.bos_token_id", GgufValue::Int(-1));
        assert!(data_error(&m).contains("= -1"));
        m.insert("tokenizer.ggml.bos_token_id", GgufValue::UInt(u64::MAX));
        assert!(data_error(&m).contains("does not fit"));
        let mut m = spm();
        m.insert("tokenizer.ggml.tokens", ints(&[1, 2]));
        assert!(data_error(&m).contains("has type array of int32, expected an array of strings"));
        m.insert("tokenizer.ggml.tokens", strs(&[]));
        assert!(data_error(&m).contains("has 0 tokens"));
        let mut m = spm();
        m.insert("tokenizer.ggml.add_bos_token", GgufValue::UInt(1));
        assert!(data_error(&m).contains("expected a bool"));
        let mut m = spm();
        m.insert("tokenizer.ggml.scores", strs(&["x"]));
        assert!(data_error(&m).contains("expected an array of numbers"));
        let mut m = spm();
        m.remove("tokenizer.ggml.scores");
        assert!(data_error(&m).contains("scores and tokenizer.ggml.merges are both missing"));
        let mut m = byte_level(None);
        m.remove("tokenizer.ggml.merges");
        assert!(data_error(&m).contains("merges is missing"));
        let mut m = spm();
        m.remove("tokenizer.ggml.model");
        assert!(data_error(&m).contains("carries no tokenizer"));
        assert!(!has_tokenizer(&m));
        m.insert("tokenizer.ggml.model", string("bert"));
        let e = GgufVocab::from_metadata(&m).unwrap_err();
        assert!(matches!(e, RecforgeError::Config(_)) && e.to_string().contains("\"bert\""));
    }

    #[test]
    fn odd_but_valid_vocabularies_build() {
        // Repeated and empty tokens, odd token types, NaN scores: built, never a panic.
        let mut m = spm();
        let mut tokens: Vec<String> = m
            .strings("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .into_iter()
            .map(str::to_string)
            .collect();
        tokens[262] = "h".into();
        tokens[263] = String::new();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        m.insert("tokenizer.ggml.tokens", strs(&refs));
        let mut types = m.ints("tokenizer.ggml.token_type").unwrap().unwrap();
        types[263] = 3;
        types[264] = 99;
        m.insert("tokenizer.ggml.token_type", ints(&types));
        let mut scores = m.floats("tokenizer.ggml.scores").unwrap().unwrap();
        scores[265] = f64::NAN;
        scores[266] = f64::INFINITY;
        m.insert("tokenizer.ggml.scores", floats(&scores));
        let tok = build(&m).unwrap();
        let ids = encode(&tok, "hello h");
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello h");
        assert!(token_bytes(&tok).is_ok());
    }

    #[test]
    fn pad_id_and_special_token_texts() {
        let mut m = spm();
        let v = GgufVocab::from_metadata(&m).unwrap();
        assert_eq!(v.default_pad_id(), 2);
        let s = v.special_tokens();
        assert_eq!(
            (s.bos.as_deref(), s.eos.as_deref(), s.unk.as_deref(), s.pad),
            (Some("<s>"), Some("</s>"), Some("<unk>"), None)
        );
        m.insert("tokenizer.ggml.padding_token_id", GgufValue::UInt(0));
        m.insert("tokenizer.chat_template", string("{{ x }}"));
        let v = GgufVocab::from_metadata(&m).unwrap();
        assert_eq!(
            (v.default_pad_id(), v.chat_template.as_deref()),
            (0, Some("{{ x }}"))
        );
    }

    #[test]
    fn token_bytes_refuses_wordpiece_and_follows_metaspace() {
        let json = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":null,"post_processor":null,
            "decoder":{"type":"WordPiece","prefix":"##","cleanup":true},
            "model":{"type":"WordLevel","vocab":{"a":0,"##b":1},"unk_token":"a"}}"###;
        let tok: Tokenizer = json.parse().unwrap();
        let e = token_bytes(&tok).unwrap_err();
        assert!(e.to_string().contains("WordPiece"), "{e}");
        let json = json.replace(
            r###"{"type":"WordPiece","prefix":"##","cleanup":true}"###,
            r#"{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"always","split":true}"#,
        );
        let tok: Tokenizer = json.replace("##b", "\u{2581}b").parse().unwrap();
        let bytes = token_bytes(&tok).unwrap();
        assert_eq!(bytes, vec![Some(b"a".to_vec()), Some(b" b".to_vec())]);
    }
}
