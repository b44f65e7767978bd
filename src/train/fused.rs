//! Single-pass optimiser kernels over contiguous float32 CPU tensors.
//!
//! Adam written as libtorch ops walks every parameter-sized tensor eight or nine times per step
//! (lerp, square, lerp, sqrt, add, mul, addcdiv, each its own OpenMP region). For an embedding
//! table that is most of a small batch's time. [`adam`] does the same arithmetic, element by
//! element in float32 in the order `torch.optim.Adam` uses, in one pass that reads the
//! parameter, gradient and both moments once and writes them once. [`scatter_rows`] and
//! [`zero_rows`] sum a sparse (row-indexed) gradient into a kept dense buffer and clear only the
//! rows it touched afterwards, instead of zeroing the whole table every step.
//!
//! Both kernels flush a moment that falls below the smallest normal float32 (`f32::MIN_POSITIVE`,
//! 1.2e-38) to zero. With dense Adam, the first moment of a row no batch touches decays by `b1`
//! every step and spends about 150 steps in the subnormal range before it underflows; x86 cores
//! take a microcode assist on every subnormal operand, and SVD at batch 64 on ml-latest-small
//! (long-tail items, 1,260 steps an epoch) spent 4.0 of its 4.8 s an epoch there. The flush
//! changes a parameter by at most `lr * 1.2e-38 / eps` per step, far below one ulp of any weight.
//!
//! The pass runs on the calling thread: it is bound by memory traffic, and a second thread only
//! competed with libtorch's OpenMP workers (measured slower on the 2-core benchmark machine).

use tch::{Device, Kind, Tensor};

use crate::error::{RecforgeError, Result};

/// The scalars of one Adam/AdamW step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep {
    /// Learning rate of this step.
    pub lr: f64,
    /// Betas.
    pub b1: f64,
    /// Second beta.
    pub b2: f64,
    /// Epsilon.
    pub eps: f64,
    /// Weight decay: added to the gradient (Adam) or applied to the parameter (AdamW).
    pub weight_decay: f64,
    /// AdamW's decoupled decay.
    pub decoupled: bool,
    /// Step number, from 1.
    pub t: i32,
    /// Factor on the gradient before anything else (gradient-norm clipping; 1 for none), so
    /// the clipped gradient is never written out as a tensor of its own.
    pub grad_scale: f32,
}

/// One Adam/AdamW update of `p` with gradient `g` and moments `m`, `v` (equal lengths), as
/// `torch.optim.Adam`/`AdamW` (single-tensor form) compute it, from the gradient times
/// `grad_scale` (what `clip_grad_norm_` leaves in `.grad`):
/// `g += wd p` (Adam) or `p *= 1 - lr wd` (AdamW); `m = lerp(m, g, 1 - b1)`;
/// `v = b2 v + (1 - b2) g^2`; `p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`.
pub(crate) fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
    debug_assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    let bc1 = 1.0 - s.b1.powi(s.t);
    let bc2 = 1.0 - s.b2.powi(s.t);
    let w1 = (1.0 - s.b1) as f32;
    let b2 = s.b2 as f32;
    let w2 = (1.0 - s.b2) as f32;
    let step = (s.lr / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let eps = s.eps as f32;
    let (l2, keep) = match (s.weight_decay > 0.0, s.decoupled) {
        (false, _) => (0.0f32, 1.0f32),
        (true, false) => (s.weight_decay as f32, 1.0),
        (true, true) => (0.0, (1.0 - s.lr * s.weight_decay) as f32),
    };
    let gs = s.grad_scale;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * gs + l2 * *p;
        let pk = *p * keep;
        // lerp(m, g, 1 - b1), in ATen's form for weights below 0.5.
        let mk = flush(*m + w1 * (g - *m));
        let vk = flush(*v * b2 + w2 * g * g);
        *m = mk;
        *v = vk;
        *p = pk - step * (mk / (vk.sqrt() / bc2_sqrt + eps));
    }
}

