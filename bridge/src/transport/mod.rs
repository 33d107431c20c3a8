//! The bridge transport: moves opaque frames on numbered lanes between a gateway and
//! the cloud, over QUIC (quinn, rustls with the ring provider) or, where UDP is blocked,
//! over TLS on TCP. Both use ALPN `tern-bridge/1` and mutual TLS against the bridge CA.
//!
//! The link protocol above ([`crate::link`], [`crate::driver`]) sees only a [`Channel`]:
//! a cloneable [`ChannelSender`] (`send(lane, frame)`, `close(reason)`) and a
//! [`ChannelReceiver`] (`recv() -> (lane, frame)`). Lane 0 carries control frames, lane
//! `1 + c` the priority class `c`; lower lanes go first wherever frames wait.
//!
//! Wire formats:
//! - QUIC: each side opens one unidirectional stream per lane lazily, on the lane's first
//!   frame; the first byte of a stream is its lane id, then frames follow as
//!   `u32 BE length + bytes`. A lane's stream has QUIC priority `255 - lane`, so a bulk
//!   backlog never delays an alarm in the send buffers. The server opens its lane-0
//!   stream as soon as the handshake completes: the client waits for it, which tells the
//!   client that its certificate was accepted (TLS 1.3 reports that only afterwards).
//!   Keep-alive every [`KEEP_ALIVE`], idle timeout [`IDLE_TIMEOUT`].
//! - TCP: one TLS stream; each frame is `lane byte + u32 BE length + bytes`. Lengths with
//!   the top bits set are markers: ready (server to client, after the handshake), ping
//!   (sent after [`KEEP_ALIVE`] of silence) and close (with a reason). A reader that hears
//!   nothing for [`IDLE_TIMEOUT`] declares the connection lost, as QUIC does.
//!
//! Frames are at most [`MAX_FRAME`] bytes, lanes below [`MAX_LANES`]; each inbound lane
//! buffers a few MiB at most before pushing back. The acceptor binds UDP and TCP on the
//! same port number; [`connect`] in [`TransportMode::Auto`] tries QUIC first and falls
//! back to TCP when the QUIC handshake gets no answer.
//!
//! A refused certificate is logged (`tracing::warn!`) on the side that detected it and
//! returned as a [`TransportError`] naming the reason (unknown CA, revoked, expired, wrong
//! name).

mod lanes;
mod quic;
mod tcp;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use lanes::ChannelReceiver;
pub use tls::{ClientTls, ServerTls, TlsError};

/// The ALPN protocol id of the bridge, on QUIC and on TCP.
pub const ALPN: &[u8] = b"tern-bridge/1";
/// The largest frame either side sends or accepts, in bytes.
pub const MAX_FRAME: usize = 16 << 20;
/// Lanes per channel: lane 0 (control) and up to `MAX_LANES - 1` priority classes.
pub const MAX_LANES: u8 = 32;
/// The default bridge port (UDP for QUIC, TCP for the fallback).
pub const DEFAULT_PORT: u16 = 7883;
/// Interval of keep-alive packets (QUIC) or pings (TCP) on an idle connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Silence after which a connection is declared lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Time the acceptor gives a client to complete its handshake.
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes the acceptor runs at once; further attempts are refused.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Accepted channels waiting for [`Acceptor::accept`].
const ACCEPT_QUEUE: usize = 64;
/// Attempts to find a port free on both UDP and TCP when binding port 0.
const BIND_ATTEMPTS: usize = 16;
/// Longest close reason sent to the peer, in bytes.
const MAX_CLOSE_REASON: usize = 1024;

/// One connection attempt to an endpoint over one transport: the errors it ends with.
struct Attempt {
    endpoint: String,
    kind: TransportKind,
    timeout: Duration,
}

impl Attempt {
    /// An attempt at `endpoint` over `kind` that must be done by `deadline`.
    fn new(endpoint: &Endpoint, kind: TransportKind, deadline: Instant) -> Self {
        Attempt {
            endpoint: endpoint.to_string(),
            kind,
            timeout: deadline.saturating_duration_since(Instant::now()),
        }
    }

    /// The attempt ran out of time.
    fn timed_out(&self) -> TransportError {
        TransportError::Timeout {
            endpoint: self.endpoint.clone(),
            kind: self.kind,
            after: self.timeout,
        }
    }

