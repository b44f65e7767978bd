//! Bindings of the data layer: `Interactions`, `IdMap`, k-core and splits.

use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::convert::{self, RawIds};
use super::gil::without_gil;
use crate::data::{self, Columns, IdMap, Interactions};

fn to_i64<T: Copy + Into<i64> + Send + Sync>(v: &[T]) -> Vec<i64> {
    v.iter().map(|&x| x.into()).collect()
}

fn i64_out<'py, T: Copy + Into<i64> + Send + Sync>(
    py: Python<'py>,
    v: &[T],
) -> Bound<'py, PyArray1<i64>> {
    to_i64(v).into_pyarray(py)
}

/// An integer type that Python arguments are read into by [`int_arg`].
pub(crate) trait IntArg: TryFrom<i128> {
    /// Smallest accepted value.
    const MIN: i128;
    /// Largest accepted value.
    const MAX: i128;
}

impl IntArg for u32 {
    const MIN: i128 = 0;
    const MAX: i128 = u32::MAX as i128;
}

impl IntArg for u64 {
    const MIN: i128 = 0;
    const MAX: i128 = u64::MAX as i128;
}

impl IntArg for usize {
    const MIN: i128 = 0;
    const MAX: i128 = usize::MAX as i128;
}

/// The integer argument `name` as `T`. A value that is not an integer (a float, a bool, a
/// string) or out of `T`'s range (`n_users=-1`, `seed=2**70`) is a `ConfigError` naming the
/// argument and the accepted range, never an `OverflowError` or a silent truncation.
pub(crate) fn int_arg<T: IntArg>(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<T> {
    int_at_least(obj, name, T::MIN)
}

/// As [`int_arg`], with the smallest accepted value raised to `low` (e.g. 1 for a count).
pub(crate) fn int_at_least<T: IntArg>(
    obj: &Bound<'_, PyAny>,
    name: &str,
    low: i128,
) -> PyResult<T> {
    let bad = || {
        let shown = obj
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into());
        super::errors::ConfigError::new_err(format!(
            "{name} must be an integer in {low}..={}, got {shown}",
            T::MAX
        ))
    };
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad());
    }
    let v: i128 = obj.extract().map_err(|_| bad())?;
    if v < low {
        return Err(bad());
    }
    T::try_from(v).map_err(|_| bad())
}

fn opt_int_arg<T: IntArg>(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<T>> {
    obj.filter(|o| !o.is_none())
        .map(|o| int_arg(o, name))
        .transpose()
}

/// User-item interactions in CSR form (Python `recforge.Interactions`).
#[pyclass(name = "Interactions", module = "recforge", frozen, eq)]
#[derive(PartialEq)]
pub struct PyInteractions {
    pub inner: Arc<Interactions>,
}

impl PyInteractions {
    pub fn new(x: Interactions) -> Self {
        Self { inner: Arc::new(x) }
    }
}

fn opt_slice<'a, T: numpy::Element>(
    a: &'a Option<PyReadonlyArray1<'_, T>>,
) -> PyResult<Option<&'a [T]>> {
    a.as_ref()
        .map(|a| a.as_slice().map_err(PyErr::from))
        .transpose()
}

#[pymethods]
impl PyInteractions {
    /// Builds interactions from arrays of dense ids (see the stub for the full contract).
    #[staticmethod]
    #[pyo3(signature = (users, items, ratings=None, timestamps=None, n_users=None, n_items=None))]
    fn from_arrays(
        py: Python<'_>,
        users: &Bound<'_, PyAny>,
        items: &Bound<'_, PyAny>,
        ratings: Option<&Bound<'_, PyAny>>,
        timestamps: Option<&Bound<'_, PyAny>>,
        n_users: Option<&Bound<'_, PyAny>>,
        n_items: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let n_users: Option<u64> = opt_int_arg(n_users, "n_users")?;
        let n_items: Option<u64> = opt_int_arg(n_items, "n_items")?;
        let users = convert::int64_array(users, "users")?;
        let items = convert::int64_array(items, "items")?;
        let ratings = ratings
            .map(|r| convert::float32_array(r, "ratings"))
            .transpose()?;
        let timestamps = timestamps
            .map(|t| convert::timestamp_array(t, "timestamps"))
            .transpose()?;
        let (u, i) = (users.as_slice()?, items.as_slice()?);
        let (r, t) = (opt_slice(&ratings)?, opt_slice(&timestamps)?);
        let x = without_gil(py, || {
            Interactions::from_arrays(u, i, r, t, n_users, n_items)
        })?;
        Ok(Self::new(x))
    }

