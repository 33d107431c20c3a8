//! MQTT over WebSocket (`ws://`, port 8083 by default) and over WebSocket over TLS
//! (`wss://`, port 8084), on tokio-tungstenite (TLS is ours, see `tls.rs`).
//!
//! The HTTP upgrade must ask for the configured path (`/mqtt`; anything else gets
//! 404). The subprotocol `mqtt` is selected when offered (`mqttv3.1`, which old
//! clients send, is accepted too); a client that offers subprotocols but neither of
//! those gets 400. A client that offers none is let in (some embedded clients omit
//! the header). Messages larger than `max_packet_size` plus some room are refused by
//! tungstenite; the MQTT decoder applies the real packet limit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::ws_stream::WsStream;
use super::{ConnInfo, Transport};

/// Subprotocols we speak, preferred first.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Room beyond `max_packet_size` for one WebSocket message (it may also carry the
/// start of the next packet).
const MESSAGE_SLACK: usize = 64 * 1024;

/// Read buffer of each WebSocket connection (tungstenite's default, 128 KiB, would
/// cost that much per idle client).
const READ_BUFFER: usize = 4 * 1024;

/// Either side of a WebSocket listener: plain TCP or TLS.
pub(crate) enum WsInner {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A bound WebSocket listening socket, with TLS for `wss://`.
pub(crate) struct WsTransport {
    listener: TcpListener,
    /// The acceptor and `use_identity_as_username`, for `wss://`.
    tls: Option<(TlsAcceptor, bool)>,
    path: Arc<str>,
    config: WebSocketConfig,
}

impl WsTransport {
    /// Binds `addr`; `tls` makes it `wss://`. `max_packet_size` bounds messages.
    pub(crate) async fn bind(
        addr: SocketAddr,
        tls: Option<(TlsAcceptor, bool)>,
        path: &str,
        max_packet_size: usize,
    ) -> io::Result<Self> {
        let max_message = max_packet_size.saturating_add(MESSAGE_SLACK);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Each write of the driver is a whole batch: send it at once.
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        Ok(WsTransport {
            listener: TcpListener::bind(addr).await?,
            tls,
            path: Arc::from(path),
            config,
        })
    }
}

impl Transport for WsTransport {
    type Accepted = TcpStream;
    type Stream = WsStream<WsInner>;

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        super::tcp::accept_tcp(&self.listener).await
    }

    fn upgrade(
        &self,
        accepted: TcpStream,
    ) -> impl Future<Output = io::Result<(Self::Stream, ConnInfo)>> + Send + 'static {
        let tls = self.tls.clone();
        let path = self.path.clone();
        let config = self.config;
        async move {
            let (inner, info) = match tls {
                None => (WsInner::Plain(accepted), ConnInfo::default()),
                Some((acceptor, cert_as_username)) => {
                    let (stream, info) =
                        super::tls::handshake(acceptor, accepted, cert_as_username).await?;
                    (WsInner::Tls(Box::new(stream)), info)
                }
            };
            #[allow(clippy::result_large_err)] // The error type is tungstenite's.
            let callback = move |request: &Request, response: Response| {
                check_request(request, response, &path)
            };
            let ws = tokio_tungstenite::accept_hdr_async_with_config(inner, callback, Some(config))
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok((WsStream::new(ws), info))
        }
    }
}

/// Checks the upgrade request's path and picks the subprotocol.
#[allow(clippy::result_large_err)] // The error type is tungstenite's.
fn check_request(
    request: &Request,
    mut response: Response,
    path: &str,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut error = ErrorResponse::new(Some(why.to_owned()));
        *error.status_mut() = status;
        error
    };
    if request.uri().path() != path {
        return Err(refuse(StatusCode::NOT_FOUND, "no MQTT endpoint here"));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    match SUBPROTOCOLS
        .iter()
        .find(|ours| offered.iter().any(|p| p.eq_ignore_ascii_case(ours)))
    {
        Some(chosen) => {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
            Ok(response)
        }
        None => Err(refuse(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol must be `mqtt`",
        )),
    }
}

impl AsyncRead for WsInner {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            WsInner::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            WsInner::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WsInner {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            WsInner::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            WsInner::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            WsInner::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            WsInner::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            WsInner::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            WsInner::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(path);
        if let Some(p) = protocols {
            builder = builder.header("Sec-WebSocket-Protocol", p);
        }
        builder.body(()).expect("request")
    }

    fn chosen(r: &Response) -> Option<&str> {
        r.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn path_and_subprotocol() {
        let ok = check_request(
            &request("/mqtt", Some("mqtt")),
            Response::default(),
            "/mqtt",
        )
        .expect("accepted");
        assert_eq!(chosen(&ok), Some("mqtt"));
        let ok = check_request(
            &request("/mqtt", Some("foo, mqttv3.1")),
            Response::default(),
            "/mqtt",
        )
        .expect("accepted");
        assert_eq!(chosen(&ok), Some("mqttv3.1"));
        let ok =
            check_request(&request("/mqtt", None), Response::default(), "/mqtt").expect("accepted");
        assert_eq!(chosen(&ok), None);
        let err = check_request(
            &request("/other", Some("mqtt")),
            Response::default(),
            "/mqtt",
        )
        .expect_err("wrong path");
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        let err = check_request(
            &request("/mqtt", Some("chat")),
            Response::default(),
            "/mqtt",
        )
        .expect_err("wrong subprotocol");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
