//! The client's two rate limits: request starts per minute ([`RateLimit`]) and tokens per minute
//! ([`TokenBucket`], charged with [`estimate_tokens`] before a request and settled with the usage
//! the server reports). Both run on tokio's clock, so tests drive them with paused time.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// Completion tokens assumed for a chat request without `max_tokens`.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 256;

/// Tokens a request may use: the UTF-8 bytes of its prompt texts / 4 (the message contents of a
/// chat request, the inputs of an embeddings request), plus, for a chat request, `max_tokens`
/// ([`DEFAULT_COMPLETION_TOKENS`] when unset). Bytes rather than characters: a token covers about
/// four bytes of English and fewer characters of most other scripts.
pub fn estimate_tokens(body: &Value) -> f64 {
    let bytes = |v: &Value| -> usize {
        v.as_array().map_or(0, |xs| {
            xs.iter()
                .map(|x| x.get("content").unwrap_or(x).as_str().map_or(0, str::len))
                .sum()
        })
    };
    let prompt = bytes(&body["messages"]) + bytes(&body["input"]);
    let completion = if body.get("messages").is_some() {
        body["max_tokens"]
            .as_u64()
            .unwrap_or(DEFAULT_COMPLETION_TOKENS)
    } else {
        0
    };
    prompt as f64 / 4.0 + completion as f64
}

/// Spaces request starts `60 / rpm` seconds apart.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    /// At most `per_minute` starts a minute (`per_minute` finite and positive).
    pub fn new(per_minute: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(60.0 / per_minute),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's start slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// A token bucket refilled at `per_minute / 60` tokens a second, holding at most `per_minute`.
#[derive(Debug)]
pub struct TokenBucket {
    per_minute: f64,
    /// Tokens held, and when that was computed.
    state: tokio::sync::Mutex<(f64, Instant)>,
    /// Wakes waiters when tokens come back early (a request used less than its estimate).
    refunded: tokio::sync::Notify,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens (`per_minute` finite and >= 1).
    pub fn new(per_minute: f64) -> Self {
        Self {
            per_minute,
            state: tokio::sync::Mutex::new((per_minute, Instant::now())),
            refunded: tokio::sync::Notify::new(),
        }
    }

    /// Waits until `n` tokens (at most the bucket's size) are available and takes them.
    pub async fn take(&self, n: f64) {
        let n = n.min(self.per_minute);
        let rate = self.per_minute / 60.0;
        loop {
            // Registered before the check, so a refund between the check and the wait is seen.
            let refunded = self.refunded.notified();
            tokio::pin!(refunded);
            refunded.as_mut().enable();
            let wait = {
                let mut st = self.state.lock().await;
                let now = Instant::now();
                st.0 = (st.0 + now.duration_since(st.1).as_secs_f64() * rate).min(self.per_minute);
                st.1 = now;
                if st.0 >= n {
                    st.0 -= n;
                    return;
                }
                (n - st.0) / rate
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                _ = refunded => {}
            }
        }
    }

    /// Returns `n` tokens (negative: charges more), once the real usage is known.
    pub async fn settle(&self, n: f64) {
        let mut st = self.state.lock().await;
        st.0 = (st.0 + n).min(self.per_minute);
        if n > 0.0 {
            self.refunded.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn secs(since: Instant) -> f64 {
        since.elapsed().as_secs_f64()
    }

    #[test]
    fn the_token_estimate_counts_prompt_bytes_and_the_completion_limit() {
        let chat = json!({"messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": "efghijkl"},
        ]});
        assert_eq!(estimate_tokens(&chat), 3.0 + 256.0);
        let mut limited = chat.clone();
        limited["max_tokens"] = json!(10);
        assert_eq!(estimate_tokens(&limited), 13.0);
        // Four bytes a token, whatever the script: "東京" is six bytes.
        let cjk = json!({"messages": [{"role": "user", "content": "東京"}], "max_tokens": 0});
        assert_eq!(estimate_tokens(&cjk), 1.5);
        let emb = json!({"model": "m", "input": ["abcd", "abcdabcd"]});
        assert_eq!(estimate_tokens(&emb), 3.0);
        assert_eq!(estimate_tokens(&json!({})), 0.0);
        assert_eq!(estimate_tokens(&json!({"messages": "x"})), 256.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_waits_for_its_refill() {
        let b = TokenBucket::new(60.0); // one token a second
        let t0 = Instant::now();
        b.take(60.0).await;
        assert_eq!(secs(t0), 0.0);
        b.take(30.0).await;
        assert!((secs(t0) - 30.0).abs() < 1e-3, "{}", secs(t0));
        // More than the bucket holds is charged as a full bucket, not waited for forever.
        b.take(1e9).await;
        assert!((secs(t0) - 90.0).abs() < 1e-3, "{}", secs(t0));
        // Charging more than was taken (negative settle) delays the next request.
        b.settle(-10.0).await;
        b.take(5.0).await;
        assert!((secs(t0) - 105.0).abs() < 1e-3, "{}", secs(t0));
        // Idle time refills the bucket up to its size only.
        tokio::time::sleep(Duration::from_secs(600)).await;
        let t1 = Instant::now();
        b.take(60.0).await;
        assert_eq!(secs(t1), 0.0);
        b.take(1.0).await;
        assert!((secs(t1) - 1.0).abs() < 1e-3, "{}", secs(t1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_wakes_a_waiter_early() {
        let b = Arc::new(TokenBucket::new(60.0));
        b.take(60.0).await;
        let t0 = Instant::now();
        let waiter = tokio::spawn({
            let b = Arc::clone(&b);
            async move {
                b.take(50.0).await;
                secs(t0)
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        b.settle(40.0).await; // 10 refilled + 40 returned: the waiter's 50 are there now
        let waited = waiter.await.unwrap();
        assert!((waited - 10.0).abs() < 1e-3, "{waited}");
    }

    #[tokio::test(start_paused = true)]
    async fn request_starts_are_spaced_evenly() {
        let limit = Arc::new(RateLimit::new(120.0)); // one start every 0.5 s
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..4 {
            limit.wait().await;
            starts.push(secs(t0));
        }
        for (k, s) in starts.iter().enumerate() {
            assert!((s - 0.5 * k as f64).abs() < 1e-3, "{starts:?}");
        }
        // After a pause, the next start is not held back by the old schedule.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t1 = Instant::now();
        limit.wait().await;
        assert_eq!(secs(t1), 0.0);
    }
}
