//! Bindings of ranking evaluation, negative sampling and bootstrap statistics.

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert;
use super::data::{int_arg, int_at_least, PyInteractions};
use super::errors::data_error;
use super::gil::without_gil;
use crate::data::Interactions;
use crate::eval::{self, Metric, RankingSpec, ScoreBatch, Ties};
use crate::sampling::{self, Strategy, UserItemSets};
use crate::stats::{self, Method, Statistic};

fn spec(
    ks: Vec<usize>,
    metrics: Vec<String>,
    ties: &str,
    top_k: Option<usize>,
) -> PyResult<RankingSpec> {
    let metrics = metrics
        .iter()
        .map(|m| m.parse::<Metric>())
        .collect::<crate::Result<Vec<_>>>()?;
    let s = RankingSpec {
        ks,
        metrics,
        ties: ties.parse::<Ties>()?,
        top_k,
    };
    s.validate()?;
    Ok(s)
}

fn u32_ids(a: &[i64], name: &str) -> PyResult<Vec<u32>> {
    a.iter()
        .map(|&v| {
            u32::try_from(v).map_err(|_| data_error(format!("{name} holds {v}, not a valid id")))
        })
        .collect()
}

fn batch_out<'py>(
    py: Python<'py>,
    r: eval::BatchResult,
    width: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let rows = r.n_candidates.len();
    d.set_item("values", r.values.into_pyarray(py).reshape([rows, width])?)?;
    d.set_item(
        "n_candidates",
        r.n_candidates
            .iter()
            .map(|&v| v as i64)
            .collect::<Vec<_>>()
            .into_pyarray(py),
    )?;
    d.set_item(
        "n_relevant",
        r.n_relevant
            .iter()
            .map(|&v| v as i64)
            .collect::<Vec<_>>()
            .into_pyarray(py),
    )?;
    d.set_item("relevant_in_exclude", r.relevant_in_exclude)?;
    if !r.top.is_empty() {
        let k = r.top.len() / rows.max(1);
        let top: Vec<i64> = r
            .top
            .iter()
            .map(|&i| if i == u32::MAX { -1 } else { i as i64 })
            .collect();
        d.set_item("top", top.into_pyarray(py).reshape([rows, k])?)?;
    }
    let single: Vec<i64> = r
        .single
        .iter()
        .flat_map(|&(a, s)| [a as i64, s as i64])
        .collect();
    d.set_item("single", single.into_pyarray(py).reshape([rows, 2])?)?;
    Ok(d)
}

/// One batch ranked in the scores' own type `T` (never converted, so no order becomes a tie).
#[allow(clippy::too_many_arguments)]
fn rank_typed<T: eval::Score + numpy::Element>(
    py: Python<'_>,
    scores: &Bound<'_, PyArray2<T>>,
    users: &[u32],
    rows: &[usize],
    test: &Interactions,
    exclude: &[&Interactions],
    negatives: Option<(&[i64], usize)>,
    spec: &RankingSpec,
) -> PyResult<eval::BatchResult> {
    let scores = scores.readonly();
    let n_items = scores.shape()[1];
    let scores = scores
        .as_slice()
        .map_err(|_| data_error("scores must be C-contiguous"))?;
    let batch = ScoreBatch {
        scores,
        n_items,
        users,
        rows,
    };
    Ok(match negatives {
        None => without_gil(py, || eval::full_ranking(&batch, test, exclude, spec))?,
        Some((negs, n_neg)) => without_gil(py, || eval::sampled(&batch, test, negs, n_neg, spec))?,
    })
}

