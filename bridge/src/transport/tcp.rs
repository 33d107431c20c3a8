//! TLS over TCP for the bridge transport, where UDP is blocked: one TLS stream carries
//! every lane. A frame is `lane byte + u32 BE length + bytes`; lengths with a top bit set
//! are markers (close with a reason, ready, ping). One writer task sends queued frames
//! lowest lane first; one reader task fills the lane queues and declares the connection
//! lost after [`IDLE_TIMEOUT`] of silence (the writer pings after [`KEEP_ALIVE`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::lanes::{self, InboxTx, LaneTx};
use super::tls::{self, TlsFailure};
use super::{
    Attempt, Channel, ChannelSender, ClientTls, Endpoint, Peer, SenderInner, ServerTls,
    TransportError, TransportKind, IDLE_TIMEOUT, KEEP_ALIVE, MAX_CLOSE_REASON, MAX_FRAME,
    MAX_LANES, SERVER_HANDSHAKE_TIMEOUT,
};

/// Length marker: close; the low 16 bits are the length of the reason that follows.
const CLOSE: u32 = 1 << 31;
/// Length marker: the server accepted the client (first thing it sends).
const READY: u32 = 1 << 30;
/// Length marker: keep-alive.
const PING: u32 = 1 << 29;
/// Bytes queued per lane before `send` waits (a larger frame passes when the lane is
/// empty).
const LANE_BUDGET: usize = 1 << 20;
/// Buffer of the reader and of the writer.
const IO_BUFFER: usize = 64 << 10;
/// How long the writer tries to send the close marker.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// A marker header.
fn marker(marker: u32) -> [u8; 5] {
    let len = marker.to_be_bytes();
    [0, len[0], len[1], len[2], len[3]]
}

/// Frames waiting for the writer, per lane.
struct WriteState {
    queues: Vec<VecDeque<Bytes>>,
    queued: Vec<usize>,
    /// Bit `l` set: lane `l` has frames.
    nonempty: [u64; 4],
    closing: Option<String>,
    error: Option<TransportError>,
}

impl WriteState {
    fn push(&mut self, lane: u8, frame: Bytes) {
        let l = usize::from(lane);
        self.queued[l] += frame.len();
        self.queues[l].push_back(frame);
        self.nonempty[l / 64] |= 1 << (l % 64);
    }

    /// The oldest frame of the lowest lane that has one.
    fn pop(&mut self) -> Option<(u8, Bytes)> {
        let word = self.nonempty.iter().position(|w| *w != 0)?;
        let l = word * 64 + self.nonempty[word].trailing_zeros() as usize;
        let frame = self.queues[l].pop_front()?;
        self.queued[l] -= frame.len();
        if self.queues[l].is_empty() {
            self.nonempty[word] &= !(1 << (l % 64));
        }
        // l < 256: it indexes a 256-bit map.
        Some((l as u8, frame))
    }
}

/// State shared by the sender, the writer task and the reader task.
struct Shared {
    state: Mutex<WriteState>,
    wake_writer: Notify,
    space: Notify,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            state: Mutex::new(WriteState {
                queues: vec![VecDeque::new(); 256],
                queued: vec![0; 256],
                nonempty: [0; 4],
                closing: None,
                error: None,
            }),
            wake_writer: Notify::new(),
            space: Notify::new(),
            stop: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WriteState> {
        // A poisoned lock holds valid queues.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection with `error` unless it already ended; returns the error
    /// that ended it.
    fn fail(&self, error: TransportError) -> TransportError {
        let error = self.lock().error.get_or_insert(error).clone();
        self.stop.send_replace(true);
        self.space.notify_waiters();
        self.wake_writer.notify_one();
        error
    }
}

/// The sending half of a TCP channel.
pub(super) struct TcpSender {
    shared: Arc<Shared>,
}

impl TcpSender {
    /// Queues `frame` on `lane`, waiting while the lane holds [`LANE_BUDGET`] bytes.
    pub(super) async fn send(&self, lane: u8, frame: Bytes) -> Result<(), TransportError> {
        let shared = &self.shared;
        let mut frame = Some(frame);
        loop {
            let space = shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut state = shared.lock();
                if let Some(e) = &state.error {
                    return Err(e.clone());
                }
                if let Some(reason) = &state.closing {
                    return Err(TransportError::ClosedLocally {
                        reason: reason.clone(),
                    });
                }
                let queued = state.queued[usize::from(lane)];
                let len = frame.as_ref().map_or(0, Bytes::len);
                if queued == 0 || queued + len <= LANE_BUDGET {
                    if let Some(frame) = frame.take() {
                        state.push(lane, frame);
                    }
                    drop(state);
                    shared.wake_writer.notify_one();
                    return Ok(());
                }
            }
            space.await;
        }
    }

