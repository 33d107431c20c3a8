//! Failed logins per client address: a token bucket per address.
//!
//! Each address may fail `per_minute` times in a burst; the bucket refills at
//! `per_minute` tokens a minute. While it is empty, CONNECTs from that address are
//! refused (0x9F, connection rate exceeded) without their password being checked, so
//! guessing costs the attacker a minute per `per_minute` guesses and costs us nothing.
//!
//! IPv6 addresses are grouped by /64 (one host usually owns a whole /64); IPv4-mapped
//! IPv6 addresses count as the IPv4 address. The table is bounded: when it is full,
//! addresses whose bucket refilled are forgotten first, then the least recently seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most addresses tracked at once.
const MAX_TRACKED: usize = 4096;

/// One address's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Failed-login buckets of every recently failing address.
#[derive(Debug)]
pub struct LoginLimiter {
    per_minute: u32,
    buckets: HashMap<IpAddr, Bucket>,
}

impl LoginLimiter {
    /// A limiter allowing `per_minute` failures per address and minute (0: no limit).
    pub fn new(per_minute: u32) -> Self {
        LoginLimiter {
            per_minute,
            buckets: HashMap::new(),
        }
    }

    /// True while `ip` has used up its failures: refuse without checking.
    pub fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let key = address_key(ip);
        let per_minute = self.per_minute;
        match self.buckets.get_mut(&key) {
            Some(bucket) => {
                refill(bucket, per_minute, now);
                bucket.tokens < 1.0
            }
            None => false,
        }
    }

    /// Charges a login attempt from `ip` before its password is checked, so that
    /// logins verified at the same time count too. False (and nothing charged) if the
    /// address has no allowance left: refuse without checking. Give the charge back
    /// with [`LoginLimiter::refund`] when the login succeeds.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.is_blocked(ip, now) {
            return false;
        }
        self.record_failure(ip, now);
        true
    }

    /// Gives back the charge of a login that succeeded.
    pub fn refund(&mut self, ip: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let per_minute = self.per_minute;
        if let Some(bucket) = self.buckets.get_mut(&address_key(ip)) {
            refill(bucket, per_minute, now);
            bucket.tokens = (bucket.tokens + 1.0).min(f64::from(per_minute));
        }
    }

    /// Counts a failed login from `ip`. Returns true if this failure used up the
    /// address's allowance (it is blocked from now on, for a while).
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let key = address_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED {
            self.prune(now);
        }
        let per_minute = self.per_minute;
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(per_minute),
            updated: now,
        });
        refill(bucket, per_minute, now);
        let before = bucket.tokens;
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        before >= 1.0 && bucket.tokens < 1.0
    }

    /// How long until `ip` may try again (zero if it may now).
    pub fn retry_after(&self, ip: IpAddr, now: Instant) -> Duration {
        let Some(bucket) = self.buckets.get(&address_key(ip)) else {
            return Duration::ZERO;
        };
        let mut b = *bucket;
        refill(&mut b, self.per_minute, now);
        if b.tokens >= 1.0 || self.per_minute == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - b.tokens) * 60.0 / f64::from(self.per_minute))
    }

    /// Number of addresses tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn prune(&mut self, now: Instant) {
        let per_minute = self.per_minute;
        let full = f64::from(per_minute);
        self.buckets.retain(|_, b| {
            refill(b, per_minute, now);
            b.tokens < full
        });
        if self.buckets.len() >= MAX_TRACKED {
            // Still full of blocked addresses: forget the older half.
            let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.buckets.retain(|_, b| b.updated > cut);
        }
    }
}

fn refill(bucket: &mut Bucket, per_minute: u32, now: Instant) {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    let full = f64::from(per_minute);
    bucket.tokens = (bucket.tokens + elapsed * full / 60.0).min(full);
    bucket.updated = now;
}

/// The address a bucket is kept for (IPv6 by /64, IPv4-mapped as IPv4).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn blocks_after_the_allowance_and_refills() {
        let mut limiter = LoginLimiter::new(5);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..4 {
            assert!(!limiter.record_failure(a, t0), "failure {i}");
            assert!(!limiter.is_blocked(a, t0));
        }
        assert!(limiter.record_failure(a, t0), "the fifth uses it up");
        assert!(limiter.is_blocked(a, t0));
        assert!(
            !limiter.is_blocked(ip("192.0.2.2"), t0),
            "others unaffected"
        );
        let wait = limiter.retry_after(a, t0);
        assert!(wait > Duration::from_secs(11) && wait <= Duration::from_secs(12));
        assert!(limiter.is_blocked(a, t0 + Duration::from_secs(11)));
        assert!(!limiter.is_blocked(a, t0 + Duration::from_secs(12)));
    }

    #[test]
    fn attempts_are_charged_up_front_and_refunded_on_success() {
        let mut limiter = LoginLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("192.0.2.9");
        assert!(limiter.take(a, t0) && limiter.take(a, t0) && limiter.take(a, t0));
        assert!(!limiter.take(a, t0), "three in flight use up the allowance");
        limiter.refund(a, t0);
        assert!(limiter.take(a, t0), "a success gives its charge back");
        assert!(!limiter.take(a, t0));
    }

    #[test]
    fn zero_means_no_limit() {
        let mut limiter = LoginLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!limiter.record_failure(ip("192.0.2.1"), t0));
        }
        assert!(!limiter.is_blocked(ip("192.0.2.1"), t0));
    }

    #[test]
    fn ipv6_groups_by_64_and_mapped_is_v4() {
        let mut limiter = LoginLimiter::new(1);
        let t0 = Instant::now();
        limiter.record_failure(ip("2001:db8:1:2:aaaa::1"), t0);
        assert!(limiter.is_blocked(ip("2001:db8:1:2:bbbb::9"), t0));
        assert!(!limiter.is_blocked(ip("2001:db8:1:3::1"), t0));
        limiter.record_failure(ip("::ffff:192.0.2.7"), t0);
        assert!(limiter.is_blocked(ip("192.0.2.7"), t0));
    }

    #[test]
    fn table_stays_bounded() {
        let mut limiter = LoginLimiter::new(1);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limiter.record_failure(addr, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(limiter.tracked() <= MAX_TRACKED);
    }
}
