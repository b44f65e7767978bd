//! Continuous batching over a [`Decoder`]: requests wait in a queue, up to `max_batch` of them
//! decode together, and a row that finishes (end of sequence, stop string, token limit, complete
//! constrained answer) leaves the batch at once; the free slots are refilled from the queue, so
//! the batch never waits for its longest member.
//!
//! Rows of different lengths share one key/value cache, left-padded: a new group of requests is
//! prefilled on its own and merged into the running cache by padding the shorter of the two on
//! the left (the attention mask hides the padding; positions come from each row's own count of
//! real tokens, as in [`crate::text::decoder`]). Columns that no row uses any more are trimmed.
//!
//! A prompt prefix that every queued request shares (the chat template's system turn and a
//! prompt family's few-shot examples: most of an S1/S3/S5 prompt) is run once, in a batch of
//! one, and its keys and values are copied into each prefill group's cache, so a group runs only
//! its rows' own suffixes (llama.cpp's and vLLM's prompt caching do the same). The prefix's keys
//! and values are stored once, not per row: each layer attends to them with the whole batch's
//! queries at once and merges that with the rows' own attention through the log-sum-exps
//! ([`crate::text::layers::attend_with_prefix`]), so a decoding step reads them once for the
//! batch. Rows' positions continue after the prefix, so the answers are those of the full
//! prompts (up to float rounding).
//!
//! Each row picks its tokens with its own random generator, seeded from the request, and logits
//! are read on the CPU in float32: a request's answer does not depend on which requests share its
//! batch (up to the float rounding of a padded batch, which only matters at exact ties) nor on the
//! number of threads.

use std::collections::{HashMap, VecDeque};

use tch::{Kind, Tensor};

use crate::error::{RecforgeError, Result};
use crate::rng::Rng;
use crate::text::decoder::{CacheSlot, Decoder, KvCache, Sampling, CACHE_SPARE};
use crate::text::layers::positions_from_mask;

/// A grammar that a row's tokens must follow (see [`super::constrain`]).
pub trait RowConstraint: Send {
    /// The token ids allowed next when at most `budget` more tokens may follow (end-of-sequence
    /// ids among them only when the answer so far is complete).
    fn allowed(&mut self, budget: usize) -> Result<Vec<u32>>;
    /// Records the chosen token.
    fn advance(&mut self, token: u32) -> Result<()>;
    /// The answer is complete and nothing may extend it.
    fn finished(&self) -> bool;
}

/// One generation request.
pub struct GenRequest {
    /// Prompt token ids (not empty).
    pub prompt: Vec<i64>,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Seed of this row's sampler.
    pub seed: u64,
    /// Generation ends before the first of these strings (which is not part of the answer).
    pub stop: Vec<String>,
    /// A grammar the answer must follow.
    pub constraint: Option<Box<dyn RowConstraint>>,
    /// OpenAI's `frequency_penalty`: subtracted from a token's logit once per time the token
    /// occurs in this request's answer so far (0: none).
    pub frequency_penalty: f64,
    /// OpenAI's `presence_penalty`: subtracted from the logit of every token that occurs in this
    /// request's answer so far (0: none).
    pub presence_penalty: f64,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It generated an end-of-sequence token.
    Eos,
    /// It reached `max_tokens`.
    Length,
    /// It generated a stop string.
    Stop,
    /// Its constrained answer was complete.
    Complete,
}

/// One finished row.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Generated ids (without the end-of-sequence token).
    pub tokens: Vec<i64>,
    /// Their text, cut before a stop string.
    pub text: String,
    /// Tokens generated, counting an end-of-sequence token.
    pub completion_tokens: usize,
    /// Why it stopped.
    pub finish: Finish,
}

/// What the batcher needs from the model: the network, its end-of-sequence ids, and a decoder
/// of ids to text.
pub struct Model<'a> {
    /// The network.
    pub net: &'a dyn Decoder,
    /// End-of-sequence ids.
    pub eos: &'a [i64],
    /// Ids to text (special tokens skipped).
    pub decode: &'a dyn Fn(&[i64]) -> Result<String>,
    /// Rows decoded together at most.
    pub max_batch: usize,
    /// The device the network runs on.
    pub device: tch::Device,
    /// Run the prompt prefix every request shares once (see the module's documentation).
    pub prefix_cache: bool,
}

/// The shortest shared prefix (tokens) worth a pass of its own.
const MIN_SHARED_PREFIX: usize = 16;

/// Keys and values, per layer, of the prompt prefix every queued request starts with
/// (`[1, kv_heads, len, head_dim]`).
struct Prefix {
    len: usize,
    kv: Vec<Option<(Tensor, Tensor)>>,
}