    /// Sends the queued frames, then the close marker, then closes.
    pub(super) fn close(&self, reason: String) {
        let mut state = self.shared.lock();
        if state.closing.is_none() && state.error.is_none() {
            state.closing = Some(reason);
            drop(state);
            self.shared.wake_writer.notify_one();
        }
    }
}

impl Drop for TcpSender {
    fn drop(&mut self) {
        self.close("channel dropped".to_owned());
    }
}

/// The error of an I/O failure on an established connection.
fn io_lost(what: &str, e: &io::Error) -> TransportError {
    let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => {
            format!(
                "{what}: TLS alert {}",
                tls::describe_alert(u8::from(*alert))
            )
        }
        _ => format!("{what}: {e}"),
    };
    TransportError::Lost { reason }
}

/// The error of a failed client handshake (certificate refusals logged).
fn client_tls_error(endpoint: &Endpoint, e: io::Error) -> TransportError {
    let Some(rustls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
            "the server closed the connection during the handshake".to_owned()
        } else {
            e.to_string()
        };
        return TransportError::Handshake {
            peer: endpoint.to_string(),
            reason,
        };
    };
    match tls::classify(rustls) {
        TlsFailure::PeerCertificate(reason) => {
            tracing::warn!("bridge: cloud certificate rejected: {reason} ({endpoint}, TLS/TCP)");
            TransportError::ServerCertificateRejected {
                endpoint: endpoint.to_string(),
                reason,
            }
        }
        TlsFailure::OurCertificate(reason) => {
            tracing::warn!("bridge: cloud refused our certificate: {reason} ({endpoint}, TLS/TCP)");
            TransportError::CertificateRefused { reason }
        }
        TlsFailure::Other(reason) => TransportError::Handshake {
            peer: endpoint.to_string(),
            reason,
        },
    }
}

/// The error of a failed server handshake (certificate refusals logged).
fn server_tls_error(remote: SocketAddr, e: io::Error) -> TransportError {
    let failure = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls) => tls::classify(rustls),
        None => TlsFailure::Other(e.to_string()),
    };
    match failure {
        TlsFailure::PeerCertificate(reason) => {
            tracing::warn!("gateway certificate refused: {reason} from {remote} (TLS/TCP)");
            TransportError::GatewayCertificateRefused { remote, reason }
        }
        TlsFailure::OurCertificate(reason) => {
            tracing::warn!(
                "bridge: gateway {remote} refused the cloud certificate: {reason} (TLS/TCP)"
            );
            TransportError::ServerCertificateRefused { remote, reason }
        }
        TlsFailure::Other(reason) => {
            tracing::info!("bridge: TLS/TCP handshake with {remote} failed: {reason}");
            TransportError::Handshake {
                peer: remote.to_string(),
                reason,
            }
        }
    }
}

/// Connects over TLS/TCP to the first of `addrs` that answers, handshake and "ready"
/// by `deadline`.
pub(super) async fn connect(
    endpoint: &Endpoint,
    addrs: &[SocketAddr],
    tls: &ClientTls,
    deadline: Instant,
) -> Result<Channel, TransportError> {
    let attempt = Attempt::new(endpoint, TransportKind::Tcp, deadline);
    let mut last_err = "no address".to_owned();
    let mut connected = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(attempt.timed_out()),
            Ok(Ok(tcp)) => {
                connected = Some((tcp, *addr));
                break;
            }
            Ok(Err(e)) => last_err = format!("{addr}: {e}"),
        }
    }
    let Some((tcp, addr)) = connected else {
        return Err(attempt.failed(last_err));
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| attempt.failed(format!("bad server name: {e}")))?;
    let connector = TlsConnector::from(tls.rustls.clone());
    let mut stream = match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
        Err(_) => return Err(attempt.timed_out()),
        Ok(Err(e)) => return Err(client_tls_error(endpoint, e)),
        Ok(Ok(stream)) => stream,
    };
    // TLS 1.3: the server checks our certificate after our handshake is done; its ready
    // marker says it accepted us, an alert says it did not.
    let mut header = [0u8; 5];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut header)).await {
        Err(_) => return Err(attempt.timed_out()),
        Ok(Err(e)) => return Err(client_tls_error(endpoint, e)),
        Ok(Ok(_)) if header == marker(READY) => {}
        Ok(Ok(_)) => {
            return Err(TransportError::Protocol {
                reason: format!("expected the ready marker, got {header:02x?}"),
            })
        }
    }
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(tls::chain_cn);
    tracing::debug!("bridge: TLS/TCP connection to {endpoint} ({addr}) established");
    Ok(channel(
        stream,
        Peer {
            remote: addr,
            kind: TransportKind::Tcp,
            identity,
        },
    ))
}