    /// The connection could not be made, for `reason`.
    fn failed(&self, reason: String) -> TransportError {
        TransportError::Connect {
            endpoint: self.endpoint.clone(),
            kind: self.kind,
            reason,
        }
    }
}

/// Longest [`Acceptor::shutdown`] waits for the peers to be told.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Which transport carries a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP (the fallback).
    Tcp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Quic => "QUIC",
            TransportKind::Tcp => "TLS/TCP",
        })
    }
}

/// Which transports [`connect`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TransportMode {
    /// QUIC first; TLS over TCP when the QUIC handshake gets no answer (UDP blocked).
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl fmt::Display for TransportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportMode::Auto => "auto",
            TransportMode::Quic => "quic",
            TransportMode::Tcp => "tcp",
        })
    }
}

impl FromStr for TransportMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(TransportMode::Auto),
            "quic" => Ok(TransportMode::Quic),
            "tcp" => Ok(TransportMode::Tcp),
            _ => Err(format!(
                "unknown transport mode `{s}` (expected auto, quic or tcp)"
            )),
        }
    }
}

/// A cloud address: the same port number serves QUIC (UDP) and the TCP fallback.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP address; also the name the server certificate must match.
    pub host: String,
    /// UDP and TCP port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    /// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to [`DEFAULT_PORT`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("endpoint `{s}`: missing `]`"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("endpoint `{s}`: expected `:port` after `]`")),
                },
            }
        } else if s.matches(':').count() == 1 {
            let (host, port) = s.split_once(':').unwrap_or((s, ""));
            (host, Some(port))
        } else {
            (s, None)
        };
        if host.is_empty() {
            return Err(format!("endpoint `{s}`: empty host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("endpoint `{s}`: bad port `{p}`"))?,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

/// The other end of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// The transport in use.
    pub kind: TransportKind,
    /// The subject CN of the peer's verified certificate (on the server: the gateway id).
    pub identity: Option<String>,
}

/// An established connection: the peer, a sending half and a receiving half.
#[derive(Debug)]
pub struct Channel {
    /// Who is on the other end.
    pub peer: Peer,
    /// Sends frames (cloneable).
    pub sender: ChannelSender,
    /// Receives frames, lowest lane first.
    pub receiver: ChannelReceiver,
}

/// The sending half of a channel; clones share the connection.
#[derive(Clone)]
pub struct ChannelSender {
    inner: SenderInner,
}

#[derive(Clone)]
enum SenderInner {
    Quic(Arc<quic::QuicSender>),
    Tcp(Arc<tcp::TcpSender>),
}

impl fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            SenderInner::Quic(_) => f.write_str("ChannelSender(QUIC)"),
            SenderInner::Tcp(_) => f.write_str("ChannelSender(TCP)"),
        }
    }
}

impl ChannelSender {
    /// Queues `frame` on `lane`; waits while the lane's send buffer is full. Frames of
    /// one lane arrive in order; lower lanes overtake higher ones.
    pub async fn send(&self, lane: u8, frame: Bytes) -> Result<(), TransportError> {
        if frame.len() > MAX_FRAME {
            return Err(TransportError::FrameTooLarge { len: frame.len() });
        }
        if lane >= MAX_LANES {
            return Err(TransportError::LaneOutOfRange { lane });
        }
        match &self.inner {
            SenderInner::Quic(s) => s.send(lane, frame).await,
            SenderInner::Tcp(s) => s.send(lane, frame).await,
        }
    }

    /// Closes the connection after a best-effort flush of queued frames (about a
    /// second at most); the peer's receiver then fails with
    /// [`TransportError::Closed`] carrying `reason`. Dropping the last clone of the
    /// sender closes the connection too.
    pub fn close(&self, reason: &str) {
        let reason = truncate_reason(reason);
        match &self.inner {
            SenderInner::Quic(s) => s.close(reason),
            SenderInner::Tcp(s) => s.close(reason),
        }
    }

    /// The transport in use.
    pub fn kind(&self) -> TransportKind {
        match &self.inner {
            SenderInner::Quic(_) => TransportKind::Quic,
            SenderInner::Tcp(_) => TransportKind::Tcp,
        }
    }
}

