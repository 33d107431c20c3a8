//! The bridge transport on real loopback sockets: certificates made by `certs` in a
//! temporary directory, QUIC and TLS/TCP channels exchanging frames on several lanes
//! both ways, a maximal frame, many frames (with a rough throughput print), refused
//! certificates (wrong CA, revoked, wrong server name) and the `Auto` fallback to TCP
//! when UDP gets no answer.
#![cfg(all(feature = "client", feature = "server"))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tern_bridge::certs;
use tern_bridge::transport::{
    connect, Acceptor, Channel, ClientTls, Endpoint, ServerTls, TransportError, TransportKind,
    TransportMode, IDLE_TIMEOUT, KEEP_ALIVE, MAX_FRAME, MAX_LANES,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh, unique temporary directory (removed by [`TempDir`]'s drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "tern-bridge-transport-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate directory with a CA, the server certificate and gateways.
struct Pki {
    tmp: TempDir,
}

impl Pki {
    fn new(name: &str, server_names: &[&str]) -> Self {
        let tmp = TempDir::new(name);
        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        certs::init(&tmp.0, &names).unwrap();
        Pki { tmp }
    }

    fn dir(&self) -> &Path {
        &self.tmp.0
    }

    fn server_tls(&self) -> ServerTls {
        let p = certs::CertPaths::new(self.dir());
        ServerTls::load(&p.ca_cert, &p.server_cert, &p.server_key, Some(&p.crl)).unwrap()
    }

    /// The TLS of gateway `id` (issued if needed), trusting `trust`'s CA.
    fn client_tls(&self, id: &str, trust: &Pki) -> ClientTls {
        let cert = self.dir().join(certs::GATEWAYS).join(format!("{id}.pem"));
        if !cert.exists() {
            certs::issue_gateway(self.dir(), id).unwrap();
        }
        let key = self.dir().join(certs::GATEWAYS).join(format!("{id}.key"));
        ClientTls::load(&certs::CertPaths::new(trust.dir()).ca_cert, &cert, &key).unwrap()
    }
}

async fn acceptor(pki: &Pki) -> Acceptor {
    Acceptor::bind("127.0.0.1:0".parse().unwrap(), pki.server_tls())
        .await
        .unwrap()
}

fn endpoint(host: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        host: host.to_owned(),
        port: addr.port(),
    }
}

/// A connected (client, server) pair over `mode`.
async fn pair(pki: &Pki, acceptor: &Acceptor, mode: TransportMode) -> (Channel, Channel) {
    let tls = pki.client_tls("gw-1", pki);
    let ep = endpoint("localhost", acceptor.local_addr());
    let (client, server) = tokio::join!(connect(&ep, &tls, mode, TIMEOUT), acceptor.accept());
    let client = client.unwrap();
    let server = server.unwrap().unwrap();
    (client, server)
}

fn kind_of(mode: TransportMode) -> TransportKind {
    match mode {
        TransportMode::Tcp => TransportKind::Tcp,
        _ => TransportKind::Quic,
    }
}

fn frame(lane: u8, i: usize) -> Bytes {
    Bytes::from(format!("lane {lane} frame {i}"))
}

async fn lanes_both_ways(mode: TransportMode) {
    let pki = Pki::new("lanes", &[]);
    let acceptor = acceptor(&pki).await;
    let (mut client, mut server) = pair(&pki, &acceptor, mode).await;
    assert_eq!(client.peer.kind, kind_of(mode));
    assert_eq!(server.peer.kind, kind_of(mode));
    assert_eq!(server.peer.identity.as_deref(), Some("gw-1"));
    assert_eq!(client.sender.kind(), kind_of(mode));

    // Up: lanes 0..=3, 50 frames each, interleaved.
    for i in 0..50 {
        for lane in 0..=3u8 {
            client.sender.send(lane, frame(lane, i)).await.unwrap();
        }
    }
    let mut next = [0usize; 4];
    for _ in 0..200 {
        let (lane, f) = server.receiver.recv().await.unwrap();
        assert_eq!(
            f,
            frame(lane, next[usize::from(lane)]),
            "order on lane {lane}"
        );
        next[usize::from(lane)] += 1;
    }
    assert_eq!(next, [50; 4]);

    // Down: on lane 0 and on lane 5, which the client never used.
    for i in 0..20 {
        server.sender.send(5, frame(5, i)).await.unwrap();
        server.sender.send(0, frame(0, i)).await.unwrap();
    }
    let mut next = [0usize; 6];
    for _ in 0..40 {
        let (lane, f) = client.receiver.recv().await.unwrap();
        assert_eq!(f, frame(lane, next[usize::from(lane)]));
        next[usize::from(lane)] += 1;
    }
    assert_eq!((next[0], next[5]), (20, 20));

    // Lanes are limited.
    assert!(matches!(
        client.sender.send(MAX_LANES, frame(0, 0)).await,
        Err(TransportError::LaneOutOfRange { .. })
    ));
    client
        .sender
        .send(MAX_LANES - 1, frame(MAX_LANES - 1, 0))
        .await
        .unwrap();
    assert_eq!(
        server.receiver.recv().await.unwrap(),
        (MAX_LANES - 1, frame(MAX_LANES - 1, 0))
    );

    // An empty frame is a frame.
    client.sender.send(2, Bytes::new()).await.unwrap();
    assert_eq!(server.receiver.recv().await.unwrap(), (2, Bytes::new()));

    // Close with a reason: the peer sees it.
    server.sender.close("gateway refused: test");
    match client.receiver.recv().await {
        Err(TransportError::Closed { reason }) => assert_eq!(reason, "gateway refused: test"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(
        server.sender.send(1, frame(1, 0)).await,
        Err(TransportError::ClosedLocally { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_lanes_both_ways() {
    lanes_both_ways(TransportMode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_lanes_both_ways() {
    lanes_both_ways(TransportMode::Tcp).await;
}

async fn large_frame(mode: TransportMode) {
    let pki = Pki::new("large", &[]);
    let acceptor = acceptor(&pki).await;
    let (client, mut server) = pair(&pki, &acceptor, mode).await;
    let big: Bytes = (0..MAX_FRAME)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let too_big = Bytes::from(vec![0u8; MAX_FRAME + 1]);
    assert!(matches!(
        client.sender.send(1, too_big).await,
        Err(TransportError::FrameTooLarge { .. })
    ));
    let sender = client.sender.clone();
    let sent = big.clone();
    tokio::spawn(async move {
        sender.send(1, sent).await.unwrap();
        sender.send(0, Bytes::from_static(b"after")).await.unwrap();
    });
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(server.receiver.recv().await.unwrap());
    }
    got.sort_by_key(|(lane, _)| *lane);
    assert_eq!(got[0], (0, Bytes::from_static(b"after")));
    assert_eq!(got[1].0, 1);
    assert!(got[1].1 == big, "the large frame arrived intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_large_frame() {
    large_frame(TransportMode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_large_frame() {
    large_frame(TransportMode::Tcp).await;
}

/// Sends `frames` frames of `size` bytes on lane 2 and reports the rate.
async fn many_frames(mode: TransportMode, frames: usize, size: usize) {
    let pki = Pki::new("many", &[]);
    let acceptor = acceptor(&pki).await;
    let (client, mut server) = pair(&pki, &acceptor, mode).await;
    let payload = Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    let sender = client.sender.clone();
    let writer = tokio::spawn(async move {
        for i in 0..frames {
            let mut f = payload.to_vec();
            f[..8].copy_from_slice(&(i as u64).to_be_bytes());
            sender.send(2, Bytes::from(f)).await.unwrap();
        }
    });
    for i in 0..frames {
        let (lane, f) = server.receiver.recv().await.unwrap();
        assert_eq!(lane, 2);
        assert_eq!(f.len(), size);
        assert_eq!(u64::from_be_bytes(f[..8].try_into().unwrap()), i as u64);
    }
    writer.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let mb = (frames * size) as f64 / 1e6;
    println!(
        "{mode:?}: {frames} frames of {size} B in {secs:.2} s: {:.0} frames/s, {:.1} MB/s \
         (= {:.0} msgs/s of 100 B)",
        frames as f64 / secs,
        mb / secs,
        mb * 1e6 / 100.0 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_many_small_frames() {
    many_frames(TransportMode::Quic, 50_000, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_many_small_frames() {
    many_frames(TransportMode::Tcp, 50_000, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_many_batch_frames() {
    // Batches of ~100 messages of 100 bytes.
    many_frames(TransportMode::Quic, 2_000, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_many_batch_frames() {
    many_frames(TransportMode::Tcp, 2_000, 10_000).await;
}

/// Throughput on bigger volumes (run with `--release -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    for mode in [TransportMode::Quic, TransportMode::Tcp] {
        many_frames(mode, 20_000, 10_000).await;
        many_frames(mode, 20_000, 100_000).await;
        many_frames(mode, 500_000, 100).await;
    }
}

/// Connects with `tls` and expects a refusal; returns (client error, server error).
async fn refused(
    pki: &Pki,
    tls: &ClientTls,
    host: &str,
    mode: TransportMode,
) -> (TransportError, Option<TransportError>) {
    let acceptor = acceptor(pki).await;
    let ep = endpoint(host, acceptor.local_addr());
    let client = connect(&ep, tls, mode, TIMEOUT).await;
    let client = match client {
        Ok(c) => panic!("connected with a bad certificate: {:?}", c.peer),
        Err(e) => e,
    };
    let server = tokio::time::timeout(Duration::from_secs(2), acceptor.accept())
        .await
        .ok()
        .flatten()
        .map(|r| match r {
            Ok(c) => panic!("server accepted a bad certificate: {:?}", c.peer),
            Err(e) => e,
        });
    println!("{mode:?} client: {client}");
    if let Some(server) = &server {
        println!("{mode:?} server: {server}");
    }
    (client, server)
}

async fn wrong_ca_refused(mode: TransportMode) {
    let pki = Pki::new("ca", &[]);
    let other = Pki::new("other-ca", &[]);
    // The gateway trusts the right CA but its certificate comes from another one.
    let tls = other.client_tls("gw-1", &pki);
    let (client, server) = refused(&pki, &tls, "localhost", mode).await;
    match client {
        TransportError::CertificateRefused { reason } => {
            assert!(reason.contains("unknown CA"), "{reason}")
        }
        other => panic!("expected CertificateRefused, got {other:?}"),
    }
    assert!(client_display_ok(&TransportError::CertificateRefused {
        reason: "x".into()
    }));
    match server {
        Some(TransportError::GatewayCertificateRefused { reason, .. }) => {
            assert!(reason.contains("unknown CA"), "{reason}")
        }
        other => panic!("expected GatewayCertificateRefused, got {other:?}"),
    }
}

fn client_display_ok(e: &TransportError) -> bool {
    e.to_string().contains("refused our certificate") && e.is_certificate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_wrong_ca_refused() {
    wrong_ca_refused(TransportMode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_wrong_ca_refused() {
    wrong_ca_refused(TransportMode::Tcp).await;
}

async fn revoked_refused(mode: TransportMode) {
    let pki = Pki::new("revoked", &[]);
    let good = pki.client_tls("gw-good", &pki);
    let bad = pki.client_tls("gw-bad", &pki);
    let crl = certs::revoke_gateway(pki.dir(), "gw-bad").unwrap();
    assert_eq!(crl, pki.dir().join(certs::CRL));
    let (client, server) = refused(&pki, &bad, "localhost", mode).await;
    match client {
        TransportError::CertificateRefused { reason } => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        other => panic!("expected CertificateRefused, got {other:?}"),
    }
    match server {
        Some(TransportError::GatewayCertificateRefused { reason, .. }) => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        other => panic!("expected GatewayCertificateRefused, got {other:?}"),
    }
    // Another gateway of the same CA still gets in.
    let acceptor = acceptor(&pki).await;
    let ep = endpoint("127.0.0.1", acceptor.local_addr());
    let (client, server) = tokio::join!(connect(&ep, &good, mode, TIMEOUT), acceptor.accept());
    client.unwrap();
    assert_eq!(
        server.unwrap().unwrap().peer.identity.as_deref(),
        Some("gw-good")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_revoked_refused() {
    revoked_refused(TransportMode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_revoked_refused() {
    revoked_refused(TransportMode::Tcp).await;
}

async fn server_rejected(mode: TransportMode) {
    let pki = Pki::new("server", &[]);
    let tls = pki.client_tls("gw-1", &pki);
    // A cloud whose certificate comes from another CA.
    let other = Pki::new("server-other", &[]);
    let acceptor = acceptor(&other).await;
    let ep = endpoint("127.0.0.1", acceptor.local_addr());
    match connect(&ep, &tls, mode, TIMEOUT).await {
        Err(TransportError::ServerCertificateRejected { reason, .. }) => {
            assert!(reason.contains("unknown CA"), "{reason}")
        }
        other => panic!("expected ServerCertificateRejected, got {other:?}"),
    }
    // The right cloud under a name its certificate does not carry (the certificate
    // names localhost and 127.0.0.1; Linux routes all of 127/8 to loopback).
    if cfg!(target_os = "linux") {
        let acceptor = Acceptor::bind("127.0.0.2:0".parse().unwrap(), pki.server_tls())
            .await
            .unwrap();
        let ep = endpoint("127.0.0.2", acceptor.local_addr());
        match connect(&ep, &tls, mode, TIMEOUT).await {
            Err(e @ TransportError::ServerCertificateRejected { .. }) => {
                println!("{mode:?}: {e}");
                assert!(e.to_string().contains("not valid for"), "{e}")
            }
            other => panic!("expected ServerCertificateRejected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_server_rejected() {
    server_rejected(TransportMode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_rejected() {
    server_rejected(TransportMode::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefers_quic() {
    let pki = Pki::new("auto-quic", &[]);
    let acceptor = acceptor(&pki).await;
    let (client, server) = pair(&pki, &acceptor, TransportMode::Auto).await;
    assert_eq!(client.peer.kind, TransportKind::Quic);
    assert_eq!(server.peer.kind, TransportKind::Quic);
}

/// UDP blocked: a UDP socket that swallows everything on port P, and on TCP port P a
/// plain proxy to the acceptor's TCP port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tcp_when_udp_is_blocked() {
    let pki = Pki::new("auto-tcp", &[]);
    let acceptor = acceptor(&pki).await;
    let target = acceptor.local_addr();
    let (blackhole, proxy) = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let port = proxy.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let tls = pki.client_tls("gw-1", &pki);
    let ep = Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let start = Instant::now();
    let (client, server) = tokio::join!(
        connect(&ep, &tls, TransportMode::Auto, Duration::from_millis(700)),
        acceptor.accept()
    );
    let mut client = client.unwrap();
    let mut server = server.unwrap().unwrap();
    println!("fell back to TCP in {:?}", start.elapsed());
    assert_eq!(client.peer.kind, TransportKind::Tcp);
    assert_eq!(server.peer.kind, TransportKind::Tcp);
    assert_eq!(server.peer.identity.as_deref(), Some("gw-1"));
    client.sender.send(1, frame(1, 0)).await.unwrap();
    assert_eq!(server.receiver.recv().await.unwrap(), (1, frame(1, 0)));
    server.sender.send(0, frame(0, 0)).await.unwrap();
    assert_eq!(client.receiver.recv().await.unwrap(), (0, frame(0, 0)));

    // QUIC only: a timeout naming QUIC.
    match connect(&ep, &tls, TransportMode::Quic, Duration::from_millis(300)).await {
        Err(
            e @ TransportError::Timeout {
                kind: TransportKind::Quic,
                ..
            },
        ) => {
            assert!(e.to_string().contains("timed out"), "{e}")
        }
        other => panic!("expected a QUIC timeout, got {other:?}"),
    }
    drop(blackhole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_sender_closes_the_connection() {
    for mode in [TransportMode::Quic, TransportMode::Tcp] {
        let pki = Pki::new("drop", &[]);
        let acceptor = acceptor(&pki).await;
        let (client, mut server) = pair(&pki, &acceptor, mode).await;
        client.sender.send(1, frame(1, 0)).await.unwrap();
        drop(client);
        assert_eq!(server.receiver.recv().await.unwrap(), (1, frame(1, 0)));
        let e = tokio::time::timeout(TIMEOUT, server.receiver.recv())
            .await
            .expect("the peer noticed the drop")
            .unwrap_err();
        assert!(
            matches!(e, TransportError::Closed { .. }),
            "{mode:?}: {e:?}"
        );
    }
}

#[test]
fn certs_files_and_refusals() {
    let tmp = TempDir::new("certs");
    let dir = tmp.0.join("pki");
    let paths = certs::init(&dir, &["cloud.example".to_owned()]).unwrap();
    assert!(matches!(
        certs::init(&dir, &[]),
        Err(certs::CertError::Exists(_))
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [&paths.ca_key, &paths.server_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }
    let gw = certs::issue_gateway(&dir, "site-7.gw_1").unwrap();
    assert!(gw.cert.ends_with("gateways/site-7.gw_1.pem"));
    assert!(matches!(
        certs::issue_gateway(&dir, "site-7.gw_1"),
        Err(certs::CertError::Exists(_))
    ));
    for bad in ["", "../x", "a/b", ".hidden", "-x", &"x".repeat(65)] {
        assert!(
            matches!(
                certs::issue_gateway(&dir, bad),
                Err(certs::CertError::BadGatewayId { .. })
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        certs::revoke_gateway(&dir, "nobody"),
        Err(certs::CertError::Missing(_))
    ));
    certs::revoke_gateway(&dir, "site-7.gw_1").unwrap();
    certs::revoke_gateway(&dir, "site-7.gw_1").unwrap();
    // A revoked gateway can be issued again, with a new serial.
    let again = certs::issue_gateway(&dir, "site-7.gw_1").unwrap();
    assert_ne!(again.serial, gw.serial);
    // Without a CA there is nothing to sign with.
    assert!(matches!(
        certs::issue_gateway(&tmp.0.join("empty"), "gw"),
        Err(certs::CertError::Missing(_))
    ));
    // The server certificate loads for TLS.
    ServerTls::load(
        &paths.ca_cert,
        &paths.server_cert,
        &paths.server_key,
        Some(&paths.crl),
    )
    .unwrap();
}

/// A UDP relay from a local port to `target` that drops everything once `cut` is set.
async fn udp_relay(target: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(target).await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut client = None;
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut up) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    if !cut.load(Ordering::Relaxed) {
                        let _ = back.send(&up[..n]).await;
                    }
                }
                r = back.recv(&mut down) => {
                    let Ok(n) = r else { return };
                    if let (Some(c), false) = (client, cut.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    addr
}

/// A TCP relay from a local port to `target` that swallows all bytes once `cut` is set
/// (the connections stay open: a blackhole, not a reset).
async fn tcp_relay(target: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: Arc<AtomicBool>,
    ) {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                return;
            }
            if !cut.load(Ordering::Relaxed) && to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pipe(ir, ow, cut.clone()));
            tokio::spawn(pipe(or, iw, cut.clone()));
        }
    });
    addr
}

/// A blackholed link is declared lost on both sides after the idle timeout (QUIC:
/// quinn's keep-alive and idle timeout; TCP: our pings and read timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_is_detected_on_both_sides() {
    let pki = Pki::new("blackhole", &[]);
    let acceptor = acceptor(&pki).await;
    let tls = pki.client_tls("gw-1", &pki);
    let cut = Arc::new(AtomicBool::new(false));
    let udp = udp_relay(acceptor.local_addr(), cut.clone()).await;
    let tcp = tcp_relay(acceptor.local_addr(), cut.clone()).await;
    let mut pairs = Vec::new();
    for (mode, port) in [
        (TransportMode::Quic, udp.port()),
        (TransportMode::Tcp, tcp.port()),
    ] {
        let ep = Endpoint {
            host: "127.0.0.1".into(),
            port,
        };
        let (client, server) = tokio::join!(connect(&ep, &tls, mode, TIMEOUT), acceptor.accept());
        let mut client = client.unwrap();
        let mut server = server.unwrap().unwrap();
        client.sender.send(1, frame(1, 0)).await.unwrap();
        assert_eq!(server.receiver.recv().await.unwrap(), (1, frame(1, 0)));
        server.sender.send(1, frame(1, 1)).await.unwrap();
        assert_eq!(client.receiver.recv().await.unwrap(), (1, frame(1, 1)));
        pairs.push((mode, client, server));
    }
    // Quiet but healthy for longer than the keep-alive interval: still up.
    tokio::time::sleep(KEEP_ALIVE + Duration::from_secs(2)).await;
    for (_, client, server) in &mut pairs {
        client.sender.send(2, frame(2, 0)).await.unwrap();
        assert_eq!(server.receiver.recv().await.unwrap(), (2, frame(2, 0)));
    }
    cut.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let waits = pairs.into_iter().flat_map(|(mode, client, server)| {
        [(mode, "client", client), (mode, "server", server)].map(|(mode, side, mut channel)| {
            async move {
                // The sender stays alive: dropping it would close the connection.
                let _sender = channel.sender;
                let e = tokio::time::timeout(IDLE_TIMEOUT * 2, channel.receiver.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{mode:?} {side}: blackhole not detected"))
                    .unwrap_err();
                println!("{mode:?} {side}: {e} after {:?}", start.elapsed());
                assert!(matches!(e, TransportError::Lost { .. }), "{e:?}");
            }
        })
    });
    futures_join_all(waits.collect()).await;
}

/// Awaits all futures (no futures crate in the dev-dependencies).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(futures: Vec<F>) {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// A frame sent just before `close` reaches the peer before the close does (a Refuse
/// followed by a close is read as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_before_close_arrive_first() {
    for mode in [TransportMode::Quic, TransportMode::Tcp] {
        let pki = Pki::new("close", &[]);
        let acceptor = acceptor(&pki).await;
        for _ in 0..5 {
            let (mut client, server) = pair(&pki, &acceptor, mode).await;
            server
                .sender
                .send(0, Bytes::from_static(b"refuse"))
                .await
                .unwrap();
            server
                .sender
                .send(3, Bytes::from(vec![1u8; 100_000]))
                .await
                .unwrap();
            server.sender.close("refused");
            let mut got = Vec::new();
            let end = loop {
                match client.receiver.recv().await {
                    Ok((lane, f)) => got.push((lane, f.len())),
                    Err(e) => break e,
                }
            };
            assert_eq!(got, vec![(0, 6), (3, 100_000)], "{mode:?}");
            assert_eq!(
                end,
                TransportError::Closed {
                    reason: "refused".into()
                },
                "{mode:?}"
            );
        }
    }
}
