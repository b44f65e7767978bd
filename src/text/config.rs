//! Reading the fields of a Hugging Face `config.json`, with errors that name the field.
//!
//! Every value a network is built from is checked here, once, when the config is read: sizes
//! are integers in `1..=MAX_SIZE` (so products of two sizes cannot overflow `i64`), epsilons are
//! finite and not negative, and [`checked_sum`] / [`checked_product`] add up parameter counts
//! without wrapping. A bad value is a [`RecforgeError::Config`] naming the field, never a panic
//! or a NaN later on.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use serde_json::Value;

use crate::error::{RecforgeError, Result};

/// The largest size (vocabulary, width, layer count, ...) a config may give: `i32::MAX`. Real
/// models stay far below it, and the product of two sizes always fits in an `i64`.
pub const MAX_SIZE: i64 = i32::MAX as i64;

/// The sum of parameter counts, or a [`RecforgeError::Config`] saying the sizes overflow.
pub fn checked_sum(parts: &[i64]) -> Result<i64> {
    parts
        .iter()
        .try_fold(0i64, |acc, &p| acc.checked_add(p))
        .ok_or_else(overflow)
}

/// Checks that a configured pad id lies inside the vocabulary.
pub fn check_pad_id(pad_token_id: Option<i64>, vocab_size: i64) -> Result<()> {
    match pad_token_id {
        Some(pad) if !(0..vocab_size).contains(&pad) => Err(RecforgeError::config(format!(
            "config.json pad_token_id {pad} is outside the vocabulary of {vocab_size}"
        ))),
        _ => Ok(()),
    }
}

/// The product of sizes, or a [`RecforgeError::Config`] saying they overflow.
pub fn checked_product(dims: &[i64]) -> Result<i64> {
    dims.iter()
        .try_fold(1i64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)
}

fn overflow() -> RecforgeError {
    RecforgeError::config("config.json sizes describe more parameters than fit in a 64-bit count")
}

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
        let got = self.json.get(name).unwrap_or(&Value::Null);
        RecforgeError::config(format!(
            "config.json field {name:?} must be {want}, got {got}"
        ))
    }

    /// A required size: an integer in `1..=MAX_SIZE`.
    pub fn int_req(&self, name: &str) -> Result<i64> {
        let v = self
            .field(name)
            .ok_or_else(|| RecforgeError::config(format!("config.json has no {name:?}")))?;
        self.check_size(name, v)
    }

    /// An optional size (`1..=MAX_SIZE`) with a default.
    pub fn size(&self, name: &str, default: i64) -> Result<i64> {
        match self.field(name) {
            Some(v) => self.check_size(name, v),
            None => Ok(default),
        }
    }

    /// An optional size (`1..=MAX_SIZE`), `None` when absent.
    pub fn size_opt(&self, name: &str) -> Result<Option<i64>> {
        self.field(name)
            .map(|v| self.check_size(name, v))
            .transpose()
    }

    fn check_size(&self, name: &str, v: &Value) -> Result<i64> {
        v.as_i64()
            .filter(|n| (1..=MAX_SIZE).contains(n))
            .ok_or_else(|| self.bad(name, &format!("an integer between 1 and {MAX_SIZE}")))
    }

    /// A normalisation epsilon with a default: a finite number, not negative (a negative one
    /// makes `sqrt(var + eps)` NaN for small variances).
    pub fn eps(&self, name: &str, default: f64) -> Result<f64> {
        let v = self.float(name, default)?;
        if !(v.is_finite() && v >= 0.0) {
            return Err(self.bad(name, "a finite number >= 0"));
        }
        Ok(v)
    }

    /// A finite number > 0 with a default (a rotary base).
    pub fn positive(&self, name: &str, default: f64) -> Result<f64> {
        let v = self.float(name, default)?;
        if !(v.is_finite() && v > 0.0) {
            return Err(self.bad(name, "a finite number > 0"));
        }
        Ok(v)
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

    /// A dropout probability in `[0, 1)` with a default.
    pub fn prob(&self, name: &str, default: f64) -> Result<f64> {
        let v = self.float(name, default)?;
        if (0.0..1.0).contains(&v) {
            Ok(v)
        } else {
            Err(self.bad(name, "a probability in [0, 1)"))
        }
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_must_be_integers_in_range_and_errors_name_the_field() {
        let c = HfConfig::new(
            json!({"a": 0, "b": -4, "c": 2147483648i64, "d": "16", "e": 1.5,
                                     "ok": 16, "null": null}),
        )
        .unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            let e = c.size(name, 1).unwrap_err();
            assert!(matches!(e, RecforgeError::Config(_)), "{name}");
            assert!(e.to_string().contains(&format!("{name:?}")), "{e}");
            assert!(c.int_req(name).is_err() && c.size_opt(name).is_err());
        }
        assert_eq!(c.size("ok", 1).unwrap(), 16);
        assert_eq!(c.size("missing", 7).unwrap(), 7);
        assert_eq!(c.size("null", 7).unwrap(), 7);
        assert_eq!(c.size_opt("missing").unwrap(), None);
        assert!(c
            .int_req("missing")
            .unwrap_err()
            .to_string()
            .contains("has no"));
        assert_eq!(c.size("ok", 1).unwrap(), c.int_req("ok").unwrap());
        assert!(HfConfig::new(json!([1])).is_err());
    }

    #[test]
    fn epsilons_and_bases_are_finite_and_signed_right() {
        let c = HfConfig::new(json!({"neg": -1e-6, "zero": 0.0, "pos": 1e-5, "s": "x"})).unwrap();
        assert!(c
            .eps("neg", 1e-6)
            .unwrap_err()
            .to_string()
            .contains("\"neg\""));
        assert_eq!(c.eps("zero", 1e-6).unwrap(), 0.0);
        assert_eq!(c.eps("missing", 1e-6).unwrap(), 1e-6);
        assert!(c.eps("s", 1e-6).is_err());
        assert!(c.positive("zero", 1.0).is_err() && c.positive("neg", 1.0).is_err());
        assert_eq!(c.positive("pos", 1.0).unwrap(), 1e-5);
    }

    #[test]
    fn parameter_counts_overflow_into_config_errors() {
        assert_eq!(checked_product(&[3, 4, 5]).unwrap(), 60);
        assert_eq!(checked_sum(&[1, 2, 3]).unwrap(), 6);
        let e = checked_product(&[MAX_SIZE, MAX_SIZE, 3]).unwrap_err();
        assert!(matches!(e, RecforgeError::Config(_)) && e.to_string().contains("64-bit"));
        assert!(checked_sum(&[i64::MAX, 1]).is_err());
    }
}
