//! Per-connection rate limiting: a token bucket, and a rule for when
//! rejected frames become abuse.

use tokio::time::{Duration, Instant};

/// How long rejected frames are counted before the count starts over.
const ABUSE_WINDOW: Duration = Duration::from_secs(5);

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    // Single precision: every connection carries one, and a token count
    // needs no more.
    rate: f32,
    burst: f32,
    tokens: f32,
    rejected: u32,
    last: Instant,
    window_start: Instant,
}

/// What the limiter says of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refuse this frame with `rate_limited`.
    Reject,
    /// Too many refused lately: close the connection.
    Abuse,
}

impl RateLimiter {
    /// `rate` frames a second with bursts of `burst`; a `rate` of 0 allows
    /// everything.
    pub fn new(rate: u32, burst: u32) -> Self {
        let now = Instant::now();
        Self {
            rate: rate as f32,
            burst: burst.max(1) as f32,
            tokens: burst.max(1) as f32,
            last: now,
            rejected: 0,
            window_start: now,
        }
    }

    /// Takes a token for one frame.
    pub fn check(&mut self) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allow;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.duration_since(self.window_start) > ABUSE_WINDOW {
            self.window_start = now;
            self.rejected = 0;
        }
        self.rejected += 1;
        // Sustained abuse: twice the burst refused within one window.
        if self.rejected as f32 > 2.0 * self.burst {
            Verdict::Abuse
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds_then_abuse_is_called() {
        let mut limiter = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(limiter.check(), Verdict::Allow);
        }
        assert_eq!(limiter.check(), Verdict::Reject);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limiter.check(), Verdict::Allow);
        // One refused already; abuse is the eleventh refusal in the window.
        let verdicts: Vec<_> = (0..10).map(|_| limiter.check()).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Abuse));
        assert!(verdicts[..9].iter().all(|v| *v == Verdict::Reject));
    }

    #[test]
    fn a_zero_rate_allows_everything() {
        let mut limiter = RateLimiter::new(0, 0);
        assert!((0..10_000).all(|_| limiter.check() == Verdict::Allow));
    }
}
