//! User-item interactions in compressed sparse row (CSR) form.
//!
//! Row `u` holds the interactions of user `u` in *time order*: sorted by timestamp, ties broken by
//! the original row index of the input (so equal timestamps never make the order depend on sort
//! internals). Without timestamps the input row order is the time order. Each entry remembers its
//! original row index (`rows`), so any subset (a split, a k-core) can be traced back to the input
//! table.

use rayon::prelude::*;

use crate::error::{RecforgeError, Result};

/// Columns of interactions given by dense ids, one entry per interaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Columns {
    /// Dense user id of each interaction.
    pub users: Vec<u32>,
    /// Dense item id of each interaction.
    pub items: Vec<u32>,
    /// Rating of each interaction, if any.
    pub ratings: Option<Vec<f32>>,
    /// Timestamp of each interaction (any integer unit), if any.
    pub timestamps: Option<Vec<i64>>,
    /// Original row index of each interaction.
    pub rows: Vec<u64>,
}

/// Interactions of `n_users` users with `n_items` items, stored user-major (CSR).
#[derive(Debug, Clone, PartialEq)]
pub struct Interactions {
    n_users: u32,
    n_items: u32,
    indptr: Vec<usize>,
    items: Vec<u32>,
    ratings: Option<Vec<f32>>,
    timestamps: Option<Vec<i64>>,
    rows: Vec<u64>,
}

fn check_id<T: Copy + Into<i64>>(values: &[T], name: &str) -> Result<u32> {
    let mut max: i64 = -1;
    for (i, v) in values.iter().enumerate() {
        let v: i64 = (*v).into();
        if v < 0 || v >= u32::MAX as i64 {
            return Err(RecforgeError::data(format!(
                "{name}[{i}] = {v} is not a valid dense id (ids must be in 0..{})",
                u32::MAX
            )));
        }
        max = max.max(v);
    }
    Ok((max + 1) as u32)
}

fn resolve_count(given: Option<u64>, needed: u32, name: &str, ids: &str) -> Result<u32> {
    match given {
        None => Ok(needed),
        Some(n) if n >= u32::MAX as u64 => Err(RecforgeError::data(format!(
            "{name} = {n} is too large (at most {})",
            u32::MAX - 1
        ))),
        Some(n) if (n as u32) < needed => Err(RecforgeError::data(format!(
            "{name} = {n} but {ids} contains id {}; {name} must be at least {needed}",
            needed - 1
        ))),
        Some(n) => Ok(n as u32),
    }
}

/// Checks columns of ids (and optional ratings/timestamps) and returns `(n_users, n_items)`.
fn validate<T: Copy + Into<i64>>(
    users: &[T],
    items: &[T],
    ratings: Option<&[f32]>,
    timestamps: Option<&[i64]>,
    n_users: Option<u64>,
    n_items: Option<u64>,
) -> Result<(u32, u32)> {
    let n = users.len();
    if items.len() != n {
        return Err(RecforgeError::data(format!(
            "users has {n} entries but items has {}",
            items.len()
        )));
    }
    if let Some(r) = ratings {
        if r.len() != n {
            return Err(RecforgeError::data(format!(
                "users has {n} entries but ratings has {}",
                r.len()
            )));
        }
        if let Some(i) = r.iter().position(|x| !x.is_finite()) {
            return Err(RecforgeError::data(format!(
                "ratings[{i}] = {} is not a finite number",
                r[i]
            )));
        }
    }
    if let Some(t) = timestamps {
        if t.len() != n {
            return Err(RecforgeError::data(format!(
                "users has {n} entries but timestamps has {}",
                t.len()
            )));
        }
    }
    let need_users = check_id(users, "users")?;
    let need_items = check_id(items, "items")?;
    Ok((
        resolve_count(n_users, need_users, "n_users", "users")?,
        resolve_count(n_items, need_items, "n_items", "items")?,
    ))
}

