//! QUIC (quinn) for the bridge transport: one unidirectional stream per lane and
//! direction, opened lazily; the stream's first byte is its lane id, then frames of
//! `u32 BE length + bytes`. The server opens its lane-0 stream right after the handshake
//! as the "ready" signal the client waits for in [`connect`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, ReadError, ReadExactError, VarInt, WriteError};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::lanes::{self, InboxTx, LaneTx};
use super::tls::{self, TlsFailure};
use super::{
    Attempt, Channel, ClientTls, Endpoint, Peer, SenderInner, ServerTls, TransportError,
    TransportKind, IDLE_TIMEOUT, KEEP_ALIVE, MAX_FRAME, MAX_LANES, SERVER_HANDSHAKE_TIMEOUT,
};

/// Receive window of one stream (lane), in bytes.
const STREAM_WINDOW: u32 = 4 << 20;
/// Receive and send window of a connection, all lanes together, in bytes.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Concurrent unidirectional streams a peer may open (one per lane suffices).
const MAX_STREAMS: u32 = 256;
/// How long `close` waits for queued frames to be acknowledged.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Application close code for a normal close.
const CLOSE_NORMAL: u32 = 0;
/// Application close code for a framing violation.
const CLOSE_PROTOCOL: u32 = 1;

/// The QUIC transport parameters of both sides.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(VarInt::from_u32(idle_timeout_ms()).into()))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .datagram_receive_buffer_size(None);
    Arc::new(t)
}

/// [`IDLE_TIMEOUT`] in milliseconds (a constant of a few seconds: fits in u32).
fn idle_timeout_ms() -> u32 {
    u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX)
}

