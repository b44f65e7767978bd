//! Negative sampling: items a user has not interacted with.
//!
//! - [`eval_negatives`]: N distinct negatives per user for sampled evaluation (SASRec / CLLM4Rec
//!   style), never an item the user has in any of the exclusion sets.
//! - [`training_negatives`]: k negatives per training interaction for BPR-style losses, never one of
//!   the user's training items.
//!
//! Draws are uniform or proportional to item popularity (alias method). Sparse users use rejection
//! sampling against their sorted item list; users who interacted with most items fall back to
//! enumerating what is left (uniform: partial Fisher-Yates; popularity: Efraimidis-Spirakis keys,
//! the same distribution as rejecting repeats). Each user draws from its own stream
//! `Rng::new(seed, user)`, so the output does not depend on the number of threads.

use rayon::prelude::*;

use super::alias::AliasTable;
use crate::data::Interactions;
use crate::error::{RecforgeError, Result};
use crate::rng::{splitmix64, Rng};

/// How negatives are drawn.
#[derive(Debug, Clone)]
pub enum Strategy {
    /// Every allowed item equally likely.
    Uniform,
    /// Proportional to the given item weights (items of weight 0 are never drawn).
    Popularity {
        /// Alias table over all items.
        table: AliasTable,
        /// The weights themselves (for the enumeration fallback).
        weights: Vec<f64>,
    },
}

impl Strategy {
    /// A popularity strategy from per-item weights.
    pub fn popularity(weights: Vec<f64>) -> Result<Self> {
        let table = AliasTable::new(&weights)?;
        Ok(Strategy::Popularity { table, weights })
    }

    fn draw(&self, n_items: u32, rng: &mut Rng) -> u32 {
        match self {
            Strategy::Uniform => rng.below(n_items as u64) as u32,
            Strategy::Popularity { table, .. } => table.sample(rng),
        }
    }

    /// Checks that popularity weights cover exactly `n_items` items.
    pub fn check(&self, n_items: u32) -> Result<()> {
        match self {
            Strategy::Popularity { weights, .. } if weights.len() != n_items as usize => {
                Err(RecforgeError::data(format!(
                    "popularity has {} weights for {n_items} items",
                    weights.len()
                )))
            }
            _ => Ok(()),
        }
    }

    fn allowed(&self, item: u32) -> bool {
        match self {
            Strategy::Uniform => true,
            Strategy::Popularity { weights, .. } => weights[item as usize] > 0.0,
        }
    }
}

/// Sorted, de-duplicated items of each user over the union of some interaction sets.
#[derive(Debug, Clone)]
pub struct UserItemSets {
    indptr: Vec<usize>,
    items: Vec<u32>,
}

