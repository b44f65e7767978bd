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
use std::ops::Deref;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{RecforgeError, Result};

/// A variable of a model's [`nn::VarStore`] with its full name: the `nn::Path` it was created
/// under and its own name, joined by dots (`bn.0.weight`), the name `params()` / `buffers()`
/// report and checkpoints hold. Derefs to the tensor (a handle sharing the store's storage).
#[derive(Debug)]
pub(crate) struct Var {
    name: String,
    tensor: Tensor,
}

impl Var {
    /// A trainable variable `name` under `path`: a copy of `init` (values unchanged, float32,
    /// on the store's device) that tracks gradients, registered in the store.
    pub(crate) fn param(path: &nn::Path, name: &str, init: &Tensor) -> Result<Self> {
        Self::check_new(path, name)?;
        let tensor = path.f_var_copy(name, init)?;
        Ok(Self {
            name: path.path(name),
            tensor,
        })
    }

    /// A non-trainable variable (a buffer, e.g. batch-norm statistics) `name` under `path`:
    /// `init` moved to the store's device, without gradient tracking, registered in the store.
    pub(crate) fn buffer(path: &nn::Path, name: &str, init: Tensor) -> Result<Self> {
        Self::check_new(path, name)?;
        let tensor = path.add(name, init.f_to(path.device())?, false);
        Ok(Self {
            name: path.path(name),
            tensor,
        })
    }

    /// A second variable with the same name would be renamed by the store: an error instead.
    fn check_new(path: &nn::Path, name: &str) -> Result<()> {
        if path.get(name).is_some() {
            return Err(RecforgeError::config(format!(
                "variable {} is created twice",
                path.path(name)
            )));
        }
        Ok(())
    }

    /// `(name, shallow handle)`, as `params()` / `buffers()` return it.
    pub(crate) fn named(&self) -> (String, Tensor) {
        (self.name.clone(), self.tensor.shallow_clone())
    }
}

impl Deref for Var {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

/// `(name, shallow handle)` of each variable, in the order given.
pub(crate) fn named<'a>(vars: impl IntoIterator<Item = &'a Var>) -> Vec<(String, Tensor)> {
    vars.into_iter().map(Var::named).collect()
}

/// A `torch.nn.Linear`: `y = x W^T + b`, weight `[out, in]`, bias `[out]`.
#[derive(Debug)]
pub(crate) struct Linear {
    /// Weight `[out, in]`.
    pub(crate) weight: Var,
    /// Bias `[out]`.
    pub(crate) bias: Var,
}

impl Linear {
    /// Variables `weight` and `bias` under `path`, copies of `weight` and `bias`.
    pub(crate) fn new(path: &nn::Path, weight: &Tensor, bias: &Tensor) -> Result<Self> {
        Ok(Self {
            weight: Var::param(path, "weight", weight)?,
            bias: Var::param(path, "bias", bias)?,
        })
    }

    /// `x W^T + b`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_matmul(&self.weight.f_transpose(0, 1)?)?
            .f_add(&self.bias)?)
    }

    /// Weight, then bias.
    pub(crate) fn vars(&self) -> [&Var; 2] {
        [&self.weight, &self.bias]
    }
}

/// A `torch.nn.LayerNorm` over the last dimension (eps `1e-5`): scale `weight`, shift `bias`.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    /// Scale `[d]`.
    pub(crate) weight: Var,
    /// Shift `[d]`.
    pub(crate) bias: Var,
}

impl LayerNorm {
    /// Variables `weight` (ones) and `bias` (zeros) of size `d` under `path`.
    pub(crate) fn new(path: &nn::Path, d: i64) -> Result<Self> {
        let cpu = (Kind::Float, Device::Cpu);
        Ok(Self {
            weight: Var::param(path, "weight", &Tensor::f_ones([d], cpu)?)?,
            bias: Var::param(path, "bias", &Tensor::f_zeros([d], cpu)?)?,
        })
    }

    /// Normalised `x` (over its last dimension, of size `d`).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.weight.size()[0];
        Ok(x.f_layer_norm([d], Some(&*self.weight), Some(&*self.bias), 1e-5, false)?)
    }

    /// Weight, then bias.
    pub(crate) fn vars(&self) -> [&Var; 2] {
        [&self.weight, &self.bias]
    }
}

