//! Ranking evaluation of batches of users: full ranking (every item not excluded is a candidate)
//! and sampled ranking (the relevant items plus given negatives). Only the tie groups of the
//! relevant items are needed for the metrics, so a user costs one pass over the candidate scores
//! and no sort; item coverage uses a bounded heap per user. Users are spread over threads, and
//! each user's values depend on that user alone, so results do not depend on batch size or
//! thread count.
//!
//! Scores are compared in the type they were given ([`Score`]: `f32`, `f64` or `i64`), never
//! converted, so a strict order of the input is never turned into a tie.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use super::metrics::{user_metric, Metric, Prefix, TieGroup, Ties};
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};

/// What to compute.
#[derive(Debug, Clone)]
pub struct RankingSpec {
    /// Cut-offs (each >= 1).
    pub ks: Vec<usize>,
    /// Metrics, each computed at every cut-off.
    pub metrics: Vec<Metric>,
    /// Tie rule.
    pub ties: Ties,
    /// Keep each user's top-`k` items (for item coverage), ties broken by lower item id.
    pub top_k: Option<usize>,
}

impl RankingSpec {
    /// Checks the spec.
    pub fn validate(&self) -> Result<()> {
        if self.ks.is_empty() || self.ks.contains(&0) {
            return Err(RecforgeError::config(format!(
                "ks must be a non-empty list of cut-offs >= 1, got {:?}",
                self.ks
            )));
        }
        if self.metrics.is_empty() && self.top_k.is_none() {
            return Err(RecforgeError::config("no metric asked for"));
        }
        Ok(())
    }
    /// Number of values per user (metrics x ks, metric-major).
    pub fn width(&self) -> usize {
        self.metrics.len() * self.ks.len()
    }
}

/// A score type that ranking compares exactly as given: `f32`, `f64` or `i64`. Converting scores
/// to a narrower type could turn a strict order into a tie (1000.0 vs 1000.00001 as `f32`,
/// 2^40 vs 2^40 + 1 as `f32`, 2^53 + 1 as `f64`), so the ranking code is generic instead.
pub trait Score: Copy + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    /// Whether the value is NaN (never for integers).
    fn is_nan(self) -> bool;
}

impl Score for f32 {
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Score for f64 {
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

impl Score for i64 {
    fn is_nan(self) -> bool {
        false
    }
}

/// Scores of a batch of users: row `rows[j]` of a row-major `[n_rows, n_items]` buffer belongs to
/// user `users[j]`.
#[derive(Debug, Clone, Copy)]
pub struct ScoreBatch<'a, T: Score = f32> {
    /// The score buffer.
    pub scores: &'a [T],
    /// Items per row.
    pub n_items: usize,
    /// User id of each evaluated user.
    pub users: &'a [u32],
    /// Row of each evaluated user in `scores`.
    pub rows: &'a [usize],
}

/// Per-user results of a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    /// `users x spec.width()` values, row-major, metric-major within a row.
    pub values: Vec<f64>,
    /// Number of candidates of each user.
    pub n_candidates: Vec<u64>,
    /// Number of relevant items of each user (distinct).
    pub n_relevant: Vec<u64>,
    /// Relevant items that also appeared in an exclusion set (they stay candidates).
    pub relevant_in_exclude: u64,
    /// `users x top_k` item ids (only with `spec.top_k`); short rows are padded with `u32::MAX`.
    pub top: Vec<u32>,
    /// For users with exactly one relevant item: `(above, size)` of its tie group (sampled
    /// evaluation uses it for the corrected estimates); `(0, 0)` for other users.
    pub single: Vec<(u64, u64)>,
}

