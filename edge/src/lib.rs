//! `tern-edge`: the gateway broker, as a library so that tests and benchmarks can embed
//! it in-process.
//!
//! [`Edge::start`] binds the configured listeners around one sans-IO broker from
//! `tern-core`; [`run`] does that and serves until SIGTERM or SIGINT. The binary
//! (`main.rs`) only parses arguments, loads the [`EdgeConfig`], sets up logging and
//! calls [`run`]. The tokio code here only moves bytes; every protocol decision is the
//! broker's.

#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod cli;
pub mod config;
mod connection;
mod group_commit;
mod limits;
mod listener;
mod logging;
mod outgoing;
pub mod passwd;
mod server;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ConfigError, ConfigSources, EdgeConfig};
pub use logging::{init_logging, LoggingError};

/// How long connections get to flush and close at shutdown before they are cut off.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Why the edge could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A listener could not be bound.
    #[error("cannot listen on {scheme}://{addr}: {error}")]
    Bind {
        /// URL scheme of the listener.
        scheme: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        error: io::Error,
    },
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] group_commit::OpenError),
    /// A TLS listener's certificate, key or client CAs could not be used.
    #[error("cannot set up TLS for {listener}: {message}")]
    Tls {
        /// URL scheme of the listener.
        listener: &'static str,
        /// What is wrong, naming the configuration key.
        message: String,
    },
    /// The bridge to the cloud could not be set up.
    #[error(transparent)]
    Bridge(#[from] bridge::BridgeSetupError),
    /// The admin HTTP endpoint could not be bound.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// Authentication could not be set up (e.g. `auth.password_file` is unreadable).
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    /// A signal handler could not be installed.
    #[error("cannot handle {signal}: {error}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// The I/O error.
        error: io::Error,
    },
}

/// A running edge broker: its listeners, its broker and its timer.
///
/// Dropping it without [`Edge::shutdown`] signals shutdown but does not wait.
pub struct Edge {
    server: server::Server,
    shutdown: watch::Sender<bool>,
    listeners: Vec<listener::Bound>,
    timer: Option<JoinHandle<()>>,
    auth_task: Option<JoinHandle<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
    bridge: Option<bridge::RunningBridge>,
    /// What `/metrics` shows.
    metrics: Arc<admin::Registry>,
    admin: Option<admin::RunningAdmin>,
}

impl Edge {
    /// Binds the listeners of `config` and starts serving (within a tokio runtime).
    pub async fn start(config: EdgeConfig) -> Result<Edge, EdgeError> {
        let started = Instant::now();
        let admin_socket = match config.admin.enabled {
            true => Some(admin::bind(config.admin.bind).await?),
            false => None,
        };
        let (shutdown, signal) = watch::channel(false);
        let (store, snapshot) = group_commit::open(&config)?;
        let server = server::Server::new(config.mqtt.clone(), signal);
        let (batches, committer) = group_commit::spawn(store, &config.store, server.clone());
        server.attach_store(snapshot, batches);
        let l = &config.listeners;
        let identity_listeners = (l.tls.enabled && l.tls.use_identity_as_username)
            || (l.wss.enabled && l.wss.use_identity_as_username);
        let (authenticator, verified) = auth::Authenticator::new(&config.auth, identity_listeners)?;
        server.set_access(authenticator, config.acl.clone());
        let auth_task = Some(tokio::spawn(server.clone().run_auth(verified)));
        let listeners = listener::start(&config, &server).await?;
        let timer = Some(tokio::spawn(server.clone().run_timer()));
        let bridge = bridge::start_client(
            &config.bridge,
            config.mqtt.sys_interval,
            &server,
            shutdown.subscribe(),
        )?;
        let metrics = Arc::new(admin::Registry::default());
        metrics.register(Arc::new(admin::BrokerMetrics {
            server: server.clone(),
            started,
        }));
        if let Some((_, status, port)) = &bridge {
            metrics.register(Arc::new(admin::BridgeMetrics {
                status: Arc::clone(status),
                port: Arc::clone(port),
            }));
        }
        let admin = admin_socket
            .map(|bound| admin::serve(bound, Arc::clone(&metrics), shutdown.subscribe()));
        Ok(Edge {
            server,
            shutdown,
            listeners,
            timer,
            auth_task,
            committer: Some(committer),
            bridge,
            metrics,
            admin,
        })
    }

    /// Opens bridge ports on this broker (the cloud's acceptor uses one per gateway).
    pub fn port_opener(&self) -> bridge::PortOpener {
        bridge::PortOpener::new(self.server.clone())
    }

    /// The bridge client's status, when the bridge is enabled.
    pub fn bridge_status(&self) -> Option<std::sync::Arc<tern_bridge::driver::Status>> {
        self.bridge.as_ref().map(|(_, status, _)| status.clone())
    }

    /// Adds `source` to what the admin endpoint's `/metrics` shows (from the next
    /// scrape on; works whether or not the endpoint is enabled).
    pub fn add_metrics_source(&self, source: Arc<dyn admin::MetricsSource>) {
        self.metrics.register(source);
    }

    /// The whole `/metrics` exposition as it would be served now.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// The address of the admin HTTP endpoint, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr)
    }

    /// A receiver that turns true when this node shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The address of the plain MQTT (TCP) listener, if enabled.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.scheme == "mqtt")
            .map(|l| l.local_addr)
    }

    /// Every bound listener as `(scheme, address)`.
    pub fn listen_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.scheme, l.local_addr))
            .collect()
    }

    /// Serves until `stop` completes, then shuts down.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) {
        stop.await;
        self.shutdown().await;
    }

    /// Stops accepting, closes every connection (MQTT 5 clients get DISCONNECT 0x8B,
    /// and what was queued for each is flushed), and waits for them, at most about 1.5 s.
    pub async fn shutdown(&mut self) {
        tracing::info!("shutting down");
        // The broker first, so that every client is told before its socket closes.
        self.server.close_all();
        let _ = self.shutdown.send(true);
        let mut tasks: Vec<JoinHandle<()>> = self
            .listeners
            .drain(..)
            .map(|l| l.task)
            .chain(self.timer.take())
            .chain(self.auth_task.take())
            .chain(self.bridge.take().map(|(task, _, _)| task))
            .chain(self.admin.take().map(|a| a.task))
            .collect();
        let wait_all = async {
            for task in &mut tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, wait_all)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close in time; cutting them off");
            for task in &tasks {
                task.abort();
            }
        }
        // Last, the store: the commit thread applies what it was given, then closes it.
        self.server.detach_store();
        if let Some(committer) = self.committer.take() {
            let _ = tokio::task::spawn_blocking(move || committer.join()).await;
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Runs the edge with `config` until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: EdgeConfig) -> Result<(), EdgeError> {
    // Handlers first, so a signal during start-up is not lost.
    let stop = stop_signal()?;
    let edge = Edge::start(config).await?;
    edge.run_until(stop).await;
    Ok(())
}

/// A future that completes on SIGTERM or SIGINT (Ctrl-C).
#[cfg(unix)]
pub fn stop_signal() -> Result<impl Future<Output = ()>, EdgeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|error| EdgeError::Signal {
        signal: "SIGTERM",
        error,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|error| EdgeError::Signal {
        signal: "SIGINT",
        error,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::debug!("received SIGTERM"),
            _ = int.recv() => tracing::debug!("received SIGINT"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
pub fn stop_signal() -> Result<impl Future<Output = ()>, EdgeError> {
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot wait for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
}
