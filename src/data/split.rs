//! Train / validation / test splits that share one id space and never put one interaction in two
//! parts.
//!
//! - [`leave_one_out`]: per user, the last interaction (by time, ties by input row) is the test
//!   item, the second last the validation item, the rest train.
//! - [`ratio`]: fractions such as 80/10/10, per user or over all interactions, in time order or in
//!   a seeded random order.
//!
//! Every split returns a [`SplitReport`] that counts what went where, including users and
//! interactions dropped, so nothing disappears silently.

use rayon::prelude::*;

use super::interactions::Interactions;
use crate::error::{RecforgeError, Result};
use crate::rng::Rng;

/// What to do with users who have too few interactions for a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortUsers {
    /// Keep all of their interactions in train (they get no valid/test entries). The default.
    Train,
    /// Remove them from all three parts (counted in the report).
    Drop,
    /// Fail with [`RecforgeError::Split`] naming how many users are short.
    Raise,
}

impl std::str::FromStr for ShortUsers {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Self::Train),
            "drop" => Ok(Self::Drop),
            "raise" => Ok(Self::Raise),
            other => Err(RecforgeError::config(format!(
                "short_users must be 'train', 'drop' or 'raise', got {other:?}"
            ))),
        }
    }
}

/// The order in which a ratio split takes interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A seeded random permutation.
    Random,
    /// Time order (timestamp, then input row); the earliest go to train.
    Time,
}

impl std::str::FromStr for Order {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(Self::Random),
            "time" => Ok(Self::Time),
            other => Err(RecforgeError::config(format!(
                "order must be 'random' or 'time', got {other:?}"
            ))),
        }
    }
}

/// Counts of a split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitReport {
    /// Interactions in train / valid / test.
    pub n_train: usize,
    /// Interactions in valid.
    pub n_valid: usize,
    /// Interactions in test.
    pub n_test: usize,
    /// Users with too few interactions to receive a valid and a test entry.
    pub n_short_users: u32,
    /// Users removed (with `ShortUsers::Drop`).
    pub n_dropped_users: u32,
    /// Interactions removed with those users.
    pub n_dropped_interactions: usize,
}

/// A split: three parts over the input's id space plus its report.
#[derive(Debug, Clone)]
pub struct Split {
    /// Training interactions.
    pub train: Interactions,
    /// Validation interactions.
    pub valid: Interactions,
    /// Test interactions.
    pub test: Interactions,
    /// What went where.
    pub report: SplitReport,
}

/// Part label of each entry.
const TRAIN: u8 = 0;
const VALID: u8 = 1;
const TEST: u8 = 2;
const DROP: u8 = 3;

fn assemble(x: &Interactions, label: &[u8], n_short: u32, n_dropped_users: u32) -> Result<Split> {
    let part = |p: u8| -> Result<Interactions> {
        let keep: Vec<bool> = label.iter().map(|&l| l == p).collect();
        x.select(&keep)
    };
    let (train, valid, test) = (part(TRAIN)?, part(VALID)?, part(TEST)?);
    let report = SplitReport {
        n_train: train.n_interactions(),
        n_valid: valid.n_interactions(),
        n_test: test.n_interactions(),
        n_short_users: n_short,
        n_dropped_users,
        n_dropped_interactions: label.iter().filter(|&&l| l == DROP).count(),
    };
    Ok(Split {
        train,
        valid,
        test,
        report,
    })
}

/// Leave-one-out by time: per user with at least 3 interactions, the last one (timestamp, then
/// input row) goes to test, the second last to valid, the rest to train. Users with 1 or 2
/// interactions are handled by `short_users`.
pub fn leave_one_out(x: &Interactions, short_users: ShortUsers) -> Result<Split> {
    let degrees = x.user_degrees();
    let short: Vec<u32> = (0..x.n_users())
        .filter(|&u| (1..3).contains(&degrees[u as usize]))
        .collect();
    if short_users == ShortUsers::Raise && !short.is_empty() {
        return Err(RecforgeError::split(format!(
            "leave_one_out needs at least 3 interactions per user, but {} of {} users have 1 or 2 \
             (first: user {}); use short_users='train' or 'drop', or filter with k_core first",
            short.len(),
            x.n_users(),
            short[0]
        )));
    }
    let mut label = vec![TRAIN; x.n_interactions()];
    for u in 0..x.n_users() {
        let r = x.user_range(u);
        let n = r.len();
        if n >= 3 {
            label[r.end - 1] = TEST;
            label[r.end - 2] = VALID;
        } else if n > 0 && short_users == ShortUsers::Drop {
            label[r].fill(DROP);
        }
    }
    let dropped = if short_users == ShortUsers::Drop {
        short.len() as u32
    } else {
        0
    };
    assemble(x, &label, short.len() as u32, dropped)
}

