//! The connection driver: moves bytes between one client stream and the broker.
//!
//! Generic over any `AsyncRead + AsyncWrite` stream, so TCP, TLS and WebSocket
//! listeners share it. The reader half decodes every complete packet in its buffer and
//! hands the batch to the broker in one lock acquisition; the writer task drains its
//! queue into one buffer and writes it with one syscall. The driver owns the
//! connection's life: whatever ends it, it reports `handle_closed` exactly once.
//!
//! When a batch pushed some connection's queue above its high-water mark, the reader
//! waits (at most `THROTTLE_WAIT`) for that queue to drain before reading on, so a
//! publisher is slowed to the pace of its subscribers rather than flooding them (see
//! `server.rs` for the limits).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tern_core::mqtt::codec::{self, DecodeError};
use tern_core::mqtt::packet::{Packet, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::server::{ConnHandle, Flow, Server};

/// Bytes reserved in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Once the write buffer holds this much, it is written even if more packets wait.
const WRITE_BATCH: usize = 64 * 1024;

/// A write buffer that grew past this (a large packet) is released after the write.
const WRITE_BUFFER_KEEP: usize = 256 * 1024;

/// Longest a reader waits, per batch, for congested connections to drain.
const THROTTLE_WAIT: Duration = Duration::from_millis(250);

/// How long a connection we closed is read and discarded, waiting for the client to
/// close its side too.
const LINGER: Duration = Duration::from_millis(500);

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

/// Serves one client connection until it ends. `peer` is for log lines.
pub(crate) async fn drive<S>(server: Server, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let limits = server.limits();
    let (outgoing, queue) = mpsc::channel(limits.capacity);
    let flow = Arc::new(Flow::default());
    let version = Arc::new(OnceLock::new());
    let conn = server.open(ConnHandle::new(outgoing, flow.clone(), peer));
    tracing::debug!(conn = conn.0, %peer, "connection opened");

    let writer_task = write_loop(writer, queue, version.clone(), flow, limits.high_water);
    let mut writer = tokio::spawn(writer_task);
    let mut writer_done = false;
    let mut shutdown = server.shutdown_signal();
    let max_size = server.max_packet_size();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut protocol: Option<ProtocolVersion> = None;
    let mut batch: Vec<Packet> = Vec::new();
    let mut congested = Vec::new();

    let end = loop {
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break End::Eof,
                Ok(_) => {
                    let error = decode_all(&mut buf, &mut protocol, &version, max_size, &mut batch);
                    if !batch.is_empty() || error.is_some() {
                        server.input(conn, batch.drain(..), error.as_ref(), &mut congested);
                    }
                    if let Some(error) = error {
                        break End::DecodeError(error);
                    }
                    if !congested.is_empty() {
                        let deadline = tokio::time::Instant::now() + THROTTLE_WAIT;
                        for other in congested.drain(..) {
                            other.drained(limits.high_water, deadline).await;
                        }
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

    // Exactly once: this also drops the writer's queue sender, so the writer flushes
    // what is queued and closes.
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
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(1..) = reader.read(&mut sink).await {}
        })
        .await;
    }
}

/// Decodes every complete packet in `buf` into `batch`. Returns the decode error that
/// stopped it, if any (the packets before it are in `batch`).
fn decode_all(
    buf: &mut BytesMut,
    protocol: &mut Option<ProtocolVersion>,
    version: &OnceLock<ProtocolVersion>,
    max_size: usize,
    batch: &mut Vec<Packet>,
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
                batch.push(packet);
            }
            Ok(None) => return None,
            Err(error) => return Some(error),
        }
    }
}

/// Writes queued packets until the queue is closed (then flushes and shuts the stream
/// down), a write fails, or `flow.kill` fires. After each write it wakes producers
/// waiting for the queue to drain.
async fn write_loop<W>(
    mut writer: W,
    mut queue: mpsc::Receiver<Packet>,
    version: Arc<OnceLock<ProtocolVersion>>,
    flow: Arc<Flow>,
    high_water: usize,
) where
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let first = tokio::select! {
            packet = queue.recv() => packet,
            _ = flow.kill.notified() => return,
        };
        let mut closing = false;
        match first {
            Some(packet) => encode(&packet, &version, &mut out),
            None => closing = true,
        }
        // Take everything already queued so a burst becomes one write.
        while !closing && out.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(packet) => encode(&packet, &version, &mut out),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closing = true,
            }
        }
        if !out.is_empty() {
            let written = tokio::select! {
                written = writer.write_all(&out) => written,
                _ = flow.kill.notified() => return,
            };
            if let Err(error) = written {
                tracing::debug!(%error, "connection write failed");
                return;
            }
            out.clear();
            if out.capacity() > WRITE_BUFFER_KEEP {
                out = BytesMut::with_capacity(READ_CHUNK);
            }
            if queue.len() <= high_water {
                flow.stalled.store(false, Ordering::Relaxed);
            }
            flow.drained.notify_waiters();
        }
        if closing {
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
            return;
        }
    }
}

fn encode(packet: &Packet, version: &OnceLock<ProtocolVersion>, out: &mut BytesMut) {
    let version = version.get().copied().unwrap_or(FALLBACK_VERSION);
    codec::encode(packet, version, out);
}