impl Interactions {
    /// Builds interactions from columns of dense ids.
    ///
    /// `users` and `items` must have equal lengths and hold ids in `0..n_users` / `0..n_items`
    /// (inferred as max + 1 when `None`); `ratings` must be finite; optional columns must have the
    /// same length. Each entry's original row index is its position in the input.
    pub fn from_arrays(
        users: &[i64],
        items: &[i64],
        ratings: Option<&[f32]>,
        timestamps: Option<&[i64]>,
        n_users: Option<u64>,
        n_items: Option<u64>,
    ) -> Result<Self> {
        let (n_users, n_items) = validate(users, items, ratings, timestamps, n_users, n_items)?;
        let n = users.len();
        let columns = Columns {
            users: users.iter().map(|&u| u as u32).collect(),
            items: items.iter().map(|&i| i as u32).collect(),
            ratings: ratings.map(<[f32]>::to_vec),
            timestamps: timestamps.map(<[i64]>::to_vec),
            rows: (0..n as u64).collect(),
        };
        Ok(Self::from_columns(columns, n_users, n_items))
    }

    /// Builds CSR interactions from already validated columns (ids below the counts).
    ///
    /// Entries are grouped by user with a stable counting sort, then each user's entries are
    /// ordered by `(timestamp, row)`, or by `row` alone without timestamps.
    pub(crate) fn from_columns(c: Columns, n_users: u32, n_items: u32) -> Self {
        let n = c.users.len();
        let mut indptr = vec![0usize; n_users as usize + 1];
        for &u in &c.users {
            indptr[u as usize + 1] += 1;
        }
        for u in 0..n_users as usize {
            indptr[u + 1] += indptr[u];
        }
        // Stable counting sort of entry positions by user.
        let mut next = indptr.clone();
        let mut perm = vec![0usize; n];
        for (pos, &u) in c.users.iter().enumerate() {
            perm[next[u as usize]] = pos;
            next[u as usize] += 1;
        }
        // Order each user's entries by (timestamp, row); rows are unique, so the key is total.
        let rows = &c.rows;
        let key_ts = c.timestamps.as_deref();
        let mut segments: Vec<&mut [usize]> = Vec::with_capacity(n_users as usize);
        let mut rest: &mut [usize] = &mut perm;
        for u in 0..n_users as usize {
            let (seg, tail) = rest.split_at_mut(indptr[u + 1] - indptr[u]);
            segments.push(seg);
            rest = tail;
        }
        segments.into_par_iter().for_each(|seg| match key_ts {
            Some(ts) => seg.sort_unstable_by_key(|&p| (ts[p], rows[p])),
            None => seg.sort_unstable_by_key(|&p| rows[p]),
        });
        let gather_u32 = |v: &[u32]| perm.par_iter().map(|&p| v[p]).collect::<Vec<_>>();
        Self {
            n_users,
            n_items,
            items: gather_u32(&c.items),
            ratings: c
                .ratings
                .as_ref()
                .map(|r| perm.par_iter().map(|&p| r[p]).collect()),
            timestamps: c
                .timestamps
                .as_ref()
                .map(|t| perm.par_iter().map(|&p| t[p]).collect()),
            rows: perm.par_iter().map(|&p| c.rows[p]).collect(),
            indptr,
        }
    }

    /// An empty set of interactions over the given id space.
    pub fn empty(n_users: u32, n_items: u32, ratings: bool, timestamps: bool) -> Self {
        Self {
            n_users,
            n_items,
            indptr: vec![0; n_users as usize + 1],
            items: Vec::new(),
            ratings: ratings.then(Vec::new),
            timestamps: timestamps.then(Vec::new),
            rows: Vec::new(),
        }
    }

