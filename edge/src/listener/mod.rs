//! Listeners: accept client connections on a transport and hand each one, as a byte
//! stream, to the connection driver.
//!
//! A transport ([`Transport`]) only knows how to accept and, for TLS or WebSocket later,
//! how to turn an accepted socket into a stream (`upgrade`, run in the connection's own
//! task so a slow handshake never stalls accepting). The accept loop, the connection
//! tasks and their shutdown are shared here.

mod tcp;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::ListenersConfig;
use crate::server::Server;
use crate::EdgeError;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One way for clients to reach the broker.
pub(crate) trait Transport: Send + Sync + 'static {
    /// What `accept` yields, before any handshake.
    type Accepted: Send + 'static;
    /// The byte stream that carries MQTT packets.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// URL scheme for log lines (`mqtt`, later `mqtts`, `ws`).
    fn scheme(&self) -> &'static str;

    /// The address actually bound.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Waits for the next connection and its peer address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Accepted, SocketAddr)>> + Send;

    /// Turns an accepted connection into the MQTT stream (TLS or WebSocket handshake).
    fn upgrade(
        &self,
        accepted: Self::Accepted,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send + 'static;
}

/// A listener that is bound and accepting.
pub(crate) struct Bound {
    /// URL scheme of the transport.
    pub(crate) scheme: &'static str,
    /// The address actually bound (the port is real even if 0 was configured).
    pub(crate) local_addr: SocketAddr,
    /// The accept loop; it ends after shutdown, once its connections have ended.
    pub(crate) task: JoinHandle<()>,
}

/// Binds every enabled listener and starts accepting.
pub(crate) async fn start(
    config: &ListenersConfig,
    server: &Server,
) -> Result<Vec<Bound>, EdgeError> {
    let mut bound = Vec::new();
    if config.tcp.enabled {
        let addr = config.tcp.bind;
        let transport = tcp::TcpTransport::bind(addr)
            .await
            .map_err(|error| EdgeError::Bind {
                scheme: "mqtt",
                addr,
                error,
            })?;
        bound.push(
            serve(transport, server.clone()).map_err(|error| EdgeError::Bind {
                scheme: "mqtt",
                addr,
                error,
            })?,
        );
    }
    Ok(bound)
}

/// Starts the accept loop of `transport`.
fn serve<T: Transport>(transport: T, server: Server) -> io::Result<Bound> {
    let scheme = transport.scheme();
    let local_addr = transport.local_addr()?;
    tracing::info!("listening on {scheme}://{local_addr}");
    let task = tokio::spawn(accept_loop(transport, server));
    Ok(Bound {
        scheme,
        local_addr,
        task,
    })
}

async fn accept_loop<T: Transport>(transport: T, server: Server) {
    let transport = Arc::new(transport);
    let scheme = transport.scheme();
    let mut shutdown = server.shutdown_signal();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = crate::server::stopped(&mut shutdown) => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => report(done),
            accepted = transport.accept() => match accepted {
                Ok((accepted, peer)) => {
                    let transport = transport.clone();
                    let server = server.clone();
                    conns.spawn(async move {
                        let upgrade = transport.upgrade(accepted);
                        drop(transport);
                        match upgrade.await {
                            Ok(stream) => crate::connection::drive(server, stream, peer).await,
                            Err(error) => tracing::debug!(%peer, %error, "{scheme} handshake failed"),
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "{scheme} accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    // Stop accepting (closes the listening socket), then wait for the connections,
    // which are closing on the same signal.
    drop(transport);
    while let Some(done) = conns.join_next().await {
        report(done);
    }
}

fn report(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(%error, "connection task panicked");
        }
    }
}
