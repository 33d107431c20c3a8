//! A WebSocket connection as a byte stream (`AsyncRead + AsyncWrite`), for the
//! generic connection driver.
//!
//! MQTT over WebSocket sends the MQTT byte stream in binary messages; a message may
//! carry several packets or part of one, so reading simply concatenates the payloads
//! of binary messages. Every write becomes one binary message (the driver writes
//! whole batches of packets). Pings are answered by tungstenite; a close frame or
//! the end of the connection reads as end of file; a text message is an error (MQTT
//! over WebSocket is binary only).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket stream read and written as bytes.
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary message read.
    pending: Bytes,
    /// A close frame was read, or the connection ended.
    eof: bool,
}

impl<S> WsStream<S> {
    /// Wraps an accepted WebSocket.
    pub(crate) fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
            eof: false,
        }
    }
}

/// A tungstenite error as an I/O error; a closed connection is `None` (end of file).
fn to_io(error: WsError) -> Option<io::Error> {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => None,
        WsError::Io(e) => Some(e),
        other => Some(io::Error::new(io::ErrorKind::InvalidData, other)),
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT over WebSocket uses binary messages",
                    )))
                }
                Some(Err(error)) => match to_io(error) {
                    None => this.eof = true,
                    Some(error) => return Poll::Ready(Err(error)),
                },
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let inner = Pin::new(&mut self.inner);
        let closed = || io::Error::from(io::ErrorKind::BrokenPipe);
        if let Err(error) = ready!(Sink::<Message>::poll_ready(inner, cx)) {
            return Poll::Ready(Err(to_io(error).unwrap_or_else(closed)));
        }
        let message = Message::Binary(Bytes::copy_from_slice(buf));
        match Pin::new(&mut self.inner).start_send(message) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(error) => Poll::Ready(Err(to_io(error).unwrap_or_else(closed))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Sink::<Message>::poll_flush(Pin::new(&mut self.inner), cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(to_io(error).map_or(Ok(()), Err)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sends a close frame and flushes it.
        match ready!(Sink::<Message>::poll_close(Pin::new(&mut self.inner), cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(to_io(error).map_or(Ok(()), Err)),
        }
    }
}