impl UserItemSets {
    /// The union of `parts` (which must share one id space) per user.
    pub fn union(parts: &[&Interactions]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| RecforgeError::config("at least one interaction set is needed"))?;
        for (k, p) in parts.iter().enumerate() {
            if p.n_users() != first.n_users() || p.n_items() != first.n_items() {
                return Err(RecforgeError::data(format!(
                    "interaction set {k} has {} users x {} items but set 0 has {} x {}",
                    p.n_users(),
                    p.n_items(),
                    first.n_users(),
                    first.n_items()
                )));
            }
        }
        let per_user: Vec<Vec<u32>> = (0..first.n_users())
            .into_par_iter()
            .map(|u| {
                let mut v: Vec<u32> = parts
                    .iter()
                    .flat_map(|p| p.items()[p.user_range(u)].iter().copied())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let mut indptr = Vec::with_capacity(per_user.len() + 1);
        indptr.push(0);
        let mut items = Vec::new();
        for v in per_user {
            items.extend(v);
            indptr.push(items.len());
        }
        Ok(Self { indptr, items })
    }

    /// Sorted items of user `u`.
    pub fn of(&self, u: u32) -> &[u32] {
        &self.items[self.indptr[u as usize]..self.indptr[u as usize + 1]]
    }
}

/// Draws `n` distinct items outside `seen` (sorted). `None` if fewer than `n` are allowed.
fn draw_distinct(
    n: usize,
    n_items: u32,
    seen: &[u32],
    strategy: &Strategy,
    rng: &mut Rng,
) -> Option<Vec<u32>> {
    let mut out: Vec<u32> = Vec::with_capacity(n);
    // Rejection while the user and the draws cover less than half of the items.
    if (seen.len() + n) * 2 <= n_items as usize {
        let mut tries = 0usize;
        let budget = 64 * n + 1024;
        while out.len() < n && tries < budget {
            tries += 1;
            let c = strategy.draw(n_items, rng);
            if seen.binary_search(&c).is_err() && !out.contains(&c) {
                out.push(c);
            }
        }
        if out.len() == n {
            return Some(out);
        }
        out.clear();
    }
    // Fallback: enumerate the allowed items.
    let mut free: Vec<u32> =
        Vec::with_capacity(n_items as usize - seen.len().min(n_items as usize));
    let mut s = 0;
    for i in 0..n_items {
        if s < seen.len() && seen[s] == i {
            s += 1;
        } else if strategy.allowed(i) {
            free.push(i);
        }
    }
    if free.len() < n {
        return None;
    }
    match strategy {
        Strategy::Uniform => {
            for j in 0..n {
                let pick = j + rng.below((free.len() - j) as u64) as usize;
                free.swap(j, pick);
            }
            free.truncate(n);
            Some(free)
        }
        Strategy::Popularity { weights, .. } => {
            // Efraimidis-Spirakis: the n smallest -ln(u) / w are a weighted sample without
            // replacement.
            let mut keyed: Vec<(f64, u32)> = free
                .iter()
                .map(|&i| (-(1.0 - rng.unit_f64()).ln() / weights[i as usize], i))
                .collect();
            keyed.select_nth_unstable_by(n - 1, |a, b| a.0.total_cmp(&b.0));
            keyed.truncate(n);
            keyed.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            Some(keyed.into_iter().map(|k| k.1).collect())
        }
    }
}

/// `n` distinct negatives for every user flagged in `wanted` (row-major `[n_users, n]`; rows of
/// other users are `-1`). A wanted user with fewer than `n` allowed items is an error naming it.
pub fn eval_negatives(
    n_items: u32,
    seen: &UserItemSets,
    wanted: &[bool],
    n: usize,
    strategy: &Strategy,
    seed: u64,
) -> Result<Vec<i64>> {
    if n == 0 {
        return Err(RecforgeError::config("n must be >= 1"));
    }
    strategy.check(n_items)?;
    let rows: Vec<Vec<i64>> = wanted
        .par_iter()
        .enumerate()
        .map(|(u, &want)| -> Result<Vec<i64>> {
            if !want {
                return Ok(vec![-1; n]);
            }
            let u = u as u32;
            let mut rng = Rng::new(seed, u as u64);
            let drawn =
                draw_distinct(n, n_items, seen.of(u), strategy, &mut rng).ok_or_else(|| {
                    RecforgeError::data(format!(
                    "user {u} has fewer than {n} items it has not interacted with (of {n_items}); \
                     cannot draw {n} distinct negatives"
                ))
                })?;
            Ok(drawn.into_iter().map(i64::from).collect())
        })
        .collect::<Result<_>>()?;
    Ok(rows.concat())
}

/// `k` negatives for each training interaction, in `train`'s entry order (row-major
/// `[n_interactions, k]`). Never an item of the user in `train`. With `replace = false` the `k`
/// negatives of one interaction are distinct. `epoch` varies the draws from one seed.
pub fn training_negatives(
    train: &Interactions,
    k: usize,
    strategy: &Strategy,
    replace: bool,
    seed: u64,
    epoch: u64,
) -> Result<Vec<i64>> {
    let _t = crate::timers::scope(crate::timers::Section::Sampling);
    if k == 0 {
        return Err(RecforgeError::config("k must be >= 1"));
    }
    strategy.check(train.n_items())?;
    let seen = UserItemSets::union(&[train])?;
    let n_items = train.n_items();
    let mut epoch_state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let stream_seed = splitmix64(&mut epoch_state);
    let per_user: Vec<Vec<i64>> = (0..train.n_users())
        .into_par_iter()
        .map(|u| -> Result<Vec<i64>> {
            let n_pos = train.user_range(u).len();
            if n_pos == 0 {
                return Ok(Vec::new());
            }
            let pos = seen.of(u);
            let mut rng = Rng::new(stream_seed, u as u64);
            let mut out = Vec::with_capacity(n_pos * k);
            let need = if replace { 1 } else { k };
            for _ in 0..n_pos {
                if replace && pos.len() * 2 <= n_items as usize {
                    // Fast path: independent draws, rejecting positives.
                    let mut got = 0;
                    let mut tries = 0;
                    while got < k && tries < 64 * k + 1024 {
                        tries += 1;
                        let c = strategy.draw(n_items, &mut rng);
                        if pos.binary_search(&c).is_err() {
                            out.push(c as i64);
                            got += 1;
                        }
                    }
                    if got == k {
                        continue;
                    }
                    out.truncate(out.len() - got);
                }
                let mut row = Vec::with_capacity(k);
                while row.len() < k {
                    let d =
                        draw_distinct(need, n_items, pos, strategy, &mut rng).ok_or_else(|| {
                            RecforgeError::data(format!(
                                "user {u} has fewer than {need} items it has not interacted with \
                             (of {n_items}); cannot draw negatives"
                            ))
                        })?;
                    row.extend(d.into_iter().map(i64::from));
                }
                row.truncate(k);
                out.extend(row);
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(per_user.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Interactions {
        // user 0: items 0,1 ; user 1: items 0..8 (dense) ; user 2: item 5
        let mut users = vec![0, 0];
        let mut items = vec![0, 1];
        for i in 0..8 {
            users.push(1);
            items.push(i);
        }
        users.push(2);
        items.push(5);
        Interactions::from_arrays(&users, &items, None, None, None, Some(10)).unwrap()
    }

    #[test]
    fn eval_negatives_are_distinct_unseen_and_seeded() {
        let x = data();
        let seen = UserItemSets::union(&[&x]).unwrap();
        let wanted = [true, true, false];
        let a = eval_negatives(10, &seen, &wanted, 2, &Strategy::Uniform, 3).unwrap();
        let b = eval_negatives(10, &seen, &wanted, 2, &Strategy::Uniform, 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[4..], &[-1, -1]);
        for u in 0..2 {
            let row = &a[u * 2..u * 2 + 2];
            assert_ne!(row[0], row[1]);
            for &j in row {
                assert!(seen.of(u as u32).binary_search(&(j as u32)).is_err());
            }
        }
        // User 1 has only items 8, 9 left: the fallback returns exactly those.
        let mut r1 = a[2..4].to_vec();
        r1.sort();
        assert_eq!(r1, vec![8, 9]);
        // Three distinct negatives for user 1 do not exist.
        let e = eval_negatives(10, &seen, &wanted, 3, &Strategy::Uniform, 3).unwrap_err();
        assert!(e.to_string().contains("user 1"), "{e}");
    }

    #[test]
    fn popularity_never_draws_zero_weight_items() {
        let x = data();
        let seen = UserItemSets::union(&[&x]).unwrap();
        let mut w = vec![1.0; 10];
        w[9] = 0.0;
        let s = Strategy::popularity(w).unwrap();
        let a = eval_negatives(10, &seen, &[true, false, true], 5, &s, 1).unwrap();
        assert!(!a.contains(&9));
        // User 1 has only item 8 with positive weight left.
        assert!(eval_negatives(10, &seen, &[false, true, false], 2, &s, 1).is_err());
    }

    #[test]
    fn training_negatives_avoid_positives() {
        let x = data();
        for replace in [true, false] {
            let neg = training_negatives(&x, 2, &Strategy::Uniform, replace, 5, 0).unwrap();
            assert_eq!(neg.len(), x.n_interactions() * 2);
            let cols = x.to_columns();
            for (e, &u) in cols.users.iter().enumerate() {
                for &j in &neg[e * 2..e * 2 + 2] {
                    assert!(!x.user_items(u).unwrap().contains(&(j as u32)));
                }
                if !replace {
                    assert_ne!(neg[e * 2], neg[e * 2 + 1]);
                }
            }
            let other = training_negatives(&x, 2, &Strategy::Uniform, replace, 5, 1).unwrap();
            assert_ne!(neg, other);
        }
    }
}