/// A quinn endpoint serving the bridge on `udp`.
pub(super) fn server_endpoint(
    udp: std::net::UdpSocket,
    tls: &ServerTls,
) -> std::io::Result<quinn::Endpoint> {
    let mut config = quinn::ServerConfig::with_crypto(tls.quic.clone());
    config.transport_config(transport_config());
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Why this side closed the connection, when it did.
#[derive(Default)]
struct ConnState {
    local: Mutex<Option<TransportError>>,
}

impl ConnState {
    /// The local close reason, if any.
    fn local(&self) -> Option<TransportError> {
        // A poisoned lock holds a valid Option.
        self.local.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the local close reason; false if one was already recorded.
    fn set_local(&self, error: TransportError) -> bool {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.is_some() {
            return false;
        }
        *local = Some(error);
        true
    }

    /// The error of an established connection that ended with `e`.
    fn error(&self, e: ConnectionError) -> TransportError {
        match e {
            ConnectionError::ApplicationClosed(c) => TransportError::Closed {
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            ConnectionError::ConnectionClosed(c) => TransportError::Closed {
                reason: c.to_string(),
            },
            ConnectionError::LocallyClosed => {
                self.local()
                    .unwrap_or_else(|| TransportError::ClosedLocally {
                        reason: String::new(),
                    })
            }
            ConnectionError::TimedOut => TransportError::Lost {
                reason: format!("no packets from the peer for {IDLE_TIMEOUT:?} (idle timeout)"),
            },
            ConnectionError::Reset => TransportError::Lost {
                reason: "reset by the peer (it probably restarted)".to_owned(),
            },
            ConnectionError::TransportError(t) => TransportError::Protocol {
                reason: t.to_string(),
            },
            other => TransportError::Lost {
                reason: other.to_string(),
            },
        }
    }

    /// Closes `conn` because the peer broke the framing rules.
    fn violation(&self, conn: &quinn::Connection, reason: String) {
        tracing::warn!("bridge: {}: {reason}", conn.remote_address());
        if self.set_local(TransportError::Protocol {
            reason: reason.clone(),
        }) {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), reason.as_bytes());
        }
    }
}

/// One lane's outbound stream, opened on first use.
type LaneSlot = Arc<tokio::sync::Mutex<Option<quinn::SendStream>>>;

/// The sending half of a QUIC channel.
pub(super) struct QuicSender {
    conn: quinn::Connection,
    lanes: Mutex<Vec<Option<LaneSlot>>>,
    state: Arc<ConnState>,
    /// The client's own endpoint, kept alive as long as the channel.
    endpoint: Option<quinn::Endpoint>,
}

impl QuicSender {
    /// Sends `frame` on `lane` (length checked by the caller).
    pub(super) async fn send(&self, lane: u8, frame: Bytes) -> Result<(), TransportError> {
        if let Some(e) = self.state.local() {
            return Err(e);
        }
        let len = u32::try_from(frame.len())
            .map_err(|_| TransportError::FrameTooLarge { len: frame.len() })?;
        let slot = {
            // A poisoned lock holds a valid table.
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            lanes[usize::from(lane)]
                .get_or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
                .clone()
        };
        let mut guard = slot.lock().await;
        let mut header = Vec::with_capacity(5);
        let stream = match &mut *guard {
            Some(stream) => stream,
            None => {
                let stream = self
                    .conn
                    .open_uni()
                    .await
                    .map_err(|e| self.state.error(e))?;
                // Lane 0 (control) first, then class by class.
                let _ = stream.set_priority(255 - i32::from(lane));
                header.push(lane);
                guard.insert(stream)
            }
        };
        header.extend_from_slice(&len.to_be_bytes());
        stream
            .write_all_chunks(&mut [Bytes::from(header), frame])
            .await
            .map_err(|e| match e {
                WriteError::ConnectionLost(e) => self.state.error(e),
                WriteError::Stopped(code) => TransportError::Protocol {
                    reason: format!("the peer stopped lane {lane} (code {code})"),
                },
                other => self.state.local().unwrap_or(TransportError::Lost {
                    reason: other.to_string(),
                }),
            })
    }

    /// Flushes (best effort, [`CLOSE_FLUSH`] at most) and closes the connection.
    pub(super) fn close(&self, reason: String) {
        if !self.state.set_local(TransportError::ClosedLocally {
            reason: reason.clone(),
        }) {
            return;
        }
        let conn = self.conn.clone();
        let slots: Vec<LaneSlot> = {
            let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            lanes.iter().flatten().cloned().collect()
        };
        let endpoint = self.endpoint.clone();
        let flush = async move {
            let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                let mut streams = Vec::new();
                for slot in slots {
                    if let Some(mut stream) = slot.lock().await.take() {
                        let _ = stream.finish();
                        streams.push(stream);
                    }
                }
                for stream in &mut streams {
                    let _ = stream.stopped().await;
                }
            })
            .await;
            conn.close(VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
            drop(endpoint);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(flush);
            }
            Err(_) => self
                .conn
                .close(VarInt::from_u32(CLOSE_NORMAL), b"closed without a runtime"),
        }
    }
}

impl Drop for QuicSender {
    fn drop(&mut self) {
        self.close("channel dropped".to_owned());
    }
}

/// The TLS alert code carried by a QUIC crypto error code, if it is one.
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    if (0x100..0x200).contains(&code) {
        u8::try_from(code - 0x100).ok()
    } else {
        None
    }
}

/// The error of a failed client handshake with `endpoint` (certificate refusals logged).
fn client_handshake_error(endpoint: &Endpoint, e: ConnectionError) -> TransportError {
    let failure = match &e {
        ConnectionError::TransportError(t) => {
            crypto_alert(t.code).map(|alert| tls::classify_quic(alert, true, &t.reason))
        }
        ConnectionError::ConnectionClosed(c) => crypto_alert(c.error_code)
            .map(|alert| tls::classify_quic(alert, false, &String::from_utf8_lossy(&c.reason))),
        ConnectionError::ApplicationClosed(c) => {
            return TransportError::Closed {
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            }
        }
        _ => None,
    };
    match failure {
        Some(TlsFailure::PeerCertificate(reason)) => {
            tracing::warn!("bridge: cloud certificate rejected: {reason} ({endpoint}, QUIC)");
            TransportError::ServerCertificateRejected {
                endpoint: endpoint.to_string(),
                reason,
            }
        }
        Some(TlsFailure::OurCertificate(reason)) => {
            tracing::warn!("bridge: cloud refused our certificate: {reason} ({endpoint}, QUIC)");
            TransportError::CertificateRefused { reason }
        }
        Some(TlsFailure::Other(reason)) => TransportError::Handshake {
            peer: endpoint.to_string(),
            reason,
        },
        None => TransportError::Connect {
            endpoint: endpoint.to_string(),
            kind: TransportKind::Quic,
            reason: e.to_string(),
        },
    }
}