/// The longest prefix all `rows` share, leaving each row at least one token of its own (its
/// last position gives its first logits); `None` under [`MIN_SHARED_PREFIX`] or for one row.
fn shared_prefix_len(rows: &VecDeque<Row>) -> Option<usize> {
    let first = &rows.front()?.req.prompt;
    if rows.len() < 2 {
        return None;
    }
    let mut len = first.len() - 1;
    for row in rows.iter().skip(1) {
        let p = &row.req.prompt;
        let common = first.iter().zip(p).take_while(|(a, b)| a == b).count();
        len = len.min(common).min(p.len() - 1);
        if len < MIN_SHARED_PREFIX {
            return None;
        }
    }
    (len >= MIN_SHARED_PREFIX).then_some(len)
}

/// Runs the shared prefix of the queued requests once.
fn shared_prefix(m: &Model, rows: &VecDeque<Row>) -> Result<Option<Prefix>> {
    let Some(len) = shared_prefix_len(rows).filter(|_| m.prefix_cache) else {
        return Ok(None);
    };
    let prompt = &rows[0].req.prompt[..len];
    let ids = Tensor::from_slice(prompt)
        .view([1, len as i64])
        .to_device(m.device);
    let mask = Tensor::ones([1, len as i64], (Kind::Int64, m.device));
    let positions = positions_from_mask(&mask);
    let mut cache: KvCache = (0..m.net.num_layers()).map(|_| None).collect();
    // Only the cache is kept: the prefix's hidden states are not needed.
    let _hidden = m
        .net
        .forward(&m.net.embed(&ids), &mask, &positions, Some(&mut cache))?;
    let kv = cache
        .into_iter()
        .map(|s| {
            s.map(|s| {
                let (k, v) = s.filled();
                (k.contiguous(), v.contiguous())
            })
        })
        .collect();
    Ok(Some(Prefix { len, kv }))
}

struct Row {
    index: usize,
    req: GenRequest,
    out: Vec<i64>,
    /// How often each token occurs in `out` (kept only when the request has a penalty).
    counts: HashMap<i64, u32>,
    rng: Rng,
    position: i64,
}

/// The running batch: rows, their shared cache, key mask and next-token logits.
struct Batch {
    rows: Vec<Row>,
    cache: KvCache,
    mask: Tensor,
    logits: Tensor,
}

fn pad_left(t: &Tensor, dim_from_end: usize, by: i64) -> Tensor {
    if by == 0 {
        return t.shallow_clone();
    }
    // constant_pad_nd pads the last dimension first: two entries per dimension from the end.
    let mut pad = vec![0i64; 2 * (dim_from_end + 1)];
    pad[2 * dim_from_end] = by;
    t.constant_pad_nd(&pad)
}

fn cat_rows(a: Tensor, b: Tensor, time_from_end: usize) -> Tensor {
    let dim = a.dim() - 1 - time_from_end;
    let (ta, tb) = (a.size()[dim], b.size()[dim]);
    let t = ta.max(tb);
    Tensor::cat(
        &[
            pad_left(&a, time_from_end, t - ta),
            pad_left(&b, time_from_end, t - tb),
        ],
        0,
    )
}

/// The rows of `a` then those of `b`, each left-padded with zeros to the longer one's length, in
/// buffers with room for the tokens decoded next (so the next step appends without a copy).
fn merge_slots(a: &CacheSlot, b: &CacheSlot) -> CacheSlot {
    let t = a.len.max(b.len);
    let stack = |x: &Tensor, y: &Tensor| {
        let (nx, ny) = (x.size()[0], y.size()[0]);
        let mut size = x.size();
        size[0] = nx + ny;
        size[2] = t + CACHE_SPARE;
        // Zeros: the padding columns are read (and masked), so they must be finite.
        let buf = Tensor::zeros(&size[..], (x.kind(), x.device()));
        buf.narrow(0, 0, nx).narrow(2, t - a.len, a.len).copy_(x);
        buf.narrow(0, nx, ny).narrow(2, t - b.len, b.len).copy_(y);
        buf
    };
    let ((ka, va), (kb, vb)) = (a.filled(), b.filled());
    CacheSlot {
        k: stack(&ka, &kb),
        v: stack(&va, &vb),
        len: t,
        // Every row of one `generate` call shares the same prefix (or none).
        shared: a
            .shared
            .as_ref()
            .map(|(k, v)| (k.shallow_clone(), v.shallow_clone())),
    }
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len()
    }

    /// Adds prefilled rows (their cache, mask and logits) to the batch.
    fn merge(&mut self, rows: Vec<Row>, cache: KvCache, mask: Tensor, logits: Tensor) {
        if self.rows.is_empty() {
            *self = Batch {
                rows,
                cache,
                mask,
                logits,
            };
            return;
        }
        self.rows.extend(rows);
        for (slot, new) in self.cache.iter_mut().zip(cache) {
            if let (Some(old), Some(new)) = (slot.take(), new) {
                *slot = Some(merge_slots(&old, &new));
            }
        }
        let old = std::mem::replace(&mut self.mask, Tensor::new());
        self.mask = cat_rows(old, mask, 0);
        self.logits = Tensor::cat(&[&self.logits, &logits], 0);
    }

    /// Keeps the rows at `keep` and drops the cache columns no remaining row uses.
    fn retain(&mut self, keep: &[usize]) {
        if keep.len() == self.rows.len() {
            return;
        }
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = keep.iter().filter_map(|&i| rows[i].take()).collect();
        if keep.is_empty() {
            self.cache.iter_mut().for_each(|s| *s = None);
            return;
        }
        let dev = self.mask.device();
        let idx =
            Tensor::from_slice(&keep.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(dev);
        self.mask = self.mask.index_select(0, &idx);
        self.logits = self.logits.index_select(0, &idx);
        // The first column any remaining row attends to.
        let used = self.mask.sum_dim_intlist(0, false, Kind::Int64).gt(0);
        let first = used.to_kind(Kind::Int64).argmax(0, false).int64_value(&[]);
        let width = self.mask.size()[1] - first;
        self.mask = self.mask.narrow(1, first, width);
        for slot in self.cache.iter_mut() {
            if let Some(s) = slot.take() {
                // The whole buffer from `first` on, spare room included, so the next step
                // appends in place instead of copying the cache again.
                let keep = |x: &Tensor| {
                    let cap = x.size()[2];
                    x.narrow(2, first, cap - first).index_select(0, &idx)
                };
                *slot = Some(CacheSlot {
                    k: keep(&s.k),
                    v: keep(&s.v),
                    len: s.len - first,
                    shared: s.shared,
                });
                debug_assert_eq!(s.len - first, width);
            }
        }
    }
}

