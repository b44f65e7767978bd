//! What GPT-2 and the Llama family share as backbones: a forward pass over token embeddings with a
//! key/value cache, the language-model head, and greedy or sampled generation.
//!
//! Positions come from the attention mask (`cumsum(mask) - 1`), so a left-padded batch gives each
//! sequence the same outputs it would get alone, and callers can feed soft tokens through
//! `inputs_embeds` wherever token embeddings would go.

use tch::{Kind, Tensor};

use super::layers::{attend_dropout, attend_with_prefix, positions_from_mask};
use crate::error::{RecforgeError, Result};
use crate::rng::Rng;

/// One layer's keys and values of the tokens seen so far: `k` and `v` are `[B, kv_heads, cap,
/// head_dim]` buffers of which the first `len` positions are filled. Appending writes in place
/// and doubles the buffers when full, so a decoding step copies only its own keys and values,
/// not the whole cache.
pub struct CacheSlot {
    /// Key buffer.
    pub k: Tensor,
    /// Value buffer.
    pub v: Tensor,
    /// Filled positions.
    pub len: i64,
    /// Keys and values `[1, kv_heads, P, head_dim]` that every row attends to before its own
    /// (a prompt prefix the rows share, stored once): the key mask and `k`, `v` cover only the
    /// rows' own positions, which come after these.
    pub shared: Option<(Tensor, Tensor)>,
}

impl CacheSlot {
    /// A slot holding exactly `k` and `v` (`[B, kv_heads, T, head_dim]`), with no spare room.
    pub fn full(k: Tensor, v: Tensor) -> Self {
        let len = k.size()[2];
        Self {
            k,
            v,
            len,
            shared: None,
        }
    }

    /// A slot of `rows` rows with no keys of their own yet, after the shared `k`, `v`
    /// (`[1, kv_heads, P, head_dim]`).
    pub fn after_shared(k: &Tensor, v: &Tensor, rows: i64) -> Self {
        let mut size = k.size();
        size[0] = rows;
        size[2] = 0;
        let empty = |x: &Tensor| Tensor::empty(&size[..], (x.kind(), x.device()));
        Self {
            k: empty(k),
            v: empty(v),
            len: 0,
            shared: Some((k.shallow_clone(), v.shallow_clone())),
        }
    }

    /// The filled keys and values.
    pub fn filled(&self) -> (Tensor, Tensor) {
        (self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len))
    }
}

/// Per-layer caches, one slot per layer.
pub type KvCache = Vec<Option<CacheSlot>>;

/// Room kept after a prefill for the tokens decoded next.
pub(crate) const CACHE_SPARE: i64 = 64;

/// A `cap`-long buffer holding the first `len` positions of `x`. The rest is left uninitialised:
/// only the filled positions are ever read.
fn with_room(x: &Tensor, len: i64, cap: i64) -> Tensor {
    let mut size = x.size();
    size[2] = cap;
    let buf = Tensor::empty(&size[..], (x.kind(), x.device()));
    buf.narrow(2, 0, len).copy_(&x.narrow(2, 0, len));
    buf
}

/// Appends this step's keys and values to a layer's cache slot and returns all of them (views
/// of the slot's buffers).
pub fn extend_cache(
    slot: Option<&mut Option<CacheSlot>>,
    k: Tensor,
    v: Tensor,
) -> (Tensor, Tensor) {
    let Some(slot) = slot else { return (k, v) };
    let t = k.size()[2];
    let s = match slot.take() {
        None => CacheSlot {
            k: with_room(&k, t, t + CACHE_SPARE),
            v: with_room(&v, t, t + CACHE_SPARE),
            len: t,
            shared: None,
        },
        Some(mut s) => {
            let cap = s.k.size()[2];
            // (A slot made by `after_shared` has no room: the first append allocates it.)
            if s.len + t > cap {
                let cap = (2 * cap).max(s.len + t + CACHE_SPARE);
                s.k = with_room(&s.k, s.len, cap);
                s.v = with_room(&s.v, s.len, cap);
            }
            s.k.narrow(2, s.len, t).copy_(&k);
            s.v.narrow(2, s.len, t).copy_(&v);
            s.len += t;
            s
        }
    };
    let out = s.filled();
    *slot = Some(s);
    out
}

