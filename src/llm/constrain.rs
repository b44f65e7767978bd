//! Constrained decoding: an answer grammar enforced token by token, so that even a model that
//! ignores its prompt can only write a valid answer.
//!
//! A [`Grammar`] is compiled from an OpenAI-style `response_format`: `json_object` (any JSON
//! object), `json_schema` (a subset of JSON Schema, emitted in a canonical layout
//! `{"key": value, "k2": [1, 2]}`), or recforge's `choice`, `permutation` and `number`. A
//! [`Matcher`] follows one answer byte by byte (a pushdown automaton over the grammar, kept as a
//! small set of stacks where alternatives share a prefix) and tells which tokens of a [`Vocab`]
//! may come next: those whose bytes keep the answer on the grammar *and* leave room to finish it
//! within the token budget (the shortest completion is counted at one byte per token, which every
//! byte-level BPE and byte-fallback vocabulary allows). A walk that only takes allowed tokens
//! therefore ends with a complete answer before `max_tokens`.
//!
//! The allowed tokens are found by walking a byte trie of the vocabulary with the automaton,
//! pruning dead branches; the result is memoised per state (string bodies are keyed without
//! their exact length where it cannot matter), since inside a string almost every token is
//! allowed and the walk then visits the whole trie.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::error::{RecforgeError, Result};

/// Scale of numbers: values are held in millionths, so at most six decimals.
const SCALE: i128 = 1_000_000;
/// Decimals a number may have.
const MAX_DECIMALS: u32 = 6;
/// Integer digits of a number whose range is unbounded on that side.
const MAX_INT_DIGITS: u32 = 15;
/// Nesting depth of `json_object` answers.
const MAX_DEPTH: u8 = 16;
/// Consecutive whitespace bytes allowed in `json_object` answers.
const MAX_WS: u8 = 2;
/// Memoised states kept per grammar before the memo is cleared.
const MEMO_CAP: usize = 50_000;

type NodeId = u32;

#[derive(Debug, Clone)]
enum Node {
    /// Exactly these bytes.
    Lit(Vec<u8>),
    /// One after the other.
    Seq(Vec<NodeId>),
    /// One of.
    Alt(Vec<NodeId>),
    /// A JSON string (with its quotes) of `min..=max` characters.
    Str { min: u32, max: u32 },
    /// A JSON number in `[lo, hi]` (millionths), integer-valued if `integer`.
    Num { lo: i128, hi: i128, integer: bool },
    /// The body of an array after its `[`: items separated by `, `, then `]`.
    Arr { item: NodeId, min: u32, max: u32 },
    /// The body of a permutation after its `[`: every id once, separated by `, `, then `]`.
    Perm(Vec<Vec<u8>>),
    /// The body of a JSON object after its `{` (any keys and values, general whitespace).
    JsonObj,
}

/// A compiled answer grammar.
#[derive(Debug)]
pub struct Grammar {
    nodes: Vec<Node>,
    root: NodeId,
    /// An unbounded number (values of `json_object` answers).
    json_num: NodeId,
    /// Shortest completion in bytes of each node.
    min: Vec<usize>,
    memo: Mutex<Memo>,
}

fn cfg(msg: impl Into<String>) -> RecforgeError {
    RecforgeError::config(format!("response_format: {}", msg.into()))
}

/// Compiles schemas into the node arena.
struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn add(&mut self, n: Node) -> NodeId {
        self.nodes.push(n);
        (self.nodes.len() - 1) as NodeId
    }

    fn lit(&mut self, s: &str) -> NodeId {
        self.add(Node::Lit(s.as_bytes().to_vec()))
    }

    fn seq(&mut self, parts: Vec<NodeId>) -> NodeId {
        if parts.len() == 1 {
            parts[0]
        } else {
            self.add(Node::Seq(parts))
        }
    }

    fn alt(&mut self, parts: Vec<NodeId>) -> NodeId {
        if parts.len() == 1 {
            parts[0]
        } else {
            self.add(Node::Alt(parts))
        }
    }

    fn scalar_lits(&mut self, values: &[Value], what: &str) -> Result<NodeId> {
        if values.is_empty() {
            return Err(cfg(format!("{what} is empty")));
        }
        let mut seen = std::collections::HashSet::new();
        let mut parts = vec![];
        for v in values {
            if v.is_object() || v.is_array() {
                return Err(cfg(format!(
                    "{what} may hold only strings, numbers, booleans and null, got {v}"
                )));
            }
            let text = v.to_string();
            if seen.insert(text.clone()) {
                parts.push(self.lit(&text));
            }
        }
        Ok(self.alt(parts))
    }

    fn number(&mut self, s: &serde_json::Map<String, Value>, integer: bool) -> Result<NodeId> {
        let bound = |key: &str| -> Result<Option<f64>> {
            match s.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| cfg(format!("{key} must be a finite number, got {v}"))),
            }
        };
        let cap = 10f64.powi(MAX_INT_DIGITS as i32);
        let lo = bound("minimum")?.unwrap_or(-cap).max(-cap);
        let hi = bound("maximum")?.unwrap_or(cap).min(cap);
        if lo > hi {
            return Err(cfg(format!("minimum {lo} is greater than maximum {hi}")));
        }
        // Bounds in millionths, forgiving the float error of decimal bounds (3.9 read as 3.9000000000000004).
        let (lo_s, hi_s) = (
            (lo * SCALE as f64 - 1e-6).ceil() as i128,
            (hi * SCALE as f64 + 1e-6).floor() as i128,
        );
        let step = if integer { SCALE } else { 1 };
        if first_multiple(lo_s, hi_s, step).is_none() {
            return Err(cfg(format!(
                "no {} with at most {MAX_DECIMALS} decimals lies in [{lo}, {hi}]",
                if integer { "integer" } else { "number" }
            )));
        }
        Ok(self.add(Node::Num {
            lo: lo_s,
            hi: hi_s,
            integer,
        }))
    }

    fn count(s: &serde_json::Map<String, Value>, key: &str, default: u32) -> Result<u32> {
        match s.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| cfg(format!("{key} must be a non-negative integer, got {v}"))),
        }
    }

    fn permutation(&mut self, ids: &Value) -> Result<NodeId> {
        let ids = ids
            .as_array()
            .ok_or_else(|| cfg(format!("permutation ids must be a list, got {ids}")))?;
        let mut enc = vec![];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if !(id.is_string() || id.is_i64() || id.is_u64()) {
                return Err(cfg(format!(
                    "permutation ids must be integers or strings, got {id}"
                )));
            }
            let text = id.to_string();
            if !seen.insert(text.clone()) {
                return Err(cfg(format!("permutation id {text} appears twice")));
            }
            enc.push(text.into_bytes());
        }
        let open = self.lit("[");
        let body = if enc.is_empty() {
            self.lit("]")
        } else {
            self.add(Node::Perm(enc))
        };
        Ok(self.seq(vec![open, body]))
    }

    fn schema(&mut self, v: &Value, depth: usize) -> Result<NodeId> {
        if depth > 32 {
            return Err(cfg("the schema nests deeper than 32 levels"));
        }
        let s = v
            .as_object()
            .ok_or_else(|| cfg(format!("a schema must be an object, got {v}")))?;
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "minimum",
            "maximum",
            "enum",
            "anyOf",
            "x-permutation",
            "title",
            "description",
            "additionalProperties",
            "$schema",
            "default",
            "examples",
            "strict",
        ];
        if let Some(k) = s.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(cfg(format!(
                "schema keyword {k:?} is not supported (supported: {})",
                KNOWN.join(", ")
            )));
        }
        if let Some(e) = s.get("enum") {
            let values = e.as_array().ok_or_else(|| cfg("enum must be a list"))?;
            return self.scalar_lits(values, "enum");
        }
        if let Some(any) = s.get("anyOf") {
            let any = any
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| cfg("anyOf must be a non-empty list"))?;
            let parts = any
                .iter()
                .map(|x| self.schema(x, depth + 1))
                .collect::<Result<Vec<_>>>()?;
            return Ok(self.alt(parts));
        }
        if let Some(ids) = s.get("x-permutation") {
            return self.permutation(ids);
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| cfg(format!("type list entries must be strings, got {t}")))
                })
                .collect::<Result<_>>()?,
            Some(t) => return Err(cfg(format!("type must be a string or a list, got {t}"))),
            None => return Err(cfg(format!("schema without a type: {v}"))),
        };
        if types.is_empty() {
            return Err(cfg("type list is empty"));
        }
        let mut parts = vec![];
        for t in types {
            let node = match t {
                "object" => {
                    let props = s.get("properties").and_then(Value::as_object);
                    let required: Vec<&str> = match s.get("required") {
                        None => vec![],
                        Some(r) => r
                            .as_array()
                            .ok_or_else(|| cfg("required must be a list"))?
                            .iter()
                            .map(|k| {
                                k.as_str()
                                    .ok_or_else(|| cfg("required entries must be strings"))
                            })
                            .collect::<Result<_>>()?,
                    };
                    let Some(props) = props else {
                        if required.is_empty() {
                            let open = self.lit("{");
                            let body = self.add(Node::JsonObj);
                            parts.push(self.seq(vec![open, body]));
                            continue;
                        }
                        return Err(cfg("an object with required keys needs properties"));
                    };
                    if let Some(k) = required.iter().find(|k| !props.contains_key(**k)) {
                        return Err(cfg(format!(
                            "required key {k:?} is not among the properties"
                        )));
                    }
                    let mut seq = vec![];
                    let mut text = String::from("{");
                    for (k, (key, sub)) in props
                        .iter()
                        .filter(|(k, _)| required.contains(&k.as_str()))
                        .enumerate()
                    {
                        if k > 0 {
                            text.push_str(", ");
                        }
                        text.push_str(&Value::String(key.clone()).to_string());
                        text.push_str(": ");
                        seq.push(self.lit(&text));
                        seq.push(self.schema(sub, depth + 1)?);
                        text.clear();
                    }
                    text.push('}');
                    seq.push(self.lit(&text));
                    self.seq(seq)
                }
                "array" => {
                    let item = s
                        .get("items")
                        .ok_or_else(|| cfg("an array needs items (or x-permutation)"))?;
                    let item = self.schema(item, depth + 1)?;
                    let min = Self::count(s, "minItems", 0)?;
                    let max = Self::count(s, "maxItems", u32::MAX)?;
                    if min > max {
                        return Err(cfg(format!(
                            "minItems {min} is greater than maxItems {max}"
                        )));
                    }
                    let open = self.lit("[");
                    let body = self.add(Node::Arr { item, min, max });
                    self.seq(vec![open, body])
                }
                "string" => {
                    let min = Self::count(s, "minLength", 0)?;
                    let max = Self::count(s, "maxLength", u32::MAX)?;
                    if min > max {
                        return Err(cfg(format!(
                            "minLength {min} is greater than maxLength {max}"
                        )));
                    }
                    self.add(Node::Str { min, max })
                }
                "number" => self.number(s, false)?,
                "integer" => self.number(s, true)?,
                "boolean" => {
                    let (t, f) = (self.lit("true"), self.lit("false"));
                    self.alt(vec![t, f])
                }
                "null" => self.lit("null"),
                other => return Err(cfg(format!("type {other:?} is not supported"))),
            };
            parts.push(node);
        }
        Ok(self.alt(parts))
    }
}

