//! Recommendation models on libtorch, one file each.

pub mod bprmf;
pub mod factors;
pub mod fm;
pub mod svd;

pub use factors::{Factors, FactorsConfig};

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::error::{RecforgeError, Result};

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
