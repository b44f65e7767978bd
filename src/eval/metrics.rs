//! Top-K ranking metrics of one user, computed from where the user's relevant items rank.
//!
//! A user's candidates are ranked by score, highest first. Relevant items that share a score form
//! a [`TieGroup`]: `above` candidates score strictly higher, `size` candidates (the group's
//! relevant items included) score the same, `relevant` of those are relevant, and `relevant_above`
//! relevant items score strictly higher. Groups are listed from the highest score down.
//!
//! Ties have one rule, applied everywhere:
//! - [`Ties::Expected`] (the default): each metric is its expectation under random tie-breaking,
//!   i.e. inside a group every order of its `size` candidates is equally likely. A model that
//!   gives every item one score gets exactly the metric of a random ranking (Hit@K = K / number of
//!   candidates for one relevant item), never a perfect one. Closed forms keep this O(1) per group
//!   (O(K) for MRR with several relevant items in one group).
//! - [`Ties::Pessimistic`]: relevant items rank after every candidate they tie with.
//!
//! Definitions (rank is 1-based, R = number of relevant items, K the cut-off):
//! - Hit@K = 1 if some relevant item has rank <= K, else 0.
//! - Recall@K = |relevant in top K| / R.
//! - Precision@K = |relevant in top K| / K (K, not the number of candidates, also when K exceeds it).
//! - NDCG@K = sum over relevant i with rank_i <= K of 1 / log2(rank_i + 1), divided by the ideal
//!   value sum_{p=1}^{min(R, K)} 1 / log2(p + 1).
//! - MRR@K = 1 / (rank of the first relevant item) if that rank <= K, else 0.
//! - MAP@K = sum over relevant i with rank_i <= K of precision@rank_i, divided by min(R, K).

use std::str::FromStr;

use crate::error::{RecforgeError, Result};

/// A top-K metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Hit ratio (HR@K).
    Hit,
    /// Recall@K.
    Recall,
    /// Precision@K.
    Precision,
    /// Normalised discounted cumulative gain.
    Ndcg,
    /// Mean reciprocal rank (cut at K).
    Mrr,
    /// Mean average precision (cut at K).
    Map,
}

impl Metric {
    /// The metric's name in result keys (`"ndcg"` in `"ndcg@10"`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Hit => "hit",
            Metric::Recall => "recall",
            Metric::Precision => "precision",
            Metric::Ndcg => "ndcg",
            Metric::Mrr => "mrr",
            Metric::Map => "map",
        }
    }
}

impl FromStr for Metric {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hit" | "hr" | "hitrate" => Ok(Metric::Hit),
            "recall" => Ok(Metric::Recall),
            "precision" => Ok(Metric::Precision),
            "ndcg" => Ok(Metric::Ndcg),
            "mrr" => Ok(Metric::Mrr),
            "map" => Ok(Metric::Map),
            other => Err(RecforgeError::config(format!(
                "unknown metric {other:?}; known: hit, recall, precision, ndcg, mrr, map"
            ))),
        }
    }
}

/// How ties between a relevant item and other candidates are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// The expectation under a uniformly random order inside each group of equal scores.
    Expected,
    /// Relevant items rank after all candidates they tie with.
    Pessimistic,
}

impl FromStr for Ties {
    type Err = RecforgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "expected" => Ok(Ties::Expected),
            "pessimistic" => Ok(Ties::Pessimistic),
            other => Err(RecforgeError::config(format!(
                "ties must be 'expected' or 'pessimistic', got {other:?}"
            ))),
        }
    }
}

/// Relevant items of one user that share one score (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TieGroup {
    /// Candidates scoring strictly higher.
    pub above: u64,
    /// Candidates with this score, the group's relevant items included (>= 1).
    pub size: u64,
    /// Relevant items with this score (1..=size).
    pub relevant: u64,
    /// Relevant items scoring strictly higher.
    pub relevant_above: u64,
}