/// Accepts TCP connections on `listener` forever; results go to `out`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    handshakes: Arc<Semaphore>,
    out: mpsc::Sender<Result<Channel, TransportError>>,
) {
    let acceptor = TlsAcceptor::from(tls.rustls.clone());
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!("bridge: TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!("bridge: too many handshakes in progress; dropping {remote}");
            continue;
        };
        let acceptor = acceptor.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let handshake = server_handshake(acceptor, tcp, remote);
            let result = match tokio::time::timeout(SERVER_HANDSHAKE_TIMEOUT, handshake).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::info!("bridge: TLS/TCP handshake with {remote} timed out");
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

/// Completes the server side of a handshake and sends the ready marker.
async fn server_handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Result<Channel, TransportError> {
    let _ = tcp.set_nodelay(true);
    let mut stream = acceptor
        .accept(tcp)
        .await
        .map_err(|e| server_tls_error(remote, e))?;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(tls::chain_cn);
    stream
        .write_all(&marker(READY))
        .await
        .map_err(|e| io_lost("sending ready", &e))?;
    stream
        .flush()
        .await
        .map_err(|e| io_lost("sending ready", &e))?;
    Ok(channel(
        stream,
        Peer {
            remote,
            kind: TransportKind::Tcp,
            identity,
        },
    ))
}

/// A channel over an established TLS stream: spawns its writer and reader.
fn channel<S>(stream: S, peer: Peer) -> Channel
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let (inbox, receiver) = lanes::inbox();
    let shared = Arc::new(Shared::new());
    tokio::spawn(write_loop(write, shared.clone()));
    tokio::spawn(read_loop(read, shared.clone(), inbox));
    Channel {
        peer,
        sender: ChannelSender {
            inner: SenderInner::Tcp(Arc::new(TcpSender { shared })),
        },
        receiver,
    }
}

/// What the writer does next.
enum Next {
    Frame(u8, Bytes),
    Close(String),
    Idle,
}

/// Writes queued frames, lowest lane first, until closed or stopped.
async fn write_loop<W: AsyncWrite + Unpin>(write: W, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut w = BufWriter::with_capacity(IO_BUFFER, write);
    let body = async {
        loop {
            let next = {
                let mut state = shared.lock();
                match state.pop() {
                    Some((lane, frame)) => Next::Frame(lane, frame),
                    None => match &state.closing {
                        Some(reason) => Next::Close(reason.clone()),
                        None => Next::Idle,
                    },
                }
            };
            match next {
                Next::Frame(lane, frame) => {
                    shared.space.notify_waiters();
                    // Frames are at most MAX_FRAME (checked by `send`): fits in u32.
                    let len = (frame.len() as u32).to_be_bytes();
                    w.write_all(&[lane, len[0], len[1], len[2], len[3]]).await?;
                    w.write_all(&frame).await?;
                }
                Next::Close(reason) => {
                    let reason = &reason.as_bytes()[..reason.len().min(MAX_CLOSE_REASON)];
                    // MAX_CLOSE_REASON < 2^16: fits in the marker's low bits.
                    let header = marker(CLOSE | reason.len() as u32);
                    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                        w.write_all(&header).await?;
                        w.write_all(reason).await?;
                        w.flush().await?;
                        w.shutdown().await
                    })
                    .await;
                    return Ok::<_, io::Error>(Some(String::from_utf8_lossy(reason).into_owned()));
                }
                Next::Idle => {
                    w.flush().await?;
                    tokio::select! {
                        _ = shared.wake_writer.notified() => {}
                        _ = tokio::time::sleep(KEEP_ALIVE) => w.write_all(&marker(PING)).await?,
                    }
                }
            }
        }
    };
    tokio::select! {
        result = body => {
            let error = match result {
                Ok(Some(reason)) => TransportError::ClosedLocally { reason },
                Ok(None) => TransportError::ClosedLocally { reason: String::new() },
                Err(e) => io_lost("write failed", &e),
            };
            shared.fail(error);
        }
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
}

