//! `tern-cloud`: the cloud node, first version: the MQTT broker of `tern-edge` (same
//! core, same listeners and store) plus the bridge acceptor that many gateways connect
//! to. Bridged messages are published into its router; each gateway's downstream
//! subscriptions are durable queues here.
//!
//! Kafka, AMQP, streams, tiering and clustering come later (see DESIGN.md).

#![warn(missing_docs)]

mod gateways;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tern_bridge::driver::{self, ServerStatus};
use tern_bridge::transport::{Acceptor, ServerTls};
use tern_edge::config::AcceptorConfig;
use tern_edge::{Edge, EdgeConfig, EdgeError};
use tokio::task::JoinHandle;

pub use tern_edge::config;

/// How long the acceptor gets to close the gateways' links at shutdown.
const ACCEPTOR_GRACE: Duration = Duration::from_secs(3);

/// Why the cloud node could not start.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The MQTT side (listeners, store, auth) failed.
    #[error(transparent)]
    Node(#[from] EdgeError),
    /// The acceptor's certificates could not be created or loaded.
    #[error("bridge acceptor TLS setup failed: {0}")]
    Tls(String),
    /// The acceptor could not bind.
    #[error("cannot listen for gateways on {addr}: {message}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
}

/// A running cloud node.
pub struct Cloud {
    edge: Edge,
    acceptor_addr: Option<SocketAddr>,
    acceptor: Option<JoinHandle<()>>,
    status: Arc<ServerStatus>,
}

impl Cloud {
    /// Starts the broker of `config`, then the bridge acceptor if enabled.
    pub async fn start(config: EdgeConfig) -> Result<Cloud, CloudError> {
        let edge = Edge::start(config.clone()).await?;
        let status = Arc::new(ServerStatus::default());
        let mut cloud = Cloud {
            edge,
            acceptor_addr: None,
            acceptor: None,
            status,
        };
        if config.acceptor.enabled {
            let acceptor = bind_acceptor(&config.acceptor).await?;
            let addr = acceptor.local_addr();
            tracing::info!(%addr, "listening for gateways on quic://{addr} (udp) and tls://{addr} (tcp fallback)");
            let gateways = Arc::new(gateways::Gateways::new(
                cloud.edge.port_opener(),
                config.acceptor.max_queued_messages,
                config.acceptor.restrict_downstream,
            ));
            cloud.acceptor_addr = Some(addr);
            cloud
                .edge
                .add_metrics_source(Arc::new(gateways::GatewayMetrics {
                    gateways: Arc::clone(&gateways),
                    status: Arc::clone(&cloud.status),
                }));
            if config.mqtt.sys_interval > 0 {
                tokio::spawn(report_gateways(
                    Arc::clone(&gateways),
                    Arc::clone(&cloud.status),
                    Duration::from_secs(u64::from(config.mqtt.sys_interval)),
                    cloud.edge.shutdown_signal(),
                ));
            }
            cloud.acceptor = Some(tokio::spawn(driver::run_server(
                acceptor,
                gateways,
                tern_edge::bridge::link_limits(&config.acceptor.link),
                Arc::clone(&cloud.status),
                cloud.edge.shutdown_signal(),
            )));
        }
        Ok(cloud)
    }

    /// Address of the plain MQTT listener, if enabled.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.edge.local_addr()
    }

    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`), if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.edge.admin_addr()
    }

    /// Address of the bridge acceptor (UDP and TCP), if enabled.
    pub fn acceptor_addr(&self) -> Option<SocketAddr> {
        self.acceptor_addr
    }

    /// The acceptor's per-gateway status.
    pub fn status(&self) -> Arc<ServerStatus> {
        Arc::clone(&self.status)
    }

    /// Serves until `stop` completes, then shuts down.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) {
        stop.await;
        self.edge.shutdown().await;
        // The acceptor saw the same shutdown signal: it closes the gateways' links and
        // tells them (bounded by the transport's flush time).
        if let Some(mut task) = self.acceptor.take() {
            if tokio::time::timeout(ACCEPTOR_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("bridge acceptor did not stop in time; cutting it off");
                task.abort();
            }
        }
    }
}

/// Publishes the gateways' state in `$SYS` every `every`, until shutdown.
async fn report_gateways(
    gateways: Arc<gateways::Gateways>,
    status: Arc<ServerStatus>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => gateways.report(&status),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Loads the acceptor's certificates, creating a CA and server certificate first when
/// none exist yet at the configured paths (so the node runs on embedded defaults).
async fn bind_acceptor(config: &AcceptorConfig) -> Result<Acceptor, CloudError> {
    if !config.ca.exists() && !config.cert.exists() && !config.key.exists() {
        let dir = config.ca.parent().unwrap_or(Path::new("."));
        let created = tern_bridge::certs::init(dir, &default_server_names())
            .map_err(|e| CloudError::Tls(e.to_string()))?;
        tracing::warn!(
            dir = %dir.display(),
            "no bridge certificates found: created a new CA and server certificate \
             ({created:?}); issue gateway certificates with `tern-cloud certs issue-gateway ID`"
        );
    }
    let crl = (!config.crl.as_os_str().is_empty() && config.crl.exists()).then_some(&config.crl);
    let tls = ServerTls::load(
        &config.ca,
        &config.cert,
        &config.key,
        crl.map(|p| p.as_path()),
    )
    .map_err(|e| CloudError::Tls(e.to_string()))?;
    Acceptor::bind(config.bind, tls)
        .await
        .map_err(|e| CloudError::Bind {
            addr: config.bind,
            message: e.to_string(),
        })
}

/// Names the server certificate is valid for when created on first start.
pub fn default_server_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names
}

/// Runs the node with `config` until SIGTERM or SIGINT, then shuts down.
pub async fn run(config: EdgeConfig) -> Result<(), CloudError> {
    // Handlers first, so a signal during start-up is not lost.
    let stop = tern_edge::stop_signal()?;
    let cloud = Cloud::start(config).await?;
    cloud.run_until(stop).await;
    Ok(())
}