/// The error of a failed server handshake with `remote` (certificate refusals logged).
fn server_handshake_error(remote: SocketAddr, e: ConnectionError) -> TransportError {
    let failure = match &e {
        ConnectionError::TransportError(t) => {
            crypto_alert(t.code).map(|alert| tls::classify_quic(alert, true, &t.reason))
        }
        ConnectionError::ConnectionClosed(c) => crypto_alert(c.error_code)
            .map(|alert| tls::classify_quic(alert, false, &String::from_utf8_lossy(&c.reason))),
        _ => None,
    };
    match failure {
        Some(TlsFailure::PeerCertificate(reason)) => {
            tracing::warn!("gateway certificate refused: {reason} from {remote} (QUIC)");
            TransportError::GatewayCertificateRefused { remote, reason }
        }
        Some(TlsFailure::OurCertificate(reason)) => {
            tracing::warn!(
                "bridge: gateway {remote} refused the cloud certificate: {reason} (QUIC)"
            );
            TransportError::ServerCertificateRefused { remote, reason }
        }
        Some(TlsFailure::Other(reason)) => {
            tracing::info!("bridge: QUIC handshake with {remote} failed: {reason}");
            TransportError::Handshake {
                peer: remote.to_string(),
                reason,
            }
        }
        None => {
            tracing::debug!("bridge: QUIC handshake with {remote} failed: {e}");
            TransportError::Handshake {
                peer: remote.to_string(),
                reason: e.to_string(),
            }
        }
    }
}

/// The CN of the peer's verified certificate.
fn peer_cn(conn: &quinn::Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    tls::chain_cn(&chain)
}

/// Connects over QUIC to the first of `addrs` (QUIC cannot tell quickly that an address
/// is dead, so it does not walk the list), handshake and "ready" by `deadline`.
pub(super) async fn connect(
    endpoint: &Endpoint,
    addrs: &[SocketAddr],
    tls: &ClientTls,
    deadline: Instant,
) -> Result<Channel, TransportError> {
    let attempt = Attempt::new(endpoint, TransportKind::Quic, deadline);
    let addr = *addrs
        .first()
        .ok_or_else(|| attempt.failed("no address".to_owned()))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(local).map_err(|e| TransportError::Bind {
        addr: local.to_string(),
        reason: e.to_string(),
    })?;
    let quic = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| attempt.failed(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(tls.quic.clone());
    config.transport_config(transport_config());
    let connecting = quic
        .connect_with(config, addr, &endpoint.host)
        .map_err(|e| attempt.failed(e.to_string()))?;
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(attempt.timed_out()),
        Ok(Err(e)) => return Err(client_handshake_error(endpoint, e)),
        Ok(Ok(conn)) => conn,
    };
    // TLS 1.3: the server checks our certificate after our handshake is done; its
    // lane-0 stream says it accepted us, a close with an alert says it did not.
    let ready = async {
        let mut recv = conn
            .accept_uni()
            .await
            .map_err(|e| client_handshake_error(endpoint, e))?;
        let mut lane = [0u8; 1];
        match recv.read_exact(&mut lane).await {
            Ok(()) if lane[0] == 0 => Ok(recv),
            Ok(()) => Err(TransportError::Protocol {
                reason: format!("first stream of the server is lane {}, not 0", lane[0]),
            }),
            Err(ReadExactError::ReadError(ReadError::ConnectionLost(e))) => {
                Err(client_handshake_error(endpoint, e))
            }
            Err(e) => Err(TransportError::Protocol {
                reason: format!("server's lane-0 stream: {e}"),
            }),
        }
    };
    let recv0 = match tokio::time::timeout_at(deadline, ready).await {
        Err(_) => {
            conn.close(VarInt::from_u32(CLOSE_NORMAL), b"no ready signal");
            return Err(attempt.timed_out());
        }
        Ok(Err(e)) => {
            conn.close(VarInt::from_u32(CLOSE_NORMAL), b"handshake failed");
            return Err(e);
        }
        Ok(Ok(recv)) => recv,
    };
    let peer = Peer {
        remote: addr,
        kind: TransportKind::Quic,
        identity: peer_cn(&conn),
    };
    tracing::debug!("bridge: QUIC connection to {endpoint} ({addr}) established");
    Ok(channel(conn, Some(quic), peer, Some(recv0), None))
}

