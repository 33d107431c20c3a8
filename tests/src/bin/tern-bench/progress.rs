//! Live counters shared by all tasks of a run, and the once-a-second progress line on
//! stderr that shows them.
//!
//! Tasks add to the counters once per batch written or per read, never per message, so
//! the atomics stay off the hot path.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Counters of a run.
#[derive(Debug, Default)]
pub struct Counters {
    /// PUBLISH packets written by publishers.
    pub sent: AtomicU64,
    /// PUBLISH packets read by subscribers.
    pub received: AtomicU64,
    /// Connections established (connections scenario).
    pub connected: AtomicU64,
    /// Connection attempts that failed.
    pub failed: AtomicU64,
}

impl Counters {
    /// Adds `n` to `c` (relaxed: these are statistics, not synchronisation).
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `c`.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Spawns the progress printer; abort the handle to stop it. `what` names the phase.
pub fn spawn(counters: Arc<Counters>, what: String, enabled: bool) -> Option<JoinHandle<()>> {
    if !enabled {
        return None;
    }
    Some(tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        let (mut last_sent, mut last_recv, mut last_conn) = (0, 0, 0);
        loop {
            tick.tick().await;
            let (sent, recv) = (
                Counters::get(&counters.sent),
                Counters::get(&counters.received),
            );
            let (conn, failed) = (
                Counters::get(&counters.connected),
                Counters::get(&counters.failed),
            );
            let secs = start.elapsed().as_secs_f64();
            let line = if conn > 0 || failed > 0 {
                format!(
                    "[{what} {secs:5.1}s] connected {conn} (+{}/s), failed {failed}",
                    conn - last_conn
                )
            } else {
                format!(
                    "[{what} {secs:5.1}s] sent {}/s  received {}/s  (total sent {}, received {})",
                    human(sent - last_sent),
                    human(recv - last_recv),
                    human(sent),
                    human(recv)
                )
            };
            (last_sent, last_recv, last_conn) = (sent, recv, conn);
            // A failed write to stderr is not worth stopping a run for.
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }))
}

/// `1234567` → `1.23M`.
pub fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e4 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}