/// Tie groups of relevant items with scores `rel` among candidate scores `cands` (which include
/// the relevant items themselves). `rel` must be non-empty.
pub fn tie_groups<T: Score>(rel: &[T], cands: impl Iterator<Item = T>) -> Result<Vec<TieGroup>> {
    let mut vals: Vec<T> = rel.to_vec();
    if vals.iter().any(|v| v.is_nan()) {
        return Err(RecforgeError::data("a relevant item has a NaN score"));
    }
    vals.sort_unstable_by(|a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
    let mut distinct: Vec<(T, u64)> = Vec::new();
    for v in vals {
        match distinct.last_mut() {
            Some((d, n)) if *d == v => *n += 1,
            _ => distinct.push((v, 1)),
        }
    }
    let n = distinct.len();
    let mut between = vec![0u64; n + 1];
    let mut equal = vec![0u64; n];
    if n == 1 {
        let v = distinct[0].0;
        let (mut gt, mut eq) = (0u64, 0u64);
        for x in cands {
            if x > v {
                gt += 1;
            } else if x == v {
                eq += 1;
            } else if x.is_nan() {
                return Err(RecforgeError::data("scores contain NaN"));
            }
        }
        between[0] = gt;
        equal[0] = eq;
    } else {
        let keys: Vec<T> = distinct.iter().map(|d| d.0).collect();
        for x in cands {
            if x.is_nan() {
                return Err(RecforgeError::data("scores contain NaN"));
            }
            let j = keys.partition_point(|&v| v > x);
            if j < n && keys[j] == x {
                equal[j] += 1;
            } else {
                between[j] += 1;
            }
        }
    }
    let mut groups = Vec::with_capacity(n);
    let (mut above, mut rel_above) = (0u64, 0u64);
    for (j, &(_, r)) in distinct.iter().enumerate() {
        above += between[j];
        groups.push(TieGroup {
            above,
            size: equal[j],
            relevant: r,
            relevant_above: rel_above,
        });
        above += equal[j];
        rel_above += r;
    }
    Ok(groups)
}

/// `(greater, equal, nan)` counts of `row` against `v`, written so the compiler vectorises it.
fn count_against<T: Score>(row: &[T], v: T) -> (u64, u64, u64) {
    let (mut gt, mut eq, mut nan) = (0u64, 0u64, 0u64);
    for chunk in row.chunks(1 << 16) {
        let (mut g, mut e, mut n) = (0u32, 0u32, 0u32);
        for &x in chunk {
            g += (x > v) as u32;
            e += (x == v) as u32;
            n += x.is_nan() as u32;
        }
        gt += g as u64;
        eq += e as u64;
        nan += n as u64;
    }
    (gt, eq, nan)
}

/// The one tie group of `n_rel` relevant items that all score `v`, among all of `row` minus the
/// items that `excluded` passes to its callback (each once).
fn single_value_groups<T: Score>(
    row: &[T],
    v: T,
    n_rel: u64,
    excluded: impl FnOnce(&mut dyn FnMut(T)),
) -> Result<Vec<TieGroup>> {
    if v.is_nan() {
        return Err(RecforgeError::data("a relevant item has a NaN score"));
    }
    let (mut gt, mut eq, mut nan) = count_against(row, v);
    excluded(&mut |x: T| {
        if x > v {
            gt -= 1;
        } else if x == v {
            eq -= 1;
        } else if x.is_nan() {
            nan -= 1;
        }
    });
    if nan > 0 {
        return Err(RecforgeError::data("scores contain NaN"));
    }
    Ok(vec![TieGroup {
        above: gt,
        size: eq,
        relevant: n_rel,
        relevant_above: 0,
    }])
}

/// Bounded min-heap entry: the worst kept item is on top (lower score, then higher id).
#[derive(PartialEq)]
struct Kept<T>(T, u32);
impl<T: Score> Eq for Kept<T> {}
impl<T: Score> Ord for Kept<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        // "Greater" = worse, so BinaryHeap's max is the first to drop.
        o.0.partial_cmp(&self.0)
            .unwrap_or(Ordering::Equal)
            .then(self.1.cmp(&o.1))
    }
}
impl<T: Score> PartialOrd for Kept<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

