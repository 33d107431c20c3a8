//! Plain MQTT over TCP (`mqtt://`, port 1883 by default).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{ConnInfo, Transport};

/// A bound TCP listening socket.
pub(crate) struct TcpTransport {
    listener: TcpListener,
}

impl TcpTransport {
    /// Binds `addr` (port 0 picks a free port).
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(TcpTransport {
            listener: TcpListener::bind(addr).await?,
        })
    }
}

impl Transport for TcpTransport {
    type Accepted = TcpStream;
    type Stream = TcpConn;

    // See `TcpConn`.
    const EMPTY_READ_WAITS: bool = true;

    fn scheme(&self) -> &'static str {
        "mqtt"
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        accept_tcp(&self.listener).await
    }

    fn upgrade(
        &self,
        accepted: TcpStream,
    ) -> impl Future<Output = io::Result<(TcpConn, ConnInfo)>> + Send + 'static {
        std::future::ready(Ok((TcpConn::new(accepted), ConnInfo::default())))
    }
}

/// A client's TCP stream. A read with no room waits until the socket is readable and
/// reads nothing, without a system call: that is how an idle connection waits without
/// a read buffer (see `connection.rs`). Readiness may be spurious (a new socket starts
/// out readable). Everything else is the plain stream.
pub(crate) struct TcpConn(TcpStream);

impl TcpConn {
    /// Wraps an accepted stream.
    pub(crate) fn new(stream: TcpStream) -> Self {
        TcpConn(stream)
    }
}

impl AsyncRead for TcpConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            // Readiness may be spurious; the read that follows then simply waits.
            return self.0.poll_read_ready(cx);
        }
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Accepts the next TCP connection, with `TCP_NODELAY` set (shared by every transport).
pub(super) async fn accept_tcp(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    // Small packets (acks, pings) must not wait for Nagle's algorithm.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn an_empty_read_waits_for_input_and_consumes_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = accept_tcp(&listener).await.expect("accept");
        let mut conn = TcpConn::new(accepted);
        // A new socket starts out readable; a read that finds nothing clears that.
        assert!(conn.read(&mut [0u8; 8]).now_or_never().is_none());

        assert!(conn.read(&mut []).now_or_never().is_none(), "no input yet");
        client.write_all(b"hello").await.expect("write");
        assert_eq!(conn.read(&mut []).await.expect("readable"), 0);
        let mut buf = [0u8; 8];
        let n = conn.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"hello");

        conn.write_all(b"back").await.expect("write");
        let n = client.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"back");
    }
}