/// Sizes of (train, valid, test) for `n` interactions, following RecBole's rule: valid and test
/// get `floor(n * f)`, train the rest; then a part whose expected size `n * f` lies in (0, 1)
/// gets one interaction taken from train, test first, as long as train keeps more than one.
pub fn ratio_counts(n: usize, fractions: [f64; 3]) -> [usize; 3] {
    let mut cnt = [0usize; 3];
    cnt[1] = (fractions[1] * n as f64).floor() as usize;
    cnt[2] = (fractions[2] * n as f64).floor() as usize;
    cnt[0] = n - cnt[1] - cnt[2];
    for part in [2usize, 1] {
        if cnt[0] <= 1 {
            break;
        }
        let expected = fractions[part] * n as f64;
        if expected > 0.0 && expected < 1.0 {
            cnt[part] += 1;
            cnt[0] -= 1;
        }
    }
    cnt
}

fn check_fractions(fractions: [f64; 3]) -> Result<()> {
    if fractions.iter().any(|f| !f.is_finite() || *f < 0.0) {
        return Err(RecforgeError::config(format!(
            "split fractions must be non-negative numbers, got {fractions:?}"
        )));
    }
    let sum: f64 = fractions.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(RecforgeError::config(format!(
            "split fractions must sum to 1, got {fractions:?} (sum {sum})"
        )));
    }
    if fractions[0] <= 0.0 {
        return Err(RecforgeError::config("the train fraction must be positive"));
    }
    Ok(())
}