/// OpenAI's repetition penalties, on a row's logits before the constraint mask and the sampler:
/// `logit[t] -= frequency * count[t] + presence * (count[t] > 0)` for every token `t` the answer
/// holds `count[t]` times (completion tokens only: the prompt is not counted). Ids outside the
/// logits are ignored.
fn penalize(logits: &mut [f32], counts: &HashMap<i64, u32>, frequency: f64, presence: f64) {
    for (&t, &c) in counts {
        if let Some(x) = usize::try_from(t).ok().and_then(|t| logits.get_mut(t)) {
            if c > 0 {
                *x = (f64::from(*x) - frequency * f64::from(c) - presence) as f32;
            }
        }
    }
}

/// Picks row `r`'s next token from its float32 logits.
fn pick(logits: &mut [f32], allowed: Option<&[u32]>, sampling: Sampling, rng: &mut Rng) -> i64 {
    if let Some(allowed) = allowed {
        let mut keep = vec![f32::NEG_INFINITY; logits.len()];
        for &a in allowed {
            if let Some(x) = logits.get(a as usize) {
                keep[a as usize] = *x;
            }
        }
        logits.copy_from_slice(&keep);
    }
    let argmax = |l: &[f32]| -> i64 {
        let mut best = 0usize;
        for (i, &x) in l.iter().enumerate() {
            // First maximum, as torch's argmax; NaN never wins.
            if x > l[best] || (l[best].is_nan() && !x.is_nan()) {
                best = i;
            }
        }
        best as i64
    };
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let mut cand: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .filter(|(_, x)| x.is_finite())
                .map(|(i, &x)| (i, x as f64 / temperature))
                .collect();
            if cand.is_empty() {
                return argmax(logits);
            }
            // Most likely first; ties by id, so the order is the same on every run.
            cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            if top_k > 0 && (top_k as usize) < cand.len() {
                let kth = cand[top_k as usize - 1].1;
                cand.retain(|c| c.1 >= kth);
            }
            let max = cand[0].1;
            let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
            let sum: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
            if top_p < 1.0 {
                // Keep a token while the mass before it is below top_p (the first always).
                let mut acc = 0.0;
                let mut n = 0;
                for p in &probs {
                    if n > 0 && acc >= top_p {
                        break;
                    }
                    acc += p;
                    n += 1;
                }
                probs.truncate(n);
                let s: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= s);
            }
            let u = rng.unit_f64();
            let mut acc = 0.0;
            for (c, p) in cand.iter().zip(&probs) {
                acc += p;
                if u < acc {
                    return c.0 as i64;
                }
            }
            cand[probs.len() - 1].0 as i64
        }
    }
}

/// Prefills `rows` as one left-padded group: their cache, mask `[n, T]` and last logits `[n, V]`.
/// With a shared `prefix`, only the tokens after it run; the cache and mask start with it.
fn prefill(m: &Model, rows: &[Row], prefix: Option<&Prefix>) -> Result<(KvCache, Tensor, Tensor)> {
    let skip = prefix.map_or(0, |p| p.len);
    fn own(row: &Row, skip: usize) -> &[i64] {
        &row.req.prompt[skip..]
    }
    let t = rows.iter().map(|r| own(r, skip).len()).max().unwrap_or(0) as i64;
    let n = rows.len() as i64;
    let mut ids = vec![0i64; (n * t) as usize];
    let mut mask = vec![0i64; (n * t) as usize];
    for (r, row) in rows.iter().enumerate() {
        let p = own(row, skip);
        let off = (r as i64 * t) as usize + (t as usize - p.len());
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].iter_mut().for_each(|x| *x = 1);
    }
    let ids = Tensor::from_slice(&ids).view([n, t]).to_device(m.device);
    let mask = Tensor::from_slice(&mask).view([n, t]).to_device(m.device);
    let mut cache: KvCache = (0..m.net.num_layers()).map(|_| None).collect();
    let mut positions = positions_from_mask(&mask);
    if let Some(p) = prefix {
        // The rows attend to the prefix's keys, stored once, before their own; the mask covers
        // only their own positions, which start after the prefix.
        for (slot, kv) in cache.iter_mut().zip(&p.kv) {
            *slot = kv.as_ref().map(|(k, v)| CacheSlot::after_shared(k, v, n));
        }
        positions += skip as i64;
    }
    let hidden = m
        .net
        .forward(&m.net.embed(&ids), &mask, &positions, Some(&mut cache))?;
    let logits = m.net.logits(&hidden.select(1, t - 1));
    Ok((cache, mask, logits))
}