/// Reads `buf` full, failing after [`IDLE_TIMEOUT`] without any byte.
async fn read_idle<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), TransportError> {
    let mut filled = 0;
    while filled < buf.len() {
        match tokio::time::timeout(IDLE_TIMEOUT, r.read(&mut buf[filled..])).await {
            Err(_) => {
                return Err(TransportError::Lost {
                    reason: format!("nothing from the peer for {IDLE_TIMEOUT:?} (idle timeout)"),
                })
            }
            Ok(Ok(0)) => {
                return Err(TransportError::Lost {
                    reason: "the peer closed the TCP connection".to_owned(),
                })
            }
            Ok(Ok(n)) => filled += n,
            Ok(Err(e)) => return Err(io_lost("read failed", &e)),
        }
    }
    Ok(())
}

/// Reads a frame of `len` bytes, the buffer growing as data arrives.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Bytes, TransportError> {
    let mut frame: Vec<u8> = Vec::new();
    while frame.len() < len {
        let filled = frame.len();
        let step = (len - filled).min(IO_BUFFER.max(filled));
        super::quic::reserve_doubling(&mut frame, step, len);
        frame.resize(filled + step, 0);
        read_idle(r, &mut frame[filled..]).await?;
    }
    Ok(Bytes::from(frame))
}

/// Reads frames into the lane queues until the connection ends, then reports why.
async fn read_loop<R: AsyncRead + Unpin>(read: R, shared: Arc<Shared>, inbox: InboxTx) {
    let mut stop = shared.stop.subscribe();
    let mut r = BufReader::with_capacity(IO_BUFFER, read);
    let mut lanes: Vec<Option<LaneTx>> = vec![None; usize::from(MAX_LANES)];
    let body = async {
        loop {
            let mut header = [0u8; 5];
            read_idle(&mut r, &mut header).await?;
            let lane = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len & CLOSE != 0 {
                let n = (len & 0xffff) as usize;
                if n > MAX_CLOSE_REASON {
                    return Err(TransportError::Protocol {
                        reason: format!("close reason of {n} bytes"),
                    });
                }
                let mut reason = vec![0u8; n];
                read_idle(&mut r, &mut reason).await?;
                return Err(TransportError::Closed {
                    reason: String::from_utf8_lossy(&reason).into_owned(),
                });
            }
            if len & (READY | PING) != 0 {
                continue;
            }
            let len = len as usize;
            if len > MAX_FRAME {
                return Err(TransportError::Protocol {
                    reason: format!(
                        "frame of {len} bytes on lane {lane} exceeds the limit of {MAX_FRAME}"
                    ),
                });
            }
            let Some(slot) = lanes.get_mut(usize::from(lane)) else {
                return Err(TransportError::Protocol {
                    reason: format!("lane {lane} is beyond the limit of {MAX_LANES} lanes"),
                });
            };
            let tx = match slot {
                Some(tx) => tx,
                None => slot.insert(inbox.lane(lane).ok_or_else(|| TransportError::Protocol {
                    reason: format!("lane {lane} is beyond the limit of {MAX_LANES} lanes"),
                })?),
            };
            // Room in the lane first: what is being read counts against its budget.
            let permit = tx.reserve(len).await;
            let frame = read_frame(&mut r, len).await?;
            // A dropped receiver discards frames; keep reading so the link stays sane.
            if let Some(permit) = permit {
                tx.send(frame, permit).await;
            }
        }
    };
    let error = tokio::select! {
        result = body => match result {
            Err(e) => e,
            Ok::<(), TransportError>(()) => TransportError::Lost { reason: String::new() },
        },
        _ = stop.wait_for(|stopped| *stopped) => TransportError::Lost {
            reason: "stopped".to_owned(),
        },
    };
    let error = shared.fail(error);
    if matches!(error, TransportError::Protocol { .. }) {
        tracing::warn!("bridge: {error}");
    }
    inbox.close(error);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_takes_the_lowest_lane_first() {
        let shared = Shared::new();
        let mut state = shared.lock();
        state.push(200, Bytes::from_static(b"c"));
        state.push(3, Bytes::from_static(b"b1"));
        state.push(3, Bytes::from_static(b"b2"));
        state.push(0, Bytes::from_static(b"a"));
        assert_eq!(state.queued[3], 4);
        let order: Vec<(u8, Bytes)> = std::iter::from_fn(|| state.pop()).collect();
        assert_eq!(
            order,
            vec![
                (0, Bytes::from_static(b"a")),
                (3, Bytes::from_static(b"b1")),
                (3, Bytes::from_static(b"b2")),
                (200, Bytes::from_static(b"c")),
            ]
        );
        assert_eq!(state.queued[3], 0);
        assert_eq!(state.nonempty, [0; 4]);
    }
}
