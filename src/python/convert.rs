//! Turning Python inputs (NumPy arrays, lists, pandas columns) into typed, contiguous NumPy views
//! without silent truncation: float ids, bool ids, NaN timestamps are errors, never rounded.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PyTuple};

use super::errors::data_error;

fn as_1d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<(Bound<'py, PyAny>, String)> {
    let np = obj.py().import("numpy")?;
    // `asarray` drops a masked array's mask: its masked (missing) entries would be read as the
    // values under the mask.
    let ma = np.getattr("ma")?;
    let masked = ma
        .call_method1("is_masked", (obj,))
        .and_then(|m| m.extract::<bool>())
        .unwrap_or(false);
    if masked {
        let mask = ma
            .call_method1("getmaskarray", (obj,))?
            .call_method0("ravel")?;
        let i: usize = np
            .call_method1("flatnonzero", (mask,))?
            .get_item(0)?
            .extract()?;
        return Err(data_error(format!(
            "{name}[{i}] is missing (masked or NA): fill or drop the missing entries first"
        )));
    }
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

/// The outcome of reading an object array (or a list) element by element as int64.
enum ObjectInts {
    /// Every element is an integer within int64.
    All(Vec<i64>),
    /// The first element that is not an integer (a float, a bool, `None`, a string): its position
    /// and `repr`.
    NotInt(usize, String),
    /// The first integer outside int64: its position, its value and whether it is negative.
    Beyond(usize, String, bool),
}

/// Reads the elements of `arr` (1-D, any dtype) as Python objects: Python and NumPy integers
/// (never bools) within int64 are kept, exactly; the first other element is reported.
fn object_ints(arr: &Bound<'_, PyAny>) -> PyResult<ObjectInts> {
    let np = arr.py().import("numpy")?;
    let (np_integer, np_bool) = (np.getattr("integer")?, np.getattr("bool_")?);
    let list = arr.call_method0("tolist")?;
    let mut out = Vec::with_capacity(list.len()?);
    for (pos, v) in list.try_iter()?.enumerate() {
        let v = v?;
        let is_bool = v.is_instance_of::<PyBool>() || v.is_instance(&np_bool)?;
        if is_bool || !(v.is_instance_of::<PyInt>() || v.is_instance(&np_integer)?) {
            let shown = v
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".into());
            return Ok(ObjectInts::NotInt(pos, shown));
        }
        match v.extract::<i64>() {
            Ok(x) => out.push(x),
            Err(_) => {
                let shown = v
                    .str()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "?".into());
                let negative = v.lt(0).unwrap_or(false);
                return Ok(ObjectInts::Beyond(pos, shown, negative));
            }
        }
    }
    Ok(ObjectInts::All(out))
}

/// `name[pos] = value` does not fit in int64.
fn beyond_int64(name: &str, pos: usize, shown: &str, negative: bool) -> PyErr {
    data_error(format!(
        "{name}[{pos}] = {shown} is too {}: {name} must fit in int64",
        if negative { "small" } else { "large" }
    ))
}

/// `name[i] = value` for the first position where `mask` (a boolean array) is true, if any.
fn first_where(
    arr: &Bound<'_, PyAny>,
    mask: &Bound<'_, PyAny>,
) -> PyResult<Option<(usize, String)>> {
    let np = arr.py().import("numpy")?;
    let hits = np.call_method1("flatnonzero", (mask,))?;
    if hits.len()? == 0 {
        return Ok(None);
    }
    let i: usize = hits.get_item(0)?.extract()?;
    let shown = arr
        .call_method1("item", (i,))
        .and_then(|v| v.str())
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".into());
    Ok(Some((i, shown)))
}

