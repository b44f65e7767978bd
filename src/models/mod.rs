//! Recommendation models on libtorch, one file each.

pub mod bprmf;
pub mod factors;
pub mod fm;
pub mod sasrec;
pub mod svd;

pub use factors::{Factors, FactorsConfig};

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
