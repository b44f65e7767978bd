//! The building blocks the text networks share: normalisation layers, activations, attention.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{RecforgeError, Result};

/// Parses a weight dtype name: `float32`, `float16` or `bfloat16`.
pub fn parse_dtype(name: &str) -> Result<Kind> {
    match name {
        "float32" | "float" => Ok(Kind::Float),
        "float16" | "half" => Ok(Kind::Half),
        "bfloat16" => Ok(Kind::BFloat16),
        _ => Err(RecforgeError::config(format!(
            "dtype must be 'float32', 'float16' or 'bfloat16', got {name:?}"
        ))),
    }
}

/// The name [`parse_dtype`] reads for a weight dtype (`float32`, `float16`, `bfloat16`; other
/// kinds by their libtorch name).
pub fn dtype_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "float32".into(),
        Kind::Half => "float16".into(),
        Kind::BFloat16 => "bfloat16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Feed-forward activation functions by their Hugging Face `hidden_act` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// Parses a Hugging Face activation name; `field` names the config entry for the error.
    pub fn parse(name: &str, field: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            _ => Err(RecforgeError::config(format!(
                "config.json {field} = {name:?} is not supported (gelu, gelu_new, \
                 gelu_pytorch_tanh, relu, silu)"
            ))),
        }
    }

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::GeluTanh => x.gelu("tanh"),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// Root-mean-square layer norm with a learned scale and no bias or centring (Llama's `RMSNorm`,
/// T5's `T5LayerNorm`), computed in float32.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm over `dim` features whose scale is `p / "weight"`, initialised to one.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: param(&p, "weight", &[dim], nn::Init::Const(1.0))?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind == Kind::Float && self.weight.kind() == Kind::Float {
            // libtorch's fused kernel: one pass forward and one backward, where the formula below
            // takes six forward and as many backward passes (each a fresh activation-sized
            // tensor). Same arithmetic in float32; other precisions keep the formula, whose
            // rounding (normalise in float32, cast, then scale) is Hugging Face's.
            let dim = self.weight.size();
            if let Ok(y) = x.f_rms_norm(dim.as_slice(), Some(&self.weight), self.eps) {
                return y;
            }
        }
        let h = x.to_kind(Kind::Float);
        let var = h.square().mean_dim(-1, true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

/// Creates the parameter `name` under `p`, or fails with a [`RecforgeError::Config`] naming it and
/// its shape when libtorch cannot allocate it: a config that asks for too large a model is an
/// error, not a panic (tch's `nn::Path::var` unwraps).
pub fn param(p: &nn::Path, name: &str, dims: &[i64], init: nn::Init) -> Result<Tensor> {
    p.f_var(name, dims, init).map_err(|e| {
        RecforgeError::config(format!(
            "cannot create parameter {} of shape {dims:?} (check the config's sizes): {e}",
            p.path(name)
        ))
    })
}

/// Room for `n` layers, reserved without aborting on a huge `n`.
pub fn layer_vec<T>(n: i64) -> Result<Vec<T>> {
    let mut v = Vec::new();
    usize::try_from(n)
        .ok()
        .and_then(|n| v.try_reserve_exact(n).ok())
        .ok_or_else(|| RecforgeError::config(format!("cannot hold {n} layers")))?;
    Ok(v)
}

/// A linear layer named like the Hugging Face one (`weight` `[out, in]`, optional `bias`),
/// initialised as `tch::nn::linear` does.
pub fn linear(p: nn::Path, input: i64, output: i64, bias: bool) -> Result<nn::Linear> {
    let bs = if bias {
        let bound = 1.0 / (input as f64).sqrt();
        Some(param(
            &p,
            "bias",
            &[output],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    let ws = param(
        &p,
        "weight",
        &[output, input],
        nn::init::DEFAULT_KAIMING_UNIFORM,
    )?;
    Ok(nn::Linear { ws, bs })
}

/// The kind a decoder's linear layers run in, set once per model: its parameters' own (the
/// default) or bfloat16 (mixed precision). Under bfloat16
/// the parameters and the residual stream stay as they are (float32) and only what feeds a
/// linear layer is cast: each block's linear layers run in the lower kind and their outputs
/// stay in it until they meet a float32 operand (the rotary angles, the residual stream, which
/// adds them back in float32); attention, norms and everything outside the blocks (losses,
/// optimiser) keep float32. This is what `torch.autocast` does to a `transformers` decoder,
/// except attention, which autocast runs in the lower kind: libtorch's CPU flash-attention
/// kernel took about 4x longer in bfloat16 than in float32 on SmolLM2's 50-token batches,
/// while attention's arithmetic is a small share of a block's.
#[derive(Debug, Default)]
pub struct ComputeKind(std::sync::atomic::AtomicBool);

impl ComputeKind {
    /// The lower kind the linear layers run in, if any.
    pub fn get(&self) -> Option<Kind> {
        self.0
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(Kind::BFloat16)
    }

    /// Switches bfloat16 linear layers on or off.
    pub fn set_bf16(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `x W^T + b` of a linear layer, in `low` when given (input, weight and bias cast to it; the
/// result stays in it), else in the layer's own kind.
pub fn linear_in(l: &nn::Linear, x: &Tensor, low: Option<Kind>) -> Tensor {
    match low {
        Some(k) if l.ws.kind() != k => x.to_kind(k).linear(
            &l.ws.to_kind(k),
            l.bs.as_ref().map(|b| b.to_kind(k)).as_ref(),
        ),
        _ => l.forward(x),
    }
}

/// An embedding table `weight` `[n, dim]` (`tch::nn::Embedding` without the panicking
/// constructor).
#[derive(Debug)]
pub struct Embedding {
    /// The table.
    pub ws: Tensor,
}

impl Embedding {
    /// A table of `n` rows of `dim` under `p / "weight"`, drawn from `init`.
    pub fn new(p: nn::Path, n: i64, dim: i64, init: nn::Init) -> Result<Self> {
        Ok(Self {
            ws: param(&p, "weight", &[n, dim], init)?,
        })
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.ws, ids, -1, false, false)
    }
}

/// A layer norm named like the Hugging Face one (`weight` initialised to one, `bias` to zero).
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size();
        Tensor::layer_norm(
            x,
            &dim,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// A layer norm over `dim` features.
pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: param(&p, "weight", &[dim], nn::Init::Const(1.0))?,
        bias: param(&p, "bias", &[dim], nn::Init::Const(0.0))?,
        eps,
    })
}

/// Vocabulary logits of hidden states: through a head of its own, or through the token
/// embeddings when the head is tied to them.
pub fn lm_logits(hidden: &Tensor, head: Option<&nn::Linear>, embeddings: &Embedding) -> Tensor {
    match head {
        Some(head) => head.forward(hidden),
        None => hidden.matmul(&embeddings.ws.tr()),
    }
}

/// `[B, T, H*D]` -> `[B, H, T, D]`.
pub fn split_heads(x: &Tensor, heads: i64, head_dim: i64) -> Result<Tensor> {
    let (b, t, _) = x.size3()?;
    Ok(x.f_view([b, t, heads, head_dim])?.transpose(1, 2))
}

/// `[B, H, T, D]` -> `[B, T, H*D]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.size4()?;
    let width = h.checked_mul(d).ok_or_else(|| {
        RecforgeError::data(format!("attention output {:?} is too wide", x.size()))
    })?;
    Ok(x.transpose(1, 2).contiguous().f_view([b, t, width])?)
}

/// Scaled dot-product attention of `q` `[B, H, Tq, D]` over `k`, `v` `[B, Hkv, Tk, D]` (grouped
/// query attention when `Hkv < H`). `mask` is a boolean "may attend" mask or an additive float
/// bias, broadcastable to `[B, H, Tq, Tk]`; `scale` defaults to `1/sqrt(D)`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
) -> Tensor {
    attend_dropout(q, k, v, mask, scale, 0.0)
}

/// [`attend`] with dropout `p` on the attention weights (training mode).
pub fn attend_dropout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
    p: f64,
) -> Tensor {
    let gqa = q.size()[1] != k.size()[1];
    Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, scale, gqa)
}