    /// Rebuilds interactions from `to_arrays()` output, keeping the stored row indices.
    #[staticmethod]
    #[pyo3(signature = (users, items, ratings, timestamps, rows, n_users, n_items))]
    #[allow(clippy::too_many_arguments)]
    fn _from_parts(
        py: Python<'_>,
        users: &Bound<'_, PyAny>,
        items: &Bound<'_, PyAny>,
        ratings: Option<&Bound<'_, PyAny>>,
        timestamps: Option<&Bound<'_, PyAny>>,
        rows: &Bound<'_, PyAny>,
        n_users: u64,
        n_items: u64,
    ) -> PyResult<Self> {
        let narrow = |a: &[i64], name: &str| -> PyResult<Vec<u32>> {
            a.iter()
                .map(|&v| {
                    u32::try_from(v)
                        .map_err(|_| super::errors::data_error(format!("{name} holds {v}")))
                })
                .collect()
        };
        let users = narrow(convert::int64_array(users, "users")?.as_slice()?, "users")?;
        let items = narrow(convert::int64_array(items, "items")?.as_slice()?, "items")?;
        let rows = convert::int64_array(rows, "rows")?;
        let rows: Vec<u64> = rows.as_slice()?.iter().map(|&r| r as u64).collect();
        let ratings = ratings
            .map(|r| convert::float32_array(r, "ratings"))
            .transpose()?;
        let timestamps = timestamps
            .map(|t| convert::timestamp_array(t, "timestamps"))
            .transpose()?;
        let columns = Columns {
            users,
            items,
            ratings: opt_slice(&ratings)?.map(<[f32]>::to_vec),
            timestamps: opt_slice(&timestamps)?.map(<[i64]>::to_vec),
            rows,
        };
        let x = without_gil(py, || Interactions::from_parts(columns, n_users, n_items))?;
        Ok(Self::new(x))
    }

    #[getter]
    fn n_users(&self) -> u32 {
        self.inner.n_users()
    }
    #[getter]
    fn n_items(&self) -> u32 {
        self.inner.n_items()
    }
    #[getter]
    fn n_interactions(&self) -> usize {
        self.inner.n_interactions()
    }
    #[getter]
    fn has_ratings(&self) -> bool {
        self.inner.ratings().is_some()
    }
    #[getter]
    fn has_timestamps(&self) -> bool {
        self.inner.timestamps().is_some()
    }
    #[getter]
    fn indptr<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner
            .indptr()
            .iter()
            .map(|&p| p as i64)
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    #[getter]
    fn indices<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        i64_out(py, self.inner.items())
    }

    fn __len__(&self) -> usize {
        self.inner.n_interactions()
    }

    fn __repr__(&self) -> String {
        format!(
            "Interactions(n_users={}, n_items={}, n_interactions={}, ratings={}, timestamps={})",
            self.inner.n_users(),
            self.inner.n_items(),
            self.inner.n_interactions(),
            if self.inner.ratings().is_some() {
                "True"
            } else {
                "False"
            },
            if self.inner.timestamps().is_some() {
                "True"
            } else {
                "False"
            },
        )
    }

    /// All entries as a dict of arrays: users, items, ratings, timestamps (None when absent), rows.
    fn to_arrays<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let x = self.inner.clone();
        let c = without_gil(py, move || Ok(x.to_columns()))?;
        let d = PyDict::new(py);
        d.set_item("users", i64_out(py, &c.users))?;
        d.set_item("items", i64_out(py, &c.items))?;
        d.set_item("ratings", c.ratings.map(|r| r.into_pyarray(py)))?;
        d.set_item("timestamps", c.timestamps.map(|t| t.into_pyarray(py)))?;
        d.set_item(
            "rows",
            c.rows
                .iter()
                .map(|&r| r as i64)
                .collect::<Vec<_>>()
                .into_pyarray(py),
        )?;
        Ok(d)
    }

    /// Items of user `u`, in time order.
    fn user_items<'py>(&self, py: Python<'py>, u: i64) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let u = u32::try_from(u).map_err(|_| {
            super::errors::data_error(format!(
                "user {u} is out of range (n_users = {})",
                self.inner.n_users()
            ))
        })?;
        Ok(i64_out(py, self.inner.user_items(u)?))
    }

    /// Number of interactions of each user.
    fn user_degrees<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        i64_out(py, &self.inner.user_degrees())
    }

    /// Number of interactions of each item.
    fn item_degrees<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        i64_out(py, &self.inner.item_degrees())
    }

    /// The entries where `mask` is true (in `to_arrays()` order), same id space.
    fn select(&self, py: Python<'_>, mask: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mask = convert::bool_array(mask, "mask")?;
        let m = mask.as_slice()?;
        let x = self.inner.clone();
        Ok(Self::new(without_gil(py, || x.select(m))?))
    }

    /// Joins interactions over one id space (e.g. train + valid).
    #[staticmethod]
    fn concat(py: Python<'_>, parts: Vec<PyRef<'_, PyInteractions>>) -> PyResult<Self> {
        let parts: Vec<Arc<Interactions>> = parts.iter().map(|p| p.inner.clone()).collect();
        let x = without_gil(py, || {
            let refs: Vec<&Interactions> = parts.iter().map(|p| p.as_ref()).collect();
            Interactions::concat(&refs)
        })?;
        Ok(Self::new(x))
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.get();
        let a = this.to_arrays(py)?;
        let ctor = py.get_type::<PyInteractions>().getattr("_from_parts")?;
        let args = PyTuple::new(
            py,
            [
                a.get_item("users")?.unwrap(),
                a.get_item("items")?.unwrap(),
                a.get_item("ratings")?.unwrap(),
                a.get_item("timestamps")?.unwrap(),
                a.get_item("rows")?.unwrap(),
                this.inner.n_users().into_pyobject(py)?.into_any(),
                this.inner.n_items().into_pyobject(py)?.into_any(),
            ],
        )?;
        PyTuple::new(py, [ctor, args.into_any()])
    }
}

