//! Ranking evaluation: top-K metrics with one tie rule, full ranking with seen items masked,
//! sampled (1 + N) evaluation, and bias-corrected estimates from sampled ranks.

pub mod corrected;
pub mod metrics;
pub mod rank;

pub use corrected::corrected_hit_values;
pub use metrics::{user_metric, Metric, Prefix, TieGroup, Ties};
pub use rank::{full_ranking, sampled, tie_groups, BatchResult, RankingSpec, Score, ScoreBatch};