/// Prefix sums used by the closed forms, for positions up to `max_k`.
#[derive(Debug, Clone)]
pub struct Prefix {
    /// `dcg[n] = sum_{p=1}^{n} 1 / log2(p + 1)`.
    dcg: Vec<f64>,
    /// `harmonic[n] = sum_{p=1}^{n} 1 / p`.
    harmonic: Vec<f64>,
}

impl Prefix {
    /// Tables for cut-offs up to `max_k`.
    pub fn new(max_k: usize) -> Self {
        let mut dcg = vec![0.0; max_k + 1];
        let mut harmonic = vec![0.0; max_k + 1];
        for p in 1..=max_k {
            dcg[p] = dcg[p - 1] + 1.0 / ((p + 1) as f64).log2();
            harmonic[p] = harmonic[p - 1] + 1.0 / p as f64;
        }
        Self { dcg, harmonic }
    }
    fn dcg(&self, n: u64) -> f64 {
        self.dcg[n as usize]
    }
    fn harmonic(&self, n: u64) -> f64 {
        self.harmonic[n as usize]
    }
}

/// Positions of group `g` that fall inside the top `k`.
fn inside(g: &TieGroup, k: u64) -> u64 {
    k.saturating_sub(g.above).min(g.size)
}

/// The value of `metric` at cut-off `k` for a user whose relevant items form `groups` (highest
/// score first) out of `n_relevant` >= 1. `k` must be <= the `max_k` of `pre`.
pub fn user_metric(
    groups: &[TieGroup],
    n_relevant: u64,
    k: u64,
    metric: Metric,
    ties: Ties,
    pre: &Prefix,
) -> f64 {
    debug_assert!(n_relevant >= 1 && k >= 1);
    match ties {
        Ties::Expected => expected(groups, n_relevant, k, metric, pre),
        Ties::Pessimistic => pessimistic(groups, n_relevant, k, metric, pre),
    }
}

fn expected(groups: &[TieGroup], n_rel: u64, k: u64, metric: Metric, pre: &Prefix) -> f64 {
    let kf = k as f64;
    // Expected number of relevant items in the top k: a group contributes relevant * m / size.
    let hits = || -> f64 {
        groups
            .iter()
            .map(|g| g.relevant as f64 * inside(g, k) as f64 / g.size as f64)
            .sum()
    };
    match metric {
        Metric::Recall => hits() / n_rel as f64,
        Metric::Precision => hits() / kf,
        Metric::Hit => {
            // Only the highest group matters: every later relevant item ranks below all of it.
            let Some(g) = groups.first() else { return 0.0 };
            let m = inside(g, k);
            if m == 0 {
                return 0.0;
            }
            // P(no relevant item among the group's first m positions).
            let (size, free) = (g.size, g.size - g.relevant);
            if free < m {
                return 1.0;
            }
            let mut miss = 1.0;
            for t in 0..m {
                miss *= (free - t) as f64 / (size - t) as f64;
            }
            1.0 - miss
        }
        Metric::Ndcg => {
            let ideal = pre.dcg(n_rel.min(k));
            let dcg: f64 = groups
                .iter()
                .map(|g| {
                    let m = inside(g, k);
                    if m == 0 {
                        return 0.0;
                    }
                    g.relevant as f64 / g.size as f64 * (pre.dcg(g.above + m) - pre.dcg(g.above))
                })
                .sum();
            dcg / ideal
        }
        Metric::Mrr => {
            let Some(g) = groups.first() else { return 0.0 };
            let m = inside(g, k);
            if m == 0 {
                return 0.0;
            }
            if g.relevant == 1 {
                // The one relevant item is at each of the group's positions with probability 1/size.
                return (pre.harmonic(g.above + m) - pre.harmonic(g.above)) / g.size as f64;
            }
            // First relevant position j inside the group: P(first = j | first >= j) = r / (size - j).
            let (r, size) = (g.relevant as f64, g.size as f64);
            let mut p_reach = 1.0;
            let mut value = 0.0;
            for j in 0..m {
                let p_here = p_reach * r / (size - j as f64);
                value += p_here / (g.above + 1 + j) as f64;
                p_reach -= p_here;
                if p_reach <= 0.0 {
                    break;
                }
            }
            value
        }
        Metric::Map => {
            // A relevant item at in-group position p (probability 1/size) has rank above+1+p and,
            // in expectation, relevant_above + 1 + (relevant-1) p / (size-1) relevant items at or
            // before it. Summing (c0 + c1 p) / (above+1+p) over p < m in closed form:
            // c0 (H[b+m] - H[b]) + c1 (m - (b+1) (H[b+m] - H[b])) with b = above.
            let total: f64 = groups
                .iter()
                .map(|g| {
                    let m = inside(g, k);
                    if m == 0 {
                        return 0.0;
                    }
                    let b = g.above;
                    let h = pre.harmonic(b + m) - pre.harmonic(b);
                    let c0 = (g.relevant_above + 1) as f64;
                    let c1 = if g.size > 1 {
                        (g.relevant - 1) as f64 / (g.size - 1) as f64
                    } else {
                        0.0
                    };
                    let per_item = (c0 * h + c1 * (m as f64 - (b + 1) as f64 * h)) / g.size as f64;
                    g.relevant as f64 * per_item
                })
                .sum();
            total / n_rel.min(k) as f64
        }
    }
}

