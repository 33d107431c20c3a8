//! Broker limits and capabilities, deserialized from the `[mqtt]` section of a profile.

use serde::{Deserialize, Serialize};

/// Limits and capabilities of the MQTT broker. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Largest packet accepted from or sent to a client, in bytes (advertised in CONNACK).
    pub max_packet_size: u32,
    /// How many QoS 1/2 PUBLISHes a client may have unacknowledged towards us
    /// (Receive Maximum advertised in CONNACK).
    pub receive_maximum: u16,
    /// Upper bound on our own in-flight QoS 1/2 deliveries per session, whatever the
    /// client's Receive Maximum says.
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window (offline sessions and
    /// slow consumers). QoS 0 beyond this is dropped and counted; QoS 1/2 too, with a log.
    pub max_queued_messages: usize,
    /// Topic aliases a v5 client may use towards us (0 disables).
    pub topic_alias_maximum: u16,
    /// Largest keep-alive a client may ask for, in seconds; larger values are replaced
    /// by this (v5: Server Keep Alive). 0 means no limit.
    pub max_keep_alive: u16,
    /// Largest session expiry interval granted, in seconds.
    pub max_session_expiry: u32,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u16,
    /// Most topic levels in a name or filter (0 = unlimited).
    pub max_topic_levels: usize,
    /// Longest topic name or filter in bytes (the protocol's own limit is 65535).
    pub max_topic_length: usize,
    /// Most subscriptions one session may hold (0 = unlimited); beyond it SUBACK
    /// answers 0x97 (quota exceeded).
    pub max_subscriptions: usize,
    /// Retained messages supported.
    pub retain_available: bool,
    /// Wildcard subscriptions supported.
    pub wildcard_subscription_available: bool,
    /// Shared subscriptions supported.
    pub shared_subscription_available: bool,
    /// Subscription identifiers supported.
    pub subscription_identifiers_available: bool,
    /// Seconds between `$SYS/broker/...` updates (0 disables them).
    pub sys_interval: u16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 256,
            max_queued_messages: 10_000,
            topic_alias_maximum: 64,
            max_keep_alive: 0,
            max_session_expiry: 7 * 24 * 3600,
            connect_timeout: 10,
            max_topic_levels: 32,
            max_topic_length: 1024,
            max_subscriptions: 1000,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            sys_interval: 10,
        }
    }
}
