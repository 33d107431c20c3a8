//! The gateway's bridge task: connect, handshake, pump, and reconnect forever.
//!
//! Endpoints are tried in order (the first is the primary; after any connection ends
//! the next round starts from it again). A round in which no endpoint could be reached,
//! or a connection that ended before its handshake completed, is followed by a delay
//! that doubles from `backoff_initial` up to `backoff_max`, with ±20 % jitter so a fleet
//! does not reconnect in step; a connection that stayed open for a few seconds resets
//! the delay.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::conn::{Conn, End};
use super::{now, stopped, ClientConfig, Status};
use crate::frame::{Hello, PROTOCOL_VERSION};
use crate::link::{Link, LinkError};
use crate::port::Port;
use crate::transport;

/// A connection that stayed up this long resets the backoff; one that opens and
/// fails sooner (a cloud store refusing deliveries, a flapping path) keeps backing off.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// Runs the gateway side of the bridge until `shutdown` becomes true (or its sender
/// is dropped), keeping `status` up to date.
pub async fn run_client(
    config: ClientConfig,
    port: Arc<dyn Port>,
    status: Arc<Status>,
    mut shutdown: watch::Receiver<bool>,
) {
    status.set_classes(&config.classes);
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    if config.endpoints.is_empty() {
        tracing::warn!("bridge: no cloud endpoint configured; the bridge stays down");
    }
    loop {
        for endpoint in &config.endpoints {
            let name = endpoint.to_string();
            status.update(|s| s.endpoint = Some(name.clone()));
            let attempt = tokio::select! {
                _ = stopped(&mut shutdown) => return,
                r = transport::connect(endpoint, &config.tls, config.mode, config.connect_timeout) => r,
            };
            let channel = match attempt {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!(endpoint = %name, error = %e, "bridge: cannot connect to the cloud");
                    status.update(|s| s.last_error = Some(e.to_string()));
                    continue;
                }
            };
            let kind = channel.peer.kind;
            tracing::debug!(endpoint = %name, transport = %kind, "bridge: connected, sending hello");
            status.update(|s| s.transport = Some(kind));
            let hello = Hello {
                version: PROTOCOL_VERSION,
                gateway_id: config.gateway_id.clone(),
                classes: config.classes.clone(),
                downstream: config.downstream.clone(),
                delivered: (0..config.classes.len())
                    .map(|c| port.delivered(u8::try_from(c).unwrap_or(u8::MAX)))
                    .collect(),
            };
            let link = Link::client(hello, config.limits.clone(), now());
            let conn = Conn::new(
                link,
                Arc::clone(&port),
                channel.sender,
                channel.receiver,
                Arc::clone(&status),
                format!("cloud {name}"),
            );
            let started = tokio::time::Instant::now();
            let (end, opened) = conn.run(&mut shutdown, None).await;
            if opened && started.elapsed() >= STABLE_AFTER {
                backoff.reset();
            }
            match &end {
                End::Shutdown => {
                    tracing::info!(endpoint = %name, "bridge: disconnected (shutting down)");
                    return;
                }
                End::Link(LinkError::Refused(reason)) => {
                    tracing::warn!(endpoint = %name, gateway_id = %config.gateway_id, %reason, "bridge: refused by the cloud");
                }
                _ if opened => {
                    tracing::info!(endpoint = %name, reason = %end, "bridge: disconnected from the cloud");
                }
                _ => {
                    tracing::warn!(endpoint = %name, reason = %end, "bridge: connection ended during the handshake");
                }
            }
            break;
        }
        let delay = backoff.next();
        tracing::info!(delay_ms = delay.as_millis() as u64, "bridge: reconnecting");
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Capped exponential backoff with ±20 % jitter.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one doubles, up to the cap.
    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut bases = Vec::new();
        for _ in 0..12 {
            let d = b.next();
            bases.push(d);
        }
        for (i, d) in bases.iter().enumerate() {
            let base =
                (Duration::from_millis(100) * 2u32.pow(i as u32)).min(Duration::from_secs(30));
            assert!(
                *d >= base.mul_f64(0.8) && *d <= base.mul_f64(1.2),
                "{i}: {d:?}"
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(120));
    }
}
