//! `recforge.text.ChatTemplate`'s native class: a model's chat template rendered in Rust.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;

use crate::text::chat_template::ChatTemplate;

/// A compiled Jinja chat template, rendering as transformers' `apply_chat_template`.
#[pyclass(module = "recforge._native", name = "_ChatTemplate", frozen)]
pub struct PyChatTemplate {
    inner: ChatTemplate,
}

#[pymethods]
impl PyChatTemplate {
    /// Compiles `source` with the special tokens `{name: text}` (`bos_token`, `eos_token`, ...).
    #[new]
    #[pyo3(signature = (source, special_tokens=None))]
    fn new(source: &str, special_tokens: Option<HashMap<String, String>>) -> PyResult<Self> {
        let mut tokens: Vec<(String, String)> =
            special_tokens.unwrap_or_default().into_iter().collect();
        tokens.sort();
        Ok(Self {
            inner: ChatTemplate::new(source, tokens)?,
        })
    }

    /// The chat template of a checkpoint folder (`chat_template.jinja` or
    /// `tokenizer_config.json`), or None when it has none.
    #[staticmethod]
    fn from_tokenizer_config(path: PathBuf) -> PyResult<Option<Self>> {
        Ok(ChatTemplate::from_tokenizer_config(&path)?.map(|inner| Self { inner }))
    }

    /// Renders `(role, content)` messages; `context_json` is a JSON object of extra template
    /// variables (`tools`, `date_string`, ...) or None.
    #[pyo3(signature = (messages, add_generation_prompt, context_json=None))]
    fn render(
        &self,
        messages: Vec<(String, String)>,
        add_generation_prompt: bool,
        context_json: Option<&str>,
    ) -> PyResult<String> {
        match context_json {
            None => Ok(self.inner.render(&messages, add_generation_prompt)?),
            // Through the JSON path, which keeps the key order of nested context objects.
            Some(ctx) => {
                let items: Vec<String> = messages
                    .iter()
                    .map(|(role, content)| {
                        format!(
                            "{{\"role\": {}, \"content\": {}}}",
                            serde_json::Value::from(role.as_str()),
                            serde_json::Value::from(content.as_str())
                        )
                    })
                    .collect();
                let messages_json = format!("[{}]", items.join(", "));
                Ok(self
                    .inner
                    .render_json(&messages_json, add_generation_prompt, Some(ctx))?)
            }
        }
    }

    /// Renders messages given as a JSON array of message objects (any fields, key order kept).
    #[pyo3(signature = (messages_json, add_generation_prompt, context_json=None))]
    fn render_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        context_json: Option<&str>,
    ) -> PyResult<String> {
        Ok(self
            .inner
            .render_json(messages_json, add_generation_prompt, context_json)?)
    }

    /// The template text.
    #[getter]
    fn source(&self) -> &str {
        self.inner.source()
    }

    /// The special tokens `{name: text}` the template sees.
    #[getter]
    fn special_tokens(&self) -> HashMap<String, String> {
        self.inner.special_tokens().iter().cloned().collect()
    }
}
