//! One process-wide monotonic clock, read as nanoseconds since the process started.
//!
//! Publishers and subscribers run in the same process, so a send timestamp written into a
//! payload by one task can be compared with the receive time read by another without any
//! clock synchronisation: both are offsets from the same `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// The instant all timestamps are counted from (fixed on first use).
pub fn start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Nanoseconds since [`start`].
pub fn now_ns() -> u64 {
    // u64 nanoseconds last 584 years: the cast cannot truncate in practice.
    start().elapsed().as_nanos() as u64
}

/// The `Instant` that corresponds to the timestamp `ns`, for sleeping until it.
pub fn instant_at(ns: u64) -> Instant {
    start() + Duration::from_nanos(ns)
}
