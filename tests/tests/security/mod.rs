//! Helpers shared by the security tests (`tls.rs`, `websocket.rs`, `auth.rs`,
//! `acl.rs`, `abuse.rs`): test certificates generated with rcgen at test time, rustls
//! client configurations (ring provider), password files written through
//! `tern-edge passwd`, and raw CONNECTs with credentials.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tern_tests::{raw, unique, RawClient, Recv};
use tokio::net::TcpStream;

/// How long anything expected may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pem {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// Test PKI: a CA, a server certificate for 127.0.0.1/localhost, a client certificate
/// with CN `device-1` from the same CA, and one with the same CN from another CA.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate (PEM), trusted by clients and used as `client_ca`.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server: Pem,
    /// Client certificate (CN `device-1`) signed by the CA.
    pub client: Pem,
    /// Client certificate (CN `device-1`) from a CA the broker does not trust.
    pub rogue: Pem,
}

/// CN of the good (and the rogue) client certificate.
pub const CLIENT_CN: &str = "device-1";

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (params, key, cert.pem())
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    cn: &str,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generates everything into a fresh temporary directory.
    pub fn generate() -> Pki {
        let dir = std::env::temp_dir().join(unique("tern-pki"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        let (ca_params, ca_key, ca_pem) = ca("Tern Test CA");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let (server_cert, server_key) = leaf(
            &issuer,
            "tern-test-server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&issuer, CLIENT_CN, &[], ExtendedKeyUsagePurpose::ClientAuth);
        let (other_params, other_key, _) = ca("Some Other CA");
        let other = Issuer::from_params(&other_params, &other_key);
        let (rogue_cert, rogue_key) =
            leaf(&other, CLIENT_CN, &[], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", &ca_pem),
            server: Pem {
                cert: write("server.pem", &server_cert),
                key: write("server.key", &server_key),
            },
            client: Pem {
                cert: write("client.pem", &client_cert),
                key: write("client.key", &client_key),
            },
            rogue: Pem {
                cert: write("rogue.pem", &rogue_cert),
                key: write("rogue.key", &rogue_key),
            },
            dir,
        }
    }

    /// Environment enabling `[listeners.tls]` on `port` with this PKI's server
    /// certificate; `client_ca`: also accept client certificates from the CA.
    pub fn tls_env(&self, port: u16, client_ca: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("TERN_LISTENERS__TLS__ENABLED".to_owned(), "true".to_owned()),
            (
                "TERN_LISTENERS__TLS__BIND".to_owned(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "TERN_LISTENERS__TLS__CERT".to_owned(),
                path(&self.server.cert),
            ),
            (
                "TERN_LISTENERS__TLS__KEY".to_owned(),
                path(&self.server.key),
            ),
        ];
        if client_ca {
            env.push(("TERN_LISTENERS__TLS__CLIENT_CA".to_owned(), path(&self.ca)));
        }
        env
    }

    /// A rustls client configuration trusting the test CA, presenting `identity`.
    pub fn client_config(&self, identity: Option<&Pem>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("read CA") {
            roots.add(cert.expect("CA pem")).expect("add CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let certs = CertificateDer::pem_file_iter(&pem.cert)
                    .expect("read cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert pem");
                let key = PrivateKeyDer::from_pem_file(&pem.key).expect("read key");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client auth cert")
            }
        };
        Arc::new(config)
    }
}

/// A path as a string for an environment variable.
pub fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// `(String, String)` pairs as the `(&str, &str)` the harness takes.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs `tern-edge passwd ARGS`, with `stdin` piped in; returns (success, stdout, stderr).
pub fn passwd(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(tern_tests::edge_binary())
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern-edge passwd");
    let mut input = child.stdin.take().expect("stdin");
    // A command that reads nothing (list, remove) may exit before we write: its closed
    // pipe is not an error of the test.
    match input.write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write password: {e}"),
        _ => {}
    }
    drop(input);
    let out = child.wait_with_output().expect("tern-edge passwd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A password file in a fresh directory with `users` (name, password), written with
/// `tern-edge passwd add`.
pub fn password_file(users: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tern-passwd"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    for (user, password) in users {
        let (ok, _, err) = passwd(&["add", &path(&file), user], &format!("{password}\n"));
        assert!(ok, "passwd add {user}: {err}");
    }
    file
}

/// A clean CONNECT (v4 or v5) with optional user name and password.
pub fn connect_bytes(
    version: u8,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Vec<u8> {
    connect_with_will(version, client_id, user, password, None)
}

/// A will: topic, payload, QoS, retain.
pub type WillSpec<'a> = (&'a str, &'a [u8], u8, bool);

/// A clean CONNECT (v4 or v5) with optional user name, password and will.
pub fn connect_with_will(
    version: u8,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
    will: Option<WillSpec<'_>>,
) -> Vec<u8> {
    let mut b = Vec::new();
    raw::put_str(&mut b, "MQTT");
    b.push(version);
    let mut flags = 0x02u8;
    if user.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    if let Some((_, _, qos, retain)) = will {
        flags |= 0x04 | (qos << 3);
        if retain {
            flags |= 0x20;
        }
    }
    b.push(flags);
    b.extend_from_slice(&60u16.to_be_bytes());
    if version == raw::V5 {
        b.push(0); // no properties
    }
    raw::put_str(&mut b, client_id);
    if let Some((topic, payload, _, _)) = will {
        if version == raw::V5 {
            b.push(0); // no will properties
        }
        raw::put_str(&mut b, topic);
        raw::put_bin(&mut b, payload);
    }
    if let Some(u) = user {
        raw::put_str(&mut b, u);
    }
    if let Some(p) = password {
        raw::put_bin(&mut b, p.as_bytes());
    }
    raw::frame(0x10, &b)
}

/// Connects over plain TCP with credentials and returns the client and the CONNACK
/// code (v5 reason code, v4 return code), or why there was none.
pub async fn login(
    addr: &str,
    version: u8,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<(RawClient, u8), String> {
    let mut c = RawClient::tcp(addr, version).await;
    let id = unique("login");
    c.send(&connect_bytes(version, &id, user, password))
        .await
        .map_err(|e| format!("send CONNECT: {e}"))?;
    match c.recv(WAIT).await {
        Recv::Packet(p) => {
            let ack = p
                .connack(version)
                .map_err(|e| format!("bad CONNACK: {e}"))?;
            Ok((c, ack.code))
        }
        other => Err(format!("expected CONNACK, got {other:?}")),
    }
}

/// The CONNACK code of a login (see [`login`]); panics if there is none.
pub async fn login_code(addr: &str, version: u8, user: Option<&str>, password: Option<&str>) -> u8 {
    login(addr, version, user, password)
        .await
        .unwrap_or_else(|e| panic!("login as {user:?}: {e}"))
        .1
}

/// A TLS handshake with the broker at `addr` using `config`; the stream on success.
pub async fn tls_handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("server name");
    connector.connect(name, tcp).await
}

/// Reads one whole MQTT packet from any stream (for TLS and WebSocket streams that
/// `RawClient` cannot wrap). `None` if the stream closed or nothing came in time.
pub async fn read_packet<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<raw::Packet> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(p)) = raw::split_packet(buf) {
            return Some(p);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Logs in over plain TCP as `user` (password `password`) with client id `client_id`
/// and an optional will; panics unless the CONNACK is a success.
pub async fn login_as(
    addr: &str,
    version: u8,
    client_id: &str,
    user: &str,
    password: &str,
    will: Option<WillSpec<'_>>,
) -> RawClient {
    let mut c = RawClient::tcp(addr, version).await;
    c.send(&connect_with_will(
        version,
        client_id,
        Some(user),
        Some(password),
        will,
    ))
    .await
    .expect("send CONNECT");
    let p = c.expect(WAIT, "CONNACK").await;
    let code = p.connack(version).expect("CONNACK").code;
    assert_eq!(code, 0, "login of {user} / {client_id}");
    c
}
