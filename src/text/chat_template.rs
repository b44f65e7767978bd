//! Chat templates: a model's own Jinja template rendered in Rust.
//!
//! [`ChatTemplate`] renders a conversation to the prompt text that Hugging Face transformers'
//! `tokenizer.apply_chat_template(..., tokenize=False)` produces, with the same Jinja environment
//! (`transformers/utils/chat_template_utils.py`):
//!
//! - `trim_blocks` and `lstrip_blocks` on, one trailing newline of the template dropped, no
//!   auto-escaping, Jinja2's lenient undefined values;
//! - the globals `raise_exception(msg)` (a [`RecforgeError::Data`] carrying the message),
//!   `strftime_now(fmt)` (the current time, in UTC), `namespace(...)`, `dict(...)`; loop controls;
//! - the `tojson` filter as transformers overrides it: Python's `json.dumps(x, ensure_ascii=False,
//!   indent=None, separators=None, sort_keys=False)`, keyword arguments included;
//! - Python's string and dict methods (`.strip()`, `.split()`, `.startswith()`, `.items()`, ...),
//!   with Python's whitespace, and Python's float and container reprs when a value is printed;
//! - the context transformers passes: `messages`, `tools` and `documents` (none unless given),
//!   `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, ...) and any extra
//!   values (`date_string`, `enable_thinking`, ...);
//! - `{% generation %}` blocks (transformers' assistant-mask extension) render their body.
//!
//! The template comes from a string ([`ChatTemplate::new`]) or from a checkpoint folder
//! ([`ChatTemplate::from_tokenizer_config`]): `chat_template.jinja` (what transformers 5 saves) or
//! the `chat_template` entry of `tokenizer_config.json`, with the special tokens of that file.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::path::Path;

use minijinja::value::{from_args, Kwargs, Serde, StringInput, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State};

use crate::error::{RecforgeError, Result};

/// The name the compiled template has inside its environment (it appears in no output).
const TEMPLATE_NAME: &str = "chat_template";

/// The named special tokens transformers passes to every chat template (its `special_tokens_map`),
/// in its order.
pub const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Context names that `render` sets itself and extra values may not replace.
const RESERVED_NAMES: [&str; 2] = ["messages", "add_generation_prompt"];