fn top_items<T: Score>(k: usize, cands: impl Iterator<Item = (u32, T)>, out: &mut [u32]) {
    let mut heap = BinaryHeap::with_capacity(k + 1);
    for (i, x) in cands {
        if heap.len() < k {
            heap.push(Kept(x, i));
        } else if let Some(worst) = heap.peek() {
            if Kept(x, i) < *worst {
                heap.pop();
                heap.push(Kept(x, i));
            }
        }
    }
    let sorted = heap.into_sorted_vec(); // best first
    for (slot, kept) in out.iter_mut().zip(
        sorted
            .iter()
            .map(|k| k.1)
            .chain(std::iter::repeat(u32::MAX)),
    ) {
        *slot = kept;
    }
}

fn check_space(name: &str, x: &Interactions, test: &Interactions) -> Result<()> {
    if x.n_users() != test.n_users() || x.n_items() != test.n_items() {
        return Err(RecforgeError::data(format!(
            "{name} has {} users x {} items but test has {} x {}: they must share one id space",
            x.n_users(),
            x.n_items(),
            test.n_users(),
            test.n_items()
        )));
    }
    Ok(())
}

fn check_batch<T: Score>(b: &ScoreBatch<'_, T>, test: &Interactions) -> Result<()> {
    if b.users.len() != b.rows.len() {
        return Err(RecforgeError::data("users and rows differ in length"));
    }
    if b.n_items == 0 || b.scores.len() % b.n_items != 0 {
        return Err(RecforgeError::data(format!(
            "a score buffer of {} values is not a whole number of rows of {} items",
            b.scores.len(),
            b.n_items
        )));
    }
    let n_rows = b.scores.len() / b.n_items;
    if let Some(&r) = b.rows.iter().find(|&&r| r >= n_rows) {
        return Err(RecforgeError::data(format!(
            "score row {r} does not exist ({n_rows} rows)"
        )));
    }
    if let Some(&u) = b.users.iter().find(|&&u| u >= test.n_users()) {
        return Err(RecforgeError::data(format!(
            "user {u} is out of range (n_users = {})",
            test.n_users()
        )));
    }
    Ok(())
}

/// Metric tables for the spec's cut-offs. A user never has more candidates than `n_items`
/// (distinct items), and a cut-off beyond the candidates gives the same positions as one at
/// their number, so the tables stop there: a huge `k` costs nothing.
fn prefix_for(spec: &RankingSpec, n_items: usize) -> Prefix {
    let max_k = spec.ks.iter().copied().max().unwrap_or(1);
    Prefix::new(max_k.min(n_items.max(1)))
}

/// Length of each user's kept top list: at most `n_items` (longer lists would be padding only).
fn top_len(spec: &RankingSpec, n_items: usize) -> Option<usize> {
    spec.top_k.map(|k| k.min(n_items))
}

fn relevant_items(test: &Interactions, u: u32) -> Vec<u32> {
    let mut rel: Vec<u32> = test.items()[test.user_range(u)].to_vec();
    rel.sort_unstable();
    rel.dedup();
    rel
}

fn fill_values(groups: &[TieGroup], n_rel: u64, spec: &RankingSpec, pre: &Prefix, out: &mut [f64]) {
    let mut idx = 0;
    for &metric in &spec.metrics {
        for &k in &spec.ks {
            out[idx] = user_metric(groups, n_rel, k as u64, metric, spec.ties, pre);
            idx += 1;
        }
    }
}

fn single_of(groups: &[TieGroup], n_rel: u64) -> (u64, u64) {
    match (n_rel, groups.first()) {
        (1, Some(g)) => (g.above, g.size),
        _ => (0, 0),
    }
}

struct UserOut {
    values: Vec<f64>,
    n_candidates: u64,
    n_relevant: u64,
    relevant_in_exclude: u64,
    top: Vec<u32>,
    single: (u64, u64),
}

fn collect(outs: Vec<UserOut>) -> BatchResult {
    let mut r = BatchResult::default();
    for o in outs {
        r.values.extend(o.values);
        r.n_candidates.push(o.n_candidates);
        r.n_relevant.push(o.n_relevant);
        r.relevant_in_exclude += o.relevant_in_exclude;
        r.top.extend(o.top);
        r.single.push(o.single);
    }
    r
}

