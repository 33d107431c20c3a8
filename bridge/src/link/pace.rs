//! Token buckets on virtual time: the byte-rate limit of a metered link and the
//! message-rate pacing of a backlog replay.
//!
//! A bucket holds at most `burst` tokens and gains `rate` per second. Time is whatever
//! the caller passes in, so the link's tests run pacing on virtual time.

use std::time::{Duration, Instant};

/// A token bucket refilled at a fixed rate.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens gaining `rate` tokens per second (`rate` > 0).
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Bucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Most tokens the bucket holds.
    pub(crate) fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Adds the tokens earned since the last refill.
    pub(crate) fn refill(&mut self, now: Instant) {
        if now > self.last {
            let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last = now;
        }
    }

    /// Whole tokens available (0 while in debt).
    pub(crate) fn available(&self) -> u64 {
        if self.tokens <= 0.0 {
            0
        } else {
            self.tokens.floor() as u64
        }
    }

    /// True while at least `n` tokens are available.
    pub(crate) fn has(&self, n: u64) -> bool {
        self.tokens >= n as f64
    }

    /// Takes `n` tokens; the bucket may go into debt, which later refills repay.
    pub(crate) fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// When the bucket will hold `n` tokens (now if it already does). Rounded up to
    /// the next microsecond so a wake-up at that instant finds the tokens there.
    pub(crate) fn ready_at(&self, n: u64) -> Instant {
        let missing = n as f64 - self.tokens;
        if missing <= 0.0 {
            return self.last;
        }
        let micros = (missing / self.rate * 1e6).ceil() + 1.0;
        self.last + Duration::from_micros(micros.min(1e15) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_up_to_burst_and_repays_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 10, t0);
        assert_eq!(b.available(), 10);
        b.take(30);
        assert_eq!(b.available(), 0);
        let at = b.ready_at(1);
        // 21 tokens missing at 100/s: 210 ms (+1 µs rounding).
        assert_eq!(at - t0, Duration::from_micros(210_001));
        b.refill(at);
        assert!(b.has(1));
        b.refill(t0 + Duration::from_secs(60));
        assert_eq!(b.available(), 10);
    }
}