/// Ratio split. With `by_user`, each user's interactions are split by [`ratio_counts`] (users with
/// fewer interactions than parts with a positive fraction are `short_users`); otherwise all
/// interactions are split as one list. `Order::Time` puts the earliest in train; `Order::Random`
/// uses a permutation drawn from `seed` (per user: stream = user id, so the result does not
/// depend on the number of threads).
pub fn ratio(
    x: &Interactions,
    fractions: [f64; 3],
    order: Order,
    by_user: bool,
    seed: u64,
    short_users: ShortUsers,
) -> Result<Split> {
    check_fractions(fractions)?;
    let n_parts = fractions.iter().filter(|&&f| f > 0.0).count();
    let mut label = vec![TRAIN; x.n_interactions()];
    if by_user {
        let degrees = x.user_degrees();
        let short: Vec<u32> = (0..x.n_users())
            .filter(|&u| degrees[u as usize] > 0 && (degrees[u as usize] as usize) < n_parts)
            .collect();
        if short_users == ShortUsers::Raise && !short.is_empty() {
            return Err(RecforgeError::split(format!(
                "this ratio split needs at least {n_parts} interactions per user, but {} of {} \
                 users have fewer (first: user {}); use short_users='train' or 'drop'",
                short.len(),
                x.n_users(),
                short[0]
            )));
        }
        // Label users in parallel: each user's labels depend only on its own stream.
        let indptr = x.indptr();
        let mut segments: Vec<(u32, &mut [u8])> = Vec::with_capacity(x.n_users() as usize);
        let mut rest: &mut [u8] = &mut label;
        for u in 0..x.n_users() {
            let (seg, tail) = rest.split_at_mut(indptr[u as usize + 1] - indptr[u as usize]);
            segments.push((u, seg));
            rest = tail;
        }
        segments.into_par_iter().for_each(|(u, seg)| {
            let n = seg.len();
            if n == 0 {
                return;
            }
            if n < n_parts {
                let l = if short_users == ShortUsers::Drop {
                    DROP
                } else {
                    TRAIN
                };
                seg.fill(l);
                return;
            }
            let [a, b, _] = ratio_counts(n, fractions);
            let mut positions: Vec<usize> = (0..n).collect();
            if order == Order::Random {
                Rng::new(seed, u as u64).shuffle(&mut positions);
            }
            for (rank, &p) in positions.iter().enumerate() {
                seg[p] = if rank < a {
                    TRAIN
                } else if rank < a + b {
                    VALID
                } else {
                    TEST
                };
            }
        });
        let dropped = if short_users == ShortUsers::Drop {
            short.len() as u32
        } else {
            0
        };
        assemble(x, &label, short.len() as u32, dropped)
    } else {
        let n = x.n_interactions();
        let mut positions: Vec<usize> = (0..n).collect();
        match order {
            Order::Random => Rng::new(seed, 0).shuffle(&mut positions),
            Order::Time => {
                let rows = x.rows();
                match x.timestamps() {
                    Some(ts) => positions.par_sort_unstable_by_key(|&p| (ts[p], rows[p])),
                    None => positions.par_sort_unstable_by_key(|&p| rows[p]),
                }
            }
        }
        let [a, b, _] = ratio_counts(n, fractions);
        for (rank, &p) in positions.iter().enumerate() {
            label[p] = if rank < a {
                TRAIN
            } else if rank < a + b {
                VALID
            } else {
                TEST
            };
        }
        assemble(x, &label, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Interactions {
        // user 0: 4 interactions, two sharing the last timestamp; user 1: 2; user 2: 3.
        let users = [0, 0, 0, 0, 1, 1, 2, 2, 2];
        let items = [0, 1, 2, 3, 0, 1, 4, 5, 6];
        let ts = [1, 5, 9, 9, 3, 4, 7, 6, 8];
        Interactions::from_arrays(&users, &items, None, Some(&ts), None, None).unwrap()
    }

    #[test]
    fn leave_one_out_by_time_with_row_tie_break() {
        let s = leave_one_out(&data(), ShortUsers::Train).unwrap();
        // user 0: items 2 and 3 share ts 9; row 3 (item 3) is later -> test, item 2 -> valid.
        assert_eq!(s.test.user_items(0).unwrap(), &[3]);
        assert_eq!(s.valid.user_items(0).unwrap(), &[2]);
        assert_eq!(s.train.user_items(0).unwrap(), &[0, 1]);
        // user 1 is short: all in train.
        assert_eq!(s.train.user_items(1).unwrap(), &[0, 1]);
        assert!(s.test.user_items(1).unwrap().is_empty());
        // user 2: times 7, 6, 8 -> order 5, 4, 6.
        assert_eq!(s.test.user_items(2).unwrap(), &[6]);
        assert_eq!(s.valid.user_items(2).unwrap(), &[4]);
        assert_eq!(s.report.n_short_users, 1);
        assert_eq!(
            (s.report.n_train, s.report.n_valid, s.report.n_test),
            (5, 2, 2)
        );
    }

    #[test]
    fn leave_one_out_drop_and_raise() {
        let s = leave_one_out(&data(), ShortUsers::Drop).unwrap();
        assert_eq!(s.report.n_dropped_users, 1);
        assert_eq!(s.report.n_dropped_interactions, 2);
        assert_eq!(s.train.n_interactions(), 3);
        let e = leave_one_out(&data(), ShortUsers::Raise).unwrap_err();
        assert!(e.to_string().contains("1 of 3 users"), "{e}");
    }

    #[test]
    fn ratio_counts_follow_recbole() {
        assert_eq!(ratio_counts(10, [0.8, 0.1, 0.1]), [8, 1, 1]);
        assert_eq!(ratio_counts(5, [0.8, 0.1, 0.1]), [3, 1, 1]);
        assert_eq!(ratio_counts(2, [0.8, 0.1, 0.1]), [1, 0, 1]);
        assert_eq!(ratio_counts(20, [0.7, 0.0, 0.3]), [14, 0, 6]);
    }

    #[test]
    fn ratio_is_a_partition_and_seeded() {
        let x = data();
        for by_user in [true, false] {
            for order in [Order::Random, Order::Time] {
                let a = ratio(&x, [0.5, 0.25, 0.25], order, by_user, 7, ShortUsers::Train).unwrap();
                let b = ratio(&x, [0.5, 0.25, 0.25], order, by_user, 7, ShortUsers::Train).unwrap();
                assert_eq!(a.train, b.train);
                assert_eq!(a.test, b.test);
                let mut rows: Vec<u64> = [&a.train, &a.valid, &a.test]
                    .iter()
                    .flat_map(|p| p.rows().to_vec())
                    .collect();
                rows.sort_unstable();
                assert_eq!(rows, (0..9).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn global_time_ratio_takes_earliest_for_train() {
        let s = ratio(
            &data(),
            [0.6, 0.2, 0.2],
            Order::Time,
            false,
            0,
            ShortUsers::Train,
        )
        .unwrap();
        // sorted ts: 1,3,4,5,6,7,8,9,9 -> counts [6? ] via ratio_counts(9): valid 1, test 1 -> 7,1,1
        let max_train = s.train.timestamps().unwrap().iter().max().copied().unwrap();
        let min_test = s.test.timestamps().unwrap().iter().min().copied().unwrap();
        assert!(max_train <= min_test);
        assert_eq!(s.report.n_train, 7);
    }

    #[test]
    fn bad_fractions_are_config_errors() {
        let x = data();
        for f in [
            [0.5, 0.5, 0.5],
            [1.2, -0.1, -0.1],
            [0.0, 0.5, 0.5],
            [f64::NAN, 0.5, 0.5],
        ] {
            assert!(matches!(
                ratio(&x, f, Order::Time, true, 0, ShortUsers::Train),
                Err(RecforgeError::Config(_))
            ));
        }
    }
}
