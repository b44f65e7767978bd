//! Walker's alias method: O(1) draws from a fixed discrete distribution.

use crate::error::{RecforgeError, Result};
use crate::rng::Rng;

/// A table for drawing index `i` with probability `weights[i] / sum(weights)`.
#[derive(Debug, Clone)]
pub struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// Builds the table (Vose's algorithm). Weights must be finite, non-negative, not all zero.
    pub fn new(weights: &[f64]) -> Result<Self> {
        let n = weights.len();
        if n == 0 || n >= u32::MAX as usize {
            return Err(RecforgeError::config(
                "an alias table needs 1 to 2^32 - 2 weights",
            ));
        }
        if let Some(i) = weights.iter().position(|w| !w.is_finite() || *w < 0.0) {
            return Err(RecforgeError::data(format!(
                "weight {i} = {} is not a finite non-negative number",
                weights[i]
            )));
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(RecforgeError::data("all weights are zero"));
        }
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in large.into_iter().chain(small) {
            prob[i] = 1.0; // numerical leftovers
        }
        Ok(Self { prob, alias })
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.prob.len()
    }

    /// Whether the table is empty (never: construction needs one weight).
    pub fn is_empty(&self) -> bool {
        self.prob.is_empty()
    }

    /// One draw.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let i = rng.below(self.prob.len() as u64) as usize;
        if rng.unit_f64() < self.prob[i] {
            i as u32
        } else {
            self.alias[i]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_the_weights() {
        let w = [1.0, 0.0, 3.0, 6.0];
        let t = AliasTable::new(&w).unwrap();
        let mut rng = Rng::new(9, 0);
        let mut c = [0u32; 4];
        let n = 200_000;
        for _ in 0..n {
            c[t.sample(&mut rng) as usize] += 1;
        }
        assert_eq!(c[1], 0);
        for (i, &wi) in w.iter().enumerate() {
            let f = c[i] as f64 / n as f64;
            assert!((f - wi / 10.0).abs() < 0.005, "{i}: {f}");
        }
        assert!(AliasTable::new(&[0.0, 0.0]).is_err());
        assert!(AliasTable::new(&[1.0, f64::NAN]).is_err());
    }
}
