//! Turning Python inputs (NumPy arrays, lists, pandas columns) into typed, contiguous NumPy views
//! without silent truncation: float ids, bool ids, NaN timestamps are errors, never rounded.

use numpy::{PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;

use super::errors::data_error;

fn as_1d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<(Bound<'py, PyAny>, String)> {
    let np = obj.py().import("numpy")?;
    let arr = np
        .call_method1("asarray", (obj,))
        .map_err(|e| data_error(format!("{name} must be a 1-D array: {e}")))?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(data_error(format!(
            "{name} must be a 1-D array, got {ndim} dimensions"
        )));
    }
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    Ok((arr, kind))
}

fn dtype_name(arr: &Bound<'_, PyAny>) -> String {
    arr.getattr("dtype")
        .and_then(|d| d.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn contiguous<'py, T: numpy::Element>(
    arr: &Bound<'py, PyAny>,
    dtype: &str,
) -> PyResult<PyReadonlyArray1<'py, T>> {
    let np = arr.py().import("numpy")?;
    let c = np.call_method1("ascontiguousarray", (arr, dtype))?;
    Ok(c.cast_into::<numpy::PyArray1<T>>()?.readonly())
}

fn is_empty(arr: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(arr.getattr("size")?.extract::<usize>()? == 0)
}

/// An array of integer ids as contiguous int64 (zero-copy when it already is one).
pub fn int64_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let (arr, kind) = as_1d(obj, name)?;
    match kind.as_str() {
        "i" | "u" => {}
        _ if is_empty(&arr)? => {}
        _ => {
            return Err(data_error(format!(
                "{name} must hold integers, got an array of dtype {}",
                dtype_name(&arr)
            )))
        }
    }
    if kind == "u"
        && arr
            .getattr("dtype")?
            .getattr("itemsize")?
            .extract::<usize>()?
            == 8
    {
        let max: u64 = if is_empty(&arr)? {
            0
        } else {
            arr.call_method0("max")?.extract()?
        };
        if max > i64::MAX as u64 {
            return Err(data_error(format!(
                "{name} holds {max}, too large for an id"
            )));
        }
    }
    contiguous::<i64>(&arr, "int64")
}

/// An array of numbers (ratings, values) as contiguous float32.
pub fn float32_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, f32>> {
    let (arr, kind) = as_1d(obj, name)?;
    if kind == "f"
        && arr
            .getattr("dtype")?
            .getattr("itemsize")?
            .extract::<usize>()?
            > 4
    {
        // A finite value beyond float32's range would become inf (and be reported as such).
        let np = obj.py().import("numpy")?;
        let over = np
            .call_method1("abs", (&arr,))?
            .rich_compare(f32::MAX as f64, pyo3::basic::CompareOp::Gt)?;
        let finite = np.call_method1("isfinite", (&arr,))?;
        let big = np.call_method1("flatnonzero", (finite.call_method1("__and__", (over,))?,))?;
        if big.len()? > 0 {
            let i = big.get_item(0)?;
            return Err(data_error(format!(
                "{name}[{i}] = {} is beyond the float32 range",
                arr.get_item(&i)?.str()?
            )));
        }
    }
    match kind.as_str() {
        "f" | "i" | "u" => contiguous::<f32>(&arr, "float32"),
        _ if is_empty(&arr)? => contiguous::<f32>(&arr, "float32"),
        _ => Err(data_error(format!(
            "{name} must hold numbers, got an array of dtype {}",
            dtype_name(&arr)
        ))),
    }
}

/// Timestamps as contiguous int64: integers as they are, `datetime64` as seconds since the epoch
/// (a time that is not a whole second is a `DataError`, never truncated).
pub fn timestamp_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let (arr, kind) = as_1d(obj, name)?;
    match kind.as_str() {
        "M" => {
            let nat: bool = obj
                .py()
                .import("numpy")?
                .call_method1("isnat", (&arr,))?
                .call_method0("any")?
                .extract()?;
            if nat {
                return Err(data_error(format!("{name} contains NaT (missing times)")));
            }
            let secs = arr.call_method1("astype", ("datetime64[s]",))?;
            // Seconds must hold every time exactly: a sub-second part (or a time beyond int64
            // seconds) would be truncated, and truncation can reorder events within a second.
            let back = secs.call_method1("astype", (arr.getattr("dtype")?,))?;
            let np = obj.py().import("numpy")?;
            let differ = np.call_method1(
                "flatnonzero",
                (back.rich_compare(&arr, pyo3::basic::CompareOp::Ne)?,),
            )?;
            if differ.len()? > 0 {
                let i = differ.get_item(0)?;
                return Err(data_error(format!(
                    "{name}[{i}] = {} is not a whole second: timestamps are stored as int64 \
                     seconds and truncating it could reorder events; pass integers in the unit \
                     you need (e.g. {name}.astype('int64') for {})",
                    arr.get_item(&i)?.str()?,
                    dtype_name(&arr)
                )));
            }
            contiguous::<i64>(&secs.call_method1("astype", ("int64",))?, "int64")
        }
        _ => int64_array(obj, name),
    }
}

/// A boolean mask as contiguous bool.
pub fn bool_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, bool>> {
    let (arr, kind) = as_1d(obj, name)?;
    if kind != "b" && !is_empty(&arr)? {
        return Err(data_error(format!(
            "{name} must be a boolean mask, got an array of dtype {}",
            dtype_name(&arr)
        )));
    }
    contiguous::<bool>(&arr, "bool")
}

/// Raw ids for an [`crate::data::IdMap`]: integers, or strings (NumPy unicode or object arrays of
/// `str`).
pub enum RawIds<'py> {
    /// Integer ids.
    Int(PyReadonlyArray1<'py, i64>),
    /// String ids.
    Str(Vec<String>),
}

/// Reads raw ids: integer arrays stay integers, anything else must be all strings.
pub fn raw_ids<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<RawIds<'py>> {
    let (arr, kind) = as_1d(obj, name)?;
    match kind.as_str() {
        "i" | "u" => Ok(RawIds::Int(int64_array(&arr, name)?)),
        "U" | "O" | "T" => {
            let list = arr.call_method0("tolist")?;
            let mut out = Vec::with_capacity(list.len()?);
            for (pos, v) in list.try_iter()?.enumerate() {
                let v = v?;
                match v.extract::<String>() {
                    Ok(s) => out.push(s),
                    Err(_) => {
                        return Err(data_error(format!(
                            "{name}[{pos}] = {} is not a string; ids must be all integers or all strings",
                            v.repr().map(|r| r.to_string()).unwrap_or_default()
                        )))
                    }
                }
            }
            Ok(RawIds::Str(out))
        }
        _ if is_empty(&arr)? => Ok(RawIds::Str(Vec::new())),
        _ => Err(data_error(format!(
            "{name} must hold integer or string ids, got an array of dtype {}",
            dtype_name(&arr)
        ))),
    }
}

/// Numbers as an owned `Vec<f64>` (statistics inputs).
pub fn float64_array(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f64>> {
    let (arr, kind) = as_1d(obj, name)?;
    match kind.as_str() {
        "f" | "i" | "u" | "b" => Ok(contiguous::<f64>(&arr, "float64")?.as_slice()?.to_vec()),
        _ if is_empty(&arr)? => Ok(Vec::new()),
        _ => Err(data_error(format!(
            "{name} must hold numbers, got an array of dtype {}",
            dtype_name(&arr)
        ))),
    }
}