/// Evaluates one batch of users in full-ranking or sampled mode (see `recforge.metrics`).
///
/// `scores` is a 2-D float32, float64 or int64 array, ranked in that type.
#[pyfunction]
#[pyo3(signature = (scores, users, rows, test, exclude, negatives, ks, metrics, ties, top_k=None))]
#[allow(clippy::too_many_arguments)]
pub fn _rank_batch<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    users: &Bound<'py, PyAny>,
    rows: &Bound<'py, PyAny>,
    test: &PyInteractions,
    exclude: Vec<PyRef<'py, PyInteractions>>,
    negatives: Option<PyReadonlyArray2<'py, i64>>,
    ks: Vec<usize>,
    metrics: Vec<String>,
    ties: &str,
    top_k: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let spec = spec(ks, metrics, ties, top_k)?;
    let users = u32_ids(convert::int64_array(users, "users")?.as_slice()?, "users")?;
    let rows: Vec<usize> = u32_ids(convert::int64_array(rows, "rows")?.as_slice()?, "rows")?
        .into_iter()
        .map(|r| r as usize)
        .collect();
    let test = test.inner.clone();
    let exclude: Vec<_> = exclude.iter().map(|x| x.inner.clone()).collect();
    let ex: Vec<&Interactions> = exclude.iter().map(|x| x.as_ref()).collect();
    let negs = match &negatives {
        None => None,
        Some(neg) => Some((
            neg.as_slice()
                .map_err(|_| data_error("negatives must be C-contiguous"))?,
            neg.shape()[1],
        )),
    };
    let width = spec.width();
    let result = if let Ok(a) = scores.cast::<PyArray2<f32>>() {
        rank_typed(py, a, &users, &rows, &test, &ex, negs, &spec)?
    } else if let Ok(a) = scores.cast::<PyArray2<f64>>() {
        rank_typed(py, a, &users, &rows, &test, &ex, negs, &spec)?
    } else if let Ok(a) = scores.cast::<PyArray2<i64>>() {
        rank_typed(py, a, &users, &rows, &test, &ex, negs, &spec)?
    } else {
        let what = scores
            .getattr("dtype")
            .and_then(|d| d.str().map(|s| s.to_string()))
            .or_else(|_| scores.get_type().name().map(|s| s.to_string()))
            .unwrap_or_else(|_| "?".into());
        return Err(data_error(format!(
            "scores must be a 2-D float32, float64 or int64 array, got {what}"
        )));
    };
    batch_out(py, result, width)
}

/// Values of the corrected Hit/Recall@k for sampled ranks 1..=n_negatives+1.
#[pyfunction]
pub fn _corrected_hit_values<'py>(
    py: Python<'py>,
    n_candidates: usize,
    n_negatives: usize,
    k: usize,
    gamma: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let v = without_gil(py, || {
        eval::corrected_hit_values(n_candidates, n_negatives, k, gamma)
    })?;
    Ok(v.into_pyarray(py))
}

fn strategy(name: &str, weights: Option<&Bound<'_, PyAny>>) -> PyResult<Strategy> {
    match (name, weights) {
        ("uniform", _) => Ok(Strategy::Uniform),
        ("popularity", Some(w)) => {
            // float64 as given: narrowing could turn a tiny weight into 0 (never drawn).
            Strategy::popularity(convert::float64_array(w, "popularity")?).map_err(|e| match e {
                crate::RecforgeError::Data(m) => data_error(format!("popularity: {m}")),
                other => other.into(),
            })
        }
        ("popularity", None) => Err(super::errors::ConfigError::new_err(
            "popularity weights are missing",
        )),
        (other, _) => Err(super::errors::ConfigError::new_err(format!(
            "strategy must be 'uniform' or 'popularity', got {other:?}"
        ))),
    }
}

/// The most values one call may return or draw (2^32: 32 GiB of int64 or float64). Asking for
/// more is a `ConfigError`, not an allocation failure that would abort the interpreter.
const MAX_VALUES: usize = 1 << 32;

fn check_output_size(rows: usize, per_row: usize, name: &str) -> PyResult<()> {
    match rows.checked_mul(per_row) {
        Some(t) if t <= MAX_VALUES => Ok(()),
        _ => Err(super::errors::ConfigError::new_err(format!(
            "{name} = {per_row} asks for {rows} x {per_row} values, more than the {MAX_VALUES} \
             one call may return"
        ))),
    }
}

/// `n` distinct negatives per user with a test item: `[n_users, n]` int64, `-1` rows elsewhere.
#[pyfunction]
#[pyo3(signature = (test, exclude, n, strategy_name, weights, seed))]
pub fn _eval_negatives<'py>(
    py: Python<'py>,
    test: &PyInteractions,
    exclude: Vec<PyRef<'py, PyInteractions>>,
    n: &Bound<'py, PyAny>,
    strategy_name: &str,
    weights: Option<&Bound<'py, PyAny>>,
    seed: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let n: usize = int_at_least(n, "n", 1)?;
    let seed: u64 = int_arg(seed, "seed")?;
    let strat = strategy(strategy_name, weights)?;
    let test = test.inner.clone();
    if n > test.n_items() as usize {
        return Err(data_error(format!(
            "n = {n} distinct negatives per user, but there are only {} items",
            test.n_items()
        )));
    }
    check_output_size(test.n_users() as usize, n, "n")?;
    let parts: Vec<_> = exclude.iter().map(|x| x.inner.clone()).collect();
    let out = without_gil(py, || {
        let mut all: Vec<&Interactions> = vec![test.as_ref()];
        all.extend(parts.iter().map(|x| x.as_ref()));
        let seen = UserItemSets::union(&all)?;
        let wanted: Vec<bool> = test.user_degrees().iter().map(|&d| d > 0).collect();
        sampling::eval_negatives(test.n_items(), &seen, &wanted, n, &strat, seed)
    })?;
    let n_users = out.len() / n;
    Ok(out.into_pyarray(py).reshape([n_users, n])?.into_any())
}

