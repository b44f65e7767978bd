//! Bootstrap confidence intervals (percentile and BCa) and the paired bootstrap.
//!
//! Resample `r` draws its indices from `Rng::new(seed, r)`, so the result is the same for any
//! number of threads. Quantiles use linear interpolation between order statistics (NumPy's
//! default).

use rayon::prelude::*;

use super::normal;
use crate::error::{RecforgeError, Result};
use crate::rng::Rng;

/// The statistic whose interval is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// The mean of the values.
    Mean,
    /// The square root of the mean (RMSE from squared errors).
    RootMean,
}

impl Statistic {
    fn of_sum(self, sum: f64, n: usize) -> f64 {
        let m = sum / n as f64;
        match self {
            Statistic::Mean => m,
            Statistic::RootMean => m.max(0.0).sqrt(),
        }
    }
}

/// How the interval is read off the bootstrap distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The alpha/2 and 1-alpha/2 quantiles.
    Percentile,
    /// Bias-corrected and accelerated (Efron 1987), acceleration from the jackknife.
    Bca,
}

/// A confidence interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// The statistic on the data.
    pub estimate: f64,
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Standard deviation of the bootstrap distribution.
    pub std_error: f64,
}

/// The result of a paired bootstrap of `stat(a) - stat(b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedResult {
    /// `stat(a) - stat(b)` with its percentile interval and standard error.
    pub difference: Interval,
    /// Two-sided p-value of "no difference": the share of centred bootstrap differences at least
    /// as far from zero as the observed one, `(1 + count) / (1 + resamples)`.
    pub p_value: f64,
}

