//! End-to-end tests of the bridge driver: `run_client` and `run_server` over the real
//! transport (QUIC and TLS/TCP on loopback, certificates made here with rcgen), each
//! against an in-memory port whose state outlives connections and server restarts.
//! Every test checks exact message sets: no loss, no duplicate, order per class.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tern_bridge::driver::{self, ClientConfig, Limits, ServerStatus, Status};
use tern_bridge::transport::{Acceptor, ClientTls, Endpoint, ServerTls, TransportMode};
use tern_bridge::{DeliverError, Port, PortFactory};
use tern_core::message::QoS;
use tern_core::store::{StoredMessage, StoredProperties};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

const CLASSES: [&str; 3] = ["alarm", "telemetry", "bulk"];

// ---------------------------------------------------------------- certificates

/// A CA, a server certificate (localhost, 127.0.0.1) and gateway certificates, as
/// PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tern-driver-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tern test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        let pki = Pki {
            dir,
            issuer: Issuer::new(params, key),
        };
        pki.leaf(
            "server",
            "tern-cloud",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    fn leaf(&self, file: &str, cn: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls::load(
            &self.path("ca.pem"),
            &self.path("server.pem"),
            &self.path("server.key"),
            None,
        )
        .unwrap()
    }

    /// TLS of a gateway whose certificate's CN is `cn`.
    fn client_tls(&self, cn: &str) -> ClientTls {
        self.leaf(cn, cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
        ClientTls::load(
            &self.path("ca.pem"),
            &self.path(&format!("{cn}.pem")),
            &self.path(&format!("{cn}.key")),
        )
        .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- in-memory port

#[derive(Default)]
struct State {
    out: Vec<BTreeMap<u64, StoredMessage>>,
    next_seq: Vec<u64>,
    published: Vec<u64>,
    inbox: Vec<Vec<String>>,
    delivered: Vec<u64>,
    /// Deliveries refused while set (a full store).
    refuse: bool,
}

/// A broker as the bridge sees it, whose queues and cursors survive connections.
struct MemPort {
    name: String,
    state: Mutex<State>,
    ready: Arc<Notify>,
}

impl MemPort {
    fn new(name: &str) -> Arc<Self> {
        let n = CLASSES.len();
        Arc::new(MemPort {
            name: name.into(),
            state: Mutex::new(State {
                out: vec![BTreeMap::new(); n],
                next_seq: vec![0; n],
                published: vec![0; n],
                inbox: vec![Vec::new(); n],
                delivered: vec![0; n],
                refuse: false,
            }),
            ready: Arc::new(Notify::new()),
        })
    }

    /// Queues `n` messages on `class` (sequences with gaps, as a store may have).
    fn publish(&self, class: u8, n: u64) {
        let mut s = self.state.lock().unwrap();
        let c = usize::from(class);
        for _ in 0..n {
            s.next_seq[c] += 1 + s.next_seq[c] % 2;
            let label = format!("{}-c{class}-{}", self.name, s.published[c]);
            s.published[c] += 1;
            let seq = s.next_seq[c];
            s.out[c].insert(
                seq,
                StoredMessage {
                    topic: format!("t/{class}").into(),
                    payload: Bytes::from(label),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: StoredProperties::default(),
                    expires_at: None,
                    origin: "test".into(),
                },
            );
        }
        drop(s);
        self.ready.notify_one();
    }

    fn expected(&self, class: u8) -> Vec<String> {
        let s = self.state.lock().unwrap();
        (0..s.published[usize::from(class)])
            .map(|i| format!("{}-c{class}-{i}", self.name))
            .collect()
    }

    fn inbox(&self, class: u8) -> Vec<String> {
        self.state.lock().unwrap().inbox[usize::from(class)].clone()
    }

    fn received(&self) -> usize {
        self.state.lock().unwrap().inbox.iter().map(Vec::len).sum()
    }

    fn queued(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .out
            .iter()
            .map(BTreeMap::len)
            .sum()
    }
}

impl Port for MemPort {
    fn peek(
        &self,
        class: u8,
        after: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<(u64, StoredMessage)> {
        let s = self.state.lock().unwrap();
        let mut bytes = 0;
        let mut batch = Vec::new();
        for (seq, m) in s.out[usize::from(class)].range(after + 1..) {
            if batch.len() >= max_msgs || (!batch.is_empty() && bytes + m.payload.len() > max_bytes)
            {
                break;
            }
            bytes += m.payload.len();
            batch.push((*seq, m.clone()));
        }
        batch
    }

    fn acked(&self, class: u8, up_to: u64) {
        let mut s = self.state.lock().unwrap();
        s.out[usize::from(class)].retain(|seq, _| *seq > up_to);
    }

    fn outbound_ready(&self) -> Arc<Notify> {
        Arc::clone(&self.ready)
    }

    fn deliver(
        &self,
        class: u8,
        messages: Vec<StoredMessage>,
        up_to: u64,
    ) -> oneshot::Receiver<Result<(), DeliverError>> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.state.lock().unwrap();
        if s.refuse {
            let _ = tx.send(Err(DeliverError::Store("full".into())));
            return rx;
        }
        let c = usize::from(class);
        assert!(up_to > s.delivered[c], "delivery below the cursor");
        for m in messages {
            s.inbox[c].push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        s.delivered[c] = up_to;
        let _ = tx.send(Ok(()));
        rx
    }

    fn delivered(&self, class: u8) -> u64 {
        self.state.lock().unwrap().delivered[usize::from(class)]
    }
}

/// The cloud's ports by gateway id; they persist across connections and restarts.
#[derive(Default)]
struct Ports {
    ports: Mutex<HashMap<String, Arc<MemPort>>>,
    opened: AtomicUsize,
}

impl Ports {
    fn get(&self, gateway: &str) -> Arc<MemPort> {
        Arc::clone(
            self.ports
                .lock()
                .unwrap()
                .entry(gateway.into())
                .or_insert_with(|| MemPort::new("cloud")),
        )
    }
}

impl PortFactory for Ports {
    fn open(
        &self,
        gateway_id: &str,
        classes: u8,
        downstream: &[(String, u8)],
    ) -> Result<Arc<dyn Port>, String> {
        assert_eq!(usize::from(classes), CLASSES.len());
        assert_eq!(downstream, &[("commands/gw-1/#".to_string(), 0)]);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(self.get(gateway_id))
    }
}

// ---------------------------------------------------------------- harness

struct Server {
    addr: SocketAddr,
    status: Arc<ServerStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start_server(pki: &Pki, ports: &Arc<Ports>, limits: Limits) -> Server {
    let acceptor = Acceptor::bind("127.0.0.1:0".parse().unwrap(), pki.server_tls())
        .await
        .unwrap();
    let addr = acceptor.local_addr();
    let status = Arc::new(ServerStatus::default());
    let (stop, rx) = watch::channel(false);
    let factory: Arc<dyn PortFactory> = ports.clone();
    let task = tokio::spawn(driver::run_server(
        acceptor,
        factory,
        limits,
        Arc::clone(&status),
        rx,
    ));
    Server {
        addr,
        status,
        stop,
        task,
    }
}

struct Client {
    status: Arc<Status>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        host: "localhost".into(),
        port: addr.port(),
    }
}

fn start_client(config: ClientConfig, port: &Arc<MemPort>) -> Client {
    let status = Arc::new(Status::default());
    let (stop, rx) = watch::channel(false);
    let port: Arc<dyn Port> = port.clone();
    let task = tokio::spawn(driver::run_client(config, port, Arc::clone(&status), rx));
    Client { status, stop, task }
}

fn client_config(tls: ClientTls, endpoints: Vec<Endpoint>, mode: TransportMode) -> ClientConfig {
    let mut config = ClientConfig::new(
        "gw-1",
        endpoints,
        tls,
        CLASSES.iter().map(|c| c.to_string()).collect(),
    );
    config.mode = mode;
    config.downstream = vec![("commands/gw-1/#".into(), 0)];
    config.connect_timeout = Duration::from_secs(2);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    config
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every message published on either port arrived exactly once, in order, and was
/// acknowledged.
fn assert_exactly_once(edge: &MemPort, cloud: &MemPort) {
    for class in 0..CLASSES.len() as u8 {
        assert_eq!(
            cloud.inbox(class),
            edge.expected(class),
            "upstream class {class}"
        );
        assert_eq!(
            edge.inbox(class),
            cloud.expected(class),
            "downstream class {class}"
        );
    }
    assert_eq!(edge.queued(), 0, "edge queue not acknowledged");
    assert_eq!(cloud.queued(), 0, "cloud queue not acknowledged");
}

fn all_done(edge: &MemPort, cloud: &MemPort) -> bool {
    let up: usize = (0..3).map(|c| edge.expected(c).len()).sum();
    let down: usize = (0..3).map(|c| cloud.expected(c).len()).sum();
    cloud.received() == up && edge.received() == down && edge.queued() == 0 && cloud.queued() == 0
}

// ---------------------------------------------------------------- tests

async fn steady_flow(mode: TransportMode) {
    let pki = Pki::new("steady");
    let ports = Arc::new(Ports::default());
    let server = start_server(&pki, &ports, Limits::default()).await;
    let cloud = ports.get("gw-1");
    let edge = MemPort::new("edge");
    edge.publish(0, 20);
    edge.publish(1, 3_000);
    edge.publish(2, 5_000);
    cloud.publish(0, 700);
    cloud.publish(2, 50);
    let config = client_config(pki.client_tls("gw-1"), vec![endpoint(server.addr)], mode);
    let client = start_client(config, &edge);
    until("the first transfer", Duration::from_secs(20), || {
        all_done(&edge, &cloud)
    })
    .await;
    // Live traffic on the open connection, both ways.
    for i in 0..20 {
        edge.publish(i % 3, 50);
        cloud.publish(0, 10);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    until("live traffic", Duration::from_secs(20), || {
        all_done(&edge, &cloud)
    })
    .await;
    assert_exactly_once(&edge, &cloud);

    let s = client.status.snapshot();
    assert!(s.connected);
    assert_eq!(s.connects, 1);
    assert_eq!(s.reconnects, 0);
    assert_eq!(s.classes.len(), 3);
    assert_eq!(s.classes[2].name, "bulk");
    assert_eq!(
        s.classes[1].acked_seq,
        edge.state.lock().unwrap().next_seq[1]
    );
    assert_eq!(
        s.classes[0].delivered_seq,
        cloud.state.lock().unwrap().next_seq[0]
    );
    assert_eq!(
        s.classes.iter().map(|c| c.messages_sent).sum::<u64>(),
        (0..3).map(|c| edge.expected(c).len() as u64).sum::<u64>()
    );
    let g = server.status.gateway("gw-1").expect("gateway status");
    assert!(g.connected);
    assert_eq!(g.classes[0].messages_sent, 700 + 200);
    assert_eq!(g.classes[2].messages_received, 5_000 + 6 * 50);

    client.stop.send(true).unwrap();
    client.task.await.unwrap();
    until(
        "the server to see the gateway leave",
        Duration::from_secs(20),
        || !server.status.gateway("gw-1").unwrap().connected,
    )
    .await;
    server.stop.send(true).unwrap();
    server.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_flow_both_ways_over_quic() {
    steady_flow(TransportMode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_flow_both_ways_over_tcp() {
    steady_flow(TransportMode::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_stream_loses_and_duplicates_nothing() {
    let pki = Pki::new("restart");
    let ports = Arc::new(Ports::default());
    // Paced both ways so the transfer lasts a few seconds and the kill lands mid-stream.
    let paced = Limits {
        rate_bytes_per_sec: 150_000,
        window_msgs: 500,
        batch_msgs: 100,
        ..Limits::default()
    };
    let first = start_server(&pki, &ports, paced.clone()).await;
    let cloud = ports.get("gw-1");
    let edge = MemPort::new("edge");
    edge.publish(1, 6_000);
    edge.publish(2, 4_000);
    cloud.publish(0, 3_000);
    // Two endpoints: the first server, then its replacement (failover).
    let second_addr = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut config = client_config(
        pki.client_tls("gw-1"),
        vec![endpoint(first.addr), endpoint(second_addr)],
        TransportMode::Auto,
    );
    config.connect_timeout = Duration::from_millis(500);
    config.limits = paced.clone();
    let client = start_client(config, &edge);

    until("part of the transfer", Duration::from_secs(20), || {
        cloud.received() >= 2_000 && edge.received() >= 500
    })
    .await;
    // Kill: no graceful close, deliveries and acks in flight are cut off.
    first.task.abort();
    let _ = first.task.await;
    drop(first.stop);
    let at_kill = (cloud.received(), edge.received());
    assert!(at_kill.0 < 10_000 && at_kill.1 < 3_000, "{at_kill:?}");
    edge.publish(0, 100);
    cloud.publish(2, 100);

    // The replacement comes up on the second endpoint with the same stores.
    let acceptor = match Acceptor::bind(second_addr, pki.server_tls()).await {
        Ok(a) => a,
        Err(e) => panic!("cannot bind the second server on {second_addr}: {e}"),
    };
    let status = Arc::new(ServerStatus::default());
    let (stop, rx) = watch::channel(false);
    let factory: Arc<dyn PortFactory> = ports.clone();
    let task = tokio::spawn(driver::run_server(
        acceptor,
        factory,
        paced,
        Arc::clone(&status),
        rx,
    ));
    until("the transfer to finish", Duration::from_secs(60), || {
        all_done(&edge, &cloud)
    })
    .await;
    assert_exactly_once(&edge, &cloud);
    let s = client.status.snapshot();
    assert!(s.connects >= 2 && s.reconnects >= 1, "{s:?}");
    assert_eq!(s.endpoint, Some(endpoint(second_addr).to_string()));
    assert!(ports.opened.load(Ordering::Relaxed) >= 2);

    client.stop.send(true).unwrap();
    client.task.await.unwrap();
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_id_not_matching_its_certificate_is_refused() {
    let pki = Pki::new("refuse");
    let ports = Arc::new(Ports::default());
    let server = start_server(&pki, &ports, Limits::default()).await;
    let edge = MemPort::new("edge");
    edge.publish(0, 5);
    // Certificate for gw-2, Hello says gw-1.
    let config = client_config(
        pki.client_tls("gw-2"),
        vec![endpoint(server.addr)],
        TransportMode::Auto,
    );
    let client = start_client(config, &edge);
    until("the refusal", Duration::from_secs(20), || {
        client
            .status
            .snapshot()
            .last_error
            .is_some_and(|e| e.contains("does not match"))
    })
    .await;
    let s = client.status.snapshot();
    assert!(!s.connected);
    assert_eq!(s.connects, 0);
    let reason = s.last_error.unwrap();
    // The Refuse frame, or the close reason if the close overtook it.
    assert!(
        reason.contains("\"gw-1\"") && reason.contains("\"gw-2\""),
        "{reason}"
    );
    assert_eq!(ports.opened.load(Ordering::Relaxed), 0);
    assert!(server.status.snapshot().is_empty());
    assert_eq!(edge.queued(), 5);

    client.stop.send(true).unwrap();
    client.task.await.unwrap();
    server.stop.send(true).unwrap();
    server.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_is_retried_on_a_new_connection() {
    let pki = Pki::new("full");
    let ports = Arc::new(Ports::default());
    let server = start_server(&pki, &ports, Limits::default()).await;
    let cloud = ports.get("gw-1");
    cloud.state.lock().unwrap().refuse = true;
    let edge = MemPort::new("edge");
    edge.publish(1, 100);
    let config = client_config(
        pki.client_tls("gw-1"),
        vec![endpoint(server.addr)],
        TransportMode::Auto,
    );
    let client = start_client(config, &edge);
    until("a failed delivery", Duration::from_secs(20), || {
        server
            .status
            .gateway("gw-1")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("local delivery failed"))
    })
    .await;
    cloud.state.lock().unwrap().refuse = false;
    until("the transfer", Duration::from_secs(20), || {
        all_done(&edge, &cloud)
    })
    .await;
    assert_exactly_once(&edge, &cloud);
    client.stop.send(true).unwrap();
    client.task.await.unwrap();
    server.stop.send(true).unwrap();
    server.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_of_a_gateway_replaces_the_old_one() {
    let pki = Pki::new("replace");
    let ports = Arc::new(Ports::default());
    let server = start_server(&pki, &ports, Limits::default()).await;
    let cloud = ports.get("gw-1");
    let tls = pki.client_tls("gw-1");
    let edge = MemPort::new("edge");
    edge.publish(1, 500);
    let first = start_client(
        client_config(
            tls.clone(),
            vec![endpoint(server.addr)],
            TransportMode::Quic,
        ),
        &edge,
    );
    until("the first connection", Duration::from_secs(20), || {
        all_done(&edge, &cloud)
    })
    .await;
    // The same gateway connects again while its previous connection is still up
    // (e.g. after a network change the old path has not noticed yet).
    first.stop.send(true).unwrap();
    first.task.await.unwrap();
    let old = start_client(
        client_config(
            tls.clone(),
            vec![endpoint(server.addr)],
            TransportMode::Quic,
        ),
        &edge,
    );
    until("the old connection", Duration::from_secs(20), || {
        old.status.snapshot().connected
    })
    .await;
    let new = start_client(
        client_config(tls, vec![endpoint(server.addr)], TransportMode::Tcp),
        &edge,
    );
    until("the replacement", Duration::from_secs(20), || {
        old.status
            .snapshot()
            .last_error
            .is_some_and(|e| e.contains("replaced by a newer connection"))
    })
    .await;
    old.stop.send(true).unwrap();
    old.task.await.unwrap();
    edge.publish(2, 300);
    until("the transfer", Duration::from_secs(20), || {
        all_done(&edge, &cloud)
    })
    .await;
    assert_exactly_once(&edge, &cloud);
    let g = server.status.gateway("gw-1").unwrap();
    assert!(g.connected);
    assert_eq!(g.connects, 3);
    assert_eq!(
        g.transport,
        Some(tern_bridge::transport::TransportKind::Tcp)
    );
    new.stop.send(true).unwrap();
    new.task.await.unwrap();
    server.stop.send(true).unwrap();
    server.task.await.unwrap();
}