/// Full-ranking evaluation of a batch: for each user, every item is a candidate except those the
/// user has in `exclude` (relevant test items always stay candidates and are counted in
/// `relevant_in_exclude` when they also appear there). Each user must have a test item.
pub fn full_ranking<T: Score>(
    batch: &ScoreBatch<'_, T>,
    test: &Interactions,
    exclude: &[&Interactions],
    spec: &RankingSpec,
) -> Result<BatchResult> {
    spec.validate()?;
    check_batch(batch, test)?;
    if batch.n_items != test.n_items() as usize {
        return Err(RecforgeError::data(format!(
            "scores have {} items per user but the interactions have {} items",
            batch.n_items,
            test.n_items()
        )));
    }
    for (j, x) in exclude.iter().enumerate() {
        check_space(&format!("exclude[{j}]"), x, test)?;
    }
    let pre = prefix_for(spec, batch.n_items);
    let n_items = batch.n_items;
    let outs: Vec<UserOut> = batch
        .users
        .par_iter()
        .zip(batch.rows.par_iter())
        .map_init(
            || vec![0u8; n_items],
            |mark, (&u, &row)| -> Result<UserOut> {
                let scores = &batch.scores[row * n_items..(row + 1) * n_items];
                let rel = relevant_items(test, u);
                if rel.is_empty() {
                    return Err(RecforgeError::data(format!("user {u} has no test item")));
                }
                let mut n_excluded = 0u64;
                for x in exclude {
                    for &i in x.user_items(u)? {
                        if mark[i as usize] == 0 {
                            mark[i as usize] = 1;
                            n_excluded += 1;
                        }
                    }
                }
                let mut rel_in_ex = 0;
                for &i in &rel {
                    if mark[i as usize] == 1 {
                        rel_in_ex += 1;
                        n_excluded -= 1;
                    }
                    mark[i as usize] = 2;
                }
                let rel_scores: Vec<T> = rel.iter().map(|&i| scores[i as usize]).collect();
                let groups = if rel_scores.iter().all(|&x| x == rel_scores[0]) {
                    // One score to compare with (always so for one test item): count over the
                    // whole row without branches, then take the excluded items back out.
                    single_value_groups(scores, rel_scores[0], rel.len() as u64, |each| {
                        for x in exclude {
                            for &i in x.user_items(u).unwrap_or(&[]) {
                                if mark[i as usize] == 1 {
                                    mark[i as usize] = 3; // counted once, even if repeated
                                    each(scores[i as usize]);
                                }
                            }
                        }
                    })
                } else {
                    let cands = scores
                        .iter()
                        .zip(mark.iter())
                        .filter(|(_, &m)| m != 1)
                        .map(|(&x, _)| x);
                    tie_groups(&rel_scores, cands)
                };
                let mut top = Vec::new();
                if let (Ok(_), Some(k)) = (&groups, top_len(spec, n_items)) {
                    top = vec![u32::MAX; k];
                    let cands = scores
                        .iter()
                        .zip(mark.iter())
                        .enumerate()
                        .filter(|(_, (_, &m))| m != 1 && m != 3)
                        .map(|(i, (&x, _))| (i as u32, x));
                    top_items(k, cands, &mut top);
                }
                // Reset the marks of this user only.
                for x in exclude {
                    for &i in x.user_items(u)? {
                        mark[i as usize] = 0;
                    }
                }
                for &i in &rel {
                    mark[i as usize] = 0;
                }
                let groups = groups.map_err(|e| RecforgeError::data(format!("user {u}: {e}")))?;
                let mut values = vec![0.0; spec.width()];
                fill_values(&groups, rel.len() as u64, spec, &pre, &mut values);
                Ok(UserOut {
                    values,
                    n_candidates: n_items as u64 - n_excluded,
                    n_relevant: rel.len() as u64,
                    relevant_in_exclude: rel_in_ex,
                    top,
                    single: single_of(&groups, rel.len() as u64),
                })
            },
        )
        .collect::<Result<_>>()?;
    Ok(collect(outs))
}