/// The first multiple of `step` in `[lo, hi]`, if any.
fn first_multiple(lo: i128, hi: i128, step: i128) -> Option<i128> {
    let m = lo.div_euclid(step) * step;
    let m = if m < lo { m + step } else { m };
    (m <= hi).then_some(m)
}

impl Grammar {
    /// The grammar of an OpenAI-style `response_format`; `None` for `{"type": "text"}`.
    pub fn from_response_format(v: &Value) -> Result<Option<Grammar>> {
        let obj = v
            .as_object()
            .ok_or_else(|| cfg(format!("must be an object, got {v}")))?;
        let kind = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| cfg(format!("needs a string \"type\", got {v}")))?;
        let mut b = Builder { nodes: vec![] };
        let root = match kind {
            "text" => return Ok(None),
            "json_object" => {
                let open = b.lit("{");
                let body = b.add(Node::JsonObj);
                b.seq(vec![open, body])
            }
            "json_schema" => {
                let schema = obj
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| cfg("json_schema needs {\"json_schema\": {\"schema\": ...}}"))?;
                b.schema(schema, 0)?
            }
            "choice" => {
                let choices = obj
                    .get("choices")
                    .and_then(Value::as_array)
                    .ok_or_else(|| cfg("choice needs a list \"choices\""))?;
                if choices.is_empty() {
                    return Err(cfg("choice needs at least one choice"));
                }
                let mut parts = vec![];
                for c in choices {
                    let c = c
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| cfg(format!("choices must be non-empty strings, got {c}")))?;
                    parts.push(b.lit(c));
                }
                b.alt(parts)
            }
            "permutation" => b.permutation(obj.get("ids").unwrap_or(&Value::Null))?,
            "number" | "integer" => b.number(obj, kind == "integer")?,
            other => {
                return Err(cfg(format!(
                    "type {other:?} is not supported (text, json_object, json_schema, choice, permutation, number, integer)"
                )))
            }
        };
        let cap = 10i128.pow(MAX_INT_DIGITS) * SCALE;
        let json_num = b.add(Node::Num {
            lo: -cap,
            hi: cap,
            integer: false,
        });
        let mut g = Grammar {
            min: vec![0; b.nodes.len()],
            nodes: b.nodes,
            root,
            json_num,
            memo: Mutex::new(HashMap::new()),
        };
        // Children come before parents in the arena, so one pass in order fills `min`.
        for id in 0..g.nodes.len() {
            g.min[id] = g.node_min(id as NodeId);
        }
        Ok(Some(g))
    }

    fn node_min(&self, id: NodeId) -> usize {
        match &self.nodes[id as usize] {
            Node::Lit(b) => b.len(),
            Node::Seq(p) => p.iter().map(|&c| self.min[c as usize]).sum(),
            Node::Alt(p) => p.iter().map(|&c| self.min[c as usize]).min().unwrap_or(0),
            Node::Str { min, .. } => 2 + *min as usize,
            Node::Num { lo, hi, integer } => {
                num_min_completion(b"", *lo, *hi, *integer).unwrap_or(usize::MAX / 4)
            }
            Node::Arr { item, min, .. } => arr_min(self.min[*item as usize], 0, *min, false),
            Node::Perm(ids) => ids.iter().map(Vec::len).sum::<usize>() + 2 * (ids.len() - 1) + 1,
            Node::JsonObj => 1,
        }
    }

    /// Tokens of the shortest complete answer, plus one for the end-of-sequence token.
    pub fn min_tokens(&self) -> usize {
        self.min[self.root as usize] + 1
    }
}

