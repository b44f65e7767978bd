//! Reading the fields of a Hugging Face `config.json`, with errors that name the field.

use serde_json::Value;

use crate::error::{RecforgeError, Result};

/// A `config.json` object with typed getters. Missing optional fields take the `transformers`
/// default passed by the caller; a present field of the wrong type is an error.
#[derive(Debug, Clone)]
pub struct HfConfig {
    /// The JSON object.
    pub json: Value,
}

impl HfConfig {
    /// Wraps a parsed `config.json`; it must be a JSON object.
    pub fn new(json: Value) -> Result<Self> {
        if !json.is_object() {
            return Err(RecforgeError::config("config.json must hold a JSON object"));
        }
        Ok(Self { json })
    }

    /// `model_type`, required.
    pub fn model_type(&self) -> Result<String> {
        self.str_req("model_type")
    }

    fn field(&self, name: &str) -> Option<&Value> {
        self.json.get(name).filter(|v| !v.is_null())
    }

    fn bad(&self, name: &str, want: &str) -> RecforgeError {
        RecforgeError::config(format!(
            "config.json field {name:?} must be {want}, got {}",
            self.json[name]
        ))
    }

    /// A required positive integer.
    pub fn int_req(&self, name: &str) -> Result<i64> {
        let v = self
            .field(name)
            .ok_or_else(|| RecforgeError::config(format!("config.json has no {name:?}")))?;
        let n = v.as_i64().ok_or_else(|| self.bad(name, "an integer"))?;
        if n <= 0 {
            return Err(self.bad(name, "positive"));
        }
        Ok(n)
    }

    /// An optional integer.
    pub fn int_opt(&self, name: &str) -> Result<Option<i64>> {
        self.field(name)
            .map(|v| v.as_i64().ok_or_else(|| self.bad(name, "an integer")))
            .transpose()
    }

    /// An integer with a default.
    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }

    /// A number with a default.
    pub fn float(&self, name: &str, default: f64) -> Result<f64> {
        self.field(name)
            .map(|v| v.as_f64().ok_or_else(|| self.bad(name, "a number")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    }

    /// A boolean with a default.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool> {
        self.field(name)
            .map(|v| v.as_bool().ok_or_else(|| self.bad(name, "true or false")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    }

    /// A string with a default.
    pub fn str(&self, name: &str, default: &str) -> Result<String> {
        self.field(name)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.bad(name, "a string"))
            })
            .transpose()
            .map(|v| v.unwrap_or_else(|| default.to_string()))
    }

    /// A required string.
    pub fn str_req(&self, name: &str) -> Result<String> {
        self.field(name)
            .ok_or_else(|| RecforgeError::config(format!("config.json has no {name:?}")))?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.bad(name, "a string"))
    }

    /// An id field that may be an integer or a list of integers (`eos_token_id`).
    pub fn ids(&self, name: &str) -> Result<Vec<i64>> {
        match self.field(name) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| self.bad(name, "an integer or a list of them"))
                })
                .collect(),
            Some(v) => Ok(vec![v
                .as_i64()
                .ok_or_else(|| self.bad(name, "an integer"))?]),
        }
    }

    /// Fails when `name` is present with a value other than `allowed`: a feature recforge does
    /// not implement must not be silently ignored.
    pub fn require(&self, name: &str, allowed: &[Value]) -> Result<()> {
        match self.field(name) {
            Some(v) if !allowed.contains(v) => Err(RecforgeError::config(format!(
                "config.json {name} = {v} is not supported by recforge (supported: {})",
                allowed
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Ok(()),
        }
    }
}
