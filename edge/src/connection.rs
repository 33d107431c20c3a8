//! The connection driver: moves bytes between one client stream and the broker.
//!
//! Generic over any `AsyncRead + AsyncWrite` stream, so TCP, TLS and WebSocket
//! listeners share it. The reader half decodes every complete packet in its buffer and
//! hands the batch to the broker in one lock acquisition; the writer task drains its
//! queue into one buffer and writes it with one syscall. The driver owns the
//! connection's life: whatever ends it, it reports `handle_closed` exactly once.
//!
//! An idle connection holds no buffers: on transports where a read with no room waits
//! for input (plain TCP), a quiet reader (in its first `SETUP_READS` reads, or after a
//! pause of `QUIET_GAP` before its last read) waits that way and takes its read buffer
//! only once bytes are there; the writer releases its buffers once its queue is empty.
//!
//! When a packet pushes some connection's queue above its high-water mark, the reader
//! stops feeding its batch and waits (at most `THROTTLE_WAIT`) for that queue to
//! drain, so a publisher is slowed to the pace of its subscribers rather than flooding
//! them; a queue that does not drain in time counts as stalled and is no longer waited
//! for (see `server.rs` for the limits).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tern_core::mqtt::codec::{self, DecodeError};
use tern_core::mqtt::packet::{Packet, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::listener::ConnInfo;
use crate::outgoing::Outgoing;
use crate::server::{ConnHandle, Server, Throttle};

/// Smallest and largest room offered to one read. The size adapts to the traffic:
/// an idle device costs a small buffer, a bulk publisher gets large reads (and so
/// large batches).
const READ_MIN: usize = 1024;
const READ_MAX: usize = 64 * 1024;

/// Once the write buffer holds this much, it is written even if more packets wait.
const WRITE_BATCH: usize = 64 * 1024;

/// Longest a reader waits, per batch, for congested connections to drain.
const THROTTLE_WAIT: Duration = Duration::from_millis(250);

/// How long a connection we closed is read and discarded, waiting for the client to
/// close its side too.
const LINGER: Duration = Duration::from_millis(500);

/// A read this long after the one before marks the connection quiet: it then waits for
/// its next input without buffers. A busier one keeps them, rather than allocating a
/// read buffer and a batch for every read.
const QUIET_GAP: Duration = Duration::from_secs(1);

/// A connection's first reads (CONNECT, SUBSCRIBEs: a device's setup, often followed
/// by silence until its next keep-alive) count as quiet too.
const SETUP_READS: u32 = 8;

/// How long a closing connection's writer may take to flush before it is cut off.
const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// Encoding used before CONNECT told us the client's version (e.g. for the CONNACK
/// refusing an unsupported protocol level).
const FALLBACK_VERSION: ProtocolVersion = ProtocolVersion::V311;

/// Why the read side stopped.
enum End {
    /// The client closed its side.
    Eof,
    /// Reading failed.
    ReadError(std::io::Error),
    /// The bytes could not be decoded; the broker has been told.
    DecodeError(DecodeError),
    /// The writer finished: the broker closed the connection, a write failed, or the
    /// client was too slow.
    WriterDone,
    /// The server is shutting down.
    Shutdown,
}

/// Serves one client connection until it ends. `peer` is for log lines and login
/// limits; `info` is what the transport's handshake learned (client certificate).
/// `empty_read_waits`: a read with no room waits for input on this stream (see
/// `Transport::EMPTY_READ_WAITS`), so an idle connection can hold no read buffer.
pub(crate) async fn drive<S>(
    server: Server,
    stream: S,
    peer: SocketAddr,
    info: ConnInfo,
    empty_read_waits: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let limits = server.limits();
    let outgoing = Arc::new(Outgoing::new(limits.capacity));
    let version = Arc::new(OnceLock::new());
    let conn = server.open(ConnHandle::new(outgoing.clone(), peer, info));
    tracing::debug!(conn = conn.0, %peer, "connection opened");

    let writer_task = write_loop(writer, outgoing, version.clone(), limits.high_water);
    let mut writer = tokio::spawn(writer_task);
    let mut writer_done = false;
    let mut shutdown = server.shutdown_signal();
    let max_size = server.max_packet_size();
    let mut buf = BytesMut::new();
    let mut read_size = READ_MIN;
    let mut reads: u32 = 0;
    let mut last_read: Option<std::time::Instant> = None;
    let mut quiet = true;
    let mut protocol: Option<ProtocolVersion> = None;
    let mut batch: VecDeque<Packet> = VecDeque::new();
    let mut congested = Vec::new();

    let end = loop {
        // Between packets, a quiet connection gives its buffers back: most devices send
        // a packet now and then, and thousands of them would otherwise each pin a read
        // buffer and a batch. A busy one keeps them.
        let idle = quiet && buf.is_empty() && read_size == READ_MIN && empty_read_waits;
        if idle || (buf.is_empty() && buf.capacity() > 4 * read_size) {
            buf = BytesMut::new(); // Also lets a burst's large buffer go.
        }
        if idle {
            batch = VecDeque::new();
        }
        tokio::select! {
            read = read_some(&mut reader, &mut buf, read_size, idle) => match read {
                Ok(0) => break End::Eof,
                Ok(n) => {
                    read_size = next_read_size(read_size, n);
                    let now = std::time::Instant::now();
                    reads = reads.saturating_add(1);
                    quiet = reads < SETUP_READS
                        || last_read.is_some_and(|at| now.duration_since(at) >= QUIET_GAP);
                    last_read = Some(now);
                    let mut error =
                        decode_all(&mut buf, &mut protocol, &version, max_size, &mut batch);
                    let failed = error.clone();
                    // Feed the batch, pausing whenever it congests a connection or
                    // backs up a subscriber's session queue.
                    while !batch.is_empty() || error.is_some() {
                        let throttle = server.input(conn, &mut batch, &mut error, &mut congested);
                        if !congested.is_empty() {
                            let deadline = tokio::time::Instant::now() + THROTTLE_WAIT;
                            for other in congested.drain(..) {
                                other.drained(limits.high_water, deadline).await;
                            }
                        }
                        if throttle == Throttle::Backlog {
                            server.backlog_cleared().await;
                        }
                    }
                    if let Some(error) = failed {
                        break End::DecodeError(error);
                    }
                }
                Err(error) => break End::ReadError(error),
            },
            result = &mut writer, if !writer_done => {
                writer_done = true;
                if let Err(error) = result {
                    tracing::error!(conn = conn.0, %peer, %error, "connection writer failed");
                }
                break End::WriterDone;
            }
            _ = crate::server::stopped(&mut shutdown) => break End::Shutdown,
        }
    };
    match &end {
        End::Eof => tracing::debug!(conn = conn.0, %peer, "connection closed by the client"),
        End::ReadError(error) => {
            tracing::debug!(conn = conn.0, %peer, %error, "connection read failed")
        }
        End::DecodeError(error) => {
            tracing::info!(conn = conn.0, %peer, %error, "closing connection: undecodable input")
        }
        End::WriterDone => tracing::debug!(conn = conn.0, %peer, "connection closed"),
        End::Shutdown => tracing::debug!(conn = conn.0, %peer, "closing connection: shutdown"),
    }

    // Exactly once: this also closes the writer's queue, so the writer flushes what is
    // queued and closes.
    server.closed(conn);
    if !writer_done {
        match tokio::time::timeout(FLUSH_GRACE, &mut writer).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(conn = conn.0, %peer, %error, "connection writer failed")
            }
            Err(_) => {
                tracing::debug!(conn = conn.0, %peer, "client did not take its last packets");
                writer.abort();
            }
        }
    }
    let stopping = *shutdown.borrow();
    if matches!(end, End::DecodeError(_) | End::WriterDone) && !stopping {
        // We closed first, perhaps with input still unread: closing a socket with unread
        // input sends RST, which can destroy our last packets (the DISCONNECT saying
        // why) before the client reads them. Read and discard until the client closes
        // (not at shutdown, which must be quick).
        // On the heap: an array here would enlarge every connection's task, all its life.
        let mut sink = vec![0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(1..) = reader.read(&mut sink).await {}
        })
        .await;
    }
}

