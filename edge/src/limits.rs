//! Connection limits checked at accept (`[limits]`): total connections, connections
//! per IP address, and new connections per second per listener.
//!
//! A connection beyond a limit is closed at once, before a byte is read or a TLS
//! handshake is started: the client sees its TCP connection closed (no CONNACK, since
//! MQTT has not started). Refusals are counted per reason and summed up in one log
//! line at most every [`REPORT_INTERVAL`], so a flood cannot flood the log too.
//!
//! An admitted connection holds a [`Permit`] for its whole life; dropping it frees its
//! place in the counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// Longest time between two log lines about refused connections.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `limits.max_connections` reached.
    Total,
    /// `limits.max_connections_per_ip` reached for the peer's address.
    PerIp,
    /// `limits.connect_rate` exceeded on this listener.
    Rate,
}

/// The limits shared by every listener.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    config: LimitsConfig,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refused: [AtomicU64; 3],
    /// When refusals were last logged; `None`: never (the first is logged at once).
    last_report: Mutex<Option<Instant>>,
}

/// A place among the open connections; released when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        if self.limits.config.max_connections_per_ip > 0 {
            let mut per_ip = self.limits.lock_per_ip();
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl ConnectionLimits {
    /// Limits as configured.
    pub(crate) fn new(config: &LimitsConfig) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            config: config.clone(),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refused: Default::default(),
            last_report: Mutex::new(None),
        })
    }

    fn lock_per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic while holding this lock cannot leave the map inconsistent beyond a
        // count; keep going with it.
        match self.per_ip.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Admits a connection from `ip` within the total and per-address limits.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let max = self.config.max_connections;
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        if max > 0 && previous >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refuse(Refusal::Total));
        }
        let per_ip_max = self.config.max_connections_per_ip;
        if per_ip_max > 0 {
            let mut per_ip = self.lock_per_ip();
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= per_ip_max {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(self.refuse(Refusal::PerIp));
            }
            *n += 1;
        }
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    /// Counts a refusal (and maybe logs the counts); returns it.
    pub(crate) fn refuse(&self, why: Refusal) -> Refusal {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        self.maybe_report();
        why
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn maybe_report(&self) {
        let Ok(mut last) = self.last_report.try_lock() else {
            return; // Someone else is reporting right now.
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < REPORT_INTERVAL) {
            return;
        }
        *last = Some(now);
        let [total, per_ip, rate] = [Refusal::Total, Refusal::PerIp, Refusal::Rate]
            .map(|r| self.refused[r as usize].swap(0, Ordering::Relaxed));
        tracing::warn!(
            max_connections = total,
            max_connections_per_ip = per_ip,
            connect_rate = rate,
            open = self.open(),
            "connections refused at accept by [limits] (counts since the last report)"
        );
    }
}

/// New connections per second on one listener: a token bucket holding a second's
/// worth.
#[derive(Debug)]
pub(crate) struct ConnectRate {
    per_second: u32,
    tokens: f64,
    updated: Instant,
}

impl ConnectRate {
    /// A bucket for `per_second` connections a second (0: no limit).
    pub(crate) fn new(per_second: u32) -> Self {
        ConnectRate {
            per_second,
            tokens: f64::from(per_second),
            updated: Instant::now(),
        }
    }

    /// Takes a token for a new connection; false if there is none.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = f64::from(self.per_second);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