/// Softmax attention of `q` `[N, H, Tq, D]` over `k`, `v` `[N, H, Tk, D]` with an additive
/// `bias` and its log-sum-exp `[N, H, Tq]` (float32): libtorch's flash kernel on the CPU,
/// float32 arithmetic elsewhere.
fn attend_part(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    if q.device() == tch::Device::Cpu {
        let (o, lse) = Tensor::f_internal_scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, false, bias, scale,
        )?;
        return Ok((o, lse.to_kind(Kind::Float)));
    }
    attend_part_math(q, k, v, bias, scale)
}

fn attend_part_math(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let f = Kind::Float;
    let mut s = q.to_kind(f).f_matmul(&k.to_kind(f).transpose(-2, -1))? * scale;
    if let Some(b) = bias {
        s += b.to_kind(f);
    }
    let lse = s.f_logsumexp([-1], false)?;
    let o = (s - lse.unsqueeze(-1)).exp().f_matmul(&v.to_kind(f))?;
    Ok((o.to_kind(q.kind()), lse))
}

/// Attention of `q` `[B, H, Tq, D]` over keys every row shares (`ks`, `vs` `[1, Hkv, P, D]`,
/// visible to every query) followed by each row's own keys (`k`, `v` `[B, Hkv, T, D]`, boolean
/// "may attend" `mask` `[B, 1, Tq, T]`), as one softmax over both: each part runs alone (the
/// shared one with the whole batch's queries as one query list, so its keys are read once for
/// the batch instead of once per row) and the two are merged through their log-sum-exps (the
/// cascade attention of shared-prefix inference engines). Inference only (no dropout).
pub fn attend_with_prefix(
    q: &Tensor,
    (ks, vs): (&Tensor, &Tensor),
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: Option<f64>,
) -> Result<Tensor> {
    prefix_then_own(q, (ks, vs), k, v, mask, scale, attend_part)
}

