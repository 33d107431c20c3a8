//! Plain MQTT over TCP (`mqtt://`, port 1883 by default).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

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
    type Stream = TcpStream;

    // tokio's TcpStream waits for readiness before every read, an empty one included
    // (`connection::tests::an_idle_reader_holds_no_buffer_until_input_comes` checks it).
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
    ) -> impl Future<Output = io::Result<(TcpStream, ConnInfo)>> + Send + 'static {
        std::future::ready(Ok((accepted, ConnInfo::default())))
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