/// Self-attention of a decoder layer with its cache slot: appends this step's keys and values
/// (`[B, kv_heads, Tq, head_dim]`) to the slot and attends `q` `[B, heads, Tq, head_dim]` over
/// them under `mask` (boolean `[B, 1, Tq, T]` over the rows' own positions), after the slot's
/// shared prefix when it has one ([`super::layers::attend_with_prefix`]).
pub fn attend_cached(
    slot: Option<&mut Option<CacheSlot>>,
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    mask: &Tensor,
    scale: Option<f64>,
    dropout: f64,
) -> Result<Tensor> {
    let shared = slot
        .as_deref()
        .and_then(Option::as_ref)
        .and_then(|s| s.shared.as_ref())
        .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()));
    let (k, v) = extend_cache(slot, k, v);
    match shared {
        None => Ok(attend_dropout(q, &k, &v, Some(mask), scale, dropout)),
        Some((ks, vs)) => attend_with_prefix(q, (&ks, &vs), &k, &v, mask, scale),
    }
}

/// A causal language model usable as a backbone.
pub trait Decoder: Send {
    /// Token embeddings `[B, T, H]` of ids `[B, T]`.
    fn embed(&self, ids: &Tensor) -> Tensor;
    /// Hidden states after the final norm, `[B, Tq, H]`, of `embeds` `[B, Tq, H]`. `key_mask`
    /// `[B, Tpast + Tq]` marks real tokens among the cached and current ones (a cache slot's
    /// shared prefix is not in it: every row attends to all of that), `positions`
    /// `[B, Tq]` are their position ids, and `cache` (one slot per layer) is extended in place.
    fn forward(
        &self,
        embeds: &Tensor,
        key_mask: &Tensor,
        positions: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;
    /// Vocabulary logits of hidden states.
    fn logits(&self, hidden: &Tensor) -> Tensor;
    /// Number of layers (cache slots).
    fn num_layers(&self) -> usize;
    /// Hidden size.
    fn hidden_size(&self) -> i64;
    /// Vocabulary size.
    fn vocab_size(&self) -> i64;
    /// The longest sequence the position embeddings allow, if bounded.
    fn max_positions(&self) -> Option<i64>;
    /// Switches the dropout its config describes on (training) or off (evaluation, the default).
    fn set_training(&self, _on: bool) {}
    /// Runs the blocks' linear layers in bfloat16 (`true`: mixed precision; parameters,
    /// attention and the residual stream keep their own kind) or in the parameters' own kind
    /// (`false`, the default). See [`super::layers::ComputeKind`].
    fn set_bf16_products(&self, on: bool);
}

/// Checks ids against the vocabulary, so a bad id is an error rather than an index crash.
pub fn check_ids(ids: &Tensor, vocab: i64) -> Result<()> {
    if ids.numel() == 0 {
        return Ok(());
    }
    let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
    if lo < 0 || hi >= vocab {
        return Err(RecforgeError::data(format!(
            "token id {} is out of range for a vocabulary of {vocab}",
            if lo < 0 { lo } else { hi }
        )));
    }
    Ok(())
}

/// Checks a 0/1 mask of the given shape.
pub fn check_mask(mask: &Tensor, shape: &[i64]) -> Result<()> {
    if mask.size() != shape {
        return Err(RecforgeError::data(format!(
            "attention_mask has shape {:?}, but the input needs {shape:?}",
            mask.size()
        )));
    }
    if mask.numel() > 0 && (mask.min().int64_value(&[]) < 0 || mask.max().int64_value(&[]) > 1) {
        return Err(RecforgeError::data("attention_mask must hold only 0 and 1"));
    }
    Ok(())
}

/// Full forward pass of `embeds` `[B, T, H]` with mask `[B, T]`, positions taken from the mask.
pub fn hidden_states(net: &dyn Decoder, embeds: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, h) = embeds.size3().map_err(|_| {
        RecforgeError::data(format!(
            "inputs_embeds must be [batch, tokens, hidden], got {:?}",
            embeds.size()
        ))
    })?;
    if h != net.hidden_size() {
        return Err(RecforgeError::data(format!(
            "inputs_embeds has hidden size {h}, but the model's is {}",
            net.hidden_size()
        )));
    }
    check_mask(mask, &[b, t])?;
    let positions = positions_from_mask(mask);
    check_positions(net, &positions)?;
    net.forward(embeds, mask, &positions, None)
}