type AttendPart = fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, f64) -> Result<(Tensor, Tensor)>;

fn prefix_then_own(
    q: &Tensor,
    (ks, vs): (&Tensor, &Tensor),
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: Option<f64>,
    attend_part: AttendPart,
) -> Result<Tensor> {
    let (b, h, tq, d) = q.size4()?;
    let hkv = k.size()[1];
    if hkv == 0 || h % hkv != 0 || ks.size()[1] != hkv {
        return Err(RecforgeError::data(format!(
            "attention heads do not group: queries {:?}, keys {:?}, shared keys {:?}",
            q.size(),
            k.size(),
            ks.size()
        )));
    }
    let g = h / hkv;
    let kind = q.kind();
    // Shared part: queries grouped by key head, the batch folded into the query list.
    let qs = q
        .reshape([b, hkv, g, tq, d])
        .permute([1, 0, 2, 3, 4])
        .reshape([1, hkv, b * g * tq, d]);
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (o1, lse1) = attend_part(&qs, ks, vs, None, scale)?;
    let unfold = |x: &Tensor, last: &[i64]| -> Result<Tensor> {
        let mut shape = vec![hkv, b, g, tq];
        shape.extend_from_slice(last);
        let mut out = vec![b, h, tq];
        out.extend_from_slice(last);
        let mut perm = vec![1, 0, 2, 3];
        perm.extend((4..4 + last.len() as i64).collect::<Vec<_>>());
        Ok(x.f_reshape(&shape[..])?
            .f_permute(&perm[..])?
            .f_reshape(&out[..])?)
    };
    let (o1, lse1) = (unfold(&o1, &[d])?, unfold(&lse1, &[])?);
    // Own part: the queries of a key head's group stacked along the query axis, the mask
    // repeated for each of them, as an additive bias.
    let t = k.size()[2];
    let qo = q.reshape([b, hkv, g * tq, d]);
    let bias = Tensor::zeros([b, 1, tq, t], (kind, q.device()))
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY)
        .unsqueeze(2)
        .expand([b, 1, g, tq, t], false)
        .reshape([b, 1, g * tq, t]);
    let (o2, lse2) = attend_part(&qo, k, v, Some(&bias), scale)?;
    let (o2, lse2) = (o2.reshape([b, h, tq, d]), lse2.reshape([b, h, tq]));
    // softmax over both parts = each part's softmax weighted by its share of the total mass.
    let m = lse1.maximum(&lse2);
    let (w1, w2) = ((&lse1 - &m).exp(), (&lse2 - &m).exp());
    let total = &w1 + &w2;
    let (w1, w2) = ((w1 / &total).unsqueeze(-1), (w2 / &total).unsqueeze(-1));
    Ok((o1.to_kind(Kind::Float) * w1 + o2.to_kind(Kind::Float) * w2).to_kind(kind))
}

