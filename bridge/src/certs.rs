//! The bridge's certificates (feature `server`), made with rcgen on ring: a private CA
//! for one cloud, the cloud's server certificate, one client certificate per gateway
//! (subject CN = gateway id), and the CRL of revoked gateways. All keys are ECDSA P-256.
//!
//! Layout of the certificate directory (what `tern-cloud certs ...` manages):
//! - `ca.pem`, `ca.key`: the CA; its key stays here and signs everything below.
//! - `server.pem`, `server.key`: the cloud's certificate, for the names given to [`init`]
//!   plus `localhost` and `127.0.0.1`.
//! - `crl.pem`: the revocation list, signed by the CA; [`init`] writes an empty one,
//!   [`revoke_gateway`] rewrites it (the cloud reads it when it starts).
//! - `gateways/<id>.pem`, `gateways/<id>.key`: a gateway's certificate and key, to copy
//!   to the gateway together with `ca.pem`.
//!
//! Keys are written with mode 0600. Nothing is ever overwritten, except a revoked
//! gateway's files when that gateway is issued again.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use x509_parser::pem::parse_x509_pem;
use x509_parser::time::ASN1Time;

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca.key";
/// The server certificate's file name.
pub const SERVER_CERT: &str = "server.pem";
/// The server key's file name.
pub const SERVER_KEY: &str = "server.key";
/// The CRL's file name.
pub const CRL: &str = "crl.pem";
/// The directory of gateway certificates.
pub const GATEWAYS: &str = "gateways";

/// Subject CN of a CA, before a random suffix that tells one cloud's CA from another's
/// (a certificate from a foreign CA is then refused as "unknown CA", not "bad signature").
const CA_NAME: &str = "Tern bridge CA";
/// Validity of the CA.
const CA_VALIDITY: Duration = Duration::from_secs(25 * 365 * 86_400);
/// Validity of server and gateway certificates.
const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How far back certificates start to be valid (clock skew between machines).
const BACKDATE: Duration = Duration::from_secs(3600);
/// Announced validity of a CRL (the cloud does not enforce it).
const CRL_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Longest gateway id.
const MAX_GATEWAY_ID: usize = 64;