/// `k` negatives per training interaction: `[n_interactions, k]` int64 in `train`'s entry order.
#[pyfunction]
#[pyo3(signature = (train, k, strategy_name, weights, replace, seed, epoch))]
#[allow(clippy::too_many_arguments)]
pub fn _training_negatives<'py>(
    py: Python<'py>,
    train: &PyInteractions,
    k: &Bound<'py, PyAny>,
    strategy_name: &str,
    weights: Option<&Bound<'py, PyAny>>,
    replace: bool,
    seed: &Bound<'py, PyAny>,
    epoch: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let k: usize = int_at_least(k, "k", 1)?;
    let seed: u64 = int_arg(seed, "seed")?;
    let epoch: u64 = int_arg(epoch, "epoch")?;
    let strat = strategy(strategy_name, weights)?;
    let train = train.inner.clone();
    if !replace && k > train.n_items() as usize {
        return Err(data_error(format!(
            "k = {k} distinct negatives per interaction, but there are only {} items",
            train.n_items()
        )));
    }
    check_output_size(train.n_interactions(), k, "k")?;
    let out = without_gil(py, || {
        sampling::training_negatives(&train, k, &strat, replace, seed, epoch)
    })?;
    let rows = out.len() / k.max(1);
    Ok(out.into_pyarray(py).reshape([rows, k])?.into_any())
}

fn statistic(name: &str) -> PyResult<Statistic> {
    match name {
        "mean" => Ok(Statistic::Mean),
        "root_mean" => Ok(Statistic::RootMean),
        other => Err(super::errors::ConfigError::new_err(format!(
            "statistic must be 'mean' or 'root_mean', got {other:?}"
        ))),
    }
}

/// `(estimate, low, high, std_error)` of a bootstrap confidence interval.
#[pyfunction]
#[pyo3(signature = (values, statistic_name, n_resamples, confidence, method, seed))]
pub fn _bootstrap_ci(
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
    statistic_name: &str,
    n_resamples: &Bound<'_, PyAny>,
    confidence: f64,
    method: &str,
    seed: &Bound<'_, PyAny>,
) -> PyResult<(f64, f64, f64, f64)> {
    let n_resamples: usize = int_arg(n_resamples, "n_resamples")?;
    check_output_size(1, n_resamples, "n_resamples")?;
    let seed: u64 = int_arg(seed, "seed")?;
    let stat = statistic(statistic_name)?;
    let method = match method {
        "percentile" => Method::Percentile,
        "bca" => Method::Bca,
        other => {
            return Err(super::errors::ConfigError::new_err(format!(
                "method must be 'percentile' or 'bca', got {other:?}"
            )))
        }
    };
    let v: Vec<f64> = convert::float64_array(values, "values")?;
    let r = without_gil(py, || {
        stats::bootstrap_ci(&v, stat, n_resamples, confidence, method, seed)
    })?;
    Ok((r.estimate, r.low, r.high, r.std_error))
}

/// `(difference, low, high, std_error, p_value)` of a paired bootstrap.
#[pyfunction]
#[pyo3(signature = (a, b, statistic_name, n_resamples, confidence, seed))]
pub fn _paired_bootstrap(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    statistic_name: &str,
    n_resamples: &Bound<'_, PyAny>,
    confidence: f64,
    seed: &Bound<'_, PyAny>,
) -> PyResult<(f64, f64, f64, f64, f64)> {
    let n_resamples: usize = int_arg(n_resamples, "n_resamples")?;
    check_output_size(1, n_resamples, "n_resamples")?;
    let seed: u64 = int_arg(seed, "seed")?;
    let stat = statistic(statistic_name)?;
    let a = convert::float64_array(a, "a")?;
    let b = convert::float64_array(b, "b")?;
    let r = without_gil(py, || {
        stats::paired_bootstrap(&a, &b, stat, n_resamples, confidence, seed)
    })?;
    let d = r.difference;
    Ok((d.estimate, d.low, d.high, d.std_error, r.p_value))
}
