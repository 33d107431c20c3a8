//! Listeners: accept client connections on a transport and hand each one, as a byte
//! stream, to the connection driver.
//!
//! A transport ([`Transport`]) only knows how to accept and, for TLS or WebSocket, how
//! to turn an accepted socket into a stream (`upgrade`, run in the connection's own
//! task, within [`HANDSHAKE_TIMEOUT`], so a slow handshake never stalls accepting).
//! The accept loop, the connection limits checked at accept (`crate::limits`), the
//! connection tasks and their shutdown are shared here.

mod tcp;
mod tls;
mod ws;
mod ws_stream;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::{JoinHandle, JoinSet};

#[cfg(test)]
pub(crate) use tcp::TcpConn;

use crate::config::EdgeConfig;
use crate::limits::{ConnectRate, ConnectionLimits, Refusal};
use crate::server::Server;
use crate::EdgeError;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Longest a TLS or WebSocket handshake may take before the socket is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the transport learned about a connection during its handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    /// Identity of the verified TLS client certificate (CN, else first DNS name).
    pub(crate) certificate: Option<String>,
    /// The listener takes the user name from the client certificate.
    pub(crate) cert_as_username: bool,
}

/// One way for clients to reach the broker.
pub(crate) trait Transport: Send + Sync + 'static {
    /// What `accept` yields, before any handshake.
    type Accepted: Send + 'static;
    /// The byte stream that carries MQTT packets.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// True if a read with no room on `Stream` waits until input arrives (reading
    /// nothing), as the TCP transport's does: idle connections then hold no read
    /// buffer. TLS and WebSocket streams may answer such a read at once: false.
    const EMPTY_READ_WAITS: bool = false;

    /// URL scheme for log lines (`mqtt`, `mqtts`, `ws`, `wss`).
    fn scheme(&self) -> &'static str;

    /// The address actually bound.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Waits for the next connection and its peer address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Accepted, SocketAddr)>> + Send;

    /// Turns an accepted connection into the MQTT stream (TLS or WebSocket handshake).
    fn upgrade(
        &self,
        accepted: Self::Accepted,
    ) -> impl Future<Output = io::Result<(Self::Stream, ConnInfo)>> + Send + 'static;
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

/// Binds every enabled listener and starts accepting. Plain TCP comes last, so that
/// once it accepts, every other listener is bound too.
pub(crate) async fn start(config: &EdgeConfig, server: &Server) -> Result<Vec<Bound>, EdgeError> {
    let limits = ConnectionLimits::new(&config.limits);
    let rate = config.limits.connect_rate;
    let mut bound = Vec::new();
    let tls_err = |scheme: &'static str| {
        move |message: String| EdgeError::Tls {
            listener: scheme,
            message,
        }
    };
    let bind_err = |scheme: &'static str, addr: SocketAddr| {
        move |error: io::Error| EdgeError::Bind {
            scheme,
            addr,
            error,
        }
    };
    let l = &config.listeners;
    if l.tls.enabled {
        let acceptor = tls::acceptor(&l.tls, "listeners.tls").map_err(tls_err("mqtts"))?;
        let transport =
            tls::TlsTransport::bind(l.tls.bind, acceptor, l.tls.use_identity_as_username)
                .await
                .map_err(bind_err("mqtts", l.tls.bind))?;
        bound.push(
            serve(transport, server.clone(), &limits, rate)
                .map_err(bind_err("mqtts", l.tls.bind))?,
        );
    }
    let max_message = usize::try_from(config.mqtt.max_packet_size).unwrap_or(usize::MAX);
    if l.ws.enabled {
        let transport = ws::WsTransport::bind(l.ws.bind, None, &l.ws.path, max_message)
            .await
            .map_err(bind_err("ws", l.ws.bind))?;
        bound.push(
            serve(transport, server.clone(), &limits, rate).map_err(bind_err("ws", l.ws.bind))?,
        );
    }
    if l.wss.enabled {
        let settings = l.wss.tls_settings(&l.tls);
        let acceptor = tls::acceptor(&settings, "listeners.wss").map_err(tls_err("wss"))?;
        let tls = (acceptor, settings.use_identity_as_username);
        let transport = ws::WsTransport::bind(l.wss.bind, Some(tls), &l.wss.path, max_message)
            .await
            .map_err(bind_err("wss", l.wss.bind))?;
        bound.push(
            serve(transport, server.clone(), &limits, rate).map_err(bind_err("wss", l.wss.bind))?,
        );
    }
    let config = &config.listeners;
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
            serve(transport, server.clone(), &limits, rate).map_err(|error| EdgeError::Bind {
                scheme: "mqtt",
                addr,
                error,
            })?,
        );
    }
    Ok(bound)
}

/// Starts the accept loop of `transport`, admitting connections within `limits` and
/// `rate` new connections a second (0: no limit).
fn serve<T: Transport>(
    transport: T,
    server: Server,
    limits: &Arc<ConnectionLimits>,
    rate: u32,
) -> io::Result<Bound> {
    let scheme = transport.scheme();
    let local_addr = transport.local_addr()?;
    tracing::info!("listening on {scheme}://{local_addr}");
    let admission = Admission {
        limits: limits.clone(),
        rate: ConnectRate::new(rate),
    };
    let task = tokio::spawn(accept_loop(transport, server, admission));
    Ok(Bound {
        scheme,
        local_addr,
        task,
    })
}

/// What a listener checks before it spends anything on a new connection.
struct Admission {
    limits: Arc<ConnectionLimits>,
    rate: ConnectRate,
}

impl Admission {
    /// A permit for a connection from `peer`, or `None`: close it at once.
    fn admit(&mut self, peer: SocketAddr) -> Option<crate::limits::Permit> {
        if !self.rate.allow(std::time::Instant::now()) {
            self.limits.refuse(Refusal::Rate);
            return None;
        }
        self.limits.admit(peer.ip()).ok()
    }
}

async fn accept_loop<T: Transport>(transport: T, server: Server, mut admission: Admission) {
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
                Ok((accepted, peer)) => match admission.admit(peer) {
                    // Refused by [limits]: dropping the socket closes it.
                    None => drop(accepted),
                    Some(permit) => {
                        let transport = transport.clone();
                        let server = server.clone();
                        conns.spawn(async move {
                            let _permit = permit;
                            let upgrade = transport.upgrade(accepted);
                            drop(transport);
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
                                Ok(Ok((stream, info))) => {
                                    let waits = T::EMPTY_READ_WAITS;
                                    crate::connection::drive(server, stream, peer, info, waits)
                                        .await
                                }
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "{scheme} handshake failed")
                                }
                                Err(_) => tracing::debug!(%peer, "{scheme} handshake timed out"),
                            }
                        });
                    }
                },
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