/// Bytes that finish an array body holding `count` items (`after`: just after one).
fn arr_min(item: usize, count: u32, min: u32, after: bool) -> usize {
    let left = min.saturating_sub(count) as usize;
    if left == 0 {
        return 1;
    }
    if after || count > 0 {
        left * (2 + item) + 1
    } else {
        item + (left - 1) * (2 + item) + 1
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers: which prefixes can still become a number in range, and how many bytes that takes.

/// A number prefix split into its parts, if it is a valid prefix of
/// `-?(0|[1-9][0-9]*)(\.[0-9]{1,6})?` (no fraction for integers).
struct NumPrefix<'a> {
    negative: bool,
    int: &'a [u8],
    dot: bool,
    frac: &'a [u8],
}

fn parse_num_prefix(p: &[u8], integer: bool) -> Option<NumPrefix<'_>> {
    let (negative, rest) = match p.first() {
        Some(b'-') => (true, &p[1..]),
        _ => (false, p),
    };
    let dot_at = rest.iter().position(|&b| b == b'.');
    let (int, frac, dot) = match dot_at {
        Some(i) => (&rest[..i], &rest[i + 1..], true),
        None => (rest, &rest[rest.len()..], false),
    };
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let ok = digits(int)
        && digits(frac)
        && !(int.len() > 1 && int[0] == b'0')
        && int.len() <= MAX_INT_DIGITS as usize + 1
        && !(dot && (int.is_empty() || integer))
        && frac.len() <= MAX_DECIMALS as usize;
    ok.then_some(NumPrefix {
        negative,
        int,
        dot,
        frac,
    })
}

fn digits_value(s: &[u8]) -> i128 {
    s.iter().fold(0i128, |v, &d| v * 10 + i128::from(d - b'0'))
}

