//! The TLS side of the bridge transport: rustls configurations (ring provider only,
//! TLS 1.3, ALPN `tern-bridge/1`) for the gateway ([`ClientTls`]) and the cloud
//! ([`ServerTls`]), loaded from PEM files, and the words for certificate failures.
//!
//! The cloud requires a client certificate signed by the bridge CA and not listed in the
//! CRL (when one is configured); the gateway verifies the cloud's certificate against the
//! same CA and the endpoint's host name. One rustls configuration serves both QUIC (via
//! quinn's rustls adapter) and TLS over TCP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore};

use super::ALPN;

/// Why TLS material could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds bad PEM.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
    /// A certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    /// A key file holds no usable private key.
    #[error("no usable private key in {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
    /// The CA file holds a certificate rustls cannot use as a trust anchor.
    #[error("bad CA certificate in {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
    /// The CRL file is unusable.
    #[error("bad CRL in {path}: {reason}")]
    Crl {
        /// The file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
    /// Certificate and key do not fit together, or the configuration is refused.
    #[error("{cert} / {key}: {reason}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The error.
        reason: String,
    },
}

/// The gateway's TLS material: the CA that signs the cloud's certificate, and the
/// gateway's own certificate and key.
#[derive(Clone)]
pub struct ClientTls {
    pub(super) rustls: Arc<rustls::ClientConfig>,
    pub(super) quic: Arc<QuicClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Loads the CA (`ca`) and the gateway's certificate chain (`cert`) and key (`key`).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = read_roots(ca)?;
        let chain = read_certs(cert)?;
        let private = read_key(key)?;
        let config_err = |reason: String| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(|e| config_err(format!("certificate and key do not fit: {e}")))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let rustls = Arc::new(config);
        let quic = QuicClientConfig::try_from(rustls.clone())
            .map_err(|e| config_err(format!("unusable for QUIC: {e}")))?;
        Ok(ClientTls {
            rustls,
            quic: Arc::new(quic),
        })
    }
}

/// The cloud's TLS material: the CA that signs gateway certificates, the server's
/// certificate and key, and optionally the CRL of revoked gateways.
#[derive(Clone)]
pub struct ServerTls {
    pub(super) rustls: Arc<rustls::ServerConfig>,
    pub(super) quic: Arc<QuicServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Loads the CA (`ca`), the server's certificate chain (`cert`) and key (`key`), and
    /// the CRL (`crl`, PEM) if given. Gateways must present a certificate signed by the
    /// CA and not revoked.
    pub fn load(ca: &Path, cert: &Path, key: &Path, crl: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(read_roots(ca)?);
        let chain = read_certs(cert)?;
        let private = read_key(key)?;
        let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        if let Some(crl) = crl {
            verifier = verifier.with_crls(read_crls(crl)?);
        }
        let verifier = verifier.build().map_err(|e| match crl {
            Some(crl) => TlsError::Crl {
                path: crl.to_owned(),
                reason: e.to_string(),
            },
            None => TlsError::Ca {
                path: ca.to_owned(),
                reason: e.to_string(),
            },
        })?;
        let config_err = |reason: String| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_err(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private)
            .map_err(|e| config_err(format!("certificate and key do not fit: {e}")))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let rustls = Arc::new(config);
        let quic = QuicServerConfig::try_from(rustls.clone())
            .map_err(|e| config_err(format!("unusable for QUIC: {e}")))?;
        Ok(ServerTls {
            rustls,
            quic: Arc::new(quic),
        })
    }
}

/// The trust anchors in the PEM file at `path` (at least one).
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Every certificate in the PEM file at `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |reason: String| TlsError::Read {
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Every CRL in the PEM file at `path` (an empty file means none revoked).
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| TlsError::Crl {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Crl {
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })
}

/// The subject CN of a DER certificate, if it has one.
pub(super) fn certificate_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The CN of the first certificate of a peer chain.
pub(super) fn chain_cn(chain: &[CertificateDer<'_>]) -> Option<String> {
    certificate_cn(chain.first()?)
}

/// What a TLS alert about a certificate means, in words.
pub(super) fn describe_alert(alert: u8) -> String {
    let words = match AlertDescription::from(alert) {
        AlertDescription::UnknownCA => "not signed by the bridge CA (unknown CA)",
        AlertDescription::CertificateRevoked => "certificate revoked",
        AlertDescription::CertificateExpired => "certificate expired or not yet valid",
        AlertDescription::BadCertificate => "bad certificate",
        AlertDescription::UnsupportedCertificate => "unsupported certificate",
        AlertDescription::CertificateUnknown => "certificate not accepted",
        AlertDescription::CertificateRequired => "no certificate presented",
        AlertDescription::AccessDenied => "access denied",
        AlertDescription::DecryptError => "certificate signature does not verify",
        AlertDescription::NoApplicationProtocol => {
            "no common ALPN protocol (expected tern-bridge/1)"
        }
        AlertDescription::HandshakeFailure => "handshake failure",
        AlertDescription::ProtocolVersion => "unsupported TLS version (TLS 1.3 required)",
        other => return format!("TLS alert {other:?}"),
    };
    words.to_owned()
}

/// True when a TLS alert is about a certificate (as opposed to ALPN, versions, ...).
pub(super) fn is_certificate_alert(alert: u8) -> bool {
    matches!(
        AlertDescription::from(alert),
        AlertDescription::UnknownCA
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    )
}

/// What a local certificate verification error means, in words.
pub(super) fn describe_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "not signed by the bridge CA (unknown CA)".to_owned(),
        CertificateError::Revoked => "certificate revoked".to_owned(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("certificate expired ({e})")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("certificate not yet valid ({e})")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("certificate not valid for this server name ({e})")
        }
        CertificateError::BadSignature => "bad certificate signature".to_owned(),
        other => other.to_string(),
    }
}

/// A local rustls error seen during a handshake, classified.
pub(super) enum TlsFailure {
    /// The peer's certificate failed our verification (or none was sent).
    PeerCertificate(String),
    /// The peer sent an alert about our certificate.
    OurCertificate(String),
    /// Anything else.
    Other(String),
}

/// Classifies a rustls error from a handshake.
pub(super) fn classify(e: &rustls::Error) -> TlsFailure {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            TlsFailure::PeerCertificate(describe_certificate_error(c))
        }
        rustls::Error::NoCertificatesPresented => {
            TlsFailure::PeerCertificate("no certificate presented".to_owned())
        }
        rustls::Error::AlertReceived(alert) => {
            let code = u8::from(*alert);
            if is_certificate_alert(code) {
                TlsFailure::OurCertificate(describe_alert(code))
            } else {
                TlsFailure::Other(describe_alert(code))
            }
        }
        other => TlsFailure::Other(other.to_string()),
    }
}

/// Classifies a QUIC close caused by TLS: `alert` is the TLS alert code, `local` says
/// whether this side raised it (then `detail` is rustls' own message).
pub(super) fn classify_quic(alert: u8, local: bool, detail: &str) -> TlsFailure {
    if !is_certificate_alert(alert) {
        return TlsFailure::Other(format!("{} ({detail})", describe_alert(alert)));
    }
    let mut words = describe_alert(alert);
    if detail.contains("not valid for name") {
        // rustls sends a generic alert (bad_certificate) for this one.
        words = "certificate not valid for this server name".to_owned();
    }
    if local {
        // rustls' message names the precise check (e.g. the expiry dates).
        TlsFailure::PeerCertificate(format!("{words} ({detail})"))
    } else {
        TlsFailure::OurCertificate(words)
    }
}
