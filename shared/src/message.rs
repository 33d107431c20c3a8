//! The one `Message` type that crosses every boundary: listeners, router, stores, bridge.
//!
//! Converting between protocols never copies the payload: it stays the `Bytes` slice
//! that the codec cut out of the receive buffer.

use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use crate::mqtt::packet::PublishProperties;

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is invalid.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A message as routed inside a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic name (never a filter, never empty after alias resolution).
    pub topic: ByteString,
    /// Application payload.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties passed through to subscribers (payload format, content type,
    /// response topic, correlation data, user properties). Topic alias and
    /// subscription identifiers are per-hop and are always cleared here.
    pub properties: PublishProperties,
    /// Message expiry interval in seconds, counted from `received_at`.
    pub expiry_interval: Option<u32>,
    /// When the node received the message.
    pub received_at: Instant,
    /// Client id of the publisher, for v5 no-local.
    pub origin: ByteString,
}

impl Message {
    /// Seconds of life left at `now`, `None` when the message never expires,
    /// `Some(0)` once expired.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let interval = self.expiry_interval?;
        let elapsed = now.saturating_duration_since(self.received_at).as_secs();
        Some(u64::from(interval).saturating_sub(elapsed) as u32)
    }

    /// True once the expiry interval has fully elapsed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now) == Some(0)
    }
}