/// Reads into `buf`, offering it room for `size` more bytes. With `wait_first`, waits
/// for input before taking that room (`buf` is then empty and unallocated): a read with
/// no room completes once the stream is readable, reading nothing.
async fn read_some<R>(
    reader: &mut R,
    buf: &mut BytesMut,
    size: usize,
    wait_first: bool,
) -> std::io::Result<usize>
where
    R: AsyncRead + Unpin,
{
    if !wait_first {
        buf.reserve(size);
        return reader.read_buf(buf).await;
    }
    loop {
        let nothing = reader.read(&mut []).await?;
        debug_assert_eq!(nothing, 0);
        buf.reserve(size);
        // Readiness can be spurious (a new socket starts out readable): read only if
        // bytes are there; if not, give the buffer back and wait again.
        if let Some(read) = reader.read_buf(buf).now_or_never() {
            return read;
        }
        *buf = BytesMut::new();
    }
}

/// Doubles the read size after a read that filled it, halves it after one that used
/// less than a quarter, within `READ_MIN..=READ_MAX`.
fn next_read_size(size: usize, read: usize) -> usize {
    if read >= size {
        (size * 2).min(READ_MAX)
    } else if read < size / 4 {
        (size / 2).max(READ_MIN)
    } else {
        size
    }
}