/// A compiled chat template with the special-token strings it sees.
///
/// Compile once, render many times; `Send + Sync`, so one instance can serve many threads.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    special_tokens: Vec<(String, String)>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_chars", &self.source.chars().count())
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` (Jinja) with the given special tokens, `(name, text)` pairs such as
    /// `("bos_token", "<s>")` (a later pair of the same name wins).
    ///
    /// A template that does not compile is a [`RecforgeError::Config`] naming the line; a special
    /// token named `messages` or `add_generation_prompt`, or with an empty name, is one too.
    pub fn new(source: &str, special_tokens: Vec<(String, String)>) -> Result<Self> {
        let mut tokens: Vec<(String, String)> = Vec::with_capacity(special_tokens.len());
        for (name, text) in special_tokens {
            if name.is_empty() || RESERVED_NAMES.contains(&name.as_str()) {
                return Err(RecforgeError::config(format!(
                    "a special token cannot be named {name:?}"
                )));
            }
            match tokens.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = text,
                None => tokens.push((name, text)),
            }
        }
        let mut env = environment()?;
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source).into_owned())
            .map_err(|e| RecforgeError::config(describe("chat template does not compile", &e)))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            special_tokens: tokens,
        })
    }

    /// The chat template of a Hugging Face checkpoint folder, or `None` when it has none.
    ///
    /// Reads it as transformers does: `chat_template.jinja` when present (what transformers 5
    /// saves), else the `chat_template` entry of `tokenizer_config.json` (a string, or a list of
    /// `{"name", "template"}` objects, of which the one named `default` is used). The special
    /// tokens (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`,
    /// `mask_token`; strings or `{"content": ...}` objects) come from `tokenizer_config.json`,
    /// overridden by a legacy `special_tokens_map.json` when the config has no
    /// `added_tokens_decoder`.
    ///
    /// Errors: `dir` not a folder, an unreadable or malformed file, a list of templates without
    /// `default`, a template that does not compile (the message names the file).
    pub fn from_tokenizer_config(dir: &Path) -> Result<Option<Self>> {
        if !dir.is_dir() {
            return Err(RecforgeError::config(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_object(&config_path)?;
        let jinja_path = dir.join("chat_template.jinja");
        let (source, origin) = if jinja_path.is_file() {
            (Some(read_text(&jinja_path)?), jinja_path)
        } else {
            let source = match &config {
                Some(c) => config_template(c, &config_path)?,
                None => None,
            };
            (source, config_path.clone())
        };
        let Some(source) = source else {
            return Ok(None);
        };

        let mut tokens = match &config {
            Some(c) => special_tokens_of(c, &config_path)?,
            None => Vec::new(),
        };
        let map_path = dir.join("special_tokens_map.json");
        let has_decoder = config
            .as_ref()
            .is_some_and(|c| c.contains_key("added_tokens_decoder"));
        if !has_decoder {
            if let Some(map) = read_json_object(&map_path)? {
                for (name, text) in special_tokens_of(&map, &map_path)? {
                    match tokens.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = text,
                        None => tokens.push((name, text)),
                    }
                }
            }
        }
        match Self::new(&source, tokens) {
            Ok(t) => Ok(Some(t)),
            Err(RecforgeError::Config(m)) => {
                Err(RecforgeError::config(format!("{}: {m}", origin.display())))
            }
            Err(e) => Err(e),
        }
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special tokens the template sees, `(name, text)` in the order given.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// The text of one special token (`"bos_token"`, `"eos_token"`, ...), if set.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    /// Renders `(role, content)` messages, with the assistant prompt at the end when
    /// `add_generation_prompt` is set; equal to transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    ///
    /// Errors ([`RecforgeError::Data`]): no messages; the template calls `raise_exception(msg)`
    /// (the message says `msg`) or fails at run time (the message names the line).
    pub fn render(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_values(tuple_messages(messages), add_generation_prompt, Vec::new())
    }

    /// [`render`](Self::render) with extra template variables: `extra` is a JSON object (or null)
    /// such as `{"date_string": "26 Jul 2024", "tools": [...]}`. `tools` and `documents` replace
    /// the default none, other names add to (or override) the special tokens; `messages` and
    /// `add_generation_prompt` are a [`RecforgeError::Config`].
    ///
    /// `serde_json` objects keep their keys sorted, so a template that prints an object (`tools |
    /// tojson`) lists its keys sorted; [`render_json`](Self::render_json) keeps them in order.
    pub fn render_with(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let extra = match extra {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(Serde(v))))
                .collect(),
            other => {
                return Err(RecforgeError::config(format!(
                    "extra template values must be a JSON object, got {other}"
                )))
            }
        };
        self.render_values(tuple_messages(messages), add_generation_prompt, extra)
    }

    /// Renders messages given as JSON text: an array of message objects with any fields
    /// (`role`, `content` as a string or a list of parts, `tool_calls`, `reasoning_content`, ...),
    /// and optionally extra variables as a JSON object, as in [`render_with`](Self::render_with).
    /// Object keys keep their order, as Python dicts do.
    ///
    /// As transformers does, fields that are null are dropped from each message, and a
    /// message's reasoning (`reasoning_content`, `thinking` or `reasoning`) is also given as
    /// `thinking` and `reasoning_content`.
    ///
    /// Errors: malformed JSON or a message that is not an object ([`RecforgeError::Data`]), plus
    /// those of [`render_with`](Self::render_with).
    pub fn render_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        extra_json: Option<&str>,
    ) -> Result<String> {
        let parsed: Value = serde_json::from_str(messages_json)
            .map_err(|e| RecforgeError::data(format!("messages are not valid JSON: {e}")))?;
        if parsed.kind() != ValueKind::Seq {
            return Err(RecforgeError::data(format!(
                "messages must be a JSON array, got {}",
                parsed.kind()
            )));
        }
        let mut messages = Vec::new();
        for (i, message) in iter_values(&parsed)?.into_iter().enumerate() {
            if message.kind() != ValueKind::Map {
                return Err(RecforgeError::data(format!(
                    "messages[{i}] must be a JSON object, got {}",
                    message.kind()
                )));
            }
            messages.push(normalize_message(&message)?);
        }
        let extra = match extra_json {
            None => Vec::new(),
            Some(text) => {
                let v: Value = serde_json::from_str(text).map_err(|e| {
                    RecforgeError::config(format!("extra template values are not valid JSON: {e}"))
                })?;
                match v.kind() {
                    ValueKind::None => Vec::new(),
                    ValueKind::Map => map_entries(&v)?
                        .into_iter()
                        .map(|(k, v)| match k.as_str() {
                            Some(k) => Ok((k.to_owned(), v)),
                            None => Err(RecforgeError::config(
                                "extra template names must be strings",
                            )),
                        })
                        .collect::<Result<Vec<_>>>()?,
                    kind => {
                        return Err(RecforgeError::config(format!(
                            "extra template values must be a JSON object, got {kind}"
                        )))
                    }
                }
            }
        };
        self.render_values(messages, add_generation_prompt, extra)
    }

    fn render_values(
        &self,
        messages: Vec<Value>,
        add_generation_prompt: bool,
        extra: Vec<(String, Value)>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(RecforgeError::data(
                "cannot apply a chat template to an empty conversation",
            ));
        }
        // transformers: render(messages=..., tools=..., documents=..., add_generation_prompt=...,
        // **{**special_tokens_map, **kwargs}).
        let mut ctx: Vec<(String, Value)> = self
            .special_tokens
            .iter()
            .map(|(n, t)| (n.clone(), Value::from(t.as_str())))
            .collect();
        let mut tools = Value::from(());
        let mut documents = Value::from(());
        for (name, value) in extra {
            match name.as_str() {
                "tools" => tools = value,
                "documents" => documents = value,
                n if RESERVED_NAMES.contains(&n) => {
                    return Err(RecforgeError::config(format!(
                        "{n} cannot be passed as an extra template value"
                    )))
                }
                _ => match ctx.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = value,
                    None => ctx.push((name, value)),
                },
            }
        }
        ctx.push(("messages".into(), Value::from(messages)));
        ctx.push(("tools".into(), tools));
        ctx.push(("documents".into(), documents));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| RecforgeError::config(describe("chat template", &e)))?;
        template
            .render(Value::from_pairs(ctx))
            .map_err(|e| render_error(&e))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading checkpoint folders.

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| RecforgeError::Io {
        context: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|e| RecforgeError::data(format!("{}: not UTF-8: {e}", path.display())))?;
    // Python's text mode (universal newlines), as transformers opens chat_template.jinja.
    Ok(if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text
    })
}

