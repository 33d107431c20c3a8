//! MQTT over TLS (`mqtts://`, port 8883 by default), on rustls with the `ring`
//! provider (pure Rust; no OpenSSL, no aws-lc).
//!
//! The server certificate chain and key come from PEM files. With `client_ca` set,
//! clients may present a certificate signed by one of those CAs (one from another CA
//! fails the handshake); with `require_client_cert`, they must. The identity of a
//! verified client certificate (its subject CN, else its first DNS name) is handed to
//! the broker for ACL rules on `certificate`, and as the user name when the listener
//! has `use_identity_as_username`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{ConnInfo, Transport};
use crate::config::TlsListenerConfig;

/// The rustls configuration of a TLS listener, from its PEM files. `section` names the
/// configuration section in errors (`listeners.tls`).
pub(crate) fn acceptor(tls: &TlsListenerConfig, section: &str) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&tls.cert).map_err(|e| format!("`{section}.cert`: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        format!(
            "`{section}.key`: no usable private key in {}: {e}",
            tls.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("`{section}`: {e}"))?;
    let builder = if tls.client_ca.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&tls.client_ca).map_err(|e| format!("`{section}.client_ca`: {e}"))? {
            roots
                .add(cert)
                .map_err(|e| format!("`{section}.client_ca`: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if tls.require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(
            verifier
                .build()
                .map_err(|e| format!("`{section}.client_ca`: {e}"))?,
        )
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("`{section}.cert` / `{section}.key`: certificate and key do not fit: {e}")
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate in the PEM file at `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The identity of the connection's verified client certificate, if it sent one.
fn peer_identity(conn: &ServerConnection) -> Option<String> {
    let der = conn.peer_certificates()?.first()?;
    certificate_identity(der)
}

/// A certificate's subject CN, else its first DNS subject alternative name.
pub(crate) fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}

/// Completes the TLS handshake on `tcp`, with the client's identity.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    cert_as_username: bool,
) -> io::Result<(TlsStream<TcpStream>, ConnInfo)> {
    let stream = acceptor.accept(tcp).await?;
    let certificate = peer_identity(stream.get_ref().1);
    Ok((
        stream,
        ConnInfo {
            certificate,
            cert_as_username,
        },
    ))
}

/// A bound TLS listening socket.
pub(crate) struct TlsTransport {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cert_as_username: bool,
}

impl TlsTransport {
    /// Binds `addr`; `cert_as_username`: take user names from client certificates.
    pub(crate) async fn bind(
        addr: SocketAddr,
        acceptor: TlsAcceptor,
        cert_as_username: bool,
    ) -> io::Result<Self> {
        Ok(TlsTransport {
            listener: TcpListener::bind(addr).await?,
            acceptor,
            cert_as_username,
        })
    }
}

impl Transport for TlsTransport {
    type Accepted = TcpStream;
    type Stream = TlsStream<TcpStream>;

    fn scheme(&self) -> &'static str {
        "mqtts"
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
        handshake(self.acceptor.clone(), accepted, self.cert_as_username)
    }
}
