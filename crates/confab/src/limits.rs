//! Per-connection rate limiting: a token bucket, and a rule for when
//! rejected frames become abuse.

use tokio::time::{Duration, Instant};

/// How long rejected frames are counted before the count starts over.
const ABUSE_WINDOW: Duration = Duration::from_secs(5);

/// How fast one connection may send: `per_second` frames a second, in
/// bursts of up to `burst`; a `per_second` of 0 allows everything. The
/// node's setting, shared by every connection's [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Frames a second.
    pub per_second: u32,
    /// The most frames at once.
    pub burst: u32,
}

/// A token bucket with a [`Rate`], and the refusals counted for the abuse
/// rule. Every connection carries one, so it holds only what changes:
/// single precision for the counts, and the abuse window as its age at
/// the last frame rather than a second instant.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: f32,
    rejected: u32,
    /// Seconds from the abuse window's start to `last`.
    window_age: f32,
    last: Instant,
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

impl Rate {
    /// The bucket's size: `burst`, at least one frame.
    fn capacity(self) -> f32 {
        self.burst.max(1) as f32
    }
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            tokens: rate.capacity(),
            rejected: 0,
            window_age: 0.0,
            last: Instant::now(),
        }
    }

    /// Takes a token for one frame.
    pub fn check(&mut self, rate: Rate) -> Verdict {
        if rate.per_second == 0 {
            return Verdict::Allow;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f32();
        self.last = now;
        // Once past the window it stays past: an age that large no longer
        // grows by small steps, and need not.
        self.window_age += elapsed;
        self.tokens = (self.tokens + elapsed * rate.per_second as f32).min(rate.capacity());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if self.window_age > ABUSE_WINDOW.as_secs_f32() {
            self.window_age = 0.0;
            self.rejected = 0;
        }
        self.rejected += 1;
        // Sustained abuse: twice the burst refused within one window.
        if self.rejected as f32 > 2.0 * rate.capacity() {
            Verdict::Abuse
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_A_SECOND: Rate = Rate {
        per_second: 10,
        burst: 5,
    };

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds_then_abuse_is_called() {
        let rate = TEN_A_SECOND;
        let mut limiter = RateLimiter::new(rate);
        for _ in 0..5 {
            assert_eq!(limiter.check(rate), Verdict::Allow);
        }
        assert_eq!(limiter.check(rate), Verdict::Reject);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limiter.check(rate), Verdict::Allow);
        // One refused already; abuse is the eleventh refusal in the window.
        let verdicts: Vec<_> = (0..10).map(|_| limiter.check(rate)).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Abuse));
        assert!(verdicts[..9].iter().all(|v| *v == Verdict::Reject));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_counted_afresh_once_the_window_has_passed() {
        let rate = TEN_A_SECOND;
        let mut limiter = RateLimiter::new(rate);
        let verdicts: Vec<_> = (0..15).map(|_| limiter.check(rate)).collect();
        // Five pass, ten are refused: one more in this window is abuse.
        assert!(verdicts[5..].iter().all(|v| *v == Verdict::Reject));
        tokio::time::advance(ABUSE_WINDOW + Duration::from_millis(10)).await;
        // The bucket refilled (five pass); the window's refusals are gone.
        let verdicts: Vec<_> = (0..15).map(|_| limiter.check(rate)).collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[5..].iter().all(|v| *v == Verdict::Reject));
        assert_eq!(limiter.check(rate), Verdict::Abuse);
    }

    #[test]
    fn a_zero_rate_allows_everything() {
        let rate = Rate {
            per_second: 0,
            burst: 0,
        };
        let mut limiter = RateLimiter::new(rate);
        assert!((0..10_000).all(|_| limiter.check(rate) == Verdict::Allow));
    }
}