/// A JSON file's top-level object, `None` when the file does not exist.
fn read_json_object(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path)?;
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(RecforgeError::data(format!(
            "{}: expected a JSON object",
            path.display()
        ))),
        Err(e) => Err(RecforgeError::data(format!(
            "{}: invalid JSON: {e}",
            path.display()
        ))),
    }
}

/// The `chat_template` entry of a tokenizer config: a string, or the `default` of a list of
/// named templates.
fn config_template(
    config: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(|n| n.as_str());
                let template = item.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_owned())),
                    (Some(n), Some(_)) => names.push(n.to_owned()),
                    _ => {
                        return Err(RecforgeError::data(format!(
                            "{}: each chat_template entry must be an object with string \"name\" and \"template\"",
                            path.display()
                        )))
                    }
                }
            }
            Err(RecforgeError::config(format!(
                "{}: none of the named chat templates {names:?} is \"default\"",
                path.display()
            )))
        }
        Some(other) => Err(RecforgeError::data(format!(
            "{}: chat_template must be a string or a list of named templates, got {other}",
            path.display()
        ))),
    }
}

/// The named special tokens of a tokenizer config (or special tokens map), in transformers' order.
fn special_tokens_of(
    config: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in SPECIAL_TOKEN_NAMES {
        let text = match config.get(name) {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Object(o)) => match o.get("content") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => {
                    return Err(RecforgeError::data(format!(
                        "{}: {name} has no string \"content\"",
                        path.display()
                    )))
                }
            },
            Some(other) => {
                return Err(RecforgeError::data(format!(
                    "{}: {name} must be a string or an object with \"content\", got {other}",
                    path.display()
                )))
            }
        };
        out.push((name.to_owned(), text));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Messages and errors.

fn tuple_messages(messages: &[(String, String)]) -> Vec<Value> {
    messages
        .iter()
        .map(|(role, content)| {
            Value::from_pairs([
                ("role", Value::from(role.as_str())),
                ("content", Value::from(content.as_str())),
            ])
        })
        .collect()
}

fn iter_values(v: &Value) -> Result<Vec<Value>> {
    Ok(v.try_iter()
        .map_err(|e| RecforgeError::data(e.to_string()))?
        .collect())
}

fn map_entries(v: &Value) -> Result<Vec<(Value, Value)>> {
    iter_values(v)?
        .into_iter()
        .map(|k| {
            let item = v
                .get_item(&k)
                .map_err(|e| RecforgeError::data(e.to_string()))?;
            Ok((k, item))
        })
        .collect()
}

/// transformers' message clean-up: null fields dropped, reasoning aliased to `thinking` and
/// `reasoning_content` (`{"thinking": r, **message, "reasoning_content": r}`).
fn normalize_message(message: &Value) -> Result<Value> {
    let mut pairs: Vec<(Value, Value)> = map_entries(message)?
        .into_iter()
        .filter(|(_, v)| !v.is_none())
        .collect();
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|key| {
            pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(*key))
                .map(|(_, v)| v.clone())
        });
    if let Some(r) = reasoning {
        let mut aliased = vec![(Value::from("thinking"), r.clone())];
        for (k, v) in pairs {
            if k.as_str() == Some("thinking") {
                aliased[0].1 = v;
            } else {
                aliased.push((k, v));
            }
        }
        match aliased
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some("reasoning_content"))
        {
            Some(slot) => slot.1 = r,
            None => aliased.push((Value::from("reasoning_content"), r)),
        }
        pairs = aliased;
    }
    Ok(Value::from_pairs(pairs))
}

/// The message `raise_exception(msg)` carries, found again in the render error.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// `what (line N): kind: detail`.
fn describe(what: &str, e: &Error) -> String {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    match e.detail() {
        Some(d) => format!("{what}{line}: {}: {d}", e.kind()),
        None => format!("{what}{line}: {}", e.kind()),
    }
}

fn render_error(e: &Error) -> RecforgeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<RaisedException>() {
            return RecforgeError::data(format!(
                "the chat template raised an exception: {}",
                raised.0
            ));
        }
        source = s.source();
    }
    RecforgeError::data(describe("chat template failed to render", e))
}