/// Accepts QUIC connections on `endpoint` until it closes; results go to `out`.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    handshakes: Arc<Semaphore>,
    out: mpsc::Sender<Result<Channel, TransportError>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(
                "bridge: too many handshakes in progress; refusing {}",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        };
        let out = out.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let result =
                match tokio::time::timeout(SERVER_HANDSHAKE_TIMEOUT, server_handshake(incoming))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::info!("bridge: QUIC handshake with {remote} timed out");
                        Err(TransportError::Handshake {
                            peer: remote.to_string(),
                            reason: format!("timed out after {SERVER_HANDSHAKE_TIMEOUT:?}"),
                        })
                    }
                };
            let _ = out.send(result).await;
            drop(permit);
        });
    }
}

/// Completes the server side of a handshake and signals "ready" on lane 0.
async fn server_handshake(incoming: quinn::Incoming) -> Result<Channel, TransportError> {
    let remote = incoming.remote_address();
    let conn = incoming
        .accept()
        .map_err(|e| server_handshake_error(remote, e))?
        .await
        .map_err(|e| server_handshake_error(remote, e))?;
    let lost = |e: ConnectionError| TransportError::Lost {
        reason: e.to_string(),
    };
    let mut send0 = conn.open_uni().await.map_err(lost)?;
    let _ = send0.set_priority(255);
    send0.write_all(&[0]).await.map_err(|e| match e {
        WriteError::ConnectionLost(e) => lost(e),
        other => TransportError::Lost {
            reason: other.to_string(),
        },
    })?;
    let peer = Peer {
        remote,
        kind: TransportKind::Quic,
        identity: peer_cn(&conn),
    };
    Ok(channel(conn, None, peer, None, Some(send0)))
}

/// A channel over an established connection; `recv0`: the peer's lane-0 stream, past
/// its lane byte; `send0`: our lane-0 stream, its lane byte written.
fn channel(
    conn: quinn::Connection,
    endpoint: Option<quinn::Endpoint>,
    peer: Peer,
    recv0: Option<quinn::RecvStream>,
    send0: Option<quinn::SendStream>,
) -> Channel {
    let (inbox, receiver) = lanes::inbox();
    let inbox = Arc::new(inbox);
    let state = Arc::new(ConnState::default());
    tokio::spawn(accept_lanes(conn.clone(), inbox, state.clone(), recv0));
    let mut lanes = vec![None; 256];
    if let Some(send) = send0 {
        lanes[0] = Some(Arc::new(tokio::sync::Mutex::new(Some(send))));
    }
    let sender = QuicSender {
        conn,
        lanes: Mutex::new(lanes),
        state,
        endpoint,
    };
    Channel {
        peer,
        sender: super::ChannelSender {
            inner: SenderInner::Quic(Arc::new(sender)),
        },
        receiver,
    }
}