/// Why a certificate operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The file exists and is not overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A file that should be there is not (e.g. no CA: run `certs init` first).
    #[error("{0} does not exist")]
    Missing(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A file holds something unusable.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The gateway id cannot be used (it names files and is the certificate's CN).
    #[error("bad gateway id `{id}`: {reason}")]
    BadGatewayId {
        /// The id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// `ca.key` does not belong to `ca.pem` (or `ca.pem` was not made by [`init`]).
    #[error("{0} does not match the CA key; was it replaced?")]
    CaMismatch(PathBuf),
    /// rcgen could not make a key, certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e.to_string())
    }
}

/// The files of a certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key` (mode 0600).
    pub ca_key: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key` (mode 0600).
    pub server_key: PathBuf,
    /// `crl.pem`.
    pub crl: PathBuf,
}

impl CertPaths {
    /// The conventional file names in `dir`.
    pub fn new(dir: &Path) -> Self {
        CertPaths {
            dir: dir.to_owned(),
            ca_cert: dir.join(CA_CERT),
            ca_key: dir.join(CA_KEY),
            server_cert: dir.join(SERVER_CERT),
            server_key: dir.join(SERVER_KEY),
            crl: dir.join(CRL),
        }
    }
}

/// A gateway's issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCert {
    /// The gateway id (the certificate's subject CN).
    pub gateway_id: String,
    /// `gateways/<id>.pem`.
    pub cert: PathBuf,
    /// `gateways/<id>.key` (mode 0600).
    pub key: PathBuf,
    /// The certificate's serial number, hex (what the CRL lists once revoked).
    pub serial: String,
}

/// Creates the CA, the server certificate (for `server_names` plus `localhost` and
/// `127.0.0.1`) and an empty CRL in `dir` (created if missing). Refuses if any of the
/// files exists.
pub fn init(dir: &Path, server_names: &[String]) -> Result<CertPaths, CertError> {
    let paths = CertPaths::new(dir);
    for path in [
        &paths.ca_cert,
        &paths.ca_key,
        &paths.server_cert,
        &paths.server_key,
        &paths.crl,
    ] {
        if path.exists() {
            return Err(CertError::Exists(path.clone()));
        }
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;

    let mut names: Vec<String> = Vec::new();
    for name in server_names
        .iter()
        .map(|n| n.trim().to_owned())
        .chain(["localhost".to_owned(), "127.0.0.1".to_owned()])
    {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }

    let now = now().to_datetime();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let ca_name = format!("{CA_NAME} {}", hex(&random_serial().to_bytes()[..4]));
    let mut ca_params = ca_params(&ca_name);
    ca_params.serial_number = Some(random_serial());
    ca_params.not_before = now - BACKDATE;
    ca_params.not_after = now + CA_VALIDITY;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_cert = params.signed_by(&server_key, &issuer)?;

    let crl = crl_pem(&issuer, 1, Vec::new())?;

    write_new(&paths.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&paths.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write_new(
        &paths.server_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&paths.server_cert, server_cert.pem().as_bytes(), 0o644)?;
    write_new(&paths.crl, crl.as_bytes(), 0o644)?;
    Ok(paths)
}

/// Issues a certificate and key for `gateway_id` (CN = id), signed by the CA in `dir`,
/// into `dir/gateways/`. Refuses if the gateway already has a certificate that is not
/// revoked.
pub fn issue_gateway(dir: &Path, gateway_id: &str) -> Result<GatewayCert, CertError> {
    issue(dir, gateway_id, None)
}

/// [`issue_gateway`], valid from `validity.0` to `validity.1` if given (tests make
/// expired certificates with it).
fn issue(
    dir: &Path,
    gateway_id: &str,
    validity: Option<(ASN1Time, ASN1Time)>,
) -> Result<GatewayCert, CertError> {
    check_gateway_id(gateway_id)?;
    let paths = CertPaths::new(dir);
    let ca_key = load_ca_key(&paths)?;
    let (ca_name, ca_subject) = ca_subject(&paths.ca_cert)?;
    let issuer = Issuer::new(ca_params(&ca_name), &ca_key);

    let gateways = dir.join(GATEWAYS);
    fs::create_dir_all(&gateways).map_err(|e| io_err(&gateways, e))?;
    let cert_path = gateways.join(format!("{gateway_id}.pem"));
    let key_path = gateways.join(format!("{gateway_id}.key"));
    let replace = if cert_path.exists() {
        let serial = certificate_serial(&cert_path)?;
        let (_, revoked) = read_crl(&paths.crl)?;
        if !revoked.iter().any(|(s, _)| *s == serial) {
            return Err(CertError::Exists(cert_path));
        }
        true
    } else {
        if key_path.exists() {
            return Err(CertError::Exists(key_path));
        }
        false
    };

    let now = now().to_datetime();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, gateway_id);
    let serial = random_serial();
    params.serial_number = Some(serial.clone());
    (params.not_before, params.not_after) = match validity {
        Some((from, until)) => (from.to_datetime(), until.to_datetime()),
        None => (now - BACKDATE, now + LEAF_VALIDITY),
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    if certificate_issuer(cert.der())? != ca_subject {
        return Err(CertError::CaMismatch(paths.ca_cert));
    }

    if replace {
        write_replace(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_replace(&cert_path, cert.pem().as_bytes(), 0o644)?;
    } else {
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    }
    Ok(GatewayCert {
        gateway_id: gateway_id.to_owned(),
        cert: cert_path,
        key: key_path,
        serial: hex(&serial.to_bytes()),
    })
}

/// Adds the certificate of `gateway_id` to the CRL in `dir` (rewritten, signed by the
/// CA, with a higher CRL number); returns the CRL's path. The cloud must reload its
/// TLS configuration (restart) to enforce it. Revoking twice is harmless.
pub fn revoke_gateway(dir: &Path, gateway_id: &str) -> Result<PathBuf, CertError> {
    check_gateway_id(gateway_id)?;
    let paths = CertPaths::new(dir);
    let ca_key = load_ca_key(&paths)?;
    let (ca_name, _) = ca_subject(&paths.ca_cert)?;
    let issuer = Issuer::new(ca_params(&ca_name), &ca_key);
    let cert_path = dir.join(GATEWAYS).join(format!("{gateway_id}.pem"));
    if !cert_path.exists() {
        return Err(CertError::Missing(cert_path));
    }
    let serial = certificate_serial(&cert_path)?;
    let (number, mut revoked) = if paths.crl.exists() {
        read_crl(&paths.crl)?
    } else {
        (0, Vec::new())
    };
    if !revoked.iter().any(|(s, _)| *s == serial) {
        revoked.push((serial, now()));
    }
    let entries = revoked
        .into_iter()
        .map(|(serial, time)| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: time.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let crl = crl_pem(&issuer, number.saturating_add(1), entries)?;
    write_replace(&paths.crl, crl.as_bytes(), 0o644)?;
    Ok(paths.crl)
}

/// The parameters of the CA named `name`; [`init`] signs the CA with them and later
/// calls rebuild the issuer from them and `ca.pem`'s CN (the issued certificates'
/// issuer name must match `ca.pem`'s subject byte for byte, which [`issue_gateway`]
/// checks).
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// A signed CRL in PEM.
fn crl_pem(
    issuer: &Issuer<'_, &KeyPair>,
    number: u64,
    revoked: Vec<RevokedCertParams>,
) -> Result<String, CertError> {
    let now = now().to_datetime();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::from_secs(60),
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(issuer)?.pem()?)
}

/// A revoked certificate: raw serial and revocation time.
type Revoked = (Vec<u8>, ASN1Time);

/// The CRL's number and its revoked serials with their revocation times.
fn read_crl(path: &Path) -> Result<(u64, Vec<Revoked>), CertError> {
    let pem = fs::read(path).map_err(|e| io_err(path, e))?;
    let parse_err = |reason: String| CertError::Parse {
        path: path.to_owned(),
        reason,
    };
    let (_, pem) = parse_x509_pem(&pem).map_err(|e| parse_err(format!("bad PEM: {e}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents)
        .map_err(|e| parse_err(format!("bad CRL: {e}")))?;
    let number = match crl.crl_number() {
        None => 0,
        Some(n) => {
            let bytes = n.to_bytes_be();
            if bytes.len() > 8 {
                return Err(parse_err("CRL number beyond 64 bits".to_owned()));
            }
            bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        }
    };
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| (r.raw_serial().to_vec(), r.revocation_date))
        .collect();
    Ok((number, revoked))
}

/// The current time (as rcgen and x509-parser share it: `time::OffsetDateTime`).
fn now() -> ASN1Time {
    ASN1Time::now()
}

/// A random positive 16-byte serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte: DER keeps all 16
    SerialNumber::from_slice(&bytes)
}

/// Checks that `id` is usable as a file name and a CN.
fn check_gateway_id(id: &str) -> Result<(), CertError> {
    let bad = |reason: &str| CertError::BadGatewayId {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    if id.is_empty() || id.len() > MAX_GATEWAY_ID {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad("only letters, digits, `-`, `_` and `.` are allowed"));
    }
    if id.starts_with(['.', '-']) {
        return Err(bad("must not start with `.` or `-`"));
    }
    Ok(())
}

/// The CA key from `ca.key`.
fn load_ca_key(paths: &CertPaths) -> Result<KeyPair, CertError> {
    if !paths.ca_key.exists() {
        return Err(CertError::Missing(paths.ca_key.clone()));
    }
    let pem = fs::read_to_string(&paths.ca_key).map_err(|e| io_err(&paths.ca_key, e))?;
    KeyPair::from_pem(&pem).map_err(|e| CertError::Parse {
        path: paths.ca_key.clone(),
        reason: e.to_string(),
    })
}

/// The DER of the first certificate in the PEM file at `path`.
fn certificate_der(path: &Path) -> Result<Vec<u8>, CertError> {
    if !path.exists() {
        return Err(CertError::Missing(path.to_owned()));
    }
    let pem = fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, pem) = parse_x509_pem(&pem).map_err(|e| CertError::Parse {
        path: path.to_owned(),
        reason: format!("bad PEM: {e}"),
    })?;
    Ok(pem.contents)
}

/// The subject CN and the raw subject name of the CA certificate at `path`.
fn ca_subject(path: &Path) -> Result<(String, Vec<u8>), CertError> {
    let der = certificate_der(path)?;
    let parse_err = |reason: String| CertError::Parse {
        path: path.to_owned(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| parse_err(format!("bad certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| parse_err("the CA certificate has no subject CN".to_owned()))?;
    Ok((cn.to_owned(), cert.subject().as_raw().to_vec()))
}

/// The raw serial number of the certificate at `path`.
fn certificate_serial(path: &Path) -> Result<Vec<u8>, CertError> {
    let der = certificate_der(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::Parse {
        path: path.to_owned(),
        reason: format!("bad certificate: {e}"),
    })?;
    Ok(cert.raw_serial().to_vec())
}

/// The raw issuer name of a DER certificate just made.
fn certificate_issuer(der: &[u8]) -> Result<Vec<u8>, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Generate(format!("cannot parse the new certificate: {e}")))?;
    Ok(cert.issuer().as_raw().to_vec())
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path, e: std::io::Error) -> CertError {
    CertError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Writes a new file with `mode`; fails if it exists.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_owned()),
        _ => io_err(path, e),
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(path, e))
}

/// Replaces `path` atomically (write a temporary file, then rename).
fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{
        connect, Acceptor, ClientTls, Endpoint, ServerTls, TransportError, TransportMode,
    };

    /// An expired gateway certificate is refused, with "expired" in both sides' errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_gateway_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "tern-bridge-certs-expired-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let paths = init(&dir, &[]).unwrap();
        let day = 86_400;
        let now = ASN1Time::now().timestamp();
        let old = issue(
            &dir,
            "gw-old",
            Some((
                ASN1Time::from_timestamp(now - 30 * day).unwrap(),
                ASN1Time::from_timestamp(now - day).unwrap(),
            )),
        )
        .unwrap();
        let server = ServerTls::load(
            &paths.ca_cert,
            &paths.server_cert,
            &paths.server_key,
            Some(&paths.crl),
        )
        .unwrap();
        let acceptor = Acceptor::bind("127.0.0.1:0".parse().unwrap(), server)
            .await
            .unwrap();
        let client = ClientTls::load(&paths.ca_cert, &old.cert, &old.key).unwrap();
        let endpoint = Endpoint {
            host: "localhost".into(),
            port: acceptor.local_addr().port(),
        };
        for mode in [TransportMode::Quic, TransportMode::Tcp] {
            let result = connect(&endpoint, &client, mode, Duration::from_secs(5)).await;
            match result {
                Err(TransportError::CertificateRefused { reason }) => {
                    assert!(reason.contains("expired"), "{mode:?}: {reason}")
                }
                other => panic!("{mode:?}: expected CertificateRefused, got {other:?}"),
            }
            match acceptor.accept().await {
                Some(Err(TransportError::GatewayCertificateRefused { reason, .. })) => {
                    assert!(reason.contains("expired"), "{mode:?}: {reason}")
                }
                other => panic!("{mode:?}: expected GatewayCertificateRefused, got {other:?}"),
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