/// `{% generation %}`/`{% endgeneration %}` (transformers' assistant-mask extension, a block that
/// renders its body) become `{% if true %}`/`{% endif %}`, keeping whitespace control.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = source[i..].find("{%") {
        let start = i + off;
        let mut j = start + 2;
        if j < bytes.len() && matches!(bytes[j], b'-' | b'+') {
            j += 1;
        }
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let word_start = j;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        let replacement = match &source[word_start..j] {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        if let Some(rep) = replacement {
            let mut k = j;
            while k < bytes.len() && bytes[k].is_ascii_whitespace() {
                k += 1;
            }
            if k < bytes.len() && matches!(bytes[k], b'-' | b'+') {
                k += 1;
            }
            if source[k..].starts_with("%}") {
                out.push_str(&source[copied..word_start]);
                out.push_str(rep);
                copied = j;
            }
        }
        i = start + 2;
    }
    out.push_str(&source[copied..]);
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// The Jinja environment.

fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    // Jinja2's defaults apart from these two: keep_trailing_newline=False, lenient undefined.
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| RecforgeError::config(describe("Jinja syntax", &e)))?;
    env.set_syntax(syntax);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(python_formatter);
    env.set_unknown_method_callback(python_methods);
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim);
    env.add_test("sequence", is_sequence);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    Ok(env)
}

/// Prints values as Python's `str()`: floats as `1e+20`, `1e-05`; lists, tuples and dicts as their
/// Python reprs; everything else as MiniJinja does (strings as they are, `None`, `True`).
fn python_formatter(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> std::result::Result<(), Error> {
    match value.kind() {
        ValueKind::Number if !value.is_integer() => {
            if let Ok(f) = f64::try_from(value.clone()) {
                return out.write_str(&py_float_str(f)).map_err(Error::from);
            }
        }
        ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_repr(&mut s, value, 0)?;
            return out.write_str(&s).map_err(Error::from);
        }
        _ => {}
    }
    minijinja::escape_formatter(out, state, value)
}

/// Python's `repr()` of a template value (what a list or dict shows of its items).
fn py_repr(out: &mut String, v: &Value, depth: usize) -> std::result::Result<(), Error> {
    if depth > 512 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "value nested too deeply to print",
        ));
    }
    match v.kind() {
        ValueKind::String => py_str_repr(out, v.as_str().unwrap_or_default()),
        ValueKind::Number if !v.is_integer() => {
            out.push_str(&py_float_str(f64::try_from(v.clone())?))
        }
        ValueKind::Seq => {
            let items: Vec<Value> = v.try_iter()?.collect();
            let tuple = v.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, item, depth + 1)?;
            }
            if tuple && items.len() == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(out, &k, depth + 1)?;
                out.push_str(": ");
                py_repr(out, &v.get_item(&k)?, depth + 1)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v:?}");
        }
    }
    Ok(())
}

/// Characters Python's `str.isprintable()` rejects, as far as known without Unicode tables:
/// controls, separators other than the space, format characters and private use.
fn is_py_unprintable(c: char) -> bool {
    let u = c as u32;
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            u,
            0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890 | 0x891 | 0x8e2 | 0x180e
                | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff
                | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
                | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f | 0xe000..=0xf8ff
                | 0xf0000..=0xffffd | 0x100000..=0x10fffd
        )
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn py_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_py_unprintable(c) => {
                let u = c as u32;
                let _ = if u <= 0xff {
                    write!(out, "\\x{u:02x}")
                } else if u <= 0xffff {
                    write!(out, "\\u{u:04x}")
                } else {
                    write!(out, "\\U{u:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn raise_exception(message: Value) -> std::result::Result<Value, Error> {
    let msg = message.to_string();
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
}

fn strftime_now(format: &str) -> std::result::Result<String, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(strftime(format, now.as_secs() as i64))
}

/// Jinja2's `trim`: Python's `str.strip(chars)`.
fn trim(value: StringInput<'_>, chars: Option<Cow<'_, str>>) -> Value {
    let output = match chars {
        Some(chars) => {
            let chars: Vec<char> = chars.chars().collect();
            value.as_str().trim_matches(&chars[..]).to_owned()
        }
        None => value.as_str().trim_matches(is_py_space).to_owned(),
    };
    value.preserve_safety(output)
}

/// Jinja2's `sequence` test: anything with a length and items (strings and dicts too).
fn is_sequence(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map => true,
        ValueKind::Iterable => v.len().is_some(),
        _ => false,
    }
}

