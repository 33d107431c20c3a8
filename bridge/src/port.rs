//! The local broker as the bridge driver sees it. `tern-edge` and `tern-cloud` implement
//! [`Port`]; the driver never touches a broker directly, so the link is tested against
//! an in-memory port.
//!
//! Sequences: every message of an outbound class has a sequence number assigned by the
//! local store when the message was queued, strictly increasing, persistent, never
//! reused, possibly with gaps (QoS 0 or expired messages are not kept across restarts).
//! The receiving side remembers, durably, the highest sequence it has delivered per class
//! and drops anything at or below it: that makes a resend after any failure exactly-once.

use std::sync::Arc;

use tern_core::store::StoredMessage;
use tokio::sync::{oneshot, Notify};

/// Why the local broker could not take delivered messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The store refused the batch (full or failing); the peer will resend later.
    #[error("local store refused the batch: {0}")]
    Store(String),
    /// The broker is shutting down.
    #[error("local broker is shutting down")]
    Closed,
}

/// The local broker: outbound queues per class and the inbound delivery path.
pub trait Port: Send + Sync + 'static {
    /// Messages of outbound `class` with sequence > `after`, ascending, at most
    /// `max_msgs` and about `max_bytes` of payload (always at least one if any waits).
    fn peek(
        &self,
        class: u8,
        after: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<(u64, StoredMessage)>;

    /// The peer durably holds every message of outbound `class` up to `up_to`:
    /// the local store may delete them.
    fn acked(&self, class: u8, up_to: u64);

    /// Notified whenever any outbound class gains messages.
    fn outbound_ready(&self) -> Arc<Notify>;

    /// Publishes `messages` (received on inbound `class`) locally and records that the
    /// class is delivered up to `up_to`, in one durable transaction. The receiver
    /// resolves once that transaction is durable (or failed).
    fn deliver(
        &self,
        class: u8,
        messages: Vec<StoredMessage>,
        up_to: u64,
    ) -> oneshot::Receiver<Result<(), DeliverError>>;

    /// Highest sequence of inbound `class` durably delivered (0: none yet).
    fn delivered(&self, class: u8) -> u64;
}

/// The cloud side's source of ports: one per gateway, opened when its Hello arrives.
pub trait PortFactory: Send + Sync + 'static {
    /// The port for `gateway_id`, whose downstream subscriptions are `downstream`
    /// (`(filter, class)`), with `classes` priority classes. `Err` refuses the gateway
    /// with the reason given.
    fn open(
        &self,
        gateway_id: &str,
        classes: u8,
        downstream: &[(String, u8)],
    ) -> Result<Arc<dyn Port>, String>;
}