/// `x`, or zero when `x` is subnormal (see the module's note). Compiles to a compare and a blend.
#[inline(always)]
fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// `torch.optim.SparseAdam`'s update of the distinct rows `rows` (row width `width`) of the
/// parameter `p` and its moments `m`, `v`, from the summed gradient rows of `g` (laid out like
/// `p`); every other row, its moments included, is left as it is. Weight decay (not in
/// SparseAdam) is L2 added to those rows' gradients. Per element, in SparseAdam's order:
/// `m += (g - m)(1 - b1)`, `v += (g^2 - v)(1 - b2)`,
/// `p += -(lr sqrt(bc2) / bc1) * (m / (sqrt(v) + eps))`.
pub(crate) fn sparse_adam_rows(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    width: usize,
    rows: &[i64],
    s: AdamStep,
) {
    let bc1 = 1.0 - s.b1.powi(s.t);
    let bc2 = 1.0 - s.b2.powi(s.t);
    let step = (-(s.lr * bc2.sqrt() / bc1)) as f32;
    let (w1, w2) = ((1.0 - s.b1) as f32, (1.0 - s.b2) as f32);
    let (eps, l2) = (s.eps as f32, s.weight_decay as f32);
    for &r in rows {
        let Some(range) = usize::try_from(r)
            .ok()
            .map(|r| r * width..(r + 1) * width)
            .filter(|x| x.end <= p.len())
        else {
            continue;
        };
        let (p, g) = (&mut p[range.clone()], &g[range.clone()]);
        let (m, v) = (&mut m[range.clone()], &mut v[range]);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = if l2 > 0.0 { g + l2 * *p } else { g };
            *m = flush(*m + (g - *m) * w1);
            *v = flush(*v + (g * g - *v) * w2);
            *p += step * (*m / (v.sqrt() + eps));
        }
    }
}

/// Adds `values` (`rows.len()` rows of `width`) into the rows `rows` of the row-major `dense`.
pub(crate) fn scatter_rows(
    dense: &mut [f32],
    width: usize,
    rows: &[i64],
    values: &[f32],
) -> Result<()> {
    if values.len() != rows.len() * width {
        return Err(RecforgeError::config(format!(
            "sparse gradient has {} values for {} rows of width {width}",
            values.len(),
            rows.len()
        )));
    }
    let n_rows = dense.len() / width.max(1);
    // Every row is checked before any is added, so a refused gradient leaves `dense` untouched.
    if let Some(&r) = rows.iter().find(|&&r| r < 0 || r as usize >= n_rows) {
        return Err(RecforgeError::config(format!(
            "sparse gradient row {r} is out of range ({n_rows} rows)"
        )));
    }
    for (&r, src) in rows.iter().zip(values.chunks_exact(width.max(1))) {
        let r = r as usize;
        for (d, s) in dense[r * width..(r + 1) * width].iter_mut().zip(src) {
            *d += s;
        }
    }
    Ok(())
}

/// Sets the rows `rows` of the row-major `dense` (row width `width`) to zero; rows out of range
/// are ignored (they were refused by [`scatter_rows`]).
pub(crate) fn zero_rows(dense: &mut [f32], width: usize, rows: &[i64]) {
    for &r in rows {
        if let Some(row) = usize::try_from(r)
            .ok()
            .and_then(|r| dense.get_mut(r * width..(r + 1) * width))
        {
            row.fill(0.0);
        }
    }
}

/// Whether every value of `x` is finite: one read of the slice, in blocks that the compiler
/// vectorises (libtorch's `isfinite().all()` takes four passes and two temporaries).
pub(crate) fn all_finite(x: &[f32]) -> bool {
    x.chunks(4096)
        .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// Whether `t` is a contiguous float32 CPU tensor, so its storage can be walked as a slice.
pub(crate) fn is_flat_f32(t: &Tensor) -> bool {
    t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && !t.is_sparse()
}

/// The elements of a contiguous float32 CPU tensor as a slice.
///
/// # Safety
/// `t` must satisfy [`is_flat_f32`], and nothing may write to its storage (through another
/// handle, a slice or a libtorch op) while the slice lives.
pub(crate) unsafe fn slice(t: &Tensor) -> &[f32] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    // SAFETY: the tensor is contiguous float32 on the CPU, so its data pointer addresses `n`
    // initialised, aligned f32 values that stay alive as long as the handle `t`.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
}

