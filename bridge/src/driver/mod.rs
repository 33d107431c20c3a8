//! The tokio glue of the bridge: runs a [`crate::link`] machine over a
//! [`crate::transport`] channel against a [`Port`], the local broker.
//!
//! - [`run_client`] (the gateway): dials the cloud endpoints in order (failover), each
//!   over QUIC then TLS/TCP as the [`TransportMode`] allows, and reconnects with capped
//!   exponential backoff and jitter for as long as it runs.
//! - [`run_server`] (the cloud): accepts gateways, one task per connection; checks that
//!   the Hello's gateway id is the certificate's identity, opens the gateway's port
//!   through the [`crate::PortFactory`], and lets a new connection of a gateway replace
//!   its previous one (after the old one's deliveries are settled, so nothing is
//!   delivered twice).
//!
//! Both keep a [`Status`] per bridge (per gateway on the cloud) that the broker reads
//! for `$SYS` topics and metrics. The per-connection pump lives in `conn`.

mod client;
mod conn;
mod server;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

pub use crate::link::Limits;
use crate::transport::{ClientTls, Endpoint, TransportKind, TransportMode};

pub use client::run_client;
pub use server::{run_server, ServerStatus};

/// The gateway side of the bridge.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway's id; must be the CN of its certificate.
    pub gateway_id: String,
    /// Cloud endpoints, tried in order.
    pub endpoints: Vec<Endpoint>,
    /// CA, certificate and key.
    pub tls: ClientTls,
    /// QUIC, TLS/TCP or QUIC with TCP fallback (default `Auto`).
    pub mode: TransportMode,
    /// Names of the priority classes; class id = index, 0 highest.
    pub classes: Vec<String>,
    /// Downstream subscriptions `(topic filter, class)` the cloud should send.
    pub downstream: Vec<(String, u8)>,
    /// Flow limits of what the gateway sends.
    pub limits: Limits,
    /// Time allowed per connection attempt and transport (default 10 s).
    pub connect_timeout: Duration,
    /// First reconnect delay (default 100 ms), doubled per failure, ±20 % jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 30 s).
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// A configuration with the defaults above for everything but identity, cloud,
    /// TLS and classes.
    pub fn new(
        gateway_id: impl Into<String>,
        endpoints: Vec<Endpoint>,
        tls: ClientTls,
        classes: Vec<String>,
    ) -> Self {
        ClientConfig {
            gateway_id: gateway_id.into(),
            endpoints,
            tls,
            mode: TransportMode::Auto,
            classes,
            downstream: Vec::new(),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Live state and counters of one bridge (the gateway's link, or one gateway's link on
/// the cloud); updated by the driver, read with [`Status::snapshot`].
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusSnapshot>,
}

/// A copy of a [`Status`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// The handshake completed and the connection is up.
    pub connected: bool,
    /// Client: the endpoint connected (or last tried); server: the gateway's address.
    pub endpoint: Option<String>,
    /// The transport of the current (or last) connection.
    pub transport: Option<TransportKind>,
    /// Handshakes completed since start.
    pub connects: u64,
    /// Handshakes completed after the first (reconnections).
    pub reconnects: u64,
    /// Why the last connection ended or the last attempt failed.
    pub last_error: Option<String>,
    /// Per priority class, by class id.
    pub classes: Vec<ClassStatus>,
}

/// Cursors and counters of one priority class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassStatus {
    /// Class name.
    pub name: String,
    /// Highest outbound sequence sent.
    pub sent_seq: u64,
    /// Highest outbound sequence the peer acknowledged as durable.
    pub acked_seq: u64,
    /// Highest inbound sequence made durable locally.
    pub delivered_seq: u64,
    /// Outbound messages sent (resends included), since start.
    pub messages_sent: u64,
    /// Outbound batch bytes sent, since start.
    pub bytes_sent: u64,
    /// Inbound messages received (duplicates included), since start.
    pub messages_received: u64,
    /// Inbound topic + payload bytes received, since start.
    pub bytes_received: u64,
}

impl Status {
    /// A copy of the current state.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, StatusSnapshot> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the class names (keeping counters of classes that stay).
    fn set_classes(&self, names: &[String]) {
        let mut s = self.lock();
        s.classes.resize_with(names.len(), ClassStatus::default);
        for (c, name) in s.classes.iter_mut().zip(names) {
            c.name.clone_from(name);
        }
    }

    fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        f(&mut self.lock());
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// The link's clock: tokio's (virtual under `tokio::time::pause`).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