/// Decodes every complete packet in `buf` into `batch`. Returns the decode error that
/// stopped it, if any (the packets before it are in `batch`).
fn decode_all(
    buf: &mut BytesMut,
    protocol: &mut Option<ProtocolVersion>,
    version: &OnceLock<ProtocolVersion>,
    max_size: usize,
    batch: &mut VecDeque<Packet>,
) -> Option<DecodeError> {
    loop {
        match codec::decode(buf, *protocol, max_size) {
            Ok(Some(packet)) => {
                if protocol.is_none() {
                    if let Packet::Connect(connect) = &packet {
                        *protocol = Some(connect.protocol);
                        // The writer encodes with it from the CONNACK on.
                        let _ = version.set(connect.protocol);
                    }
                }
                batch.push_back(packet);
            }
            Ok(None) => return None,
            Err(error) => return Some(error),
        }
    }
}

/// Writes queued packets until the queue is closed (then flushes and shuts the stream
/// down), a write fails, or the queue is killed. After each write it wakes producers
/// waiting for the queue to drain.
async fn write_loop<W>(
    mut writer: W,
    queue: Arc<Outgoing>,
    version: Arc<OnceLock<ProtocolVersion>>,
    high_water: usize,
) where
    W: AsyncWrite + Unpin,
{
    /// Marks the writer gone however the task ends (even when aborted).
    struct Gone(Arc<Outgoing>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.writer_gone();
        }
    }
    let _gone = Gone(queue.clone());

    // Both are allocated for a burst and released once the queue is empty, so idle
    // clients hold no buffers.
    let mut packets = VecDeque::new();
    let mut out = BytesMut::new();
    while queue.take_all(&mut packets).await {
        while !packets.is_empty() {
            encode_some(&mut packets, &version, &mut out);
            // TLS and WebSocket streams buffer what is written until flushed.
            let written = tokio::select! {
                written = async {
                    writer.write_all(&out).await?;
                    writer.flush().await
                } => written,
                _ = queue.killed() => return,
            };
            if let Err(error) = written {
                tracing::debug!(%error, "connection write failed");
                return;
            }
            out.clear();
        }
        queue.wrote(high_water);
        if queue.len() == 0 {
            packets = VecDeque::new();
            out = BytesMut::new();
        }
    }
    if !queue.is_killed() {
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    }
}

/// Encodes packets from the front of `packets` into `out` until it holds
/// `WRITE_BATCH` bytes or `packets` is empty. Not async on purpose: a packet held
/// across the writer's await would enlarge every connection's writer task.
fn encode_some(
    packets: &mut VecDeque<Packet>,
    version: &OnceLock<ProtocolVersion>,
    out: &mut BytesMut,
) {
    let version = version.get().copied().unwrap_or(FALLBACK_VERSION);
    while out.len() < WRITE_BATCH {
        let Some(packet) = packets.pop_front() else {
            return;
        };
        codec::encode(&packet, version, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_until_input_comes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let stream = crate::listener::TcpConn::new(accepted);
        let (mut reader, _writer) = tokio::io::split(stream);
        let mut buf = BytesMut::new();

        let waiting = read_some(&mut reader, &mut buf, READ_MIN, true).now_or_never();
        assert!(waiting.is_none(), "no input yet");
        assert_eq!(buf.capacity(), 0, "waiting without a buffer");

        client.write_all(b"\xc0\x00").await.expect("write"); // PINGREQ
        let n = read_some(&mut reader, &mut buf, READ_MIN, true)
            .await
            .expect("read");
        assert_eq!((n, &buf[..]), (2, &b"\xc0\x00"[..]));
    }

    #[test]
    fn a_burst_is_encoded_in_write_batches() {
        let version = OnceLock::new();
        let publish = |size| {
            Packet::Publish(tern_core::mqtt::packet::Publish {
                dup: false,
                qos: tern_core::message::QoS::AtMostOnce,
                retain: false,
                topic: "t".into(),
                packet_id: None,
                properties: Default::default(),
                payload: bytes::Bytes::from(vec![0u8; size]),
            })
        };
        let mut packets: VecDeque<Packet> = (0..3).map(|_| publish(WRITE_BATCH / 2)).collect();
        let mut out = BytesMut::new();
        encode_some(&mut packets, &version, &mut out);
        assert_eq!(packets.len(), 1, "stops once a batch is full");
        assert!(out.len() >= WRITE_BATCH);
        out.clear();
        encode_some(&mut packets, &version, &mut out);
        assert!(packets.is_empty());
        assert!(out.len() > WRITE_BATCH / 2 && out.len() < WRITE_BATCH);
    }
}