/// The elements of a contiguous float32 CPU tensor as a mutable slice.
///
/// # Safety
/// `t` must satisfy [`is_flat_f32`], and no other reference to its storage (through another
/// handle such as a shallow clone, a slice or a libtorch op) may be used while the slice lives.
pub(crate) unsafe fn slice_mut(t: &mut Tensor) -> &mut [f32] {
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    // SAFETY: as in `slice`; the caller guarantees the storage is not aliased meanwhile.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused step equals torch-style Adam written as separate libtorch ops, for Adam with L2
    /// decay and for AdamW, over several steps and on both the serial and the parallel path.
    #[test]
    fn adam_matches_the_op_by_op_formula() {
        for (n, wd, decoupled, scale) in [
            (37usize, 0.0, false, 1.0f32),
            (100_003, 0.01, false, 0.37),
            (70_001, 0.1, true, 0.5),
        ] {
            tch::manual_seed(3);
            let p0 = Tensor::randn([n as i64], (Kind::Float, Device::Cpu));
            let (mut p, mut m, mut v) = (p0.copy(), p0.zeros_like(), p0.zeros_like());
            let (mut rp, mut rm, mut rv) = (p0.copy(), p0.zeros_like(), p0.zeros_like());
            let (lr, b1, b2, eps) = (0.01, 0.9, 0.999, 1e-8);
            for t in 1..=4 {
                let g = Tensor::randn([n as i64], (Kind::Float, Device::Cpu));
                let s = AdamStep {
                    lr,
                    b1,
                    b2,
                    eps,
                    weight_decay: wd,
                    decoupled,
                    t,
                    grad_scale: scale,
                };
                unsafe {
                    adam(
                        slice_mut(&mut p),
                        slice(&g),
                        slice_mut(&mut m),
                        slice_mut(&mut v),
                        s,
                    )
                };
                // Reference: clip_grad_norm_'s scaling, then torch.optim.Adam/AdamW's
                // single-tensor update, op by op.
                let g = &g * f64::from(scale);
                let g = if wd > 0.0 && !decoupled {
                    &g + &rp * wd
                } else {
                    g
                };
                if decoupled {
                    rp = &rp * (1.0 - lr * wd);
                }
                rm = rm.lerp(&g, 1.0 - b1);
                rv = &rv * b2 + g.square() * (1.0 - b2);
                let bc1 = 1.0 - f64::powi(b1, t);
                let bc2 = 1.0 - f64::powi(b2, t);
                let denom = rv.sqrt() / bc2.sqrt() + eps;
                rp = &rp - (&rm / denom) * (lr / bc1);
            }
            for (a, b) in [(&p, &rp), (&m, &rm), (&v, &rv)] {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "n {n}: max difference {diff}");
            }
        }
    }

    /// A row no batch touches: its first moment decays by b1 each step; the fused step flushes it
    /// to zero instead of carrying it through the subnormal range, and the parameter stays within
    /// float32 rounding (1e-6) of the unflushed reference, computed in float64 here.
    #[test]
    fn idle_moments_flush_to_zero_without_moving_the_parameter() {
        let (lr, b1, b2, eps) = (0.005, 0.9, 0.999, 1e-8);
        let (mut p, mut m, mut v) = ([0.3f32, -0.7], [0.0f32; 2], [0.0f32; 2]);
        let (mut rp, mut rm, mut rv) = ([0.3f64, -0.7], [0.0f64; 2], [0.0f64; 2]);
        let mut saw_subnormal_in_reference = false;
        for t in 1..=1200 {
            let g = if t == 1 { [0.02f32, -0.01] } else { [0.0; 2] };
            let s = AdamStep {
                lr,
                b1,
                b2,
                eps,
                weight_decay: 0.0,
                decoupled: false,
                t,
                grad_scale: 1.0,
            };
            adam(&mut p, &g, &mut m, &mut v, s);
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for k in 0..2 {
                rm[k] = b1 * rm[k] + (1.0 - b1) * f64::from(g[k]);
                rv[k] = b2 * rv[k] + (1.0 - b2) * f64::from(g[k]).powi(2);
                rp[k] -= lr / bc1 * rm[k] / (rv[k].sqrt() / bc2.sqrt() + eps);
                let as_f32 = rm[k] as f32;
                saw_subnormal_in_reference |= as_f32 != 0.0 && as_f32.is_subnormal();
            }
            assert!(
                m.iter().chain(&v).all(|x| !x.is_subnormal()),
                "step {t}: {m:?} {v:?}"
            );
        }
        assert!(
            saw_subnormal_in_reference,
            "the test must cross the subnormal range"
        );
        assert_eq!(m, [0.0, 0.0]);
        for k in 0..2 {
            assert!((f64::from(p[k]) - rp[k]).abs() < 1e-6, "{p:?} vs {rp:?}");
        }
    }

    #[test]
    fn all_finite_finds_one_bad_value_anywhere() {
        let mut x = vec![1.5f32; 10_001];
        assert!(all_finite(&x) && all_finite(&[]));
        for (at, bad) in [
            (0, f32::NAN),
            (4_096, f32::INFINITY),
            (10_000, f32::NEG_INFINITY),
        ] {
            x[at] = bad;
            assert!(!all_finite(&x), "{bad} at {at}");
            x[at] = 1.5;
        }
    }

    #[test]
    fn scatter_sums_repeated_rows_and_zero_clears_them() {
        let mut dense = vec![0.0f32; 4 * 2];
        scatter_rows(&mut dense, 2, &[1, 3, 1], &[1.0, 2.0, 3.0, 4.0, 10.0, 20.0]).unwrap();
        assert_eq!(dense, [0.0, 0.0, 11.0, 22.0, 0.0, 0.0, 3.0, 4.0]);
        assert!(scatter_rows(&mut dense, 2, &[4], &[1.0, 1.0]).is_err());
        assert!(scatter_rows(&mut dense, 2, &[-1], &[1.0, 1.0]).is_err());
        assert!(scatter_rows(&mut dense, 2, &[0], &[1.0]).is_err());
        zero_rows(&mut dense, 2, &[1, 3, 9]);
        assert!(dense.iter().all(|&x| x == 0.0));
    }
}