fn check(values: &[f64], name: &str, n_resamples: usize, confidence: f64) -> Result<()> {
    if values.len() < 2 {
        return Err(RecforgeError::data(format!(
            "{name} needs at least 2 values, got {}",
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(RecforgeError::data(format!(
            "{name}[{i}] = {} is not finite",
            values[i]
        )));
    }
    if n_resamples < 10 {
        return Err(RecforgeError::config("n_resamples must be at least 10"));
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(RecforgeError::config(format!(
            "confidence must be in (0, 1), got {confidence}"
        )));
    }
    Ok(())
}

/// Quantile `q` of sorted values, linear interpolation.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

fn std_dev(xs: &[f64]) -> f64 {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// Bootstrap distribution of `stat(a) - stat(b)` (or of `stat(a)` when `b` is `None`).
fn resample(
    a: &[f64],
    b: Option<&[f64]>,
    stat: Statistic,
    n_resamples: usize,
    seed: u64,
) -> Vec<f64> {
    let n = a.len();
    (0..n_resamples)
        .into_par_iter()
        .map(|r| {
            let mut rng = Rng::new(seed, r as u64);
            let (mut sa, mut sb) = (0.0, 0.0);
            for _ in 0..n {
                let i = rng.below(n as u64) as usize;
                sa += a[i];
                if let Some(b) = b {
                    sb += b[i];
                }
            }
            match b {
                Some(_) => stat.of_sum(sa, n) - stat.of_sum(sb, n),
                None => stat.of_sum(sa, n),
            }
        })
        .collect()
}

/// Confidence interval of `stat(values)` from `n_resamples` bootstrap resamples.
pub fn bootstrap_ci(
    values: &[f64],
    stat: Statistic,
    n_resamples: usize,
    confidence: f64,
    method: Method,
    seed: u64,
) -> Result<Interval> {
    check(values, "values", n_resamples, confidence)?;
    let n = values.len();
    let total: f64 = values.iter().sum();
    let estimate = stat.of_sum(total, n);
    let mut boot = resample(values, None, stat, n_resamples, seed);
    let std_error = std_dev(&boot);
    boot.sort_unstable_by(f64::total_cmp);
    let alpha = 1.0 - confidence;
    let (q_low, q_high) = match method {
        Method::Percentile => (alpha / 2.0, 1.0 - alpha / 2.0),
        Method::Bca => {
            let below = boot.iter().filter(|&&t| t < estimate).count() as f64;
            let z0 = normal::ppf(below / n_resamples as f64);
            // Jackknife: the statistic without value i.
            let jack: Vec<f64> = values
                .iter()
                .map(|v| stat.of_sum(total - v, n - 1))
                .collect();
            let jm = jack.iter().sum::<f64>() / n as f64;
            let num: f64 = jack.iter().map(|j| (jm - j).powi(3)).sum();
            let den: f64 = jack.iter().map(|j| (jm - j).powi(2)).sum();
            let accel = if den > 0.0 {
                num / (6.0 * den.powf(1.5))
            } else {
                0.0
            };
            if !z0.is_finite() {
                // Every resample on one side of the estimate: BCa is undefined; so is its
                // correction, and the percentile interval is the honest answer.
                (alpha / 2.0, 1.0 - alpha / 2.0)
            } else {
                let adj = |z: f64| normal::cdf(z0 + (z0 + z) / (1.0 - accel * (z0 + z)));
                (
                    adj(normal::ppf(alpha / 2.0)),
                    adj(normal::ppf(1.0 - alpha / 2.0)),
                )
            }
        }
    };
    Ok(Interval {
        estimate,
        low: quantile(&boot, q_low),
        high: quantile(&boot, q_high),
        std_error,
    })
}

/// Paired bootstrap of `stat(a) - stat(b)` over the same units (users, ratings): each resample
/// draws one set of indices for both systems.
pub fn paired_bootstrap(
    a: &[f64],
    b: &[f64],
    stat: Statistic,
    n_resamples: usize,
    confidence: f64,
    seed: u64,
) -> Result<PairedResult> {
    if a.len() != b.len() {
        return Err(RecforgeError::data(format!(
            "paired values differ in length: {} and {}",
            a.len(),
            b.len()
        )));
    }
    check(a, "a", n_resamples, confidence)?;
    check(b, "b", n_resamples, confidence)?;
    let n = a.len();
    let observed = stat.of_sum(a.iter().sum(), n) - stat.of_sum(b.iter().sum(), n);
    let mut boot = resample(a, Some(b), stat, n_resamples, seed);
    let std_error = std_dev(&boot);
    let extreme = boot
        .iter()
        .filter(|&&d| (d - observed).abs() >= observed.abs())
        .count();
    boot.sort_unstable_by(f64::total_cmp);
    let alpha = 1.0 - confidence;
    Ok(PairedResult {
        difference: Interval {
            estimate: observed,
            low: quantile(&boot, alpha / 2.0),
            high: quantile(&boot, 1.0 - alpha / 2.0),
            std_error,
        },
        p_value: (1 + extreme) as f64 / (1 + n_resamples) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_numpy_linear() {
        let s = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 8.0);
        assert!((quantile(&s, 0.5) - 3.0).abs() < 1e-15);
        assert!((quantile(&s, 0.9) - 6.8).abs() < 1e-12);
    }

    #[test]
    fn interval_brackets_the_mean_and_is_seeded() {
        let v: Vec<f64> = (0..200).map(|i| (i % 7) as f64).collect();
        for method in [Method::Percentile, Method::Bca] {
            let a = bootstrap_ci(&v, Statistic::Mean, 2000, 0.95, method, 1).unwrap();
            let b = bootstrap_ci(&v, Statistic::Mean, 2000, 0.95, method, 1).unwrap();
            assert_eq!(a, b);
            assert!(a.low < a.estimate && a.estimate < a.high);
            // Normal theory: half-width about 1.96 sd / sqrt(n).
            let half = 1.96 * std_dev(&v) / (v.len() as f64).sqrt();
            assert!(
                ((a.high - a.low) / 2.0 - half).abs() < 0.1 * half,
                "{a:?} {half}"
            );
        }
        let r = bootstrap_ci(&v, Statistic::RootMean, 500, 0.9, Method::Bca, 0).unwrap();
        assert!((r.estimate - (v.iter().sum::<f64>() / 200.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn paired_detects_a_shift_and_not_noise() {
        let a: Vec<f64> = (0..300).map(|i| ((i * 37) % 11) as f64).collect();
        let shifted: Vec<f64> = a.iter().map(|x| x + 1.0).collect();
        let r = paired_bootstrap(&shifted, &a, Statistic::Mean, 2000, 0.95, 3).unwrap();
        assert!((r.difference.estimate - 1.0).abs() < 1e-12);
        assert!(r.p_value < 0.01);
        let same = paired_bootstrap(&a, &a, Statistic::Mean, 500, 0.95, 3).unwrap();
        assert_eq!(same.p_value, 1.0);
        assert!(paired_bootstrap(&a, &a[1..], Statistic::Mean, 500, 0.95, 3).is_err());
    }

    #[test]
    fn bad_input() {
        assert!(bootstrap_ci(&[1.0], Statistic::Mean, 100, 0.95, Method::Percentile, 0).is_err());
        assert!(
            bootstrap_ci(&[1.0, f64::NAN], Statistic::Mean, 100, 0.95, Method::Bca, 0).is_err()
        );
        assert!(bootstrap_ci(&[1.0, 2.0], Statistic::Mean, 100, 1.5, Method::Bca, 0).is_err());
    }
}
