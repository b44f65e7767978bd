//! Recommendation models on libtorch, one file each.

pub mod bprmf;
pub mod factors;
pub mod fm;
pub mod hierarchical;
pub mod mf;
pub mod sasrec;
pub mod soft_token;
pub mod svd;

pub use factors::{Factors, FactorsConfig};
pub use fm::FmModel;
pub use hierarchical::HierarchicalModel;
pub use mf::{MfModel, MfObjective};
pub use sasrec::SasRecModel;
pub use soft_token::SoftTokenModel;

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::error::{RecforgeError, Result};

/// Shallow handles of named tensors (what `params()` / `buffers()` of every model return).
pub(crate) fn handles(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// The tensor called `name` among `named`.
pub(crate) fn find<'a>(
    named: impl IntoIterator<Item = &'a (String, Tensor)>,
    name: &str,
) -> Result<&'a Tensor> {
    named
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| RecforgeError::config(format!("this model has no parameter {name}")))
}

/// Inverted dropout in training mode: each element is zeroed with probability `p`, the rest
/// scaled by `1 / (1 - p)`. On the CPU the mask is drawn by recforge's generator (xoshiro256++)
/// seeded from one draw of libtorch's generator, which the epoch loop reseeds, so runs and
/// resumed runs repeat exactly; libtorch's own `bernoulli_` costs about 8 ns an element there,
/// several times the rest of a small NFM's step. Other devices use libtorch's dropout.
pub(crate) fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.shallow_clone());
    }
    if x.device() != Device::Cpu {
        return Ok(x.f_dropout(p, true)?);
    }
    let seed = Tensor::f_randint(i64::MAX, [1], (Kind::Int64, Device::Cpu))?.f_int64_value(&[0])?;
    let mut rng = crate::rng::Rng::new(seed as u64, 0);
    let keep = 1.0 / (1.0 - p) as f32;
    // An element is kept when its 32 random bits are at least p * 2^32.
    let cut = (p * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let n = x.numel();
    let mut mask = Vec::with_capacity(n);
    while mask.len() < n {
        let r = rng.next_u64();
        for half in [r as u32, (r >> 32) as u32] {
            if mask.len() < n {
                mask.push(if half >= cut { keep } else { 0.0 });
            }
        }
    }
    let mask = Tensor::from_slice(&mask).f_view(x.size().as_slice())?;
    Ok(x.f_mul(&mask.f_to_kind(x.kind())?)?)
}

/// Rows `idx` of a 2-D embedding table. When the table is trained, its gradient is sparse (only
/// the rows used), so a step never allocates a dense table-sized gradient; the optimiser scatters
/// it into a buffer it keeps.
pub(crate) fn lookup(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_embedding(
        table,
        idx,
        -1,
        false,
        table.requires_grad(),
    )?)
}

/// Copies values from `tensors` into the named parameters `params` (moved to `device` as float32);
/// a missing or mis-shaped tensor is an error naming it.
pub(crate) fn load_named(
    params: &mut [(String, Tensor)],
    tensors: &HashMap<String, Tensor>,
    device: Device,
) -> Result<()> {
    for (name, p) in params {
        let src = tensors
            .get(name.as_str())
            .ok_or_else(|| RecforgeError::data(format!("missing tensor {name}")))?;
        if src.size() != p.size() {
            return Err(RecforgeError::data(format!(
                "tensor {name} has shape {:?}, this model needs {:?}",
                src.size(),
                p.size()
            )));
        }
        let src = src.f_to_kind(Kind::Float)?.f_to(device)?;
        tch::no_grad(|| p.f_copy_(&src))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// About `p` of the elements are zeroed, the rest scaled by `1 / (1 - p)`; the gradient is
    /// the mask; the next draw is another mask; `p = 0` is the identity.
    #[test]
    fn dropout_zeroes_a_fraction_p_and_scales_the_rest() {
        let x = Tensor::ones([400, 250], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        for p in [0.2, 0.5] {
            let y = dropout(&x, p).unwrap();
            let values = Vec::<f32>::try_from(y.detach().reshape([-1])).unwrap();
            let zeros = values.iter().filter(|&&v| v == 0.0).count() as f64 / values.len() as f64;
            assert!((zeros - p).abs() < 0.01, "p {p}: zeroed {zeros}");
            let keep = (1.0 / (1.0 - p)) as f32;
            assert!(values.iter().all(|&v| v == 0.0 || (v - keep).abs() < 1e-6));
            let g = Tensor::run_backward(&[y.sum(Kind::Float)], &[&x], false, false)
                .pop()
                .unwrap();
            assert!(g.equal(&y.detach()), "gradient is not the mask");
            // (Repeating under a seed is checked by the Python reproducibility and resume tests:
            // libtorch's generator is global, and Rust tests run in parallel threads, where
            // another test's `manual_seed` between two draws can repeat one mask; three repeats
            // in a row would need three such interleavings.)
            assert!(
                (0..3).any(|_| !dropout(&x, p).unwrap().equal(&y)),
                "the next three draws repeated the mask"
            );
        }
        assert!(dropout(&x, 0.0).unwrap().equal(&x));
    }
}