/// Python's `str.isspace()` characters: Unicode whitespace plus the separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's line boundaries (`str.splitlines`), `\r\n` handled by the caller.
fn is_py_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{0b}'
            | '\u{0c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python string methods whose whitespace rules differ from Rust's, then MiniJinja's `pycompat`.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let plain = !args.iter().any(Value::is_kwargs);
        let no_chars = args.is_empty() || (args.len() == 1 && args[0].is_none());
        match method {
            "strip" if plain && no_chars => return Ok(Value::from(s.trim_matches(is_py_space))),
            "lstrip" if plain && no_chars => {
                return Ok(Value::from(s.trim_start_matches(is_py_space)))
            }
            "rstrip" if plain && no_chars => {
                return Ok(Value::from(s.trim_end_matches(is_py_space)))
            }
            "isspace" => {
                let () = from_args(args)?;
                return Ok(Value::from(!s.is_empty() && s.chars().all(is_py_space)));
            }
            "split" if plain && (args.is_empty() || args[0].is_none()) => {
                let (_, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
                return Ok(Value::from(py_split_whitespace(s, maxsplit.unwrap_or(-1))));
            }
            "splitlines" => {
                let (keepends,): (Option<bool>,) = from_args(args)?;
                return Ok(Value::from(py_splitlines(s, keepends.unwrap_or(false))));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Python's `str.split(None, maxsplit)`.
fn py_split_whitespace(s: &str, maxsplit: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches(is_py_space);
    while !rest.is_empty() {
        if maxsplit >= 0 && out.len() as i64 >= maxsplit {
            out.push(rest.to_owned());
            break;
        }
        match rest.find(is_py_space) {
            Some(i) => {
                out.push(rest[..i].to_owned());
                rest = rest[i..].trim_start_matches(is_py_space);
            }
            None => {
                out.push(rest.to_owned());
                break;
            }
        }
    }
    out
}

/// Python's `str.splitlines(keepends)`.
fn py_splitlines(s: &str, keepends: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(is_py_line_break) {
        let brk = if rest[i..].starts_with("\r\n") {
            2
        } else {
            rest[i..].chars().next().map_or(1, char::len_utf8)
        };
        let end = if keepends { i + brk } else { i };
        out.push(rest[..end].to_owned());
        rest = &rest[i + brk..];
    }
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Python's float repr and json.dumps.

/// Python's `repr(float)` (= `str(float)`): shortest round-trip digits, exponent notation below
/// 1e-4 and from 1e16 on.
pub fn py_float_str(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1; // value = 0.DIGITS * 10^decpt
    let n = digits.len() as i32;
    let body = if decpt > 16 || decpt <= -4 {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let e = decpt - 1;
        format!(
            "{first}{frac}e{}{:02}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        )
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (a, b) = digits.split_at(decpt as usize);
        format!("{a}.{b}")
    };
    format!("{sign}{body}")
}

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let ensure_ascii = kwargs
        .get::<Option<Value>>("ensure_ascii")?
        .is_some_and(|v| v.is_true());
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) => match v.kind() {
            ValueKind::None | ValueKind::Undefined => None,
            ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
            ValueKind::Bool => Some(if v.is_true() { " " } else { "" }.to_owned()),
            ValueKind::Number if v.is_integer() => {
                let n = i64::try_from(v).unwrap_or(0);
                Some(" ".repeat(n.clamp(0, 1 << 16) as usize))
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent must be an integer or a string, not {kind}"),
                ))
            }
        },
    };
    let (mut item_sep, mut key_sep) = if indent.is_some() {
        (",".to_owned(), ": ".to_owned())
    } else {
        (", ".to_owned(), ": ".to_owned())
    };
    if let Some(seps) = kwargs.get::<Option<Value>>("separators")? {
        if !seps.is_none() {
            let parts: Vec<Value> = seps.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    item_sep = a.as_str().unwrap_or_default().to_owned();
                    key_sep = b.as_str().unwrap_or_default().to_owned();
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
    }
    let sort_keys = kwargs
        .get::<Option<Value>>("sort_keys")?
        .is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let opts = JsonOptions {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

fn not_serializable(kind: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: object of type {kind} is not JSON serializable"),
    )
}

fn json_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        py_float_str(f)
    }
}