/// Dropout `p` on `x` when `on` (training mode), else `x` itself.
pub fn dropout_if(x: Tensor, p: f64, on: bool) -> Result<Tensor> {
    if on && p > 0.0 {
        Ok(x.f_dropout(p, true)?)
    } else {
        Ok(x)
    }
}

/// Key-padding mask for bidirectional encoders: `[B, Tk]` 0/1 -> boolean `[B, 1, 1, Tk]`.
pub fn padding_mask(mask: &Tensor) -> Tensor {
    mask.ne(0).unsqueeze(1).unsqueeze(1)
}

/// The "may attend" mask of a causal decoder step: query `i` (at slot `past + i` of the keys)
/// sees key `j` when `j <= past + i` and key `j` is not padding. Each query also sees itself, so
/// a padding query never has an empty row (its output is ignored). `key_mask` is `[B, Tk]` 0/1
/// over the past and current tokens. Returns boolean `[B, 1, Tq, Tk]`.
pub fn causal_mask(key_mask: &Tensor, tq: i64) -> Tensor {
    let tk = key_mask.size()[1];
    let past = tk - tq;
    let dev = key_mask.device();
    let qpos = Tensor::arange_start(past, tk, (Kind::Int64, dev)).unsqueeze(1);
    let kpos = Tensor::arange(tk, (Kind::Int64, dev)).unsqueeze(0);
    let causal = kpos.le_tensor(&qpos);
    let diag = kpos.eq_tensor(&qpos);
    let valid = key_mask.ne(0).unsqueeze(1).unsqueeze(1);
    (valid.logical_and(&causal.unsqueeze(0).unsqueeze(0)))
        .logical_or(&diag.unsqueeze(0).unsqueeze(0))
}