type KCoreOut<'py> = (
    PyInteractions,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

/// k-core filtering: `(interactions, kept_users, kept_items)`.
#[pyfunction]
pub fn k_core<'py>(
    py: Python<'py>,
    x: &PyInteractions,
    user_k: &Bound<'py, PyAny>,
    item_k: &Bound<'py, PyAny>,
) -> PyResult<KCoreOut<'py>> {
    let user_k: u32 = int_arg(user_k, "user_k")?;
    let item_k: u32 = int_arg(item_k, "item_k")?;
    let inner = x.inner.clone();
    let k = without_gil(py, || data::k_core(&inner, user_k, item_k))?;
    Ok((
        PyInteractions::new(k.interactions),
        i64_out(py, &k.kept_users),
        i64_out(py, &k.kept_items),
    ))
}

type SplitOut<'py> = (
    PyInteractions,
    PyInteractions,
    PyInteractions,
    Bound<'py, PyDict>,
);

fn split_out(py: Python<'_>, s: data::Split) -> PyResult<SplitOut<'_>> {
    let r = PyDict::new(py);
    r.set_item("n_train", s.report.n_train)?;
    r.set_item("n_valid", s.report.n_valid)?;
    r.set_item("n_test", s.report.n_test)?;
    r.set_item("n_short_users", s.report.n_short_users)?;
    r.set_item("n_dropped_users", s.report.n_dropped_users)?;
    r.set_item("n_dropped_interactions", s.report.n_dropped_interactions)?;
    Ok((
        PyInteractions::new(s.train),
        PyInteractions::new(s.valid),
        PyInteractions::new(s.test),
        r,
    ))
}

/// Leave-one-out by time: `(train, valid, test, report)`.
#[pyfunction]
#[pyo3(signature = (x, short_users="train"))]
pub fn leave_one_out<'py>(
    py: Python<'py>,
    x: &PyInteractions,
    short_users: &str,
) -> PyResult<SplitOut<'py>> {
    let short: data::ShortUsers = short_users.parse()?;
    let inner = x.inner.clone();
    let s = without_gil(py, || data::leave_one_out(&inner, short))?;
    split_out(py, s)
}

/// Ratio split: `(train, valid, test, report)`.
#[pyfunction]
#[pyo3(
    signature = (x, fractions, order="random", by_user=true, seed=None, short_users="train"),
    text_signature = "(x, fractions, order='random', by_user=True, seed=0, short_users='train')"
)]
pub fn ratio_split<'py>(
    py: Python<'py>,
    x: &PyInteractions,
    fractions: [f64; 3],
    order: &str,
    by_user: bool,
    seed: Option<&Bound<'py, PyAny>>,
    short_users: &str,
) -> PyResult<SplitOut<'py>> {
    let seed: u64 = opt_int_arg(seed, "seed")?.unwrap_or(0);
    let order: data::Order = order.parse()?;
    let short: data::ShortUsers = short_users.parse()?;
    let inner = x.inner.clone();
    let s = without_gil(py, || {
        data::ratio(&inner, fractions, order, by_user, seed, short)
    })?;
    split_out(py, s)
}

enum AnyIdMap {
    Int(IdMap<i64>),
    Str(IdMap<String>),
}

/// A bijection between raw ids (all integers or all strings) and dense ids `0..n`.
#[pyclass(name = "IdMap", module = "recforge", frozen)]
pub struct PyIdMap {
    inner: AnyIdMap,
}