fn json_key(k: &Value) -> std::result::Result<String, Error> {
    match k.kind() {
        ValueKind::String => Ok(k.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number if k.is_integer() => Ok(k.to_string()),
        ValueKind::Number => Ok(json_float(f64::try_from(k.clone())?)),
        ValueKind::Bool => Ok(if k.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Ok("null".into()),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline_indent(out: &mut String, opts: &JsonOptions, level: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn write_json(
    out: &mut String,
    v: &Value,
    opts: &JsonOptions,
    level: usize,
) -> std::result::Result<(), Error> {
    if level > 512 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => {
            let _ = write!(out, "{v}");
        }
        ValueKind::Number => out.push_str(&json_float(f64::try_from(v.clone())?)),
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_json(out, item, opts, level + 1)?;
            }
            newline_indent(out, opts, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for k in v.try_iter()? {
                let item = v.get_item(&k)?;
                entries.push((json_key(&k)?, item));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_json_str(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, item, opts, level + 1)?;
            }
            newline_indent(out, opts, level);
            out.push('}');
        }
        kind => return Err(not_serializable(kind)),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// strftime (C locale, UTC).

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A UTC time broken down like C's `struct tm`.
struct Tm {
    year: i64,
    month: u32, // 1..=12
    day: u32,   // 1..=31
    hour: u32,
    minute: u32,
    second: u32,
    wday: u32, // 0 = Sunday
    yday: u32, // 0-based
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn gmtime(secs: i64) -> Tm {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day - 1 + u32::from(month > 2 && is_leap(year));
    Tm {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
        wday: (days + 4).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
        yday,
    }
}

/// C's `strftime` in the C locale for the time `secs` after the Unix epoch, in UTC: `%a %A %b %B
/// %c %C %d %D %e %F %H %I %j %m %M %n %p %r %R %s %S %t %T %u %U %w %W %x %X %y %Y %z %Z %%`,
/// with glibc's `-` flag (no padding, `%-d`). Unknown conversions are copied as they are.
pub fn strftime(format: &str, secs: i64) -> String {
    let tm = gmtime(secs);
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(conv) = chars.next() else {
            out.push('%');
            if no_pad {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, v: i64, width: usize, pad: char| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else if pad == '0' {
                let _ = write!(out, "{v:0width$}");
            } else {
                let _ = write!(out, "{v:>width$}");
            }
        };
        let hour12 = match tm.hour % 12 {
            0 => 12,
            h => h,
        };
        match conv {
            'a' => out.push_str(&WEEKDAYS[tm.wday as usize][..3]),
            'A' => out.push_str(WEEKDAYS[tm.wday as usize]),
            'b' | 'h' => out.push_str(&MONTHS[(tm.month - 1) as usize][..3]),
            'B' => out.push_str(MONTHS[(tm.month - 1) as usize]),
            'c' => out.push_str(&strftime("%a %b %e %H:%M:%S %Y", secs)),
            'C' => num(&mut out, tm.year.div_euclid(100), 2, '0'),
            'd' => num(&mut out, tm.day.into(), 2, '0'),
            'D' | 'x' => out.push_str(&strftime("%m/%d/%y", secs)),
            'e' => num(&mut out, tm.day.into(), 2, ' '),
            'F' => out.push_str(&strftime("%Y-%m-%d", secs)),
            'H' => num(&mut out, tm.hour.into(), 2, '0'),
            'I' => num(&mut out, hour12.into(), 2, '0'),
            'j' => num(&mut out, (tm.yday + 1).into(), 3, '0'),
            'm' => num(&mut out, tm.month.into(), 2, '0'),
            'M' => num(&mut out, tm.minute.into(), 2, '0'),
            'n' => out.push('\n'),
            'p' => out.push_str(if tm.hour < 12 { "AM" } else { "PM" }),
            'r' => out.push_str(&strftime("%I:%M:%S %p", secs)),
            'R' => out.push_str(&strftime("%H:%M", secs)),
            's' => {
                let _ = write!(out, "{secs}");
            }
            'S' => num(&mut out, tm.second.into(), 2, '0'),
            't' => out.push('\t'),
            'T' | 'X' => out.push_str(&strftime("%H:%M:%S", secs)),
            'u' => num(
                &mut out,
                if tm.wday == 0 { 7 } else { tm.wday.into() },
                1,
                '0',
            ),
            'U' => num(&mut out, ((tm.yday + 7 - tm.wday) / 7).into(), 2, '0'),
            'w' => num(&mut out, tm.wday.into(), 1, '0'),
            'W' => num(
                &mut out,
                ((tm.yday + 7 - (tm.wday + 6) % 7) / 7).into(),
                2,
                '0',
            ),
            'y' => num(&mut out, tm.year.rem_euclid(100), 2, '0'),
            'Y' => {
                let _ = write!(out, "{}", tm.year);
            }
            'z' => out.push_str("+0000"),
            'Z' => out.push_str("UTC"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    fn tokens(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        msgs(pairs)
    }

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_by_hand() {
        let t = ChatTemplate::new(CHATML, vec![]).unwrap();
        let m = msgs(&[("system", "Be brief."), ("user", "Hi")]);
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn special_tokens_and_trim() {
        let src = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}{{ eos_token }}{% endfor %}";
        let t =
            ChatTemplate::new(src, tokens(&[("bos_token", "<s>"), ("eos_token", "</s>")])).unwrap();
        assert_eq!(t.special_token("eos_token"), Some("</s>"));
        assert_eq!(
            t.render(&msgs(&[("user", "  hé \n"), ("assistant", "")]), false)
                .unwrap(),
            "<s>[user]hé</s>[assistant]</s>"
        );
    }

    #[test]
    fn whitespace_control_like_transformers() {
        // trim_blocks + lstrip_blocks, and the template's one trailing newline dropped.
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        assert_eq!(
            t.render(
                &msgs(&[("user", "a"), ("assistant", "b"), ("user", "c")]),
                false
            )
            .unwrap(),
            "U:a\nU:c\n"
        );
    }

    #[test]
    fn loop_controls_namespace_and_python_methods() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().split(',')[-1] }}{% if m.content.startswith(' x') %}!{% endif %}{% endfor %}|{{ ns.n }}";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        assert_eq!(
            t.render(
                &msgs(&[("user", " x,y "), ("user", "skip"), ("user", "\u{1c}a,b")]),
                false
            )
            .unwrap(),
            "y!b|2"
        );
    }

    #[test]
    fn tojson_like_python_json_dumps() {
        let src = "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ 'é\"\\n' | tojson }}|{{ 'é' | tojson(ensure_ascii=true) }}|{{ {'b': 1, 'a': 2.5} | tojson(sort_keys=true, separators=(',', ':')) }}";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        let out = t
            .render_json(
                r#"[{"role": "user", "content": "x"}]"#,
                false,
                Some(r#"{"tools": [{"name": "f", "args": [1, 1e-5, 1e16, null, true, {}], "z": []}]}"#),
            )
            .unwrap();
        assert_eq!(
            out,
            "[{\"name\": \"f\", \"args\": [1, 1e-05, 1e+16, null, true, {}], \"z\": []}]|{\n  \"name\": \"f\",\n  \"args\": [\n    1,\n    1e-05,\n    1e+16,\n    null,\n    true,\n    {}\n  ],\n  \"z\": []\n}|\"é\\\"\\n\"|\"\\u00e9\"|{\"a\":2.5,\"b\":1}"
        );
    }

    #[test]
    fn context_defaults_and_extras() {
        let src = "{{ tools is none }} {{ documents is none }} {{ date_string | default('none') }} {{ bos_token }}";
        let t = ChatTemplate::new(src, tokens(&[("bos_token", "<s>")])).unwrap();
        let m = msgs(&[("user", "x")]);
        assert_eq!(t.render(&m, false).unwrap(), "True True none <s>");
        let extra =
            serde_json::json!({"date_string": "26 Jul 2024", "bos_token": "B", "tools": []});
        assert_eq!(
            t.render_with(&m, false, &extra).unwrap(),
            "False True 26 Jul 2024 B"
        );
        let bad = serde_json::json!({"messages": []});
        assert!(matches!(
            t.render_with(&m, false, &bad),
            Err(RecforgeError::Config(_))
        ));
        assert!(matches!(
            t.render_with(&m, false, &serde_json::json!([1])),
            Err(RecforgeError::Config(_))
        ));
    }

    #[test]
    fn render_json_normalizes_messages() {
        let src = "{% for m in messages %}{{ m | tojson }};{% endfor %}";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        let out = t
            .render_json(
                r#"[{"role": "assistant", "content": "a", "tool_calls": null, "reasoning": "r"}, {"role": "user", "content": null}]"#,
                false,
                None,
            )
            .unwrap();
        assert_eq!(
            out,
            r#"{"thinking": "r", "role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "r"};{"role": "user"};"#
        );
        assert!(matches!(
            t.render_json("[1]", false, None),
            Err(RecforgeError::Data(_))
        ));
        assert!(matches!(
            t.render_json("{", false, None),
            Err(RecforgeError::Data(_))
        ));
    }

    #[test]
    fn bad_template_is_a_config_error_naming_the_line() {
        let err = ChatTemplate::new(
            "line one\n{% for m in messages %}\n{{ m.content }}\n",
            vec![],
        )
        .unwrap_err();
        match err {
            RecforgeError::Config(m) => {
                assert!(m.contains("does not compile"), "{m}");
                assert!(m.contains("line "), "{m}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        let err = ChatTemplate::new("{{ a + }}", vec![]).unwrap_err();
        assert!(
            matches!(err, RecforgeError::Config(ref m) if m.contains("(line 1)")),
            "{err}"
        );
    }

    #[test]
    fn raise_exception_carries_the_message() {
        let src = "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "a"), ("assistant", "b")]), false)
                .unwrap(),
            "ab"
        );
        let err = t.render(&msgs(&[("assistant", "a")]), false).unwrap_err();
        match err {
            RecforgeError::Data(m) => assert_eq!(
                m,
                "the chat template raised an exception: Conversation roles must alternate user/assistant/user/assistant/..."
            ),
            other => panic!("expected a data error, got {other:?}"),
        }
    }

    #[test]
    fn undefined_values_behave_like_jinja2() {
        // Printing, testing and iterating an undefined value is fine; using it is an error.
        let t = ChatTemplate::new(
            "[{{ nothing }}]{{ nothing is defined }}{% for x in nothing %}x{% endfor %}{{ messages[0].missing }}{{ nothing | length }}",
            vec![],
        )
        .unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "x")]), false).unwrap(),
            "[]False0"
        );
        let t = ChatTemplate::new("{{ nothing.attr }}", vec![]).unwrap();
        let err = t.render(&msgs(&[("user", "x")]), false).unwrap_err();
        assert!(
            matches!(err, RecforgeError::Data(ref m) if m.contains("line 1")),
            "{err}"
        );
        let t = ChatTemplate::new("{{ 'a' + nothing }}", vec![]).unwrap();
        assert!(t.render(&msgs(&[("user", "x")]), false).is_err());
    }

    #[test]
    fn empty_conversation_and_reserved_token_names() {
        let t = ChatTemplate::new(CHATML, vec![]).unwrap();
        assert!(matches!(t.render(&[], true), Err(RecforgeError::Data(_))));
        assert!(matches!(
            ChatTemplate::new(CHATML, tokens(&[("messages", "x")])),
            Err(RecforgeError::Config(_))
        ));
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}\n{%- generation -%}\n<{{ m.content }}>\n{%- endgeneration %}\n{% else %}({{ m.content }}){% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, vec![]).unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "q"), ("assistant", "a")]), false)
                .unwrap(),
            "(q)<a>"
        );
    }

    #[test]
    fn python_reprs_when_printing() {
        let t = ChatTemplate::new(
            "{{ [1, 'a', none, true] }} {{ 1e20 }} {{ 0.5 }} {{ 1e-7 }} {{ 3.0 }} {{ (1, 2) }}",
            vec![],
        )
        .unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "x")]), false).unwrap(),
            "[1, 'a', None, True] 1e+20 0.5 1e-07 3.0 (1, 2)"
        );
    }

    #[test]
    fn python_str_repr() {
        let mut out = String::new();
        for s in [
            "it's",
            "say \"hi\"",
            "both ' \"",
            "a\nb\\\u{7f}\u{a0}\u{2028}é😀\u{e000}",
        ] {
            py_str_repr(&mut out, s);
            out.push('|');
        }
        assert_eq!(
            out,
            "\"it's\"|'say \"hi\"'|'both \\' \"'|'a\\nb\\\\\\x7f\\xa0\\u2028é😀\\ue000'|"
        );
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.123, "123456789.123"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e300, "1.5e+300"),
            (-2.5e-10, "-2.5e-10"),
            (0.30000000000000004, "0.30000000000000004"),
        ] {
            assert_eq!(py_float_str(f), s);
        }
    }

    #[test]
    fn python_whitespace_methods() {
        assert_eq!(py_split_whitespace(" a\u{1c} b  c ", 1), ["a", "b  c "]);
        assert_eq!(py_split_whitespace("  ", -1), Vec::<String>::new());
        assert_eq!(py_split_whitespace("a b", 0), ["a b"]);
        assert_eq!(
            py_splitlines("a\u{85}b\u{2028}c\u{0b}d\u{1c}e\r\nf\rg", false),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        assert_eq!(py_splitlines("a\nb\r\n", true), ["a\n", "b\r\n"]);
    }

    #[test]
    fn strftime_c_locale() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%a %A %B %j %U %W %H:%M:%S %I %p %e %-d %y %F %% %Q", t),
            "Fri Friday July 208 29 30 13:05:09 01 PM 26 26 24 2024-07-26 % %Q"
        );
        assert_eq!(
            strftime("%c|%x|%X", 0),
            "Thu Jan  1 00:00:00 1970|01/01/70|00:00:00"
        );
        assert_eq!(strftime("%Y-%m-%d %j", 951_782_400), "2000-02-29 060");
        assert_eq!(strftime("%Y-%m-%d", -86_400), "1969-12-31");
    }

    #[test]
    fn strftime_now_is_today() {
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", vec![]).unwrap();
        let year = t.render(&msgs(&[("user", "x")]), false).unwrap();
        let n: i64 = year.parse().unwrap();
        assert!(n >= 2024, "{year}");
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "recforge-chat-template-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn from_tokenizer_config_reads_both_forms() {
        let d = temp_dir("config");
        assert!(ChatTemplate::from_tokenizer_config(&d).unwrap().is_none());
        let cfg = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "pad_token": null,
            "chat_template": [
                {"name": "tool_use", "template": "T"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
            ]
        });
        std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let t = ChatTemplate::from_tokenizer_config(&d).unwrap().unwrap();
        assert_eq!(
            t.special_tokens(),
            &tokens(&[("bos_token", "<s>"), ("eos_token", "</s>")])[..]
        );
        assert_eq!(
            t.render(&msgs(&[("user", "hi")]), false).unwrap(),
            "<s>hi</s>"
        );
        // A legacy special_tokens_map.json overrides the config's tokens.
        std::fs::write(
            d.join("special_tokens_map.json"),
            r#"{"eos_token": {"content": "<e>"}, "unk_token": "<u>"}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_tokenizer_config(&d).unwrap().unwrap();
        assert_eq!(
            t.special_tokens(),
            &tokens(&[
                ("bos_token", "<s>"),
                ("eos_token", "<e>"),
                ("unk_token", "<u>")
            ])[..]
        );
        // chat_template.jinja wins over the config entry; its CRLF newlines read as LF.
        std::fs::write(
            d.join("chat_template.jinja"),
            "J{{ messages | length }}\r\n{% if true %}\r\nx{% endif %}",
        )
        .unwrap();
        let t = ChatTemplate::from_tokenizer_config(&d).unwrap().unwrap();
        assert_eq!(t.render(&msgs(&[("user", "hi")]), false).unwrap(), "J1\nx");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn from_tokenizer_config_errors() {
        let d = temp_dir("errors");
        std::fs::write(d.join("tokenizer_config.json"), "{\"chat_template\": ").unwrap();
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&d),
            Err(RecforgeError::Data(_))
        ));
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(&d),
            Err(RecforgeError::Config(_))
        ));
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"chat_template": "{% if %}"}"#,
        )
        .unwrap();
        match ChatTemplate::from_tokenizer_config(&d) {
            Err(RecforgeError::Config(m)) => assert!(m.contains("tokenizer_config.json"), "{m}"),
            other => panic!("expected a config error, got {other:?}"),
        }
        assert!(ChatTemplate::from_tokenizer_config(&d.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }
}
