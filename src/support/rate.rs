//! Token buckets: the one shape of every rate limit (REST calls per app,
//! app creation, `/login` per app and per client address).

use std::time::Instant;

/// A bucket refilled at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64) -> TokenBucket {
        TokenBucket { tokens: burst, at: Instant::now() }
    }

    /// Takes one token if there is one; false means "refuse, retry later".
    pub fn take(&mut self, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Seconds until the next token (for `Retry-After`), at least 1.
    pub fn retry_after(&self, rate: f64) -> u64 {
        if rate <= 0.0 {
            return 60;
        }
        ((1.0 - self.tokens).max(0.0) / rate).ceil().max(1.0) as u64
    }

    /// Whether the bucket has refilled completely (it may be forgotten).
    pub fn is_full(&self, rate: f64, burst: f64) -> bool {
        self.tokens + self.at.elapsed().as_secs_f64() * rate >= burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal() {
        let mut b = TokenBucket::full(3.0);
        assert!((0..3).all(|_| b.take(0.001, 3.0)));
        assert!(!b.take(0.001, 3.0));
        assert!(b.retry_after(0.001) >= 1);
        assert!(!b.is_full(0.001, 3.0));
    }
}