/// Accepts the peer's lane streams (`recv0`: its lane-0 stream, already accepted) until
/// the connection ends, then reports why, once every lane reader has queued what it had
/// (frames sent before a close arrive before the close).
async fn accept_lanes(
    conn: quinn::Connection,
    inbox: Arc<InboxTx>,
    state: Arc<ConnState>,
    recv0: Option<quinn::RecvStream>,
) {
    let mut readers = tokio::task::JoinSet::new();
    if let (Some(recv), Some(tx)) = (recv0, inbox.lane(0)) {
        readers.spawn(read_lane(0, recv, tx, conn.clone(), state.clone()));
    }
    loop {
        tokio::select! {
            accepted = conn.accept_uni() => match accepted {
                Ok(mut recv) => {
                    let inbox = inbox.clone();
                    let conn = conn.clone();
                    let state = state.clone();
                    readers.spawn(async move {
                        let mut lane = [0u8; 1];
                        if recv.read_exact(&mut lane).await.is_err() {
                            return;
                        }
                        let Some(tx) = inbox.lane(lane[0]) else {
                            let reason = format!(
                                "lane {} is beyond the limit of {MAX_LANES} lanes",
                                lane[0]
                            );
                            state.violation(&conn, reason);
                            return;
                        };
                        drop(inbox);
                        read_lane(lane[0], recv, tx, conn, state).await;
                    });
                }
                Err(e) => {
                    // Readers drain what quinn already received, then see the error.
                    while readers.join_next().await.is_some() {}
                    inbox.close(state.error(e));
                    return;
                }
            },
            // Reap finished readers.
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

/// Reads the frames of one lane stream into its queue.
async fn read_lane(
    lane: u8,
    mut recv: quinn::RecvStream,
    tx: LaneTx,
    conn: quinn::Connection,
    state: Arc<ConnState>,
) {
    loop {
        let mut header = [0u8; 4];
        match recv.read_exact(&mut header).await {
            Ok(()) => {}
            // The peer finished the lane between frames: fine.
            Err(ReadExactError::FinishedEarly(0)) => return,
            Err(ReadExactError::FinishedEarly(_)) => {
                state.violation(&conn, format!("truncated frame header on lane {lane}"));
                return;
            }
            // Connection errors are reported by `accept_lanes`; a reset lane just ends.
            Err(ReadExactError::ReadError(_)) => return,
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            state.violation(
                &conn,
                format!("frame of {len} bytes on lane {lane} exceeds the limit of {MAX_FRAME}"),
            );
            return;
        }
        // Room in the lane first: what is being read counts against its budget.
        let Some(permit) = tx.reserve(len).await else {
            return; // the receiver is gone
        };
        let frame = match read_frame(&mut recv, len).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                state.violation(&conn, format!("truncated frame on lane {lane}"));
                return;
            }
            Err(_) => return,
        };
        if !tx.send(frame, permit).await {
            return; // the receiver is gone
        }
    }
}

/// Reads a frame of `len` bytes, the buffer growing as data arrives (a peer announcing
/// a large frame does not get the memory before it sends the bytes); `None` if the
/// stream ends first.
async fn read_frame(recv: &mut quinn::RecvStream, len: usize) -> Result<Option<Bytes>, ReadError> {
    let mut frame: Vec<u8> = Vec::new();
    while frame.len() < len {
        let Some(chunk) = recv.read_chunk(len - frame.len(), true).await? else {
            return Ok(None);
        };
        if frame.is_empty() && chunk.bytes.len() == len {
            return Ok(Some(chunk.bytes)); // the whole frame in one chunk: no copy
        }
        reserve_doubling(&mut frame, chunk.bytes.len(), len);
        frame.extend_from_slice(&chunk.bytes);
    }
    Ok(Some(Bytes::from(frame)))
}

/// Makes room for `more` bytes in `buf`, doubling its capacity but never beyond `cap`.
pub(super) fn reserve_doubling(buf: &mut Vec<u8>, more: usize, cap: usize) {
    let need = buf.len() + more;
    if need > buf.capacity() {
        let target = (buf.capacity() * 2).max(need).max(4096).min(cap.max(need));
        buf.reserve_exact(target - buf.len());
    }
}