/// Checks a request before it is queued: an error here fails that request only.
fn check(m: &Model, req: &GenRequest) -> std::result::Result<(), String> {
    if req.prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let vocab = m.net.vocab_size();
    if let Some(bad) = req.prompt.iter().find(|&&t| t < 0 || t >= vocab) {
        return Err(format!(
            "token id {bad} is out of range for a vocabulary of {vocab}"
        ));
    }
    if let Some(max) = m.net.max_positions() {
        let need = req.prompt.len().saturating_add(req.max_tokens) as i64;
        if need > max {
            return Err(format!(
                "prompt ({} tokens) plus max_tokens ({}) needs {need} positions, the model has {max}",
                req.prompt.len(),
                req.max_tokens
            ));
        }
    }
    if !(req.frequency_penalty.is_finite() && req.presence_penalty.is_finite()) {
        return Err(format!(
            "frequency_penalty and presence_penalty must be finite numbers; got {} and {}",
            req.frequency_penalty, req.presence_penalty
        ));
    }
    if let Sampling::Sample {
        temperature,
        top_k,
        top_p,
    } = req.sampling
    {
        if !(temperature > 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0)
            || top_k < 0
        {
            return Err(format!(
                "sampling needs temperature > 0, 0 < top_p <= 1 and top_k >= 0; got \
                 temperature={temperature}, top_p={top_p}, top_k={top_k}"
            ));
        }
    }
    Ok(())
}

