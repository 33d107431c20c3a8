//! The `[bridge]` (gateway side) and `[acceptor]` (cloud side) sections of a profile.
//!
//! Both tiers read the same model: `tern-edge` runs the bridge client, `tern-cloud`
//! the acceptor. Forwarding rules and downstream subscriptions name priority classes
//! by name; a class's index in `classes` is its priority (0 first).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_core::message::QoS;

/// The gateway's link to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Run the bridge client.
    pub enabled: bool,
    /// This gateway's id: the CN of its certificate, `{gateway_id}` in rules.
    pub gateway_id: String,
    /// Cloud endpoints as `host:port`, tried in order (failover).
    pub endpoints: Vec<String>,
    /// `auto` (QUIC, then TLS over TCP when UDP is blocked), `quic` or `tcp`.
    pub transport: TransportChoice,
    /// CA certificate that signed the cloud's certificate (PEM).
    pub ca: PathBuf,
    /// This gateway's certificate (PEM), from `tern-cloud certs issue-gateway`.
    pub cert: PathBuf,
    /// This gateway's private key (PEM).
    pub key: PathBuf,
    /// Priority classes, highest first; each has its own queue and QUIC stream.
    pub classes: Vec<String>,
    /// Most messages queued per class while the cloud is away; beyond, publishers
    /// get quota exceeded (v5 0x97) and QoS 0 is dropped.
    pub max_queued_messages: usize,
    /// What goes up: local topics forwarded to the cloud.
    pub forward: Vec<ForwardRule>,
    /// What comes down: cloud topics delivered into the local broker.
    pub subscribe: Vec<SubscribeRule>,
    /// Batching, windows, rate limits and reconnect timing.
    pub link: LinkConfig,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            enabled: false,
            gateway_id: String::new(),
            endpoints: Vec::new(),
            transport: TransportChoice::Auto,
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            classes: vec!["alarm".into(), "telemetry".into(), "bulk".into()],
            max_queued_messages: 200_000,
            forward: Vec::new(),
            subscribe: Vec::new(),
            link: LinkConfig::default(),
        }
    }
}

/// Which transports the bridge client tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// QUIC first, TLS over TCP when QUIC cannot connect.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// One forwarding rule: local messages matching `topic` go to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    /// Local topic filter (`+`/`#` allowed).
    pub topic: String,
    /// Prepended to the topic in the cloud, e.g. `site/{gateway_id}/`.
    #[serde(default)]
    pub remote_prefix: String,
    /// Highest QoS taken from local publishers for forwarding (every forwarded
    /// message is stored in the outbox, whatever its QoS).
    #[serde(default = "qos1", with = "qos_number")]
    pub qos: QoS,
    /// Priority class name (one of `classes`).
    pub class: String,
}

/// One downstream subscription: cloud messages matching `topic` come to this gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRule {
    /// Cloud topic filter, e.g. `commands/{gateway_id}/#`.
    pub topic: String,
    /// Priority class name (one of `classes`).
    pub class: String,
}

/// Batching, windows, rate limits and reconnect timing of one link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    /// Most messages in one batch.
    pub batch_messages: usize,
    /// About this many payload bytes in one batch.
    pub batch_bytes: usize,
    /// Most unacknowledged messages per class.
    pub window_messages: usize,
    /// Most unacknowledged payload bytes per class.
    pub window_bytes: usize,
    /// Cap on bytes sent per second, for metered links (0 = no cap).
    pub rate_bytes_per_sec: u64,
    /// Pace of the replay of a backlog after reconnecting, messages per second
    /// (0 = as fast as the link allows), so a returning fleet does not flood the cloud.
    pub replay_messages_per_sec: u64,
    /// Compress batches with LZ4.
    pub compress: bool,
    /// Milliseconds to wait for a connection (per endpoint and transport).
    pub connect_timeout_ms: u64,
    /// First reconnect delay in milliseconds; doubles up to `backoff_max_ms` (±20 % jitter).
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            batch_messages: 1024,
            batch_bytes: 256 * 1024,
            window_messages: 16_384,
            window_bytes: 8 * 1024 * 1024,
            rate_bytes_per_sec: 0,
            replay_messages_per_sec: 0,
            compress: false,
            connect_timeout_ms: 5000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
        }
    }
}

impl LinkConfig {
    /// The connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// The cloud's bridge acceptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptorConfig {
    /// Accept gateways (only `tern-cloud` can).
    pub enabled: bool,
    /// UDP (QUIC) and TCP (fallback) port, the same number for both.
    pub bind: SocketAddr,
    /// CA that signs gateway certificates (and ours), PEM.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
    /// Revoked gateway certificates (PEM CRL from `tern-cloud certs revoke`); empty: none.
    pub crl: PathBuf,
    /// Most downstream messages queued per gateway and class while it is away.
    pub max_queued_messages: usize,
    /// A gateway may only subscribe downstream to filters that name it as a level
    /// before any wildcard (`commands/gw1/#`); otherwise it is refused.
    pub restrict_downstream: bool,
    /// Batching, windows and rate limits towards gateways.
    pub link: LinkConfig,
}

impl Default for AcceptorConfig {
    fn default() -> Self {
        AcceptorConfig {
            enabled: false,
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7883)),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            crl: PathBuf::new(),
            max_queued_messages: 100_000,
            restrict_downstream: true,
            link: LinkConfig::default(),
        }
    }
}

impl BridgeConfig {
    /// The index of class `name`.
    pub fn class_index(&self, name: &str) -> Option<u8> {
        self.classes
            .iter()
            .position(|c| c == name)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// `text` with `{gateway_id}` replaced.
    pub fn expand(&self, text: &str) -> String {
        text.replace("{gateway_id}", &self.gateway_id)
    }

    /// Checks what the types cannot: names, ids and files that must be there.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.gateway_id.is_empty() || self.gateway_id.contains(['/', '+', '#']) {
            return Err(format!(
                "`bridge.gateway_id` = {:?} must be set and contain no `/`, `+` or `#`",
                self.gateway_id
            ));
        }
        if self.endpoints.is_empty() {
            return Err("`bridge.endpoints` needs at least one `host:port`".into());
        }
        if self.classes.is_empty() || self.classes.len() > 8 {
            return Err("`bridge.classes` needs between 1 and 8 names".into());
        }
        for (key, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if path.as_os_str().is_empty() {
                return Err(format!("`bridge.{key}` must name a PEM file"));
            }
        }
        let rules = self
            .forward
            .iter()
            .map(|r| ("forward", &r.topic, &r.class))
            .chain(
                self.subscribe
                    .iter()
                    .map(|r| ("subscribe", &r.topic, &r.class)),
            );
        for (section, topic, class) in rules {
            if self.class_index(class).is_none() {
                return Err(format!(
                    "`bridge.{section}` rule for {topic:?} names class {class:?}, not one of {:?}",
                    self.classes
                ));
            }
            if !tern_core::mqtt::topic::valid_topic_filter(&self.expand(topic), 0) {
                return Err(format!(
                    "`bridge.{section}` topic {topic:?} is not a valid topic filter"
                ));
            }
        }
        Ok(())
    }
}

fn qos1() -> QoS {
    QoS::AtLeastOnce
}

/// QoS as the numbers 0, 1, 2 in profiles.
mod qos_number {
    use serde::{Deserialize, Deserializer, Serializer};
    use tern_core::message::QoS;

    pub(super) fn serialize<S: Serializer>(qos: &QoS, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*qos as u8)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            n => Err(serde::de::Error::custom(format!(
                "qos must be 0, 1 or 2, not {n}"
            ))),
        }
    }
}