    /// Number of users (rows), including users without interactions.
    pub fn n_users(&self) -> u32 {
        self.n_users
    }
    /// Number of items (columns), including items without interactions.
    pub fn n_items(&self) -> u32 {
        self.n_items
    }
    /// Number of stored interactions.
    pub fn n_interactions(&self) -> usize {
        self.items.len()
    }
    /// CSR row pointer: user `u`'s entries are `indptr[u]..indptr[u + 1]`.
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }
    /// Item ids of all entries, user-major, each user in time order.
    pub fn items(&self) -> &[u32] {
        &self.items
    }
    /// Ratings in entry order, if the interactions carry ratings.
    pub fn ratings(&self) -> Option<&[f32]> {
        self.ratings.as_deref()
    }
    /// Timestamps in entry order, if the interactions carry timestamps.
    pub fn timestamps(&self) -> Option<&[i64]> {
        self.timestamps.as_deref()
    }
    /// Original input row index of each entry.
    pub fn rows(&self) -> &[u64] {
        &self.rows
    }
    /// Entry range of user `u`. Panics if `u >= n_users` (callers check ids first).
    pub fn user_range(&self, u: u32) -> std::ops::Range<usize> {
        self.indptr[u as usize]..self.indptr[u as usize + 1]
    }
    /// Items of user `u` in time order, or an error for an unknown user.
    pub fn user_items(&self, u: u32) -> Result<&[u32]> {
        if u >= self.n_users {
            return Err(RecforgeError::data(format!(
                "user {u} is out of range (n_users = {})",
                self.n_users
            )));
        }
        Ok(&self.items[self.user_range(u)])
    }
    /// Number of interactions of each user.
    pub fn user_degrees(&self) -> Vec<u32> {
        self.indptr
            .windows(2)
            .map(|w| (w[1] - w[0]) as u32)
            .collect()
    }
    /// Number of interactions of each item.
    pub fn item_degrees(&self) -> Vec<u32> {
        let mut d = vec![0u32; self.n_items as usize];
        for &i in &self.items {
            d[i as usize] += 1;
        }
        d
    }

    /// All entries as columns, user-major and in time order within each user.
    pub fn to_columns(&self) -> Columns {
        let mut users = Vec::with_capacity(self.items.len());
        for u in 0..self.n_users {
            let len = self.indptr[u as usize + 1] - self.indptr[u as usize];
            users.extend(std::iter::repeat_n(u, len));
        }
        Columns {
            users,
            items: self.items.clone(),
            ratings: self.ratings.clone(),
            timestamps: self.timestamps.clone(),
            rows: self.rows.clone(),
        }
    }

    /// The entries whose `keep` flag is set, in the same id space (a subset keeps CSR order).
    pub fn select(&self, keep: &[bool]) -> Result<Self> {
        if keep.len() != self.items.len() {
            return Err(RecforgeError::data(format!(
                "keep has {} flags for {} interactions",
                keep.len(),
                self.items.len()
            )));
        }
        let mut indptr = Vec::with_capacity(self.indptr.len());
        indptr.push(0);
        let mut count = 0usize;
        for u in 0..self.n_users {
            count += keep[self.user_range(u)].iter().filter(|&&k| k).count();
            indptr.push(count);
        }
        let pick_u32 = |v: &[u32]| {
            v.iter()
                .zip(keep)
                .filter(|(_, &k)| k)
                .map(|(&x, _)| x)
                .collect()
        };
        Ok(Self {
            n_users: self.n_users,
            n_items: self.n_items,
            indptr,
            items: pick_u32(&self.items),
            ratings: self.ratings.as_ref().map(|r| {
                r.iter()
                    .zip(keep)
                    .filter(|(_, &k)| k)
                    .map(|(&x, _)| x)
                    .collect()
            }),
            timestamps: self.timestamps.as_ref().map(|t| {
                t.iter()
                    .zip(keep)
                    .filter(|(_, &k)| k)
                    .map(|(&x, _)| x)
                    .collect()
            }),
            rows: self
                .rows
                .iter()
                .zip(keep)
                .filter(|(_, &k)| k)
                .map(|(&x, _)| x)
                .collect(),
        })
    }

    /// The same entries with users restricted to `kept_users` (ascending old ids, which must hold
    /// every user with entries) and items renumbered by `item_new` (old id -> new id, monotone).
    pub(crate) fn renumbered(self, kept_users: &[u32], item_new: &[u32]) -> Self {
        let n_items = item_new.iter().filter(|&&i| i != u32::MAX).count() as u32;
        let mut indptr = Vec::with_capacity(kept_users.len() + 1);
        indptr.push(0);
        for &u in kept_users {
            indptr.push(self.indptr[u as usize + 1]);
        }
        Self {
            n_users: kept_users.len() as u32,
            n_items,
            indptr,
            items: self.items.iter().map(|&i| item_new[i as usize]).collect(),
            ratings: self.ratings,
            timestamps: self.timestamps,
            rows: self.rows,
        }
    }

    /// Joins interactions over one id space (for example train + valid), keeping each entry's
    /// original row index; each user's entries are re-ordered by `(timestamp, row)`.
    pub fn concat(parts: &[&Self]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| RecforgeError::data("concat needs at least one Interactions"))?;
        for (k, p) in parts.iter().enumerate() {
            if p.n_users != first.n_users || p.n_items != first.n_items {
                return Err(RecforgeError::data(format!(
                    "part {k} has {} users x {} items but part 0 has {} x {}: concat needs one id space",
                    p.n_users, p.n_items, first.n_users, first.n_items
                )));
            }
            if p.ratings.is_some() != first.ratings.is_some()
                || p.timestamps.is_some() != first.timestamps.is_some()
            {
                return Err(RecforgeError::data(format!(
                    "part {k} and part 0 differ in having ratings or timestamps"
                )));
            }
        }
        let mut all = Columns {
            ratings: first.ratings.as_ref().map(|_| Vec::new()),
            timestamps: first.timestamps.as_ref().map(|_| Vec::new()),
            ..Columns::default()
        };
        for p in parts {
            let c = p.to_columns();
            all.users.extend(c.users);
            all.items.extend(c.items);
            if let (Some(a), Some(b)) = (all.ratings.as_mut(), c.ratings) {
                a.extend(b);
            }
            if let (Some(a), Some(b)) = (all.timestamps.as_mut(), c.timestamps) {
                a.extend(b);
            }
            all.rows.extend(c.rows);
        }
        Ok(Self::from_columns(all, first.n_users, first.n_items))
    }

    /// Re-assembles interactions from stored columns (for unpickling), validating everything.
    pub fn from_parts(c: Columns, n_users: u64, n_items: u64) -> Result<Self> {
        let (n_users, n_items) = validate(
            &c.users,
            &c.items,
            c.ratings.as_deref(),
            c.timestamps.as_deref(),
            Some(n_users),
            Some(n_items),
        )?;
        if c.rows.len() != c.users.len() {
            return Err(RecforgeError::data(format!(
                "rows has {} entries for {} interactions",
                c.rows.len(),
                c.users.len()
            )));
        }
        Ok(Self::from_columns(c, n_users, n_items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Interactions {
        // user, item, ts ; rows 0..6
        let users = [1, 0, 1, 0, 1, 2];
        let items = [5, 3, 4, 2, 1, 0];
        let ts = [30, 10, 20, 10, 20, 5];
        Interactions::from_arrays(&users, &items, None, Some(&ts), None, Some(6)).unwrap()
    }

    #[test]
    fn csr_is_user_major_and_time_ordered_with_row_tie_break() {
        let x = small();
        assert_eq!(x.n_users(), 3);
        assert_eq!(x.n_items(), 6);
        assert_eq!(x.n_interactions(), 6);
        assert_eq!(x.indptr(), &[0, 2, 5, 6]);
        // user 0: rows 1 (ts 10) and 3 (ts 10): tie broken by row.
        assert_eq!(x.user_items(0).unwrap(), &[3, 2]);
        // user 1: rows 0 (ts 30), 2 (ts 20), 4 (ts 20) -> 2, 4, 0.
        assert_eq!(x.user_items(1).unwrap(), &[4, 1, 5]);
        assert_eq!(x.rows(), &[1, 3, 2, 4, 0, 5]);
        assert_eq!(x.user_degrees(), vec![2, 3, 1]);
        assert_eq!(x.item_degrees(), vec![1, 1, 1, 1, 1, 1]);
        assert!(x.user_items(3).is_err());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Interactions::from_arrays(&[0, 1], &[0], None, None, None, None).is_err());
        assert!(Interactions::from_arrays(&[0, -1], &[0, 1], None, None, None, None).is_err());
        assert!(Interactions::from_arrays(&[0, 5], &[0, 1], None, None, Some(3), None).is_err());
        assert!(
            Interactions::from_arrays(&[0], &[0], Some(&[f32::NAN]), None, None, None).is_err()
        );
        assert!(Interactions::from_arrays(&[0], &[0], None, Some(&[1, 2]), None, None).is_err());
        let e = Interactions::from_arrays(&[0, 7], &[1, 2], None, None, Some(4), None).unwrap_err();
        assert!(e.to_string().contains("n_users = 4"), "{e}");
    }

    #[test]
    fn select_and_concat_round_trip() {
        let x = small();
        let keep = [true, false, true, false, true, false];
        let a = x.select(&keep).unwrap();
        let b = x.select(&keep.map(|k| !k)).unwrap();
        assert_eq!(a.n_interactions() + b.n_interactions(), 6);
        let back = Interactions::concat(&[&a, &b]).unwrap();
        assert_eq!(back, x);
    }

    #[test]
    fn from_parts_restores_rows() {
        let x = small();
        let y = Interactions::from_parts(x.to_columns(), 3, 6).unwrap();
        assert_eq!(x, y);
    }
}