/// The fewest bytes to append to `p` for a complete number in `[lo, hi]` (millionths), or
/// `None` if no completion exists.
fn num_min_completion(p: &[u8], lo: i128, hi: i128, integer: bool) -> Option<usize> {
    let np = parse_num_prefix(p, integer)?;
    let signs: &[bool] = if p.is_empty() {
        &[false, true]
    } else {
        &[np.negative]
    };
    let mut best: Option<usize> = None;
    for &negative in signs {
        if negative && lo >= 0 {
            continue; // "-0" is the only negative form in range: never offer the sign
        }
        let ni_lo = np.int.len().max(1);
        let ni_hi = if np.dot || (np.int.len() == 1 && np.int[0] == b'0') {
            np.int.len().max(1)
        } else {
            MAX_INT_DIGITS as usize + 1
        };
        for ni in ni_lo..=ni_hi {
            if np.dot && ni != np.int.len() {
                continue;
            }
            let q = digits_value(np.int);
            let (imin, imax) = if np.int.len() == ni {
                (q, q)
            } else if np.int.is_empty() {
                (
                    if ni == 1 {
                        0
                    } else {
                        10i128.pow(ni as u32 - 1)
                    },
                    10i128.pow(ni as u32) - 1,
                )
            } else {
                let k = 10i128.pow((ni - np.int.len()) as u32);
                (q * k, (q + 1) * k - 1)
            };
            let nf_range: Vec<usize> = if integer {
                vec![0]
            } else if np.dot {
                (np.frac.len().max(1)..=MAX_DECIMALS as usize).collect()
            } else {
                (0..=MAX_DECIMALS as usize).collect()
            };
            for nf in nf_range {
                let g = 10i128.pow(MAX_DECIMALS - nf as u32);
                let (fmin, fmax) = if nf == 0 {
                    (0, 0)
                } else if np.dot {
                    let k = 10i128.pow((nf - np.frac.len()) as u32);
                    let f = digits_value(np.frac);
                    (f * k, (f + 1) * k - 1)
                } else {
                    (0, 10i128.pow(nf as u32) - 1)
                };
                let (a, b) = (imin * SCALE + fmin * g, imax * SCALE + fmax * g);
                // Negative numbers are below zero: "-0" is never a completion.
                let (a, b) = if negative { (-b, (-a).min(-g)) } else { (a, b) };
                if first_multiple(a.max(lo), b.min(hi), g).is_none() {
                    continue;
                }
                let len = usize::from(negative) + ni + if nf > 0 { 1 + nf } else { 0 };
                if len >= p.len() {
                    let extra = len - p.len();
                    best = Some(best.map_or(extra, |b| b.min(extra)));
                }
            }
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// The automaton: a stack of items, the top one being matched.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StrPhase {
    /// Expecting the opening quote.
    Open,
    /// Inside the string.
    Body,
    /// After a backslash.
    Esc,
    /// Hex digits of a `\u` escape still to come; `high` when the first was `d` (no surrogates).
    Hex { left: u8, high: bool },
    /// Continuation bytes of a UTF-8 character still to come, the next within `lo..=hi`.
    Utf8 { left: u8, lo: u8, hi: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ObjPhase {
    KeyOrClose,
    Key,
    Colon,
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ArrPhase {
    ValOrClose,
    Val,
    Comma,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Node(NodeId),
    Lit(NodeId, u32),
    Byte(u8),
    Str {
        min: u32,
        max: u32,
        chars: u32,
        phase: StrPhase,
    },
    Num {
        node: NodeId,
        buf: Vec<u8>,
    },
    Arr {
        node: NodeId,
        count: u32,
        after: bool,
    },
    /// `sep`: the `, ` before the next id is half written.
    Perm {
        node: NodeId,
        used: Vec<u64>,
        cur: Vec<u8>,
        sep: bool,
    },
    JVal {
        depth: u8,
        ws: u8,
    },
    JObj {
        depth: u8,
        phase: ObjPhase,
        ws: u8,
    },
    JArr {
        depth: u8,
        phase: ArrPhase,
        ws: u8,
    },
}

type Stack = Vec<Item>;

/// The tokens each memoised state allows, with the budget each needs.
type Memo = HashMap<Vec<Stack>, Arc<Vec<(u32, u32)>>>;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

fn used_bit(used: &[u64], i: usize) -> bool {
    used[i / 64] >> (i % 64) & 1 == 1
}

const ANY: u32 = u32::MAX;

impl Grammar {
    fn json_num(&self) -> NodeId {
        self.json_num
    }

    fn perm_rest(&self, ids: &[Vec<u8>], used: &[u64], except: Option<usize>) -> (usize, usize) {
        let mut n = 0;
        let mut bytes = 0;
        for (i, id) in ids.iter().enumerate() {
            if !used_bit(used, i) && Some(i) != except {
                n += 1;
                bytes += id.len();
            }
        }
        (n, bytes)
    }

    /// Bytes that finish this item (with whatever it has pushed above it done).
    fn item_min(&self, it: &Item) -> usize {
        const DEAD: usize = usize::MAX / 4;
        match it {
            Item::Node(id) => self.min[*id as usize],
            Item::Lit(id, pos) => match &self.nodes[*id as usize] {
                Node::Lit(b) => b.len() - *pos as usize,
                _ => DEAD,
            },
            Item::Byte(_) => 1,
            Item::Str {
                min, chars, phase, ..
            } => {
                let rest = min.saturating_sub(*chars) as usize + 1;
                match phase {
                    StrPhase::Open => 2 + *min as usize,
                    StrPhase::Body => rest,
                    StrPhase::Esc => 1 + rest,
                    StrPhase::Hex { left, .. } => *left as usize + rest,
                    StrPhase::Utf8 { left, .. } => *left as usize + rest,
                }
            }
            Item::Num { node, buf } => match &self.nodes[*node as usize] {
                Node::Num { lo, hi, integer } => {
                    num_min_completion(buf, *lo, *hi, *integer).unwrap_or(DEAD)
                }
                _ => DEAD,
            },
            Item::Arr { node, count, after } => match &self.nodes[*node as usize] {
                Node::Arr { item, min, .. } => {
                    arr_min(self.min[*item as usize], *count, *min, *after)
                }
                _ => DEAD,
            },
            Item::Perm {
                node,
                used,
                cur,
                sep,
            } => match &self.nodes[*node as usize] {
                Node::Perm(ids) => {
                    let (n, bytes) = self.perm_rest(ids, used, None);
                    if *sep {
                        return 1 + bytes + 2 * n.saturating_sub(1) + 1;
                    }
                    if cur.is_empty() {
                        return bytes + 2 * n.saturating_sub(1) + 1;
                    }
                    ids.iter()
                        .enumerate()
                        .filter(|(i, id)| !used_bit(used, *i) && id.starts_with(cur))
                        .map(|(i, id)| {
                            let (n, bytes) = self.perm_rest(ids, used, Some(i));
                            id.len() - cur.len() + bytes + 2 * n + 1
                        })
                        .min()
                        .unwrap_or(DEAD)
                }
                _ => DEAD,
            },
            Item::JVal { .. } => 1,
            Item::JObj { phase, .. } => match phase {
                ObjPhase::KeyOrClose | ObjPhase::Comma => 1,
                ObjPhase::Key => 5,
                ObjPhase::Colon => 3,
            },
            Item::JArr { phase, .. } => match phase {
                ArrPhase::ValOrClose | ArrPhase::Comma => 1,
                ArrPhase::Val => 2,
            },
        }
    }

    fn stack_min(&self, s: &Stack) -> usize {
        s.iter()
            .fold(0usize, |a, it| a.saturating_add(self.item_min(it)))
    }

    /// Every stack `s` can become after byte `b` (none: `b` is not allowed).
    fn step(&self, mut s: Stack, b: u8, out: &mut Vec<Stack>) {
        let Some(top) = s.pop() else { return };
        match top {
            Item::Node(id) => match &self.nodes[id as usize] {
                Node::Lit(_) => {
                    s.push(Item::Lit(id, 0));
                    self.step(s, b, out);
                }
                Node::Seq(parts) => {
                    s.extend(parts.iter().rev().map(|&p| Item::Node(p)));
                    self.step(s, b, out);
                }
                Node::Alt(parts) => {
                    for &p in parts {
                        let mut t = s.clone();
                        t.push(Item::Node(p));
                        self.step(t, b, out);
                    }
                }
                Node::Str { min, max } => {
                    s.push(Item::Str {
                        min: *min,
                        max: *max,
                        chars: 0,
                        phase: StrPhase::Open,
                    });
                    self.step(s, b, out);
                }
                Node::Num { .. } => {
                    s.push(Item::Num {
                        node: id,
                        buf: vec![],
                    });
                    self.step(s, b, out);
                }
                Node::Arr { .. } => {
                    s.push(Item::Arr {
                        node: id,
                        count: 0,
                        after: false,
                    });
                    self.step(s, b, out);
                }
                Node::Perm(ids) => {
                    let used = vec![0u64; ids.len().div_ceil(64)];
                    s.push(Item::Perm {
                        node: id,
                        used,
                        cur: vec![],
                        sep: false,
                    });
                    self.step(s, b, out);
                }
                Node::JsonObj => {
                    s.push(Item::JObj {
                        depth: 1,
                        phase: ObjPhase::KeyOrClose,
                        ws: 0,
                    });
                    self.step(s, b, out);
                }
            },
            Item::Lit(id, pos) => {
                if let Node::Lit(bytes) = &self.nodes[id as usize] {
                    if bytes[pos as usize] == b {
                        if pos as usize + 1 < bytes.len() {
                            s.push(Item::Lit(id, pos + 1));
                        }
                        out.push(s);
                    }
                }
            }
            Item::Byte(x) => {
                if x == b {
                    out.push(s);
                }
            }
            Item::Str {
                min,
                max,
                chars,
                phase,
            } => {
                let next = match phase {
                    StrPhase::Open => (b == b'"').then_some((chars, StrPhase::Body)),
                    StrPhase::Body => match b {
                        b'"' if chars >= min => {
                            out.push(s);
                            return;
                        }
                        b'"' => None,
                        _ if chars >= max => None,
                        b'\\' => Some((chars + 1, StrPhase::Esc)),
                        0x00..=0x1f | 0x7f => None,
                        0x20..=0x7e => Some((chars + 1, StrPhase::Body)),
                        0xc2..=0xdf => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 1,
                                lo: 0x80,
                                hi: 0xbf,
                            },
                        )),
                        0xe0 => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 2,
                                lo: 0xa0,
                                hi: 0xbf,
                            },
                        )),
                        0xe1..=0xec | 0xee..=0xef => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 2,
                                lo: 0x80,
                                hi: 0xbf,
                            },
                        )),
                        0xed => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 2,
                                lo: 0x80,
                                hi: 0x9f,
                            },
                        )),
                        0xf0 => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 3,
                                lo: 0x90,
                                hi: 0xbf,
                            },
                        )),
                        0xf1..=0xf3 => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 3,
                                lo: 0x80,
                                hi: 0xbf,
                            },
                        )),
                        0xf4 => Some((
                            chars + 1,
                            StrPhase::Utf8 {
                                left: 3,
                                lo: 0x80,
                                hi: 0x8f,
                            },
                        )),
                        _ => None,
                    },
                    StrPhase::Esc => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                            Some((chars, StrPhase::Body))
                        }
                        b'u' => Some((
                            chars,
                            StrPhase::Hex {
                                left: 4,
                                high: false,
                            },
                        )),
                        _ => None,
                    },
                    StrPhase::Hex { left, high } => {
                        let ok = b.is_ascii_hexdigit() && (!high || matches!(b, b'0'..=b'7'));
                        ok.then(|| {
                            let high = left == 4 && matches!(b, b'd' | b'D');
                            let phase = if left == 1 {
                                StrPhase::Body
                            } else {
                                StrPhase::Hex {
                                    left: left - 1,
                                    high,
                                }
                            };
                            (chars, phase)
                        })
                    }
                    StrPhase::Utf8 { left, lo, hi } => (lo..=hi).contains(&b).then(|| {
                        let phase = if left == 1 {
                            StrPhase::Body
                        } else {
                            StrPhase::Utf8 {
                                left: left - 1,
                                lo: 0x80,
                                hi: 0xbf,
                            }
                        };
                        (chars, phase)
                    }),
                };
                if let Some((chars, phase)) = next {
                    s.push(Item::Str {
                        min,
                        max,
                        chars,
                        phase,
                    });
                    out.push(s);
                }
            }
            Item::Num { node, buf } => {
                let Node::Num { lo, hi, integer } = &self.nodes[node as usize] else {
                    return;
                };
                let mut longer = buf.clone();
                longer.push(b);
                if num_min_completion(&longer, *lo, *hi, *integer).is_some() {
                    let mut t = s.clone();
                    t.push(Item::Num { node, buf: longer });
                    out.push(t);
                }
                if num_min_completion(&buf, *lo, *hi, *integer) == Some(0) {
                    self.step(s, b, out);
                }
            }
            Item::Arr { node, count, after } => {
                let Node::Arr { item, min, max } = &self.nodes[node as usize] else {
                    return;
                };
                if b == b']' && count >= *min {
                    out.push(s);
                } else if !after {
                    if *max >= 1 {
                        s.push(Item::Arr {
                            node,
                            count: 1,
                            after: true,
                        });
                        s.push(Item::Node(*item));
                        self.step(s, b, out);
                    }
                } else if b == b',' && count < *max {
                    s.push(Item::Arr {
                        node,
                        count: count + 1,
                        after: true,
                    });
                    s.push(Item::Node(*item));
                    s.push(Item::Byte(b' '));
                    out.push(s);
                }
            }
            Item::Perm {
                node,
                used,
                cur,
                sep,
            } => {
                let Node::Perm(ids) = &self.nodes[node as usize] else {
                    return;
                };
                if sep {
                    if b == b' ' {
                        s.push(Item::Perm {
                            node,
                            used,
                            cur: vec![],
                            sep: false,
                        });
                        out.push(s);
                    }
                    return;
                }
                let mut longer = cur.clone();
                longer.push(b);
                let unused = |i: usize| !used_bit(&used, i);
                if ids
                    .iter()
                    .enumerate()
                    .any(|(i, id)| unused(i) && id.starts_with(&longer))
                {
                    let mut t = s.clone();
                    t.push(Item::Perm {
                        node,
                        used: used.clone(),
                        cur: longer,
                        sep: false,
                    });
                    out.push(t);
                }
                if let Some(i) = ids
                    .iter()
                    .enumerate()
                    .position(|(i, id)| unused(i) && *id == cur)
                {
                    let mut used = used;
                    used[i / 64] |= 1 << (i % 64);
                    let left = (0..ids.len()).filter(|&j| !used_bit(&used, j)).count();
                    if b == b',' && left > 0 {
                        s.push(Item::Perm {
                            node,
                            used,
                            cur: vec![],
                            sep: true,
                        });
                        out.push(s);
                    } else if b == b']' && left == 0 {
                        out.push(s);
                    }
                }
            }
            Item::JVal { depth, ws } => {
                if is_ws(b) {
                    if ws < MAX_WS {
                        s.push(Item::JVal { depth, ws: ws + 1 });
                        out.push(s);
                    }
                    return;
                }
                match b {
                    b'{' if depth < MAX_DEPTH => {
                        s.push(Item::JObj {
                            depth: depth + 1,
                            phase: ObjPhase::KeyOrClose,
                            ws: 0,
                        });
                        out.push(s);
                    }
                    b'[' if depth < MAX_DEPTH => {
                        s.push(Item::JArr {
                            depth: depth + 1,
                            phase: ArrPhase::ValOrClose,
                            ws: 0,
                        });
                        out.push(s);
                    }
                    b'"' => {
                        s.push(Item::Str {
                            min: 0,
                            max: ANY,
                            chars: 0,
                            phase: StrPhase::Body,
                        });
                        out.push(s);
                    }
                    b't' | b'f' | b'n' => {
                        let word: &[u8] = match b {
                            b't' => b"rue",
                            b'f' => b"alse",
                            _ => b"ull",
                        };
                        s.extend(word.iter().rev().map(|&c| Item::Byte(c)));
                        out.push(s);
                    }
                    b'-' | b'0'..=b'9' => {
                        s.push(Item::Num {
                            node: self.json_num(),
                            buf: vec![],
                        });
                        self.step(s, b, out);
                    }
                    _ => {}
                }
            }
            Item::JObj { depth, phase, ws } => {
                if is_ws(b) {
                    if ws < MAX_WS {
                        s.push(Item::JObj {
                            depth,
                            phase,
                            ws: ws + 1,
                        });
                        out.push(s);
                    }
                    return;
                }
                let string = Item::Str {
                    min: 0,
                    max: ANY,
                    chars: 0,
                    phase: StrPhase::Body,
                };
                match (phase, b) {
                    (ObjPhase::KeyOrClose | ObjPhase::Comma, b'}') => out.push(s),
                    (ObjPhase::KeyOrClose | ObjPhase::Key, b'"') => {
                        s.push(Item::JObj {
                            depth,
                            phase: ObjPhase::Colon,
                            ws: 0,
                        });
                        s.push(string);
                        out.push(s);
                    }
                    (ObjPhase::Colon, b':') => {
                        s.push(Item::JObj {
                            depth,
                            phase: ObjPhase::Comma,
                            ws: 0,
                        });
                        s.push(Item::JVal { depth, ws: 0 });
                        out.push(s);
                    }
                    (ObjPhase::Comma, b',') => {
                        s.push(Item::JObj {
                            depth,
                            phase: ObjPhase::Key,
                            ws: 0,
                        });
                        out.push(s);
                    }
                    _ => {}
                }
            }
            Item::JArr { depth, phase, ws } => {
                if is_ws(b) && phase != ArrPhase::Val {
                    if ws < MAX_WS {
                        s.push(Item::JArr {
                            depth,
                            phase,
                            ws: ws + 1,
                        });
                        out.push(s);
                    }
                    return;
                }
                match (phase, b) {
                    (ArrPhase::ValOrClose | ArrPhase::Comma, b']') => out.push(s),
                    (ArrPhase::Comma, b',') => {
                        s.push(Item::JArr {
                            depth,
                            phase: ArrPhase::Val,
                            ws: 0,
                        });
                        out.push(s);
                    }
                    (ArrPhase::ValOrClose | ArrPhase::Val, _) => {
                        s.push(Item::JArr {
                            depth,
                            phase: ArrPhase::Comma,
                            ws: 0,
                        });
                        s.push(Item::JVal { depth, ws: 0 });
                        self.step(s, b, out);
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The vocabulary as a byte trie, and the per-answer matcher.

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    tokens: Vec<u32>,
}

/// A model's vocabulary as bytes, in a trie.
#[derive(Debug)]
pub struct Vocab {
    trie: Vec<TrieNode>,
    bytes: Vec<Option<Vec<u8>>>,
    eos: Vec<u32>,
    n_tokens: usize,
    max_len: usize,
}

impl Vocab {
    /// A vocabulary from each token's bytes (`None`: a special token, never allowed) and the
    /// end-of-sequence ids.
    pub fn new(token_bytes: Vec<Option<Vec<u8>>>, eos: Vec<u32>) -> Result<Vocab> {
        let n_tokens = token_bytes.len();
        if let Some(e) = eos.iter().find(|&&e| e as usize >= n_tokens) {
            return Err(RecforgeError::data(format!(
                "end-of-sequence id {e} is outside the vocabulary of {n_tokens}"
            )));
        }
        let mut trie = vec![TrieNode::default()];
        let mut max_len = 0;
        for (id, bytes) in token_bytes.iter().enumerate() {
            let Some(bytes) = bytes else { continue };
            if bytes.is_empty() || eos.contains(&(id as u32)) {
                continue;
            }
            max_len = max_len.max(bytes.len());
            let mut at = 0usize;
            for &b in bytes {
                at = match trie[at].children.iter().find(|(c, _)| *c == b) {
                    Some(&(_, next)) => next as usize,
                    None => {
                        trie.push(TrieNode::default());
                        let next = trie.len() - 1;
                        trie[at].children.push((b, next as u32));
                        next
                    }
                };
            }
            trie[at].tokens.push(id as u32);
        }
        Ok(Vocab {
            trie,
            bytes: token_bytes,
            eos,
            n_tokens,
            max_len,
        })
    }
}

/// The state of one answer being generated.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    states: Vec<Stack>,
}

fn dedup(mut v: Vec<Stack>) -> Vec<Stack> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

impl Matcher {
    /// A matcher at the start of an answer.
    pub fn new(grammar: Arc<Grammar>) -> Matcher {
        let root = grammar.root;
        Matcher {
            grammar,
            states: vec![vec![Item::Node(root)]],
        }
    }

    fn step_all(&self, states: &[Stack], b: u8) -> Vec<Stack> {
        let mut out = vec![];
        for s in states {
            self.grammar.step(s.clone(), b, &mut out);
        }
        if out.len() > 1 {
            out = dedup(out);
        }
        out
    }

    fn min_bytes(&self, states: &[Stack]) -> usize {
        states
            .iter()
            .map(|s| self.grammar.stack_min(s))
            .min()
            .unwrap_or(usize::MAX / 4)
    }

    /// The memo key of the current states: string lengths that cannot matter within one token
    /// are forgotten.
    fn key(&self, max_len: usize) -> Vec<Stack> {
        self.states
            .iter()
            .map(|s| {
                s.iter()
                    .map(|it| match it {
                        Item::Str {
                            min,
                            max,
                            chars,
                            phase,
                        } if *chars >= *min && (*max - *chars) as usize > max_len + 4 => {
                            Item::Str {
                                min: *min,
                                max: *max,
                                chars: *min,
                                phase: *phase,
                            }
                        }
                        other => other.clone(),
                    })
                    .collect()
            })
            .collect()
    }

    /// Every token that keeps the answer on the grammar, with the budget it needs (itself, the
    /// shortest completion after it, and an end-of-sequence token).
    fn walk(&self, vocab: &Vocab, start: Vec<Stack>) -> Vec<(u32, u32)> {
        let mut out = vec![];
        let mut todo: Vec<(u32, Vec<Stack>)> = vec![(0, start)];
        while let Some((node, states)) = todo.pop() {
            for &(b, child) in &vocab.trie[node as usize].children {
                let next = self.step_all(&states, b);
                if next.is_empty() {
                    continue;
                }
                let c = &vocab.trie[child as usize];
                if !c.tokens.is_empty() {
                    let need = self
                        .min_bytes(&next)
                        .saturating_add(2)
                        .min(u32::MAX as usize) as u32;
                    out.extend(c.tokens.iter().map(|&t| (t, need)));
                }
                if !c.children.is_empty() {
                    todo.push((child, next));
                }
            }
        }
        out
    }

    /// Token ids allowed next when at most `budget` more tokens (end-of-sequence included) may
    /// be generated.
    pub fn allowed(&mut self, vocab: &Vocab, budget: usize) -> Result<Vec<u32>> {
        let key = self.key(vocab.max_len);
        let cached = self
            .grammar
            .memo
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let list = match cached {
            Some(l) => l,
            None => {
                let l = Arc::new(self.walk(vocab, key.clone()));
                if let Ok(mut m) = self.grammar.memo.lock() {
                    if m.len() >= MEMO_CAP {
                        m.clear();
                    }
                    m.insert(key, Arc::clone(&l));
                }
                l
            }
        };
        let mut out: Vec<u32> = list
            .iter()
            .filter(|(_, need)| *need as usize <= budget)
            .map(|&(t, _)| t)
            .collect();
        if self.is_complete() && budget >= 1 {
            out.extend_from_slice(&vocab.eos);
        }
        Ok(out)
    }

    /// Records token `token`; an error if the grammar does not allow it here.
    pub fn advance(&mut self, vocab: &Vocab, token: u32) -> Result<()> {
        if vocab.eos.contains(&token) {
            return if self.is_complete() {
                Ok(())
            } else {
                Err(RecforgeError::data(
                    "end of sequence before the answer is complete",
                ))
            };
        }
        let bytes = vocab
            .bytes
            .get(token as usize)
            .cloned()
            .flatten()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                RecforgeError::data(format!(
                    "token {token} is special or outside the vocabulary of {}",
                    vocab.n_tokens
                ))
            })?;
        let mut states = self.states.clone();
        for &b in &bytes {
            states = self.step_all(&states, b);
            if states.is_empty() {
                return Err(RecforgeError::data(format!(
                    "token {token} ({:?}) does not fit the answer's grammar here",
                    String::from_utf8_lossy(&bytes)
                )));
            }
        }
        self.states = states;
        Ok(())
    }

    /// The text so far is a full valid answer.
    pub fn is_complete(&self) -> bool {
        self.min_bytes(&self.states) == 0
    }

    /// Complete, and no byte can extend it.
    pub fn is_finished(&self) -> bool {
        self.is_complete() && (0..=255u8).all(|b| self.step_all(&self.states, b).is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use serde_json::json;

    fn grammar(v: Value) -> Arc<Grammar> {
        Arc::new(Grammar::from_response_format(&v).unwrap().unwrap())
    }

    /// Tokens: the listed strings (ids in order), then `<eos>` as the last id.
    fn vocab(tokens: &[&str]) -> (Vocab, u32) {
        let mut b: Vec<Option<Vec<u8>>> =
            tokens.iter().map(|t| Some(t.as_bytes().to_vec())).collect();
        b.push(None);
        let eos = tokens.len() as u32;
        (Vocab::new(b, vec![eos]).unwrap(), eos)
    }

    fn names(tokens: &[&str], eos: u32, ids: &[u32]) -> Vec<String> {
        let mut v: Vec<String> = ids
            .iter()
            .map(|&i| {
                if i == eos {
                    "<eos>".to_string()
                } else {
                    tokens[i as usize].to_string()
                }
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_choice_with_shared_prefixes_by_hand() {
        let toks = ["a", "b", "ab", "abc", "c", "x"];
        let (v, eos) = vocab(&toks);
        let g = grammar(json!({"type": "choice", "choices": ["a", "ab"]}));
        assert_eq!(g.min_tokens(), 2);
        let mut m = Matcher::new(g);
        assert_eq!(names(&toks, eos, &m.allowed(&v, 10).unwrap()), ["a", "ab"]);
        // With room for one token and the end only, "a" then eos, or "ab" then eos.
        assert_eq!(names(&toks, eos, &m.allowed(&v, 2).unwrap()), ["a", "ab"]);
        assert!(m.allowed(&v, 1).unwrap().is_empty());
        m.advance(&v, 0).unwrap();
        assert!(m.is_complete() && !m.is_finished());
        assert_eq!(
            names(&toks, eos, &m.allowed(&v, 5).unwrap()),
            ["<eos>", "b"]
        );
        assert!(m.advance(&v, 4).is_err(), "c does not fit");
        m.advance(&v, 1).unwrap();
        assert!(m.is_finished());
        assert_eq!(names(&toks, eos, &m.allowed(&v, 5).unwrap()), ["<eos>"]);
    }

    #[test]
    fn numbers_in_a_range_by_hand() {
        let toks = [
            "0", "1", "2", "5", "9", ".", "-", "0.", "0.5", "1.0", "1.5", "10", "05",
        ];
        let (v, eos) = vocab(&toks);
        let mut m = Matcher::new(grammar(
            json!({"type": "number", "minimum": 0, "maximum": 1}),
        ));
        assert_eq!(
            names(&toks, eos, &m.allowed(&v, 20).unwrap()),
            ["0", "0.", "0.5", "1", "1.0"]
        );
        m.advance(&v, 1).unwrap(); // "1"
        assert!(m.is_complete());
        // Only ".0..." may follow 1 (1.5 and 10 are out of range).
        assert_eq!(
            names(&toks, eos, &m.allowed(&v, 20).unwrap()),
            ["."]
                .iter()
                .map(|s| s.to_string())
                .chain(["<eos>".to_string()])
                .collect::<Vec<_>>()
        );
        let mut m = Matcher::new(grammar(
            json!({"type": "integer", "minimum": -20, "maximum": -15}),
        ));
        assert_eq!(names(&toks, eos, &m.allowed(&v, 20).unwrap()), ["-"]);
        m.advance(&v, 6).unwrap();
        assert_eq!(names(&toks, eos, &m.allowed(&v, 20).unwrap()), ["1", "2"]);
        m.advance(&v, 1).unwrap(); // "-1": -15..-19 can follow, "-1" itself is out of range
        assert!(!m.is_complete());
        assert_eq!(names(&toks, eos, &m.allowed(&v, 20).unwrap()), ["5", "9"]);
        assert_eq!(
            num_min_completion(b"", 123 * SCALE, 4567 * SCALE, true),
            Some(3)
        );
        let range = |p: &[u8]| num_min_completion(p, 123 * SCALE, 4567 * SCALE, true);
        assert_eq!(range(b"4"), Some(2)); // 4dd
        assert_eq!(range(b"46"), Some(1)); // 46d
        assert_eq!(range(b"5"), Some(2)); // 5dd
        assert_eq!(range(b"45678"), None);
        assert_eq!(range(b"-"), None);
        assert_eq!(range(b"1."), None);
        // Negative zero is never offered: "-0" and "-0.0" are not numbers below zero.
        assert_eq!(num_min_completion(b"-0", -SCALE, SCALE, true), None);
        assert_eq!(num_min_completion(b"-0", -SCALE, SCALE, false), Some(2)); // -0.d
        assert_eq!(num_min_completion(b"0.3", 333_333, 333_334, false), Some(5));
    }

    #[test]
    fn a_permutation_with_ids_that_prefix_each_other_by_hand() {
        let toks = ["[", "1", "12", "2", ",", " ", ", ", "]", "1,", "12]", "[1"];
        let (v, eos) = vocab(&toks);
        let g = grammar(json!({"type": "permutation", "ids": [1, 12, 2]}));
        // [1, 12, 2] is the shortest layout: 10 bytes, then eos.
        assert_eq!(g.min_tokens(), 11);
        let mut m = Matcher::new(g);
        assert_eq!(names(&toks, eos, &m.allowed(&v, 40).unwrap()), ["[", "[1"]);
        // "[1" then eight single bytes and the end fit in 10 tokens; "[" first does not.
        assert_eq!(names(&toks, eos, &m.allowed(&v, 10).unwrap()), ["[1"]);
        assert!(
            m.allowed(&v, 9).unwrap().is_empty(),
            "not enough budget for any answer"
        );
        for t in ["[1", "2", ", ", "1", ", "] {
            let id = toks.iter().position(|x| *x == t).unwrap() as u32;
            m.advance(&v, id).unwrap();
        }
        // 12 and 1 are used: only 2 is left, then the end.
        assert_eq!(names(&toks, eos, &m.allowed(&v, 40).unwrap()), ["2"]);
        m.advance(&v, 3).unwrap();
        assert_eq!(names(&toks, eos, &m.allowed(&v, 40).unwrap()), ["]"]);
        m.advance(&v, 7).unwrap();
        assert!(m.is_finished());
    }

    #[test]
    fn bad_formats_are_config_errors_naming_the_problem() {
        let err = |v: Value| Grammar::from_response_format(&v).unwrap_err().to_string();
        let schema =
            |s: Value| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}});
        assert!(err(json!({"type": "choice", "choices": []})).contains("at least one"));
        assert!(err(json!({"type": "permutation", "ids": [1, 2, 1]})).contains("twice"));
        assert!(err(json!({"type": "number", "minimum": 2, "maximum": 1})).contains("greater"));
        assert!(
            err(json!({"type": "integer", "minimum": 0.2, "maximum": 0.8})).contains("no integer")
        );
        assert!(err(json!({"type": "xml"})).contains("xml"));
        assert!(
            err(schema(json!({"type": "object", "patternProperties": {}})))
                .contains("patternProperties")
        );
        assert!(err(schema(
            json!({"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 2})
        ))
        .contains("minItems"));
        assert!(err(schema(
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]})
        ))
        .contains("\"b\""));
        assert!(Grammar::from_response_format(&json!({"type": "text"}))
            .unwrap()
            .is_none());
    }

    // ---- property tests: random walks over random vocabularies --------------------------

    const PIECES: &[&str] = &[
        "\"", "\", \"", "\": ", ", ", "{\"", "\"}", "[\"", "\"]", "[", "]", "{", "}", "0", "1",
        "12", "0.", ".5", "-", "-1", "99", "true", "null", "false", "ranking", "keywords", "score",
        "match", " ", "  ", "\n", "\\n", "\\u00e9", "\\ud83d", "\\", "é", "日本", "movie", "The ",
        "abc", "a", ":", ",", "e", "E+", "\t",
    ];

    fn random_vocab(rng: &mut Rng) -> Vocab {
        let mut toks: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        for _ in 0..600 {
            let n = 1 + rng.below(3) as usize;
            let mut t = Vec::new();
            for _ in 0..n {
                t.extend_from_slice(PIECES[rng.below(PIECES.len() as u64) as usize].as_bytes());
            }
            // Sometimes cut inside a UTF-8 character, as byte-level BPE tokens may be.
            if rng.below(5) == 0 && t.len() > 1 {
                t.truncate(1 + rng.below(t.len() as u64 - 1) as usize);
            }
            toks.push(Some(t));
        }
        toks.push(None); // a special token
        let eos = toks.len() as u32;
        toks.push(None);
        Vocab::new(toks, vec![eos]).unwrap()
    }

    /// Generates one answer choosing uniformly among the allowed tokens.
    fn walk(g: &Arc<Grammar>, v: &Vocab, budget: usize, rng: &mut Rng) -> Vec<u8> {
        let mut m = Matcher::new(Arc::clone(g));
        let mut out = Vec::new();
        let mut left = budget;
        loop {
            if m.is_finished() {
                break;
            }
            let allowed = m.allowed(v, left).unwrap();
            assert!(
                !allowed.is_empty(),
                "stuck after {:?} with {left} tokens left",
                String::from_utf8_lossy(&out)
            );
            let t = allowed[rng.below(allowed.len() as u64) as usize];
            left -= 1;
            if v.eos.contains(&t) {
                break;
            }
            m.advance(v, t).unwrap();
            out.extend_from_slice(v.bytes[t as usize].as_ref().unwrap());
        }
        assert!(m.is_complete());
        out
    }

    fn number_in(v: &Value, lo: f64, hi: f64, integer: bool) -> bool {
        let x = v.as_f64().unwrap_or(f64::NAN);
        lo - 1e-9 <= x && x <= hi + 1e-9 && (!integer || v.is_i64() || v.is_u64())
    }

    /// An independent check of a JSON value against the schema subset the tests draw.
    fn valid(schema: &Value, v: &Value) -> bool {
        if let Some(ids) = schema.get("x-permutation") {
            let mut a: Vec<String> = v
                .as_array()
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            let mut b: Vec<String> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect();
            a.sort();
            b.sort();
            return v.is_array() && a == b;
        }
        if let Some(any) = schema.get("anyOf") {
            return any.as_array().unwrap().iter().any(|s| valid(s, v));
        }
        if let Some(e) = schema.get("enum") {
            return e.as_array().unwrap().contains(v);
        }
        let f = |k: &str| schema.get(k).and_then(Value::as_f64);
        match schema["type"].as_str().unwrap() {
            "object" => {
                let Some(o) = v.as_object() else { return false };
                let req: Vec<&str> = schema["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                o.len() == req.len()
                    && req.iter().all(|k| {
                        o.get(*k)
                            .is_some_and(|x| valid(&schema["properties"][*k], x))
                    })
            }
            "array" => {
                let Some(a) = v.as_array() else { return false };
                let n = a.len() as f64;
                f("minItems").is_none_or(|m| n >= m)
                    && f("maxItems").is_none_or(|m| n <= m)
                    && a.iter().all(|x| valid(&schema["items"], x))
            }
            "string" => {
                let Some(s) = v.as_str() else { return false };
                let n = s.chars().count() as f64;
                f("minLength").is_none_or(|m| n >= m) && f("maxLength").is_none_or(|m| n <= m)
            }
            "number" => number_in(
                v,
                f("minimum").unwrap_or(-1e15),
                f("maximum").unwrap_or(1e15),
                false,
            ),
            "integer" => number_in(
                v,
                f("minimum").unwrap_or(-1e15),
                f("maximum").unwrap_or(1e15),
                true,
            ),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            t => panic!("untested type {t}"),
        }
    }

    fn random_schema(rng: &mut Rng, depth: u32) -> Value {
        let kind = rng.below(if depth > 1 { 6 } else { 9 });
        match kind {
            0 => {
                json!({"type": "string", "minLength": rng.below(3), "maxLength": 3 + rng.below(6)})
            }
            1 => {
                let lo = rng.below(200) as f64 / 10.0 - 10.0;
                json!({"type": "number", "minimum": lo, "maximum": lo + rng.below(50) as f64 / 7.0})
            }
            2 => {
                let lo = rng.below(300) as i64 - 150;
                json!({"type": "integer", "minimum": lo, "maximum": lo + rng.below(400) as i64})
            }
            3 => {
                let t = ["boolean", "null"][rng.below(2) as usize];
                json!({ "type": t })
            }
            4 => json!({"enum": ["a", "ab", 3, null, true]}),
            5 => {
                json!({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1 + rng.below(9)}, {"type": "null"}]})
            }
            6 => {
                let n = 1 + rng.below(8);
                let ids: Vec<Value> = if rng.below(2) == 0 {
                    let mut v: Vec<u64> = (0..n).map(|i| i * (1 + rng.below(30))).collect();
                    v.sort();
                    v.dedup();
                    v.into_iter().map(Value::from).collect()
                } else {
                    (0..n)
                        .map(|i| Value::from(format!("i{}", i * 11)))
                        .collect()
                };
                json!({"type": "array", "x-permutation": ids})
            }
            7 => {
                let min = rng.below(3);
                json!({"type": "array", "items": random_schema(rng, depth + 1), "minItems": min, "maxItems": min + rng.below(3)})
            }
            _ => {
                let keys = ["ranking", "score", "a b", "é"];
                let n = 1 + rng.below(3) as usize;
                let mut props = serde_json::Map::new();
                for k in &keys[..n] {
                    props.insert(k.to_string(), random_schema(rng, depth + 1));
                }
                json!({"type": "object", "properties": props, "required": keys[..n]})
            }
        }
    }

    #[test]
    fn random_walks_over_random_schemas_always_give_valid_answers() {
        let mut rng = Rng::new(5, 1);
        let mut checked = 0;
        for round in 0..60 {
            let v = random_vocab(&mut rng);
            for _ in 0..8 {
                let top = random_schema(&mut rng, 0);
                let schema = if round % 3 == 0 {
                    json!({"type": "object", "properties": {"x": top}, "required": ["x"]})
                } else {
                    top
                };
                let g = grammar(
                    json!({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}),
                );
                for extra in [0usize, 1, 7, 40] {
                    let text = walk(&g, &v, g.min_tokens() + extra, &mut rng);
                    let s = std::str::from_utf8(&text).expect("valid UTF-8");
                    let parsed: Value = serde_json::from_str(s)
                        .unwrap_or_else(|e| panic!("{s:?} does not parse: {e}"));
                    assert!(
                        valid(&schema, &parsed),
                        "{s} does not validate against {schema}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 60 * 8 * 4);
    }

    #[test]
    fn random_walks_over_the_recforge_forms_and_json_objects() {
        let mut rng = Rng::new(6, 1);
        for _ in 0..150 {
            let v = random_vocab(&mut rng);
            let n = 1 + rng.below(12) as usize;
            let ids: Vec<u64> = (0..n as u64)
                .map(|i| i * i + rng.below(3) * 1000)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let g = grammar(json!({"type": "permutation", "ids": ids}));
            let text = walk(&g, &v, g.min_tokens() + rng.below(20) as usize, &mut rng);
            let mut got: Vec<u64> = serde_json::from_slice(&text).unwrap();
            got.sort();
            assert_eq!(got, ids);
            let choices = ["yes", "no", "not sure", "n"];
            let g = grammar(json!({"type": "choice", "choices": choices}));
            let text = walk(&g, &v, g.min_tokens() + rng.below(5) as usize, &mut rng);
            assert!(choices.contains(&std::str::from_utf8(&text).unwrap()));
            let g = grammar(json!({"type": "number", "minimum": 0, "maximum": 1}));
            let text = walk(&g, &v, g.min_tokens() + rng.below(10) as usize, &mut rng);
            let x: f64 = serde_json::from_slice(&text).unwrap();
            assert!((0.0..=1.0).contains(&x), "{x}");
            let g = grammar(json!({"type": "json_object"}));
            let text = walk(&g, &v, g.min_tokens() + rng.below(60) as usize, &mut rng);
            let o: Value = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&text)));
            assert!(o.is_object());
        }
    }

    #[test]
    fn allowed_is_fast_on_a_realistic_vocabulary() {
        // 49,152 tokens with GPT-2-like lengths over English letters, spaces and punctuation.
        let mut rng = Rng::new(7, 1);
        let alphabet = b"etaoinshrdlucmfwypvbgkjqxz ETAOINSHRDLU.,'\"-:;0123456789()[]{}";
        let mut toks: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        while toks.len() < 49_152 {
            let len = 2 + rng.below(7) as usize;
            toks.push(Some(
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                    .collect(),
            ));
        }
        toks.push(None);
        let v = Vocab::new(toks, vec![49_152]).unwrap();
        let schema = json!({"type": "object", "properties": {"summary": {"type": "string", "maxLength": 2000}}, "required": ["summary"]});
        let g = grammar(json!({"type": "json_schema", "json_schema": {"schema": schema}}));
        let t0 = std::time::Instant::now();
        let text = walk(&g, &v, 300, &mut rng);
        let per_call = t0.elapsed().as_secs_f64() * 1e3 / (text.len().max(1) as f64);
        println!(
            "{} bytes generated; about {per_call:.2} ms per token (allowed + advance)",
            text.len()
        );
        let parsed: Value = serde_json::from_slice(&text).unwrap();
        assert!(parsed["summary"].is_string());
    }
}