#[pymethods]
impl PyIdMap {
    /// Builds a map from raw ids in order of first appearance; returns `(map, dense ids)`.
    #[staticmethod]
    fn fit<'py>(
        py: Python<'py>,
        raw: &Bound<'py, PyAny>,
    ) -> PyResult<(Self, Bound<'py, PyArray1<i64>>)> {
        let (inner, dense) = match convert::raw_ids(raw, "raw ids")? {
            RawIds::Int(a) => {
                let s = a.as_slice()?;
                let (m, d) = without_gil(py, || IdMap::fit(s.iter().copied()))?;
                (AnyIdMap::Int(m), d)
            }
            RawIds::Str(v) => {
                let (m, d) = without_gil(py, || IdMap::fit(v))?;
                (AnyIdMap::Str(m), d)
            }
        };
        Ok((Self { inner }, i64_out(py, &dense)))
    }

    /// Builds a map from distinct raw ids (dense id = position); a repeat is a `DataError`.
    #[staticmethod]
    fn from_unique(py: Python<'_>, raw: &Bound<'_, PyAny>) -> PyResult<Self> {
        let inner = match convert::raw_ids(raw, "raw ids")? {
            RawIds::Int(a) => {
                let s = a.as_slice()?;
                AnyIdMap::Int(without_gil(py, || IdMap::from_unique(s.iter().copied()))?)
            }
            RawIds::Str(v) => AnyIdMap::Str(without_gil(py, || IdMap::from_unique(v))?),
        };
        Ok(Self { inner })
    }

    /// Dense ids of raw ids; an unknown raw id is a `DataError` naming it.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        raw: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let dense = match (&self.inner, convert::raw_ids(raw, "raw ids")?) {
            (AnyIdMap::Int(m), RawIds::Int(a)) => {
                let s = a.as_slice()?;
                without_gil(py, || m.encode(s))?
            }
            (AnyIdMap::Str(m), RawIds::Str(v)) => without_gil(py, || m.encode(&v))?,
            (AnyIdMap::Int(m), RawIds::Str(v)) if v.is_empty() => m.encode(&[])?,
            _ => {
                return Err(super::errors::data_error(
                    "raw ids are of the other kind (integers vs strings) than this IdMap holds",
                ))
            }
        };
        Ok(i64_out(py, &dense))
    }

    /// Raw ids of dense ids, as an array (integers) or a list (strings).
    fn decode<'py>(
        &self,
        py: Python<'py>,
        dense: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = convert::int64_array(dense, "dense ids")?;
        let n = self.__len__();
        let ids: Vec<u32> = d
            .as_slice()?
            .iter()
            .map(|&v| {
                u32::try_from(v)
                    .ok()
                    .filter(|&v| (v as usize) < n)
                    .ok_or_else(|| {
                        super::errors::data_error(format!(
                            "dense id {v} is out of range (size {n})"
                        ))
                    })
            })
            .collect::<PyResult<_>>()?;
        Ok(match &self.inner {
            AnyIdMap::Int(m) => ids
                .iter()
                .map(|&i| m.raw()[i as usize])
                .collect::<Vec<_>>()
                .into_pyarray(py)
                .into_any(),
            AnyIdMap::Str(m) => {
                PyList::new(py, ids.iter().map(|&i| m.raw()[i as usize].as_str()))?.into_any()
            }
        })
    }

    /// All raw ids in dense order.
    fn raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match &self.inner {
            AnyIdMap::Int(m) => m.raw().to_vec().into_pyarray(py).into_any(),
            AnyIdMap::Str(m) => PyList::new(py, m.raw())?.into_any(),
        })
    }

    /// The map restricted to `dense` ids, re-numbered in that order (after a k-core).
    fn subset(&self, dense: &Bound<'_, PyAny>) -> PyResult<Self> {
        let d = convert::int64_array(dense, "dense ids")?;
        let keep: Vec<u32> = d
            .as_slice()?
            .iter()
            .map(|&v| v.clamp(0, u32::MAX as i64) as u32)
            .collect();
        Ok(Self {
            inner: match &self.inner {
                AnyIdMap::Int(m) => AnyIdMap::Int(m.subset(&keep)?),
                AnyIdMap::Str(m) => AnyIdMap::Str(m.subset(&keep)?),
            },
        })
    }

    /// Whether the raw ids are strings.
    #[getter]
    fn is_str(&self) -> bool {
        matches!(self.inner, AnyIdMap::Str(_))
    }

    fn __len__(&self) -> usize {
        match &self.inner {
            AnyIdMap::Int(m) => m.len(),
            AnyIdMap::Str(m) => m.len(),
        }
    }

    fn __repr__(&self) -> String {
        let kind = if self.is_str() { "str" } else { "int" };
        format!("IdMap(n={}, kind={kind})", self.__len__())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let ctor = py.get_type::<PyIdMap>().getattr("from_unique")?;
        let raw = slf.get().raw(py)?;
        PyTuple::new(py, [ctor, PyTuple::new(py, [raw])?.into_any()])
    }
}