/// Sampled evaluation of a batch: each user's candidates are its (distinct) test items plus its
/// row of `negatives` (`[n_users, n_neg]`, by user id). A negative that is out of range, repeated,
/// or one of the user's test items is an error.
pub fn sampled<T: Score>(
    batch: &ScoreBatch<'_, T>,
    test: &Interactions,
    negatives: &[i64],
    n_neg: usize,
    spec: &RankingSpec,
) -> Result<BatchResult> {
    spec.validate()?;
    check_batch(batch, test)?;
    if negatives.len() != test.n_users() as usize * n_neg {
        return Err(RecforgeError::data(format!(
            "negatives must be [n_users = {}, n_negatives = {n_neg}], got {} values",
            test.n_users(),
            negatives.len()
        )));
    }
    let pre = prefix_for(spec, batch.n_items);
    let n_items = batch.n_items;
    let outs: Vec<UserOut> = batch
        .users
        .par_iter()
        .zip(batch.rows.par_iter())
        .map(|(&u, &row)| -> Result<UserOut> {
            let scores = &batch.scores[row * n_items..(row + 1) * n_items];
            let rel = relevant_items(test, u);
            if rel.is_empty() {
                return Err(RecforgeError::data(format!("user {u} has no test item")));
            }
            let negs = &negatives[u as usize * n_neg..(u as usize + 1) * n_neg];
            let mut seen: Vec<u32> = Vec::with_capacity(n_neg);
            for &j in negs {
                if j < 0 || j as usize >= n_items {
                    return Err(RecforgeError::data(format!(
                        "negative item {j} of user {u} is out of range (n_items = {n_items})"
                    )));
                }
                seen.push(j as u32);
            }
            seen.sort_unstable();
            if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
                return Err(RecforgeError::data(format!(
                    "negatives of user {u} contain item {} twice",
                    w[0]
                )));
            }
            if let Some(&i) = rel.iter().find(|i| seen.binary_search(i).is_ok()) {
                return Err(RecforgeError::data(format!(
                    "negatives of user {u} contain its test item {i}"
                )));
            }
            let rel_scores: Vec<T> = rel.iter().map(|&i| scores[i as usize]).collect();
            let cands = rel_scores
                .iter()
                .copied()
                .chain(negs.iter().map(|&j| scores[j as usize]));
            let groups = tie_groups(&rel_scores, cands)
                .map_err(|e| RecforgeError::data(format!("user {u}: {e}")))?;
            let mut values = vec![0.0; spec.width()];
            fill_values(&groups, rel.len() as u64, spec, &pre, &mut values);
            let mut top = Vec::new();
            if let Some(k) = top_len(spec, n_items) {
                top = vec![u32::MAX; k];
                let cands = rel
                    .iter()
                    .map(|&i| (i, scores[i as usize]))
                    .chain(negs.iter().map(|&j| (j as u32, scores[j as usize])));
                top_items(k, cands, &mut top);
            }
            Ok(UserOut {
                values,
                n_candidates: (rel.len() + n_neg) as u64,
                n_relevant: rel.len() as u64,
                relevant_in_exclude: 0,
                top,
                single: single_of(&groups, rel.len() as u64),
            })
        })
        .collect::<Result<_>>()?;
    Ok(collect(outs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metrics: Vec<Metric>, ks: Vec<usize>) -> RankingSpec {
        RankingSpec {
            ks,
            metrics,
            ties: Ties::Expected,
            top_k: Some(2),
        }
    }

    #[test]
    fn groups_by_hand() {
        // Relevant scores 0.5 and 0.9; candidates include them.
        let cands = [0.9f32, 0.1, 0.5, 0.95, 0.5, 0.7];
        let g = tie_groups(&[0.5, 0.9], cands.iter().copied()).unwrap();
        assert_eq!(
            g,
            vec![
                TieGroup {
                    above: 1,
                    size: 1,
                    relevant: 1,
                    relevant_above: 0
                },
                TieGroup {
                    above: 3,
                    size: 2,
                    relevant: 1,
                    relevant_above: 1
                },
            ]
        );
        assert!(tie_groups(&[0.5], [f32::NAN].into_iter()).is_err());
    }

    #[test]
    fn full_ranking_masks_seen_items_and_keeps_relevant_ones() {
        // 1 user, 5 items; train has items 0 and 1 (1 is also the test item).
        let test = Interactions::from_arrays(&[0], &[1], None, None, None, Some(5)).unwrap();
        let train = Interactions::from_arrays(&[0, 0], &[0, 1], None, None, None, Some(5)).unwrap();
        let scores = [9.0f32, 3.0, 4.0, 1.0, 2.0];
        let b = ScoreBatch {
            scores: &scores,
            n_items: 5,
            users: &[0],
            rows: &[0],
        };
        let s = spec(vec![Metric::Hit, Metric::Mrr], vec![1, 2]);
        let r = full_ranking(&b, &test, &[&train], &s).unwrap();
        // Candidates: items 1..4; item 2 (4.0) beats item 1 (3.0): rank 2.
        assert_eq!(r.values, vec![0.0, 1.0, 0.0, 0.5]);
        assert_eq!(r.n_candidates, vec![4]);
        assert_eq!(r.relevant_in_exclude, 1);
        assert_eq!(r.top, vec![2, 1]);
        assert_eq!(r.single, vec![(1, 1)]);
    }

    #[test]
    fn sampled_rejects_bad_negatives() {
        let test = Interactions::from_arrays(&[0], &[1], None, None, None, Some(5)).unwrap();
        let scores = [0.0f32; 5];
        let b = ScoreBatch {
            scores: &scores,
            n_items: 5,
            users: &[0],
            rows: &[0],
        };
        let s = spec(vec![Metric::Hit], vec![1]);
        assert!(sampled(&b, &test, &[2, 2], 2, &s).is_err());
        assert!(sampled(&b, &test, &[1, 2], 2, &s).is_err());
        assert!(sampled(&b, &test, &[7, 2], 2, &s).is_err());
        let r = sampled(&b, &test, &[3, 2], 2, &s).unwrap();
        assert!((r.values[0] - 1.0 / 3.0).abs() < 1e-12); // constant scores: 1 of 3
    }

    #[test]
    fn wide_scores_keep_their_order() {
        // 1000.00001 > 1000.0 holds in f64 but not in f32; 2^53 + 1 > 2^53 holds in i64 only.
        let test = Interactions::from_arrays(&[0], &[1], None, None, None, Some(3)).unwrap();
        let s = spec(vec![Metric::Hit], vec![1]);
        let f = [1000.0f64, 1000.00001, 1000.0];
        let b = ScoreBatch {
            scores: &f,
            n_items: 3,
            users: &[0],
            rows: &[0],
        };
        assert_eq!(full_ranking(&b, &test, &[], &s).unwrap().values, vec![1.0]);
        assert_eq!(
            sampled(&b, &test, &[0, 2], 2, &s).unwrap().values,
            vec![1.0]
        );
        let big = 1i64 << 53;
        let i = [big, big + 1, big];
        let b = ScoreBatch {
            scores: &i,
            n_items: 3,
            users: &[0],
            rows: &[0],
        };
        assert_eq!(full_ranking(&b, &test, &[], &s).unwrap().values, vec![1.0]);
        assert_eq!(
            sampled(&b, &test, &[0, 2], 2, &s).unwrap().values,
            vec![1.0]
        );
        // Two relevant items with distinct scores (the general tie-group path), and coverage.
        let test = Interactions::from_arrays(&[0, 0], &[1, 2], None, None, None, Some(3)).unwrap();
        let i = [big + 2, big + 1, big];
        let b = ScoreBatch {
            scores: &i,
            n_items: 3,
            users: &[0],
            rows: &[0],
        };
        let r = full_ranking(&b, &test, &[], &s).unwrap();
        assert_eq!(r.values, vec![0.0]);
        assert_eq!(r.top, vec![0, 1]);
    }
}
