//! BPR-MF (Rendle et al. 2009): matrix factorisation trained so a user's observed items score above
//! sampled unobserved ones, `-log sigmoid(p_u . q_i - p_u . q_j)`, with L2 regularisation.

use tch::{Kind, Tensor};

use super::factors::Factors;
use crate::error::Result;

/// Training triples for one epoch on the model's device.
#[derive(Debug)]
pub struct Triples {
    /// User of each training interaction.
    pub users: Tensor,
    /// Its (positive) item.
    pub pos: Tensor,
    /// A sampled negative item.
    pub neg: Tensor,
}

/// Mini-batch BPR loss plus `reg` times the batch-averaged squared norm of the rows used.
pub fn loss(model: &Factors, data: &Triples, idx: &Tensor, reg: f64) -> Result<Tensor> {
    let idx = idx.f_to(model.device())?;
    let u = data.users.f_index_select(0, &idx)?;
    let i = data.pos.f_index_select(0, &idx)?;
    let j = data.neg.f_index_select(0, &idx)?;
    let diff = model.predict(&u, &i)?.f_sub(&model.predict(&u, &j)?)?;
    let bpr = diff.f_log_sigmoid()?.f_mean(Kind::Float)?.f_neg()?;
    if reg > 0.0 {
        Ok(bpr.f_add(&model.batch_l2(&u, &[&i, &j])?.f_mul(&Tensor::from(reg))?)?)
    } else {
        Ok(bpr)
    }
}
