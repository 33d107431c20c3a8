//! `$SYS/broker/...`: counters published as retained messages every `sys_interval`
//! seconds, with Mosquitto's topic names so existing dashboards work.

use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use super::Broker;
use crate::message::{Message, QoS};

/// Counters since the broker started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections that completed CONNECT and are still open.
    pub clients_connected: u64,
    /// PUBLISHes received from clients (wills included).
    pub messages_received: u64,
    /// PUBLISHes sent to clients (resends included).
    pub messages_sent: u64,
    /// Messages dropped because a session queue was full.
    pub messages_dropped: u64,
}

/// Sizes of the broker's tables at one moment (what `$SYS` reports beside [`Stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sessions, online and offline (bridge queues included).
    pub sessions: u64,
    /// Subscriptions of all sessions.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
}

impl Broker {
    /// The sizes of the session table, the router and the retained store.
    pub fn counts(&self) -> Counts {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Counts {
            sessions: count(self.sessions.len()),
            subscriptions: count(self.router.len()),
            retained: count(self.retained.len()),
        }
    }

    pub(super) fn publish_sys(&mut self, now: Instant) {
        let uptime = now.saturating_duration_since(self.started_at).as_secs();
        let counts = self.counts();
        let values = [
            (
                "$SYS/broker/version",
                format!("tern {}", env!("CARGO_PKG_VERSION")),
            ),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            (
                "$SYS/broker/clients/connected",
                self.stats.clients_connected.to_string(),
            ),
            ("$SYS/broker/clients/total", counts.sessions.to_string()),
            (
                "$SYS/broker/messages/received",
                self.stats.messages_received.to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                self.stats.messages_sent.to_string(),
            ),
            (
                "$SYS/broker/messages/dropped",
                self.stats.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count",
                counts.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                counts.retained.to_string(),
            ),
        ];
        for (topic, value) in values {
            self.publish_sys_value(ByteString::from_static(topic), value, now);
        }
    }

    /// Publishes `value` as the retained message of `topic` under `$SYS/` (others are
    /// ignored), for status the I/O layer keeps (bridges, the store).
    pub fn publish_sys_value(&mut self, topic: ByteString, value: String, now: Instant) {
        if !topic.starts_with("$SYS/") {
            return;
        }
        let msg = Message {
            topic,
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expiry_interval: None,
            received_at: now,
            origin: ByteString::from_static("$SYS"),
        };
        self.publish_message(msg, now);
    }
}
