//! The bridge on the broker's side: configuration, the broker as a [`Port`] of the
//! link, and the gateway's bridge client task.
//!
//! Upstream, each priority class is a bridge queue of the broker (`$bridge/up/<class>`)
//! subscribed to that class's forwarding rules; downstream messages are injected into
//! the router with the cursor `in/<class>` in the same store batch.

pub mod config;
mod port;

use std::sync::Arc;

use std::time::Duration;

use bytestring::ByteString;
use tern_bridge::driver::{self, ClientConfig, Status, StatusSnapshot};
use tern_bridge::transport::{ClientTls, Endpoint};
use tern_core::broker::Backlog;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::config::{BridgeConfig, TransportChoice};
pub use self::port::{BrokerPort, OutboundRule, PortSpec};
use crate::server::Server;

/// Origin of messages that came down from the cloud (never forwarded back up).
const FROM_CLOUD: &str = "$bridge/cloud";

/// Why the bridge client could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeSetupError {
    /// The certificates could not be loaded.
    #[error("bridge TLS setup failed (bridge.ca / bridge.cert / bridge.key): {0}")]
    Tls(String),
    /// An endpoint is not `host:port`.
    #[error("`bridge.endpoints` entry {0:?} is not host:port")]
    Endpoint(String),
}

/// Opens bridge ports on a running broker (what `tern-cloud` uses per gateway).
#[derive(Clone)]
pub struct PortOpener {
    server: Server,
}

impl PortOpener {
    pub(crate) fn new(server: Server) -> Self {
        PortOpener { server }
    }

    /// Opens (or resumes) the queues and cursors of `spec`.
    pub fn open(&self, spec: PortSpec) -> Arc<BrokerPort> {
        Arc::new(BrokerPort::open(&self.server, spec))
    }

    /// Publishes a bridge's state under `$SYS/<prefix>/...` (retained): connection,
    /// reconnects, and per class the backlog (messages, bytes, age of the oldest), the
    /// acknowledged and delivered sequences and the traffic.
    pub fn publish_status(&self, prefix: &str, status: &StatusSnapshot, backlog: &[Backlog]) {
        let mut values = vec![
            (
                "connected".to_owned(),
                u8::from(status.connected).to_string(),
            ),
            ("reconnects".to_owned(), status.reconnects.to_string()),
        ];
        for (i, class) in status.classes.iter().enumerate() {
            let b = backlog.get(i).copied().unwrap_or_default();
            let oldest = b.oldest.map_or(0, |d| d.as_secs());
            let name = &class.name;
            values.extend([
                (format!("{name}/backlog/messages"), b.messages.to_string()),
                (format!("{name}/backlog/bytes"), b.bytes.to_string()),
                (format!("{name}/backlog/oldest_seconds"), oldest.to_string()),
                (format!("{name}/acked_seq"), class.acked_seq.to_string()),
                (
                    format!("{name}/delivered_seq"),
                    class.delivered_seq.to_string(),
                ),
                (
                    format!("{name}/messages/sent"),
                    class.messages_sent.to_string(),
                ),
                (format!("{name}/bytes/sent"), class.bytes_sent.to_string()),
                (
                    format!("{name}/messages/received"),
                    class.messages_received.to_string(),
                ),
            ]);
        }
        self.server.with_broker(|broker, now| {
            for (key, value) in values {
                let topic = ByteString::from(format!("$SYS/{prefix}/{key}"));
                broker.publish_sys_value(topic, value, now);
            }
        });
    }
}

/// Publishes the gateway bridge's status every `every` until shutdown.
async fn report_status(
    opener: PortOpener,
    port: Arc<BrokerPort>,
    status: Arc<Status>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                opener.publish_status("bridge", &status.snapshot(), &port.backlog());
            }
            _ = crate::server::stopped(&mut shutdown) => return,
        }
    }
}