/// An array of integer ids as contiguous int64 (zero-copy when it already is one). An object
/// array (or a list) of Python / NumPy integers is read exactly; a value outside int64 (a
/// `uint64` 2**63, a Python 2**70) is a `DataError` naming the argument, the position and the
/// value, as is a value that is not an integer.
pub fn int64_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let (arr, kind) = as_1d(obj, name)?;
    match kind.as_str() {
        "i" | "u" => {}
        _ if is_empty(&arr)? => {}
        "O" => {
            return match object_ints(&arr)? {
                ObjectInts::All(v) => Ok(PyArray1::from_vec(obj.py(), v).readonly()),
                ObjectInts::NotInt(pos, shown) => Err(data_error(format!(
                    "{name} must hold integers: {name}[{pos}] = {shown} is not one (an array of \
                     dtype object)"
                ))),
                ObjectInts::Beyond(pos, shown, negative) => {
                    Err(beyond_int64(name, pos, &shown, negative))
                }
            };
        }
        _ => {
            let mut detail = String::new();
            if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
                // NumPy turns a list of integers holding one beyond int64 into floats or objects
                // ([0, 2**63], [0, 2**70]) and mixed lists into strings ([0, "a"]): name the
                // list's own first bad element, not the dtype it caused.
                let np = obj.py().import("numpy")?;
                let objects = np.call_method1("array", (obj, "object"))?;
                match object_ints(&objects)? {
                    ObjectInts::Beyond(pos, shown, negative) => {
                        return Err(beyond_int64(name, pos, &shown, negative))
                    }
                    ObjectInts::NotInt(pos, shown) => {
                        detail = format!(" ({name}[{pos}] = {shown})")
                    }
                    ObjectInts::All(_) => {}
                }
            }
            if detail.is_empty() && kind == "f" {
                let np = obj.py().import("numpy")?;
                let whole = np.call_method1("isfinite", (&arr,))?.call_method1(
                    "__and__",
                    (arr.rich_compare(
                        np.call_method1("floor", (&arr,))?,
                        pyo3::basic::CompareOp::Eq,
                    )?,),
                )?;
                let not_whole = np.call_method1("logical_not", (whole,))?;
                detail = match first_where(&arr, &not_whole)? {
                    Some((i, shown)) => format!(" ({name}[{i}] = {shown})"),
                    None => format!(" (whole numbers too: pass {name}.astype('int64'))"),
                };
            } else if detail.is_empty() {
                if let Ok(r) = arr.call_method1("item", (0,)).and_then(|v| v.repr()) {
                    detail = format!(" ({name}[0] = {r})");
                }
            }
            return Err(data_error(format!(
                "{name} must hold integers, got an array of dtype {}{detail}",
                dtype_name(&arr)
            )));
        }
    }
    if kind == "u"
        && arr
            .getattr("dtype")?
            .getattr("itemsize")?
            .extract::<usize>()?
            == 8
    {
        let over = arr.rich_compare(i64::MAX as u64, pyo3::basic::CompareOp::Gt)?;
        if let Some((pos, shown)) = first_where(&arr, &over)? {
            return Err(beyond_int64(name, pos, &shown, false));
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

/// The length of one step of a `datetime64` unit.
#[derive(Clone, Copy)]
enum TimeStep {
    /// Calendar months (`Y` is 12 of them): seconds depend on the month lengths.
    Months(i128),
    /// `num / den` seconds (`D`: 86400 / 1, `ms`: 1 / 1000); `count` multiples included.
    Seconds { num: i128, den: i128 },
}

/// Why a `datetime64` value has no int64-seconds equivalent.
enum TimeFault {
    /// It is not a whole number of seconds.
    SubSecond,
    /// It is beyond int64 seconds since the epoch.
    Range,
}

impl TimeStep {
    /// The step of NumPy's unit `unit` (`np.datetime_data`) repeated `count` times; `None` for
    /// the generic unit or one NumPy may add later.
    fn parse(unit: &str, count: i64) -> Option<Self> {
        let c = i128::from(count);
        if c <= 0 {
            return None;
        }
        let seconds = |num: i128, den: i128| Self::Seconds { num: num * c, den };
        Some(match unit {
            "Y" => Self::Months(12 * c),
            "M" => Self::Months(c),
            "W" => seconds(7 * 86_400, 1),
            "D" => seconds(86_400, 1),
            "h" => seconds(3_600, 1),
            "m" => seconds(60, 1),
            "s" => seconds(1, 1),
            "ms" => seconds(1, 1_000),
            "us" | "μs" => seconds(1, 1_000_000),
            "ns" => seconds(1, 1_000_000_000),
            "ps" => seconds(1, 1_000_000_000_000),
            "fs" => seconds(1, 1_000_000_000_000_000),
            "as" => seconds(1, 1_000_000_000_000_000_000),
            _ => return None,
        })
    }

    /// Seconds since the epoch of the value `v` (steps since the epoch), exactly, in 128-bit
    /// arithmetic (NumPy's own casts overflow, silently or with an `OverflowError`).
    fn seconds(self, v: i64) -> Result<i64, TimeFault> {
        let v = i128::from(v);
        let secs = match self {
            Self::Months(per) => {
                let months = v.checked_mul(per).ok_or(TimeFault::Range)?;
                let year = 1970 + months.div_euclid(12);
                let days =
                    days_from_civil(year, months.rem_euclid(12) + 1).ok_or(TimeFault::Range)?;
                days.checked_mul(86_400).ok_or(TimeFault::Range)?
            }
            Self::Seconds { num, den } => {
                let t = v.checked_mul(num).ok_or(TimeFault::Range)?;
                if t % den != 0 {
                    return Err(TimeFault::SubSecond);
                }
                t / den
            }
        };
        i64::try_from(secs).map_err(|_| TimeFault::Range)
    }
}

/// Days from 1970-01-01 to the first day of `month` (1..=12) of `year`, proleptic Gregorian
/// calendar as NumPy uses (H. Hinnant's `days_from_civil`); `None` on overflow.
fn days_from_civil(year: i128, month: i128) -> Option<i128> {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?.checked_add(doe - 719_468)
}

/// Timestamps as contiguous int64: integers as they are, `datetime64` as seconds since the epoch.
/// A time that is not a whole second, one beyond int64 seconds, or NaT is a `DataError` naming
/// the position and the value, never truncated, wrapped or an `OverflowError` from NumPy's cast.
pub fn timestamp_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let (arr, kind) = as_1d(obj, name)?;
    if kind != "M" {
        return int64_array(obj, name);
    }
    let py = obj.py();
    let np = py.import("numpy")?;
    let dtype = arr.getattr("dtype")?;
    // The raw int64 steps (NaT is i64::MIN), in native byte order.
    let native = if dtype.getattr("isnative")?.extract::<bool>()? {
        arr.clone()
    } else {
        arr.call_method1("astype", (dtype.call_method1("newbyteorder", ("=",))?,))?
    };
    let raw = contiguous::<i64>(&native.call_method1("view", ("int64",))?, "int64")?;
    let raw = raw.as_slice()?;
    if let Some(i) = raw.iter().position(|&v| v == i64::MIN) {
        return Err(data_error(format!(
            "{name} contains NaT (missing times): {name}[{i}]"
        )));
    }
    let (unit, count): (String, i64) = np.call_method1("datetime_data", (&dtype,))?.extract()?;
    let step = TimeStep::parse(&unit, count).ok_or_else(|| {
        data_error(format!(
            "{name} has the datetime unit {}, which has no length in seconds",
            dtype_name(&arr)
        ))
    })?;
    let shown = |i: usize| {
        arr.get_item(i)
            .and_then(|v| v.str())
            .map(|s| s.to_string())
            .unwrap_or_else(|_| raw[i].to_string())
    };
    let mut out = Vec::with_capacity(raw.len());
    for (i, &v) in raw.iter().enumerate() {
        match step.seconds(v) {
            Ok(s) => out.push(s),
            // Seconds must hold every time exactly: truncating a sub-second part can reorder
            // events within a second.
            Err(TimeFault::SubSecond) => {
                return Err(data_error(format!(
                    "{name}[{i}] = {} is not a whole second: timestamps are stored as int64 \
                     seconds and truncating it could reorder events; pass integers in the unit \
                     you need (e.g. {name}.astype('int64') for {})",
                    shown(i),
                    dtype_name(&arr)
                )))
            }
            Err(TimeFault::Range) => {
                return Err(data_error(format!(
                    "{name}[{i}] = {} is beyond int64 seconds: timestamps are stored as int64 \
                     seconds since 1970-01-01 ({})",
                    shown(i),
                    dtype_name(&arr)
                )))
            }
        }
    }
    Ok(PyArray1::from_vec(py, out).readonly())
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