fn check_positions(net: &dyn Decoder, positions: &Tensor) -> Result<()> {
    if let Some(max) = net.max_positions() {
        if positions.numel() > 0 && positions.max().int64_value(&[]) >= max {
            return Err(RecforgeError::data(format!(
                "sequence is longer than the model's {max} positions"
            )));
        }
    }
    Ok(())
}

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from the softmax of `logits / temperature`, restricted to the `top_k` most likely
    /// tokens (0: all) and the smallest set whose probability reaches `top_p`.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Keep only this many most likely tokens; 0 keeps all.
        top_k: i64,
        /// Nucleus threshold in (0, 1].
        top_p: f64,
    },
}

/// Options of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate per sequence.
    pub max_new_tokens: i64,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Seed of the sampler.
    pub seed: i64,
    /// Ids that end a sequence; after one, the row is filled with `pad_id`.
    pub eos: Vec<i64>,
    /// Id written after a sequence has ended.
    pub pad_id: i64,
}

fn pick(logits: &Tensor, sampling: Sampling, rng: &mut Rng) -> Result<Tensor> {
    match sampling {
        Sampling::Greedy => Ok(logits.argmax(-1, false)),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            if temperature <= 0.0 || !(top_p > 0.0 && top_p <= 1.0) || top_k < 0 {
                return Err(RecforgeError::config(format!(
                    "sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0; got \
                     temperature={temperature}, top_p={top_p}, top_k={top_k}"
                )));
            }
            let mut l = logits.to_kind(Kind::Float) / temperature;
            let v = l.size()[1];
            if top_k > 0 && top_k < v {
                let (kth, _) = l.topk(top_k, -1, true, true);
                let floor = kth.narrow(1, top_k - 1, 1);
                l = l.masked_fill(&l.lt_tensor(&floor), f64::NEG_INFINITY);
            }
            if top_p < 1.0 {
                let (sorted, idx) = l.sort(-1, true);
                let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
                // Drop a token when the mass before it already reaches top_p (keep the first).
                let before = &cum - sorted.softmax(-1, Kind::Float);
                let drop_sorted = before.ge(top_p);
                let drop = drop_sorted.zeros_like().scatter(-1, &idx, &drop_sorted);
                l = l.masked_fill(&drop, f64::NEG_INFINITY);
            }
            // Draw on the CPU with recforge's own seeded generator: libtorch's global one is shared
            // with every other thread, so seeds would not reproduce.
            let probs = l
                .softmax(-1, Kind::Float)
                .to_device(tch::Device::Cpu)
                .contiguous();
            let flat: Vec<f32> = Vec::try_from(probs.view([-1]))?;
            let picks: Vec<i64> = flat
                .chunks(v as usize)
                .map(|row| {
                    let u = rng.unit_f64() * row.iter().map(|&p| p as f64).sum::<f64>();
                    let mut acc = 0.0;
                    let last = row.iter().rposition(|&p| p > 0.0).unwrap_or(0);
                    row.iter()
                        .position(|&p| {
                            acc += p as f64;
                            p > 0.0 && acc > u
                        })
                        .unwrap_or(last) as i64
                })
                .collect();
            Ok(Tensor::from_slice(&picks).to_device(logits.device()))
        }
    }
}