/// Generates every request with continuous batching. `done(index, result)` is called as each
/// request finishes (in finishing order); `progress(finished, total)` after each decoding step,
/// and a `true` from it stops the work (requests not finished then get no `done` call). Returns
/// whether it was stopped.
pub fn generate(
    m: &Model,
    requests: Vec<GenRequest>,
    done: &mut dyn FnMut(usize, std::result::Result<Generated, String>),
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<bool> {
    if m.max_batch == 0 {
        return Err(RecforgeError::config("max_batch must be >= 1"));
    }
    let total = requests.len();
    let mut finished = 0usize;
    let mut queue: VecDeque<Row> = VecDeque::new();
    for (index, req) in requests.into_iter().enumerate() {
        match check(m, &req) {
            Err(e) => {
                done(index, Err(e));
                finished += 1;
            }
            Ok(()) if req.max_tokens == 0 => {
                done(
                    index,
                    Ok(Generated {
                        tokens: vec![],
                        text: String::new(),
                        completion_tokens: 0,
                        finish: Finish::Length,
                    }),
                );
                finished += 1;
            }
            Ok(()) => {
                let rng = Rng::new(req.seed, 0x6c6c_6d00);
                let position = req.prompt.len() as i64;
                queue.push_back(Row {
                    index,
                    req,
                    out: vec![],
                    counts: HashMap::new(),
                    rng,
                    position,
                });
            }
        }
    }
    let _guard = tch::no_grad_guard();
    let prefix = shared_prefix(m, &queue)?;
    let mut batch = Batch {
        rows: vec![],
        cache: (0..m.net.num_layers()).map(|_| None).collect(),
        mask: Tensor::new(),
        logits: Tensor::new(),
    };
    // Refill when this many slots are free (prefilling one request at a time wastes a pass).
    let refill_at = (m.max_batch / 4).max(1);
    loop {
        let free = m.max_batch - batch.len();
        if !queue.is_empty() && (batch.len() == 0 || free >= refill_at.min(queue.len())) {
            let take = free.min(queue.len());
            let rows: Vec<Row> = queue.drain(..take).collect();
            let (cache, mask, logits) = prefill(m, &rows, prefix.as_ref())?;
            batch.merge(rows, cache, mask, logits);
        }
        if batch.len() == 0 {
            break;
        }
        // Pick every row's next token on the CPU, in float32.
        let logits = batch
            .logits
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let v = logits.size()[1] as usize;
        let mut flat: Vec<f32> = Vec::try_from(logits.view([-1]))?;
        let mut keep = Vec::with_capacity(batch.len());
        let mut next = Vec::with_capacity(batch.len());
        for (r, row) in batch.rows.iter_mut().enumerate() {
            let budget = row.req.max_tokens - row.out.len();
            let allowed = match row.req.constraint.as_mut().map(|c| c.allowed(budget)) {
                None => None,
                Some(Ok(a)) if !a.is_empty() => Some(Ok(a)),
                Some(Ok(_)) => Some(Err("the constraint allows no next token".to_string())),
                Some(Err(e)) => Some(Err(e.to_string())),
            }
            .transpose();
            let allowed = match allowed {
                Ok(a) => a,
                Err(e) => {
                    done(row.index, Err(format!("constrained decoding failed: {e}")));
                    finished += 1;
                    continue;
                }
            };
            let lrow = &mut flat[r * v..(r + 1) * v];
            let (fp, pp) = (row.req.frequency_penalty, row.req.presence_penalty);
            if fp != 0.0 || pp != 0.0 {
                penalize(lrow, &row.counts, fp, pp);
            }
            let token = pick(lrow, allowed.as_deref(), row.req.sampling, &mut row.rng);
            let mut end = None;
            if m.eos.contains(&token) {
                end = Some(Finish::Eos);
            } else {
                row.out.push(token);
                if row.req.frequency_penalty != 0.0 || row.req.presence_penalty != 0.0 {
                    *row.counts.entry(token).or_insert(0) += 1;
                }
                if let Some(c) = row.req.constraint.as_mut() {
                    if let Err(e) = c.advance(token as u32) {
                        done(row.index, Err(format!("constrained decoding failed: {e}")));
                        finished += 1;
                        continue;
                    }
                    if c.finished() {
                        end = Some(Finish::Complete);
                    }
                }
            }
            let mut text = None;
            if end.is_none() && !row.req.stop.is_empty() {
                let t = (m.decode)(&row.out)?;
                if let Some(cut) = row.req.stop.iter().filter_map(|s| t.find(s.as_str())).min() {
                    text = Some(t[..cut].to_string());
                    end = Some(Finish::Stop);
                }
            }
            if end.is_none() && row.out.len() >= row.req.max_tokens {
                end = Some(Finish::Length);
            }
            match end {
                None => {
                    keep.push(r);
                    next.push(token);
                }
                Some(finish) => {
                    let text = match text {
                        Some(t) => t,
                        None => (m.decode)(&row.out)?,
                    };
                    let completion_tokens = row.out.len() + usize::from(finish == Finish::Eos);
                    done(
                        row.index,
                        Ok(Generated {
                            tokens: std::mem::take(&mut row.out),
                            text,
                            completion_tokens,
                            finish,
                        }),
                    );
                    finished += 1;
                }
            }
        }
        if progress(finished, total) {
            return Ok(true);
        }
        batch.retain(&keep);
        if batch.len() == 0 {
            continue;
        }
        let b = batch.len() as i64;
        let ids = Tensor::from_slice(&next).view([b, 1]).to_device(m.device);
        let positions: Vec<i64> = batch.rows.iter().map(|r| r.position).collect();
        let positions = Tensor::from_slice(&positions)
            .view([b, 1])
            .to_device(m.device);
        batch.rows.iter_mut().for_each(|r| r.position += 1);
        batch.mask = Tensor::cat(
            &[&batch.mask, &Tensor::ones([b, 1], (Kind::Int64, m.device))],
            1,
        );
        let hidden = m.net.forward(
            &m.net.embed(&ids),
            &batch.mask,
            &positions,
            Some(&mut batch.cache),
        )?;
        batch.logits = m.net.logits(&hidden.select(1, 0));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::causal_lm::{CausalLm, Input};
    use serde_json::json;
    use tch::Device;

    fn tiny(kind: &str) -> CausalLm {
        let config = if kind == "gpt2" {
            json!({"model_type": "gpt2", "vocab_size": 60, "n_positions": 64, "n_embd": 16,
                   "n_layer": 2, "n_head": 2, "eos_token_id": 59})
        } else {
            json!({"model_type": kind, "vocab_size": 60, "hidden_size": 16, "intermediate_size": 24,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "eos_token_id": 59})
        };
        let lm = CausalLm::from_config(config, 11, Device::Cpu, Kind::Float).unwrap();
        // Weights redrawn from recforge's own generator: libtorch's is global, and tests running
        // in parallel reseed it, so a weight drawn there can differ from run to run (one such
        // model had a near tie in its greedy answers). Constant tensors (norm weights, zero
        // biases) keep their values; the others become uniform with standard deviation 0.2 (ten times the initialiser's, so
        // greedy choices are far from ties).
        let mut rng = crate::rng::Rng::new(11, 0);
        tch::no_grad(|| {
            for (_, p) in lm.named_parameters() {
                if p.std(true).double_value(&[]) == 0.0 {
                    continue;
                }
                let half_width = 0.2 * 3f64.sqrt();
                let values: Vec<f32> = (0..p.numel())
                    .map(|_| ((rng.unit_f64() * 2.0 - 1.0) * half_width) as f32)
                    .collect();
                let mut p = p;
                p.copy_(&Tensor::from_slice(&values).view(p.size().as_slice()));
            }
        });
        lm
    }

    /// Greedy continuation of one prompt by full forward passes over the growing sequence.
    fn slow_greedy(lm: &CausalLm, prompt: &[i64], n: usize, eos: i64) -> Vec<i64> {
        slow_greedy_penalized(lm, prompt, n, eos, 0.0, 0.0)
    }

    /// The same with OpenAI's penalties, applied in torch to the full logits of each step.
    fn slow_greedy_penalized(
        lm: &CausalLm,
        prompt: &[i64],
        n: usize,
        eos: i64,
        frequency: f64,
        presence: f64,
    ) -> Vec<i64> {
        let mut seq = prompt.to_vec();
        let mut out: Vec<i64> = vec![];
        for _ in 0..n {
            let x = Tensor::from_slice(&seq).view([1, -1]);
            let logits = tch::no_grad(|| lm.logits(&Input::Ids(x), None).unwrap());
            let last = logits
                .get(0)
                .get(seq.len() as i64 - 1)
                .to_kind(Kind::Double);
            let v = last.size()[0];
            let counts = if out.is_empty() {
                Tensor::zeros([v], (Kind::Double, Device::Cpu))
            } else {
                Tensor::from_slice(&out)
                    .bincount::<Tensor>(None, v)
                    .to_kind(Kind::Double)
            };
            let last = last - &counts * frequency - counts.gt(0).to_kind(Kind::Double) * presence;
            // The batcher's logits differ from these by float rounding: a near tie would make
            // the comparison a coin toss, so the fixture must have none.
            let (top, _) = last.topk(2, -1, true, true);
            let margin = top.double_value(&[0]) - top.double_value(&[1]);
            assert!(margin > 1e-4, "near tie in the reference (margin {margin})");
            let next = last.argmax(-1, false).int64_value(&[]);
            if next == eos {
                break;
            }
            out.push(next);
            seq.push(next);
        }
        out
    }

    fn requests(prompts: &[Vec<i64>], max_tokens: &[usize], sampling: Sampling) -> Vec<GenRequest> {
        prompts
            .iter()
            .zip(max_tokens)
            .enumerate()
            .map(|(i, (p, &m))| GenRequest {
                prompt: p.clone(),
                max_tokens: m,
                sampling,
                seed: 100 + i as u64,
                stop: vec![],
                constraint: None,
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
            })
            .collect()
    }

    fn run(lm: &CausalLm, reqs: Vec<GenRequest>, max_batch: usize) -> Vec<Generated> {
        run_with(lm, reqs, max_batch, true)
    }

    fn run_with(
        lm: &CausalLm,
        reqs: Vec<GenRequest>,
        max_batch: usize,
        prefix_cache: bool,
    ) -> Vec<Generated> {
        let decode =
            |ids: &[i64]| -> Result<String> { Ok(ids.iter().map(|i| format!("<{i}>")).collect()) };
        let m = Model {
            net: lm.net(),
            eos: &lm.eos,
            decode: &decode,
            max_batch,
            device: Device::Cpu,
            prefix_cache,
        };
        let mut out: Vec<Option<Generated>> = vec![None; reqs.len()];
        let stopped = generate(
            &m,
            reqs,
            &mut |i, g| out[i] = Some(g.unwrap()),
            &mut |_, _| false,
        )
        .unwrap();
        assert!(!stopped);
        out.into_iter().map(Option::unwrap).collect()
    }

    fn prompts() -> Vec<Vec<i64>> {
        (0..7)
            .map(|i| {
                (0..(2 + 3 * i % 11))
                    .map(|t| (t * 7 + i * 5) % 59)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn continuous_batching_gives_each_request_its_own_greedy_answer() {
        for kind in ["gpt2", "llama"] {
            let lm = tiny(kind);
            let ps = prompts();
            let max: Vec<usize> = (0..ps.len()).map(|i| 3 + (i * 5) % 13).collect();
            for max_batch in [1, 2, 3, 16] {
                let got = run(&lm, requests(&ps, &max, Sampling::Greedy), max_batch);
                for (i, g) in got.iter().enumerate() {
                    let want = slow_greedy(&lm, &ps[i], max[i], 59);
                    assert_eq!(g.tokens, want, "{kind} batch {max_batch} request {i}");
                    let finish = if want.len() < max[i] {
                        Finish::Eos
                    } else {
                        Finish::Length
                    };
                    assert_eq!(g.finish, finish);
                    assert_eq!(
                        g.completion_tokens,
                        want.len() + usize::from(finish == Finish::Eos)
                    );
                }
            }
        }
    }

    /// Prompts that share a 20-token prefix (one of them is the prefix plus one token), then
    /// differ in length and content.
    fn prefixed_prompts() -> Vec<Vec<i64>> {
        let head: Vec<i64> = (0..20).map(|t| (t * 11 + 3) % 59).collect();
        prompts()
            .into_iter()
            .enumerate()
            .map(|(i, tail)| {
                let mut p = head.clone();
                p.extend(if i == 0 { &tail[..1] } else { &tail[..] });
                p
            })
            .collect()
    }

    #[test]
    fn the_shared_prefix_is_the_longest_that_leaves_each_row_a_token() {
        let rows = |ps: &[Vec<i64>]| -> VecDeque<Row> {
            requests(ps, &vec![4; ps.len()], Sampling::Greedy)
                .into_iter()
                .enumerate()
                .map(|(index, req)| Row {
                    index,
                    req,
                    out: vec![],
                    counts: HashMap::new(),
                    rng: Rng::new(0, 0),
                    position: 0,
                })
                .collect()
        };
        let ps = prefixed_prompts();
        // Prompt 0 is the 20 shared tokens plus one: all 20 are shared.
        assert_eq!(shared_prefix_len(&rows(&ps)), Some(20));
        // A prompt that is exactly the shared part keeps its last token for itself.
        let mut short = ps.clone();
        short[0].truncate(20);
        assert_eq!(shared_prefix_len(&rows(&short)), Some(19));
        // A lone request, or a prefix under MIN_SHARED_PREFIX, runs whole.
        assert_eq!(shared_prefix_len(&rows(&ps[..1])), None);
        let mut diverge = ps.clone();
        diverge[3][MIN_SHARED_PREFIX - 1] = 58 - diverge[3][MIN_SHARED_PREFIX - 1];
        assert_eq!(shared_prefix_len(&rows(&diverge)), None);
        diverge[3][MIN_SHARED_PREFIX - 1] = ps[3][MIN_SHARED_PREFIX - 1];
        diverge[3][MIN_SHARED_PREFIX] = 58 - diverge[3][MIN_SHARED_PREFIX];
        assert_eq!(shared_prefix_len(&rows(&diverge)), Some(MIN_SHARED_PREFIX));
    }

    #[test]
    fn a_shared_prefix_run_once_gives_each_request_its_own_greedy_answer() {
        for kind in ["gpt2", "llama"] {
            let lm = tiny(kind);
            let ps = prefixed_prompts();
            let max: Vec<usize> = (0..ps.len()).map(|i| 3 + (i * 5) % 13).collect();
            for max_batch in [1, 2, 3, 16] {
                for prefix_cache in [true, false] {
                    let reqs = requests(&ps, &max, Sampling::Greedy);
                    let got = run_with(&lm, reqs, max_batch, prefix_cache);
                    for (i, g) in got.iter().enumerate() {
                        let want = slow_greedy(&lm, &ps[i], max[i], 59);
                        assert_eq!(
                            g.tokens, want,
                            "{kind} batch {max_batch} prefix cache {prefix_cache} request {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sampled_answers_do_not_depend_on_the_batch() {
        let lm = tiny("llama");
        let ps = prompts();
        let max = vec![12; ps.len()];
        let s = Sampling::Sample {
            temperature: 1.3,
            top_k: 20,
            top_p: 0.9,
        };
        let alone = run(&lm, requests(&ps, &max, s), 1);
        let batched = run(&lm, requests(&ps, &max, s), 4);
        for (a, b) in alone.iter().zip(&batched) {
            assert_eq!(a.tokens, b.tokens);
        }
        // Different seeds give different samples somewhere.
        assert!(alone.windows(2).any(|w| w[0].tokens != w[1].tokens));
    }

    #[test]
    fn stop_strings_cut_the_text_and_bad_requests_fail_alone() {
        let lm = tiny("gpt2");
        let ps = prompts();
        let full = slow_greedy(&lm, &ps[3], 10, 59);
        assert!(full.len() >= 3, "the fixture needs a longer answer");
        let stop = format!("<{}>", full[2]);
        let mut reqs = requests(&ps[..4], &[10; 4], Sampling::Greedy);
        reqs[3].stop = vec![stop.clone()];
        reqs[1].prompt = vec![];
        reqs[2].prompt = vec![3, 99];
        reqs[0].max_tokens = 100; // 64 positions
        let decode =
            |ids: &[i64]| -> Result<String> { Ok(ids.iter().map(|i| format!("<{i}>")).collect()) };
        let m = Model {
            net: lm.net(),
            eos: &lm.eos,
            decode: &decode,
            max_batch: 4,
            device: Device::Cpu,
            prefix_cache: true,
        };
        let mut out: Vec<Option<std::result::Result<Generated, String>>> =
            vec![None, None, None, None];
        generate(&m, reqs, &mut |i, g| out[i] = Some(g), &mut |_, _| false).unwrap();
        let err = |i: usize| out[i].clone().unwrap().unwrap_err();
        assert!(err(0).contains("positions"), "{}", err(0));
        assert!(err(1).contains("no tokens"), "{}", err(1));
        assert!(err(2).contains("out of range"), "{}", err(2));
        let g = out[3].clone().unwrap().unwrap();
        assert_eq!(g.finish, Finish::Stop);
        let first = full.iter().position(|&t| format!("<{t}>") == stop).unwrap();
        let want: String = full[..first].iter().map(|i| format!("<{i}>")).collect();
        assert_eq!(g.text, want);
    }

    #[test]
    fn a_progress_callback_stops_the_work() {
        let lm = tiny("llama");
        let ps = prompts();
        let decode = |ids: &[i64]| -> Result<String> { Ok(format!("{ids:?}")) };
        let m = Model {
            net: lm.net(),
            eos: &[],
            decode: &decode,
            max_batch: 2,
            device: Device::Cpu,
            prefix_cache: true,
        };
        let mut finished = 0;
        let mut steps = 0;
        let stopped = generate(
            &m,
            requests(&ps, &[20; 7], Sampling::Greedy),
            &mut |_, _| finished += 1,
            &mut |_, _| {
                steps += 1;
                steps == 5
            },
        )
        .unwrap();
        assert!(stopped);
        assert_eq!(steps, 5);
        assert_eq!(finished, 0);
    }

    #[test]
    fn penalties_lower_the_logits_of_tokens_already_generated() {
        // Tokens 1 (twice) and 3 (once) were generated; 9 and -1 are not in this vocabulary.
        let counts = HashMap::from([(1i64, 2u32), (3, 1), (9, 4), (-1, 1)]);
        let mut l = vec![1.0f32, 2.0, 3.0, 0.5, f32::NEG_INFINITY];
        penalize(&mut l, &counts, 0.5, 0.25);
        // 2 - 0.5 * 2 - 0.25 = 0.75; 0.5 - 0.5 * 1 - 0.25 = -0.25.
        assert_eq!(l[..4], [1.0, 0.75, 3.0, -0.25]);
        assert_eq!(l[4], f32::NEG_INFINITY);
        let mut l = vec![1.0f32, 2.0, 3.0, 0.5];
        penalize(&mut l, &counts, 0.0, 2.0);
        assert_eq!(l, [1.0, 0.0, 3.0, -1.5]);
        // A negative penalty rewards repetition.
        let mut l = vec![1.0f32, 2.0, 3.0, 0.5];
        penalize(&mut l, &counts, -1.0, 0.0);
        assert_eq!(l, [1.0, 4.0, 3.0, 1.5]);
        // Applied before the constraint mask: a penalised token stays allowed but loses to 0.
        let mut l = vec![1.0f32, 2.0, 3.0, 0.5];
        penalize(&mut l, &counts, 1.0, 0.0);
        let mut rng = Rng::new(1, 2);
        assert_eq!(pick(&mut l, Some(&[0, 1]), Sampling::Greedy, &mut rng), 0);
    }

    #[test]
    fn a_presence_penalty_breaks_a_greedy_loop_as_the_reference_does() {
        let lm = tiny("llama");
        let ps = prompts();
        let n = 24;
        let repeats =
            |t: &[i64]| t.len() - t.iter().collect::<std::collections::HashSet<_>>().len();
        // A prompt the random model answers with a loop (a token more than once).
        let (k, plain) = (0..ps.len())
            .map(|k| (k, slow_greedy(&lm, &ps[k], n, 59)))
            .find(|(_, t)| repeats(t) > 0)
            .expect("the fixture needs a looping model");
        for (fp, pp) in [(0.0, 1e4), (0.3, 0.7), (2.0, 0.0)] {
            let want = slow_greedy_penalized(&lm, &ps[k], n, 59, fp, pp);
            for max_batch in [1, 3] {
                let mut reqs = requests(&ps, &vec![n; ps.len()], Sampling::Greedy);
                for r in reqs.iter_mut() {
                    r.frequency_penalty = fp;
                    r.presence_penalty = pp;
                }
                let got = run(&lm, reqs, max_batch);
                assert_eq!(got[k].tokens, want, "fp {fp} pp {pp} batch {max_batch}");
            }
            if pp >= 1e4 {
                // No token twice: the penalty outweighs any logit gap.
                assert_eq!(repeats(&want), 0, "{want:?}");
                assert_ne!(want, plain);
            }
        }
        // Rows without a penalty in the same batch are unaffected.
        let mut reqs = requests(&ps, &vec![n; ps.len()], Sampling::Greedy);
        reqs[(k + 1) % ps.len()].presence_penalty = 1e4;
        let got = run(&lm, reqs, 4);
        assert_eq!(got[k].tokens, plain);
        // A penalty that is not finite fails its request alone.
        let mut reqs = requests(&ps[..2], &[4, 4], Sampling::Greedy);
        reqs[0].frequency_penalty = f64::NAN;
        let decode = |ids: &[i64]| -> Result<String> { Ok(format!("{ids:?}")) };
        let m = Model {
            net: lm.net(),
            eos: &lm.eos,
            decode: &decode,
            max_batch: 2,
            device: Device::Cpu,
            prefix_cache: true,
        };
        let mut out: Vec<Option<std::result::Result<Generated, String>>> = vec![None, None];
        generate(&m, reqs, &mut |i, g| out[i] = Some(g), &mut |_, _| false).unwrap();
        assert!(out[0].clone().unwrap().unwrap_err().contains("finite"));
        assert!(out[1].clone().unwrap().is_ok());
    }
}
