//! Biased matrix factorisation for ratings ("SVD" as in Funk / Surprise):
//! `r_hat = mu + b_u + b_i + p_u . q_i`, trained on squared error with L2 regularisation of the
//! rows each example touches, and a closed-form fold-in of a new user.

use tch::{Kind, Tensor};

use super::factors::Factors;
use crate::error::{RecforgeError, Result};

/// Training ratings on the model's device.
#[derive(Debug)]
pub struct Ratings {
    /// User of each rating.
    pub users: Tensor,
    /// Item of each rating.
    pub items: Tensor,
    /// The ratings.
    pub ratings: Tensor,
    /// Mean rating (the global bias starts here).
    pub mean: f64,
}

/// Mini-batch loss: mean squared error plus `reg` times the batch-averaged squared norm of the
/// factors and biases used.
pub fn loss(model: &Factors, data: &Ratings, idx: &Tensor, reg: f64) -> Result<Tensor> {
    let idx = idx.f_to(model.device())?;
    let u = data.users.f_index_select(0, &idx)?;
    let i = data.items.f_index_select(0, &idx)?;
    let r = data.ratings.f_index_select(0, &idx)?;
    let pred = model.predict(&u, &i)?;
    let mse = pred.f_sub(&r)?.f_square()?.f_mean(Kind::Float)?;
    if reg > 0.0 {
        Ok(mse.f_add(&model.batch_l2(&u, &[&i])?.f_mul(&Tensor::from(reg))?)?)
    } else {
        Ok(mse)
    }
}

/// Fits a new user's bias and factors to `(items, ratings)` with the item side frozen, by ridge
/// regression (exact, no iterations): minimise `sum (r - mu - b_i - b_u - p . q_i)^2 +
/// reg * n * (|p|^2 + b_u^2)`. Returns the user's scores for every item.
pub fn fold_in(model: &Factors, items: &[i64], ratings: &[f32], reg: f64) -> Result<Tensor> {
    if items.is_empty() || items.len() != ratings.len() {
        return Err(RecforgeError::data(format!(
            "fold_in needs one rating per item and at least one, got {} items and {} ratings",
            items.len(),
            ratings.len()
        )));
    }
    if let Some(r) = ratings.iter().find(|r| !r.is_finite()) {
        return Err(RecforgeError::data(format!(
            "rating {r} is not a finite number"
        )));
    }
    model.check_ids(&[], items)?;
    let dev = model.device();
    tch::no_grad(|| {
        let idx = Tensor::from_slice(items).f_to(dev)?;
        let q = model
            .item_factors()
            .f_index_select(0, &idx)?
            .f_to_kind(Kind::Double)?;
        let mut y = Tensor::from_slice(ratings)
            .f_to(dev)?
            .f_to_kind(Kind::Double)?;
        let biases = model.item_bias().zip(model.global_bias());
        if let Some((item_bias, global_bias)) = biases {
            let bi = item_bias.f_index_select(0, &idx)?.f_to_kind(Kind::Double)?;
            let mu = global_bias.f_to_kind(Kind::Double)?;
            y = y.f_sub(&bi)?.f_sub(&mu)?;
        }
        let n = items.len() as i64;
        let x = if biases.is_some() {
            Tensor::f_cat(&[q, Tensor::f_ones([n, 1], (Kind::Double, dev))?], 1)?
        } else {
            q
        };
        let d = x.size()[1];
        let lhs = x.f_t_copy()?.f_matmul(&x)?.f_add(
            &Tensor::f_eye(d, (Kind::Double, dev))?.f_mul(&Tensor::from(reg * n as f64 + 1e-9))?,
        )?;
        let rhs = x.f_t_copy()?.f_matmul(&y.f_unsqueeze(1)?)?;
        let w = Tensor::f_linalg_solve(&lhs, &rhs, true)?.f_squeeze_dim(1)?;
        let dim = model.config.dim;
        let p = w.f_narrow(0, 0, dim)?.f_to_kind(Kind::Float)?;
        let mut scores = model.item_factors().f_matmul(&p)?;
        if let Some((item_bias, global_bias)) = biases {
            let bu = w.f_narrow(0, dim, 1)?.f_to_kind(Kind::Float)?;
            scores = scores.f_add(item_bias)?.f_add(global_bias)?.f_add(&bu)?;
        }
        Ok(scores)
    })
}