/// `reason` cut to at most [`MAX_CLOSE_REASON`] bytes on a character boundary.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Why a connection could not be made, or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The endpoint's host name did not resolve.
    #[error("cannot resolve {endpoint}: {reason}")]
    Resolve {
        /// The endpoint.
        endpoint: String,
        /// What the resolver said.
        reason: String,
    },
    /// A local socket could not be bound.
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        reason: String,
    },
    /// No answer within the connect timeout (for QUIC: UDP probably blocked).
    #[error("{kind} connection to {endpoint} timed out after {after:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The transport tried.
        kind: TransportKind,
        /// The timeout.
        after: Duration,
    },
    /// The connection could not be made (refused, unreachable, ...).
    #[error("cannot connect to {endpoint} over {kind}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport tried.
        kind: TransportKind,
        /// The error.
        reason: String,
    },
    /// Client side: the cloud refused our (gateway) certificate.
    #[error("the cloud refused our certificate: {reason}")]
    CertificateRefused {
        /// Why (from the TLS alert).
        reason: String,
    },
    /// Client side: the cloud's certificate failed verification.
    #[error("certificate of {endpoint} rejected: {reason}")]
    ServerCertificateRejected {
        /// The endpoint.
        endpoint: String,
        /// Why (unknown CA, expired, wrong name, ...).
        reason: String,
    },
    /// Server side: a gateway's certificate failed verification.
    #[error("gateway certificate refused: {reason} from {remote}")]
    GatewayCertificateRefused {
        /// The gateway's address.
        remote: SocketAddr,
        /// Why (unknown CA, revoked, expired, none sent, ...).
        reason: String,
    },
    /// Server side: the gateway refused the cloud's certificate.
    #[error("gateway {remote} refused the cloud certificate: {reason}")]
    ServerCertificateRefused {
        /// The gateway's address.
        remote: SocketAddr,
        /// Why (from the TLS alert).
        reason: String,
    },
    /// The TLS handshake failed for another reason (ALPN, protocol version, ...).
    #[error("handshake with {peer} failed: {reason}")]
    Handshake {
        /// The endpoint or address.
        peer: String,
        /// The error.
        reason: String,
    },
    /// The peer closed the connection.
    #[error("connection closed by the peer: {reason}")]
    Closed {
        /// The reason the peer gave.
        reason: String,
    },
    /// This side closed the connection ([`ChannelSender::close`]).
    #[error("connection closed locally: {reason}")]
    ClosedLocally {
        /// The reason given to `close`.
        reason: String,
    },
    /// The connection broke (idle timeout, reset, I/O error).
    #[error("connection lost: {reason}")]
    Lost {
        /// What happened.
        reason: String,
    },
    /// The peer broke the transport's framing rules.
    #[error("transport protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// A lane at or above [`MAX_LANES`] was given to `send`.
    #[error("lane {lane} is beyond the limit of {MAX_LANES} lanes")]
    LaneOutOfRange {
        /// The lane.
        lane: u8,
    },
    /// A frame larger than [`MAX_FRAME`] was given to `send`.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes")]
    FrameTooLarge {
        /// Its length.
        len: usize,
    },
}

impl TransportError {
    /// True for a refused or rejected certificate on either side: retrying soon will
    /// not help until someone fixes the certificates.
    pub fn is_certificate(&self) -> bool {
        matches!(
            self,
            TransportError::CertificateRefused { .. }
                | TransportError::ServerCertificateRejected { .. }
                | TransportError::GatewayCertificateRefused { .. }
                | TransportError::ServerCertificateRefused { .. }
        )
    }

    /// True when QUIC got no answer at all, the case where [`TransportMode::Auto`]
    /// tries TCP.
    fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout { .. } | TransportError::Connect { .. }
        )
    }
}

/// Connects to `endpoint` and completes the handshake (TLS, ALPN, certificate checks on
/// both sides) within `timeout` per transport tried: in [`TransportMode::Auto`], QUIC
/// first, then TLS over TCP if QUIC got no answer (at most twice `timeout` in all).
pub async fn connect(
    endpoint: &Endpoint,
    tls: &ClientTls,
    mode: TransportMode,
    timeout: Duration,
) -> Result<Channel, TransportError> {
    let addrs = resolve(endpoint, timeout).await?;
    match mode {
        TransportMode::Quic => quic::connect(endpoint, &addrs, tls, Instant::now() + timeout).await,
        TransportMode::Tcp => tcp::connect(endpoint, &addrs, tls, Instant::now() + timeout).await,
        TransportMode::Auto => {
            match quic::connect(endpoint, &addrs, tls, Instant::now() + timeout).await {
                Err(e) if e.is_unreachable() => {
                    tracing::info!("bridge: {e}; trying TLS over TCP");
                    tcp::connect(endpoint, &addrs, tls, Instant::now() + timeout).await
                }
                other => other,
            }
        }
    }
}