fn pessimistic(groups: &[TieGroup], n_rel: u64, k: u64, metric: Metric, pre: &Prefix) -> f64 {
    // Explicit ranks: a group's relevant items take its last `relevant` positions.
    let mut first_rank = None;
    let (mut count, mut dcg, mut ap) = (0u64, 0.0, 0.0);
    for g in groups {
        let start = g.above + g.size - g.relevant + 1;
        if start > k {
            break;
        }
        for (j, rank) in (start..=g.above + g.size).enumerate() {
            if rank > k {
                break;
            }
            first_rank.get_or_insert(rank);
            count += 1;
            dcg += 1.0 / ((rank + 1) as f64).log2();
            ap += (g.relevant_above + j as u64 + 1) as f64 / rank as f64;
        }
    }
    match metric {
        Metric::Hit => (count > 0) as u8 as f64,
        Metric::Recall => count as f64 / n_rel as f64,
        Metric::Precision => count as f64 / k as f64,
        Metric::Ndcg => dcg / pre.dcg(n_rel.min(k)),
        Metric::Mrr => first_rank.map_or(0.0, |r| 1.0 / r as f64),
        Metric::Map => ap / n_rel.min(k) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Metric; 6] = [
        Metric::Hit,
        Metric::Recall,
        Metric::Precision,
        Metric::Ndcg,
        Metric::Mrr,
        Metric::Map,
    ];

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    fn single(rank: u64) -> Vec<TieGroup> {
        vec![TieGroup {
            above: rank - 1,
            size: 1,
            relevant: 1,
            relevant_above: 0,
        }]
    }

    #[test]
    fn one_relevant_item_at_rank_3_by_hand() {
        let pre = Prefix::new(10);
        let g = single(3);
        for ties in [Ties::Expected, Ties::Pessimistic] {
            let m = |metric, k| user_metric(&g, 1, k, metric, ties, &pre);
            close(m(Metric::Hit, 2), 0.0);
            close(m(Metric::Hit, 3), 1.0);
            close(m(Metric::Recall, 5), 1.0);
            close(m(Metric::Precision, 5), 0.2);
            close(m(Metric::Ndcg, 5), 0.5); // 1/log2(4) / 1
            close(m(Metric::Mrr, 5), 1.0 / 3.0);
            close(m(Metric::Map, 5), 1.0 / 3.0);
        }
    }

    #[test]
    fn two_relevant_items_at_ranks_1_and_4_by_hand() {
        let pre = Prefix::new(10);
        let g = vec![
            TieGroup {
                above: 0,
                size: 1,
                relevant: 1,
                relevant_above: 0,
            },
            TieGroup {
                above: 3,
                size: 1,
                relevant: 1,
                relevant_above: 1,
            },
        ];
        let m = |metric, k| user_metric(&g, 2, k, metric, Ties::Expected, &pre);
        close(m(Metric::Hit, 3), 1.0);
        close(m(Metric::Recall, 3), 0.5);
        close(m(Metric::Recall, 4), 1.0);
        close(m(Metric::Precision, 4), 0.5);
        let idcg = 1.0 + 1.0 / 3f64.log2();
        close(m(Metric::Ndcg, 4), (1.0 + 1.0 / 5f64.log2()) / idcg);
        close(m(Metric::Ndcg, 3), 1.0 / idcg);
        close(m(Metric::Mrr, 4), 1.0);
        close(m(Metric::Map, 4), (1.0 + 2.0 / 4.0) / 2.0);
        close(m(Metric::Map, 3), 1.0 / 2.0);
    }

    #[test]
    fn constant_scores_give_the_random_ranking_metric() {
        // One relevant item tied with all 100 candidates.
        let pre = Prefix::new(20);
        let g = vec![TieGroup {
            above: 0,
            size: 100,
            relevant: 1,
            relevant_above: 0,
        }];
        let m = |metric| user_metric(&g, 1, 20, metric, Ties::Expected, &pre);
        close(m(Metric::Hit), 0.2);
        close(m(Metric::Recall), 0.2);
        close(m(Metric::Precision), 0.2 / 20.0);
        close(m(Metric::Ndcg), pre.dcg(20) / 100.0);
        close(m(Metric::Mrr), pre.harmonic(20) / 100.0);
        close(m(Metric::Map), pre.harmonic(20) / 100.0);
        // Pessimistic: the item ranks 100th.
        for metric in ALL {
            close(user_metric(&g, 1, 20, metric, Ties::Pessimistic, &pre), 0.0);
        }
    }

    /// Brute force: average the pessimistic metric (which is exact for a fixed order) over every
    /// order of a small tie group.
    fn brute(group: TieGroup, n_rel: u64, k: u64, metric: Metric, pre: &Prefix) -> f64 {
        let size = group.size as usize;
        let mut total = 0.0;
        let mut count = 0u64;
        // Every placement of the relevant items among the group's positions (combinations).
        for mask in 0u32..(1 << size) {
            if mask.count_ones() as u64 != group.relevant {
                continue;
            }
            let mut gs = Vec::new();
            let mut rel_before = group.relevant_above;
            for pos in 0..size {
                if mask & (1 << pos) != 0 {
                    let rank = group.above + pos as u64 + 1;
                    gs.push(TieGroup {
                        above: rank - 1,
                        size: 1,
                        relevant: 1,
                        relevant_above: rel_before,
                    });
                    rel_before += 1;
                }
            }
            total += pessimistic(&gs, n_rel, k, metric, pre);
            count += 1;
        }
        total / count as f64
    }

    #[test]
    fn expected_closed_forms_match_brute_force_over_orders() {
        let pre = Prefix::new(12);
        for size in 1..=7u64 {
            for relevant in 1..=size {
                for above in 0..4u64 {
                    for k in 1..=12u64 {
                        let g = TieGroup {
                            above,
                            size,
                            relevant,
                            relevant_above: 0,
                        };
                        for metric in ALL {
                            let want = brute(g, relevant, k, metric, &pre);
                            let got = user_metric(&[g], relevant, k, metric, Ties::Expected, &pre);
                            assert!(
                                (want - got).abs() < 1e-12,
                                "{metric:?} size {size} rel {relevant} above {above} k {k}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!("HR".parse::<Metric>().unwrap(), Metric::Hit);
        assert_eq!("ndcg".parse::<Metric>().unwrap(), Metric::Ndcg);
        assert!("auc".parse::<Metric>().is_err());
        assert!("random".parse::<Ties>().is_err());
    }
}