/// The gateway's port: one upstream queue per class over the forwarding rules.
fn gateway_spec(config: &BridgeConfig) -> PortSpec {
    let mut outbound = vec![Vec::new(); config.classes.len()];
    for rule in &config.forward {
        // Invariant: `validate` checked that every rule names a known class.
        if let Some(class) = config.class_index(&rule.class) {
            outbound[usize::from(class)].push(OutboundRule {
                filter: config.expand(&rule.topic),
                qos: rule.qos,
                remote_prefix: config.expand(&rule.remote_prefix),
            });
        }
    }
    PortSpec {
        queue_prefix: "up/".into(),
        outbound,
        max_queued_messages: config.max_queued_messages,
        origin: FROM_CLOUD.into(),
        cursor_prefix: "in/".into(),
    }
}

fn endpoint(text: &str) -> Result<Endpoint, BridgeSetupError> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| BridgeSetupError::Endpoint(text.into()))?;
    let port = port
        .parse()
        .map_err(|_| BridgeSetupError::Endpoint(text.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Endpoint {
        host: host.into(),
        port,
    })
}

/// The transport mode for the driver.
pub fn transport_mode(choice: TransportChoice) -> tern_bridge::transport::TransportMode {
    use tern_bridge::transport::TransportMode;
    match choice {
        TransportChoice::Auto => TransportMode::Auto,
        TransportChoice::Quic => TransportMode::Quic,
        TransportChoice::Tcp => TransportMode::Tcp,
    }
}

/// The driver's limits from a profile's `link` section.
pub fn link_limits(link: &config::LinkConfig) -> driver::Limits {
    driver::Limits {
        batch_msgs: link.batch_messages,
        batch_bytes: link.batch_bytes,
        window_msgs: link.window_messages,
        window_bytes: link.window_bytes,
        rate_bytes_per_sec: link.rate_bytes_per_sec,
        replay_msgs_per_sec: link.replay_messages_per_sec,
        compress: link.compress,
    }
}

/// The bridge client task, its status and its port (for the backlog).
pub(crate) type RunningBridge = (JoinHandle<()>, Arc<Status>, Arc<BrokerPort>);

/// Starts the bridge client of `config` on `server`'s broker, if enabled.
pub(crate) fn start_client(
    config: &BridgeConfig,
    sys_interval: u16,
    server: &Server,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<RunningBridge>, BridgeSetupError> {
    if !config.enabled {
        return Ok(None);
    }
    let tls = ClientTls::load(&config.ca, &config.cert, &config.key)
        .map_err(|e| BridgeSetupError::Tls(e.to_string()))?;
    let endpoints = config
        .endpoints
        .iter()
        .map(|e| endpoint(e))
        .collect::<Result<Vec<_>, _>>()?;
    let downstream = config
        .subscribe
        .iter()
        .filter_map(|r| Some((config.expand(&r.topic), config.class_index(&r.class)?)))
        .collect();
    let client = ClientConfig {
        gateway_id: config.gateway_id.clone(),
        endpoints,
        tls,
        mode: transport_mode(config.transport),
        classes: config.classes.clone(),
        downstream,
        limits: link_limits(&config.link),
        connect_timeout: config.link.connect_timeout(),
        backoff_initial: Duration::from_millis(config.link.backoff_initial_ms),
        backoff_max: Duration::from_millis(config.link.backoff_max_ms),
    };
    let opener = PortOpener::new(server.clone());
    let port = opener.open(gateway_spec(config));
    let status = Arc::new(Status::default());
    if sys_interval > 0 {
        tokio::spawn(report_status(
            opener,
            Arc::clone(&port),
            Arc::clone(&status),
            Duration::from_secs(u64::from(sys_interval)),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        gateway_id = %config.gateway_id,
        endpoints = ?config.endpoints,
        classes = ?config.classes,
        "bridge to the cloud starting"
    );
    let driver_port: Arc<dyn tern_bridge::Port> = Arc::clone(&port) as Arc<BrokerPort>;
    let task = tokio::spawn(driver::run_client(
        client,
        driver_port,
        Arc::clone(&status),
        shutdown,
    ));
    Ok(Some((task, status, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_host_and_port() {
        let e = endpoint("cloud.example.com:7883").expect("valid");
        assert_eq!((e.host.as_str(), e.port), ("cloud.example.com", 7883));
        let e = endpoint("[::1]:7883").expect("valid");
        assert_eq!(e.host, "::1");
        assert!(endpoint("nocolon").is_err());
        assert!(endpoint("h:notaport").is_err());
    }
}