/// The addresses of `endpoint`, IPv4 first (the order QUIC and TCP try them in).
async fn resolve(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, TransportError> {
    let failed = |reason: String| TransportError::Resolve {
        endpoint: endpoint.to_string(),
        reason,
    };
    let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
    let mut addrs: Vec<SocketAddr> = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(failed("no address".to_owned()));
    }
    addrs.sort_by_key(|a| a.is_ipv6());
    Ok(addrs)
}

/// The server side: QUIC on a UDP port and the TLS/TCP fallback on the same TCP port.
/// Handshakes run concurrently in the background; [`Acceptor::accept`] yields their
/// results. Dropping the acceptor stops accepting; established channels stay up.
pub struct Acceptor {
    local: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Result<Channel, TransportError>>>,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Binds UDP (QUIC) and TCP (fallback) on `addr`'s port; port 0 picks a port free
    /// on both.
    pub async fn bind(addr: SocketAddr, tls: ServerTls) -> Result<Self, TransportError> {
        let bind_err = |addr: SocketAddr, e: std::io::Error| TransportError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let mut last_err = None;
        let mut bound = None;
        for _ in 0..attempts {
            let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind_err(addr, e))?;
            let local = udp.local_addr().map_err(|e| bind_err(addr, e))?;
            match TcpListener::bind(local).await {
                Ok(tcp) => {
                    bound = Some((udp, tcp, local));
                    break;
                }
                Err(e) => last_err = Some(bind_err(local, e)),
            }
        }
        let Some((udp, tcp, local)) = bound else {
            return Err(
                last_err.unwrap_or_else(|| bind_err(addr, std::io::ErrorKind::AddrInUse.into()))
            );
        };
        let endpoint = quic::server_endpoint(udp, &tls).map_err(|e| bind_err(local, e))?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        let tasks = vec![
            tokio::spawn(quic::accept_loop(
                endpoint.clone(),
                handshakes.clone(),
                tx.clone(),
            )),
            tokio::spawn(tcp::accept_loop(tcp, tls, handshakes, tx)),
        ];
        tracing::info!("bridge: listening on {local} (QUIC/udp and TLS/tcp)");
        Ok(Acceptor {
            local,
            incoming: tokio::sync::Mutex::new(rx),
            endpoint,
            tasks,
        })
    }

    /// The bound address (the same port for UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection attempt: a channel whose handshake and certificate checks
    /// succeeded, or why one failed (already logged). `None` once the acceptor stopped.
    pub async fn accept(&self) -> Option<Result<Channel, TransportError>> {
        self.incoming.lock().await.recv().await
    }

    /// Closes every QUIC connection with `reason` and waits (at most
    /// [`SHUTDOWN_FLUSH`]) until the peers were told, so gateways notice a cloud that
    /// shuts down at once instead of after the idle timeout. TCP connections close with
    /// their sockets.
    pub async fn shutdown(self, reason: &str) {
        let reason = truncate_reason(reason);
        self.endpoint
            .close(quinn::VarInt::from_u32(0), reason.as_bytes());
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, self.endpoint.wait_idle()).await;
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // New QUIC connections are refused; established ones stay up.
        self.endpoint.set_server_config(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses() {
        let e: Endpoint = "cloud.example:9000".parse().unwrap();
        assert_eq!(
            e,
            Endpoint {
                host: "cloud.example".into(),
                port: 9000
            }
        );
        let e: Endpoint = "cloud.example".parse().unwrap();
        assert_eq!(e.port, DEFAULT_PORT);
        let e: Endpoint = "[::1]:7".parse().unwrap();
        assert_eq!(
            e,
            Endpoint {
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(e.to_string(), "[::1]:7");
        let e: Endpoint = "::1".parse().unwrap();
        assert_eq!(e.host, "::1");
        assert!("host:0".parse::<Endpoint>().is_err());
        assert!("host:x".parse::<Endpoint>().is_err());
        assert!(":5".parse::<Endpoint>().is_err());
        assert!("[::1".parse::<Endpoint>().is_err());
    }

    #[test]
    fn mode_parses() {
        assert_eq!("QUIC".parse::<TransportMode>(), Ok(TransportMode::Quic));
        assert!("udp".parse::<TransportMode>().is_err());
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(MAX_CLOSE_REASON);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