/// `torch.nn.BatchNorm1d` defaults: eps and the running statistics' momentum.
pub(crate) const BN_EPS: f64 = 1e-5;
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// A `torch.nn.BatchNorm1d` over the last dimension: trained scale `weight` (ones) and shift
/// `bias` (zeros), running statistics `running_mean` (zeros) and `running_var` (ones) as
/// buffers, updated as torch does (momentum 0.1, the unbiased batch variance).
#[derive(Debug)]
pub(crate) struct BatchNorm {
    pub(crate) weight: Var,
    pub(crate) bias: Var,
    pub(crate) running_mean: Var,
    pub(crate) running_var: Var,
}

impl BatchNorm {
    /// The four variables of size `n` under `path`.
    pub(crate) fn new(path: &nn::Path, n: i64) -> Result<Self> {
        let cpu = (Kind::Float, Device::Cpu);
        Ok(Self {
            weight: Var::param(path, "weight", &Tensor::f_ones([n], cpu)?)?,
            bias: Var::param(path, "bias", &Tensor::f_zeros([n], cpu)?)?,
            running_mean: Var::buffer(path, "running_mean", Tensor::f_zeros([n], cpu)?)?,
            running_var: Var::buffer(path, "running_var", Tensor::f_ones([n], cpu)?)?,
        })
    }

    /// Training mode on rows `x` `[N, n]`: normalised by the rows' own statistics, which the
    /// running ones follow. Needs `N >= 2`.
    pub(crate) fn train_rows(&self, x: &Tensor) -> Result<Tensor> {
        if x.size()[0] < 2 {
            return Err(RecforgeError::config(
                "batch norm needs at least 2 examples per batch",
            ));
        }
        Ok(Tensor::f_batch_norm(
            x,
            Some(&*self.weight),
            Some(&*self.bias),
            Some(&*self.running_mean),
            Some(&*self.running_var),
            true,
            BN_MOMENTUM,
            BN_EPS,
            false,
        )?)
    }

    /// Evaluation mode (any shape `[..., n]`): normalised by the running statistics.
    pub(crate) fn eval(&self, x: &Tensor) -> Result<Tensor> {
        let scale = self
            .running_var
            .f_add(&Tensor::from(BN_EPS))?
            .f_rsqrt()?
            .f_mul(&self.weight)?;
        Ok(x.f_sub(&self.running_mean)?
            .f_mul(&scale)?
            .f_add(&self.bias)?)
    }

    /// Scale, then shift (trained).
    pub(crate) fn params(&self) -> [&Var; 2] {
        [&self.weight, &self.bias]
    }

    /// Running mean, then running variance (buffers).
    pub(crate) fn buffers(&self) -> [&Var; 2] {
        [&self.running_mean, &self.running_var]
    }
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
    let timer = crate::timers::scope(crate::timers::Section::DropoutMasks);
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
    drop(timer);
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

/// Copies values from `tensors` into the named parameters `params` (shallow handles of a model's
/// variables; values moved to `device` as float32); a missing or mis-shaped tensor is an error
/// naming it.
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

/// The tensor called `name` among `named` (tests read values by name).
#[cfg(test)]
pub(crate) fn by_name(
    named: impl IntoIterator<Item = (String, Tensor)>,
    name: &str,
) -> Result<Tensor> {
    named
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .ok_or_else(|| RecforgeError::config(format!("no variable {name}")))
}

/// Checks that `params` are exactly the trainable variables of `vs` and `buffers` its other
/// ones, under the same names, sharing their storage.
#[cfg(test)]
pub(crate) fn assert_in_store(
    vs: &nn::VarStore,
    params: &[(String, Tensor)],
    buffers: &[(String, Tensor)],
) {
    let vars = vs.variables();
    assert_eq!(vars.len(), params.len() + buffers.len());
    assert_eq!(vs.trainable_variables().len(), params.len());
    let all = params.iter().map(|p| (p, true));
    for ((name, t), trainable) in all.chain(buffers.iter().map(|b| (b, false))) {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the store"));
        assert_eq!(v.data_ptr(), t.data_ptr(), "{name}");
        assert_eq!(t.requires_grad(), trainable, "{name}");
        assert_eq!(t.device(), vs.device(), "{name}");
    }
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