/// Position ids from an attention mask, as `transformers` computes them for generation:
/// `cumsum(mask) - 1`, clamped at 0 (left padding gets position 0).
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_after_a_shared_prefix_equals_attention_over_the_concatenated_keys() {
        let f = (Kind::Float, tch::Device::Cpu);
        let (b, h, hkv, p, t, d) = (3, 6, 2, 5, 4, 8);
        for tq in [1, 3] {
            let q = Tensor::randn([b, h, tq, d], f);
            let (ks, vs) = (
                Tensor::randn([1, hkv, p, d], f),
                Tensor::randn([1, hkv, p, d], f),
            );
            let (k, v) = (
                Tensor::randn([b, hkv, t, d], f),
                Tensor::randn([b, hkv, t, d], f),
            );
            // Left padding of 1, 0 and 2 among the rows' own keys.
            let key_mask =
                Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1]).view([b, t]);
            let mask = causal_mask(&key_mask, tq);
            let kc = Tensor::cat(&[ks.expand([b, -1, -1, -1], false), k.shallow_clone()], 2);
            let vc = Tensor::cat(&[vs.expand([b, -1, -1, -1], false), v.shallow_clone()], 2);
            let mc = Tensor::cat(
                &[
                    Tensor::ones([b, 1, tq, p], (Kind::Bool, f.1)),
                    mask.shallow_clone(),
                ],
                3,
            );
            for scale in [None, Some(0.3)] {
                let want = attend(&q, &kc, &vc, Some(&mc), scale);
                for (name, part) in [
                    ("flash", attend_part as AttendPart),
                    ("math", attend_part_math),
                ] {
                    let got = prefix_then_own(&q, (&ks, &vs), &k, &v, &mask, scale, part).unwrap();
                    let err = (&got - &want).abs().max().double_value(&[]);
                    assert!(err < 1e-5, "{name} tq {tq} scale {scale:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn causal_mask_by_hand() {
        // One sequence, left padded: [pad, a, b]; full prefill.
        let m = Tensor::from_slice(&[0i64, 1, 1]).view([1, 3]);
        let c = causal_mask(&m, 3).view([3, 3]);
        let got: Vec<i64> = Vec::try_from(c.to_kind(Kind::Int64).view([-1])).unwrap();
        assert_eq!(got, vec![1, 0, 0, 0, 1, 0, 0, 1, 1]);
        // One new query after those three keys plus itself.
        let m = Tensor::from_slice(&[0i64, 1, 1, 1]).view([1, 4]);
        let c = causal_mask(&m, 1).view([4]);
        let got: Vec<i64> = Vec::try_from(c.to_kind(Kind::Int64)).unwrap();
        assert_eq!(got, vec![0, 1, 1, 1]);
    }

    #[test]
    fn positions_skip_left_padding() {
        let m = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1]).view([2, 4]);
        let p: Vec<i64> = Vec::try_from(positions_from_mask(&m).view([-1])).unwrap();
        assert_eq!(p, vec![0, 0, 0, 1, 0, 1, 2, 3]);
    }

    /// The fused float32 path: values and both gradients equal the formula written op by op.
    #[test]
    fn fused_rms_norm_matches_the_formula_with_gradients() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let n = RmsNorm::new(vs.root().sub("n"), 24, 1e-5).unwrap();
        tch::no_grad(|| {
            let mut w = n.weight.shallow_clone();
            w.copy_(&(Tensor::rand([24], (Kind::Float, tch::Device::Cpu)) + 0.5))
        });
        let x = Tensor::randn([3, 5, 24], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let g = Tensor::randn([3, 5, 24], (Kind::Float, tch::Device::Cpu));
        let y = n.forward(&x);
        let (gx, gw) = {
            let r = Tensor::run_backward(
                &[(&y * &g).sum(Kind::Float)],
                &[&x, &n.weight],
                false,
                false,
            );
            (r[0].shallow_clone(), r[1].shallow_clone())
        };
        let var = x.square().mean_dim(-1, true, Kind::Float);
        let want = &n.weight * (&x * (var + 1e-5).rsqrt());
        let r = Tensor::run_backward(
            &[(&want * &g).sum(Kind::Float)],
            &[&x, &n.weight],
            false,
            false,
        );
        for (a, b) in [(&y, &want), (&gx, &r[0]), (&gw, &r[1])] {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-5, "max difference {d}");
        }
    }

    #[test]
    fn rms_norm_matches_formula() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let n = RmsNorm::new(vs.root().sub("n"), 2, 0.0).unwrap();
        let x = Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2]);
        let y: Vec<f32> = Vec::try_from(n.forward(&x).view([-1])).unwrap();
        let rms = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / rms).abs() < 1e-6 && (y[1] - 4.0 / rms).abs() < 1e-6);
    }
}