/// Generates up to `max_new_tokens` per sequence after left-padded prompts `ids` `[B, T]` (mask
/// `[B, T]`), reusing keys and values through a cache. Returns `[B, max_new_tokens]`; rows that
/// ended early are filled with `pad_id`. `step(done, total)` is called after each token and
/// stops generation when it returns true.
pub fn generate(
    net: &dyn Decoder,
    ids: &Tensor,
    mask: &Tensor,
    opts: &GenerateOptions,
    step: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Tensor> {
    let (b, t) = ids.size2()?;
    check_ids(ids, net.vocab_size())?;
    check_mask(mask, &[b, t])?;
    if t == 0 || b == 0 {
        return Err(RecforgeError::data(
            "generate needs at least one prompt of at least one token",
        ));
    }
    if opts.max_new_tokens < 0 {
        return Err(RecforgeError::config("max_new_tokens must be >= 0"));
    }
    if mask.select(1, t - 1).min().int64_value(&[]) == 0 {
        return Err(RecforgeError::data(
            "generate needs left-padded prompts: the last column of attention_mask must be all 1",
        ));
    }
    let dev = ids.device();
    let mut positions = positions_from_mask(mask);
    if let Some(max) = net.max_positions() {
        let last = positions.max().int64_value(&[]);
        if last.saturating_add(opts.max_new_tokens) >= max {
            return Err(RecforgeError::data(format!(
                "prompt plus max_new_tokens needs {} positions, the model has {max}",
                last.saturating_add(opts.max_new_tokens).saturating_add(1)
            )));
        }
    }
    let mut rng = Rng::new(opts.seed as u64, 0x6765_6e65);
    let eos = Tensor::from_slice(&opts.eos).to_device(dev);
    let mut cache: KvCache = (0..net.num_layers()).map(|_| None).collect();
    let mut key_mask = mask.shallow_clone();
    let total = usize::try_from(opts.max_new_tokens).unwrap_or(usize::MAX);
    let mut out: Vec<Tensor> = Vec::with_capacity(total.min(1024));
    let mut finished = Tensor::zeros([b], (Kind::Bool, dev));
    let mut hidden = net.forward(&net.embed(ids), &key_mask, &positions, Some(&mut cache))?;
    for i in 0..total {
        let logits = net.logits(&hidden.select(1, hidden.size()[1] - 1));
        let picked = pick(&logits, opts.sampling, &mut rng)?;
        let next = picked.where_self(
            &finished.logical_not(),
            &Tensor::full([b], opts.pad_id, (Kind::Int64, dev)),
        );
        out.push(next.shallow_clone());
        if !opts.eos.is_empty() {
            finished = finished.logical_or(&Tensor::isin(&next, &eos, false, false));
        }
        if step(i + 1, total) || bool::try_from(finished.all())? || i + 1 == total {
            break;
        }
        key_mask = Tensor::cat(&[key_mask, Tensor::ones([b, 1], (Kind::Int64, dev))], 1);
        positions = positions.narrow(1, positions.size()[1] - 1, 1) + 1;
        // Finished rows are fed their own pick, not the pad id (which need not be a token of
        // the vocabulary: -1 or 99 would index outside the embedding table); their outputs
        // are discarded, and rows do not attend to each other.
        hidden = net.forward(
            &net.embed(&picked.unsqueeze(1)),
            &key_mask,
            &positions,
            Some(&mut cache),
        )?;
    }
    let mut tokens = if out.is_empty() {
        Tensor::zeros([b, 0], (Kind::Int64, dev))
    } else {
        Tensor::stack(&out, 1)
    };
    let got = tokens.size()[1];
    if got < opts.max_new_tokens {
        let fill = Tensor::f_full(
            [b, opts.max_new_tokens - got],
            opts.pad_id,
            (Kind::Int64, dev),
        )?;
        tokens = Tensor::cat(&[tokens, fill], 1);
    }
    Ok(tokens)
}
