//! Issue 6, the store-and-forward bridge: real `tern-edge` and `tern-cloud` processes,
//! certificates made with `tern-cloud certs`, and real MQTT clients (rumqttc) on both
//! ends. Every test asserts exact message sets: every message a publisher got an
//! acknowledgement for arrives, none arrives twice, and each class keeps its order.
//!
//! The faults are real: SIGKILL of either process mid-transfer, a cloud stopped while
//! the gateway keeps taking messages, a gateway offline while commands are sent to it,
//! a refused certificate, and an impaired link built with the relay of
//! `tern_tests::relay` (the kernel here has no netem).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Broker;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tern_tests::relay::{Impairment, Relay};
use tern_tests::{cloud_binary, free_port};

/// Longest any delivery may take in these tests before it counts as lost.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `tern-cloud certs ...` and panics with its output when it fails.
fn certs_cmd(args: &[&str]) {
    let out = Command::new(cloud_binary())
        .arg("certs")
        .args(args)
        .output()
        .expect("run tern-cloud certs");
    assert!(
        out.status.success(),
        "tern-cloud certs {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA with a server certificate and certificates for `gateways`, in a fresh directory.
fn make_certs(gateways: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(tern_tests::unique("tern-certs"));
    let d = dir.display().to_string();
    certs_cmd(&[
        "init",
        "--dir",
        &d,
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
    ]);
    for gw in gateways {
        certs_cmd(&["issue-gateway", gw, "--dir", &d]);
    }
    dir
}

/// One cloud and one gateway bridged to it.
struct Site {
    cloud: Broker,
    edge: Broker,
    /// The cloud's bridge port (UDP and TCP).
    acceptor: u16,
}

/// How the gateway is set up.
struct EdgeSetup<'a> {
    gateway: &'a str,
    /// Directory with `ca.pem` and `gateways/<id>.pem|key` the gateway uses.
    certs: &'a Path,
    /// Where the gateway dials (the acceptor, or a relay in front of it).
    endpoint: String,
    /// Extra `[bridge.link]` lines.
    link: &'a str,
    transport: &'a str,
}

fn edge_config(s: &EdgeSetup) -> String {
    let c = s.certs.display();
    format!(
        r#"
[bridge]
enabled = true
gateway_id = "{gw}"
endpoints = ["{endpoint}"]
transport = "{transport}"
ca = "{c}/ca.pem"
cert = "{c}/gateways/{gw}.pem"
key = "{c}/gateways/{gw}.key"
classes = ["alarm", "telemetry", "bulk"]

[[bridge.forward]]
topic = "alarms/#"
remote_prefix = "site/{{gateway_id}}/"
qos = 1
class = "alarm"

[[bridge.forward]]
topic = "sensors/#"
remote_prefix = "site/{{gateway_id}}/"
qos = 1
class = "telemetry"

[[bridge.forward]]
topic = "bulk/#"
remote_prefix = "site/{{gateway_id}}/"
qos = 1
class = "bulk"

[[bridge.subscribe]]
topic = "commands/{{gateway_id}}/#"
class = "alarm"

[bridge.link]
connect_timeout_ms = 2000
backoff_initial_ms = 100
backoff_max_ms = 1000
{link}
"#,
        gw = s.gateway,
        endpoint = s.endpoint,
        transport = s.transport,
        link = s.link,
    )
}

/// A cloud using the CA in `certs`, not started.
fn cloud(certs: &Path, acceptor: u16) -> Broker {
    let c = certs.display().to_string();
    let bind = format!("127.0.0.1:{acceptor}");
    let (ca, cert, key, crl) = (
        format!("{c}/ca.pem"),
        format!("{c}/server.pem"),
        format!("{c}/server.key"),
        format!("{c}/crl.pem"),
    );
    Broker::cloud_stopped(&[
        ("TERN_ACCEPTOR__BIND", &bind),
        ("TERN_ACCEPTOR__CA", &ca),
        ("TERN_ACCEPTOR__CERT", &cert),
        ("TERN_ACCEPTOR__KEY", &key),
        ("TERN_ACCEPTOR__CRL", &crl),
        ("TERN_LOG__LEVEL", "info,tern_bridge=debug"),
    ])
}

/// A gateway with `setup`, not started.
fn edge(setup: &EdgeSetup) -> Broker {
    let mut edge =
        Broker::configured_stopped(&[("TERN_LOG__LEVEL", "info,tern_bridge=debug")], "bridge")
            .expect("spawned tern-edge");
    edge.set_config_file(&edge_config(setup));
    edge
}

fn start(b: &mut Broker) {
    if let Err(failure) = b.try_start(Duration::from_secs(20)) {
        panic!("broker did not start: {failure:?}");
    }
}

impl Site {
    /// A started cloud and gateway `gw1` dialing it directly, bridged.
    fn new(link: &str) -> Site {
        let site = Site::build(link, "auto", |acceptor| format!("127.0.0.1:{acceptor}"));
        site.wait_bridged();
        site
    }

    /// A started cloud and a started gateway `gw1` (with extra `[bridge.link]` lines
    /// `link`) dialing `endpoint(acceptor port)` over `transport`; not waited for.
    fn build(link: &str, transport: &str, endpoint: impl FnOnce(u16) -> String) -> Site {
        let certs = make_certs(&["gw1"]);
        let acceptor = free_port();
        let mut cloud = cloud(&certs, acceptor);
        start(&mut cloud);
        let mut edge = edge(&EdgeSetup {
            gateway: "gw1",
            certs: &certs,
            endpoint: endpoint(acceptor),
            link,
            transport,
        });
        start(&mut edge);
        Site {
            cloud,
            edge,
            acceptor,
        }
    }

    /// Waits until the gateway's bridge is connected (the cloud logs its Hello).
    fn wait_bridged(&self) {
        let line = self
            .edge
            .wait_log_line(&["bridge: connected peer"], Duration::from_secs(30));
        assert!(
            line.is_some(),
            "bridge did not connect (acceptor port {});\nedge log:\n{}\ncloud log:\n{}",
            self.acceptor,
            self.edge.run_log(),
            self.cloud.run_log()
        );
    }
}

fn options(b: &Broker, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, b.host(), b.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(64);
    o
}

/// Publishes `payloads` at QoS 1 on `topic` with up to 64 in flight; returns the
/// payloads the broker acknowledged (stops early when the connection fails).
async fn publish_all(b: &Broker, topic: &str, payloads: &[String]) -> Vec<String> {
    publish_counted(b, topic, payloads, &AtomicUsize::new(0)).await
}

/// [`publish_all`], counting acknowledgements in `acks` as they come.
async fn publish_counted(
    b: &Broker,
    topic: &str,
    payloads: &[String],
    acks: &AtomicUsize,
) -> Vec<String> {
    let (client, mut el) = AsyncClient::new(options(b, &tern_tests::unique("pub"), true), 256);
    let mut acked = Vec::new();
    let mut sent: BTreeMap<u16, String> = BTreeMap::new();
    let mut order = payloads.iter().cloned();
    let mut queued: std::collections::VecDeque<String> = Default::default();
    let mut requested = 0usize;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    while acked.len() < payloads.len() && Instant::now() < deadline {
        while requested < payloads.len() && requested - acked.len().min(requested) < 128 {
            let p = order.next().expect("within payloads");
            client
                .try_publish(topic, QoS::AtLeastOnce, false, p.clone().into_bytes())
                .expect("request queue has room");
            queued.push_back(p);
            requested += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                if let Some(p) = queued.pop_front() {
                    sent.insert(pkid, p);
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if let Some(p) = sent.remove(&ack.pkid) {
                    acked.push(p);
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    acked
}

/// A subscriber with a persistent session: what it received, in order.
struct Collector {
    id: String,
    got: Vec<String>,
}

impl Collector {
    /// Creates the session and its subscription, then goes offline.
    async fn subscribe(b: &Broker, filter: &str) -> Collector {
        let c = Collector {
            id: tern_tests::unique("collector"),
            got: Vec::new(),
        };
        let (client, mut el) = AsyncClient::new(options(b, &c.id, false), 16);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("subscribe to {filter}: {other:?}"),
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
        c
    }

    /// Reconnects and collects until `done(&got)` holds and nothing more came for
    /// `quiet`, or the deadline passes.
    async fn drain(&mut self, b: &Broker, done: impl Fn(&[String]) -> bool, quiet: Duration) {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        'reconnect: while Instant::now() < deadline {
            let (client, mut el) = AsyncClient::new(options(b, &self.id, false), 16);
            let _keep = client;
            loop {
                let wait = if done(&self.got) {
                    quiet
                } else {
                    Duration::from_secs(5)
                };
                match tokio::time::timeout(wait, el.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        self.got
                            .push(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'reconnect;
                    }
                    Err(_) if done(&self.got) => return,
                    Err(_) if Instant::now() >= deadline => return,
                    Err(_) => {}
                }
            }
        }
    }
}

/// `count` payloads `<tag>:<n>`.
fn numbered(tag: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{tag}:{n}")).collect()
}

/// Asserts: every acknowledged payload arrived, nothing arrived twice, nothing that was
/// never published arrived, and each tag arrived in publish order.
fn assert_exact(got: &[String], published: &[String], acked: &[String], what: &str) {
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<&String> = got.iter().filter(|p| !seen.insert(p.as_str())).collect();
    assert!(dups.is_empty(), "{what}: delivered twice: {dups:?}");
    let published_set: std::collections::HashSet<&str> =
        published.iter().map(String::as_str).collect();
    let strangers: Vec<&String> = got
        .iter()
        .filter(|p| !published_set.contains(p.as_str()))
        .collect();
    assert!(
        strangers.is_empty(),
        "{what}: never published: {strangers:?}"
    );
    let lost: Vec<&String> = acked
        .iter()
        .filter(|p| !seen.contains(p.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{what}: {} acknowledged messages lost (of {}; {} received), e.g. {:?}",
        lost.len(),
        acked.len(),
        got.len(),
        &lost[..lost.len().min(10)]
    );
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for p in got {
        let (tag, n) = p.rsplit_once(':').expect("tag:n");
        let n: u64 = n.parse().expect("number");
        if let Some(prev) = last.insert(tag, n) {
            assert!(prev < n, "{what}: {tag} out of order: {prev} before {n}");
        }
    }
}

fn has_all(acked: &[String]) -> impl Fn(&[String]) -> bool + '_ {
    move |got: &[String]| {
        let got: std::collections::HashSet<&str> = got.iter().map(String::as_str).collect();
        acked.iter().all(|p| got.contains(p.as_str()))
    }
}

/// 1. Steady forwarding up (with the remote prefix) and commands down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_forwarding_up_and_commands_down() {
    let site = Site::new("");
    let mut up = Collector::subscribe(&site.cloud, "site/gw1/#").await;
    let mut down = Collector::subscribe(&site.edge, "commands/gw1/#").await;
    let telemetry = numbered("t", 2000);
    let acked = publish_all(&site.edge, "sensors/temp", &telemetry).await;
    assert_eq!(
        acked.len(),
        telemetry.len(),
        "the edge acknowledged everything"
    );
    let commands = numbered("c", 200);
    let acked_down = publish_all(&site.cloud, "commands/gw1/valve", &commands).await;
    assert_eq!(acked_down.len(), commands.len());
    up.drain(&site.cloud, has_all(&acked), Duration::from_millis(500))
        .await;
    assert_exact(&up.got, &telemetry, &acked, "upstream");
    down.drain(&site.edge, has_all(&acked_down), Duration::from_millis(500))
        .await;
    assert_exact(&down.got, &commands, &acked_down, "downstream");
    // Not forwarded: no rule matches, and commands that came down do not go back up.
    publish_all(&site.edge, "local/only", &numbered("l", 5)).await;
    let mut stray = Collector::subscribe(&site.cloud, "#").await;
    stray
        .drain(&site.cloud, |_| true, Duration::from_millis(700))
        .await;
    assert!(
        stray
            .got
            .iter()
            .all(|p| !p.starts_with("l:") && !p.starts_with("c:")),
        "unexpected upstream messages: {:?}",
        stray.got
    );
}

/// 2. The cloud stops while the gateway keeps taking messages, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_stopped_under_load_then_restarted() {
    let mut site = Site::new("");
    let mut up = Collector::subscribe(&site.cloud, "site/gw1/#").await;
    let first = numbered("a", 500);
    let mut acked = publish_all(&site.edge, "sensors/a", &first).await;
    site.cloud.stop();
    // A cloud that shuts down tells its gateways, so they do not wait for the QUIC idle
    // timeout (15 s) to notice.
    assert!(
        site.edge
            .wait_log_line(&["disconnected from the cloud"], Duration::from_secs(5))
            .is_some(),
        "the gateway did not notice the cloud's shutdown within 5 s:\n{}",
        site.edge.run_log()
    );
    let second = numbered("b", 3000);
    acked.extend(publish_all(&site.edge, "sensors/b", &second).await);
    assert_eq!(acked.len(), first.len() + second.len());
    tokio::time::sleep(Duration::from_secs(2)).await;
    site.cloud.restart();
    let published: Vec<String> = first.iter().chain(&second).cloned().collect();
    up.drain(&site.cloud, has_all(&acked), Duration::from_millis(700))
        .await;
    assert_exact(&up.got, &published, &acked, "after cloud restart");
}

/// 3. The gateway is SIGKILLed mid-transfer and restarted: nothing it acknowledged is
/// lost, nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigkilled_mid_transfer() {
    let mut site = Site::new("");
    let mut up = Collector::subscribe(&site.cloud, "site/gw1/#").await;
    let payloads = numbered("k", 6000);
    let acks = Arc::new(AtomicUsize::new(0));
    let killer = kill_after(site.edge.pid().expect("edge pid"), &acks, 2000);
    let mut acked = publish_counted(&site.edge, "sensors/k", &payloads, &acks).await;
    killer.await.expect("killer");
    assert!(
        acked.len() < payloads.len(),
        "the kill did not land mid-stream ({} of {} acknowledged)",
        acked.len(),
        payloads.len()
    );
    site.edge.kill();
    site.edge.restart();
    site.wait_bridged();
    let tail = numbered("k2", 500);
    acked.extend(publish_all(&site.edge, "sensors/k2", &tail).await);
    let published: Vec<String> = payloads.iter().chain(&tail).cloned().collect();
    up.drain(&site.cloud, has_all(&acked), Duration::from_millis(700))
        .await;
    assert_exact(&up.got, &published, &acked, "after edge SIGKILL");
}

/// 4. The cloud is SIGKILLed mid-transfer and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sigkilled_mid_transfer() {
    let mut site = Site::new("");
    let mut up = Collector::subscribe(&site.cloud, "site/gw1/#").await;
    let payloads = numbered("x", 6000);
    let acks = Arc::new(AtomicUsize::new(0));
    let killer = kill_after(site.cloud.pid().expect("cloud pid"), &acks, 2000);
    let acked = publish_counted(&site.edge, "sensors/x", &payloads, &acks).await;
    killer.await.expect("killer");
    assert_eq!(acked.len(), payloads.len(), "the edge kept acknowledging");
    site.cloud.kill();
    site.cloud.restart();
    up.drain(&site.cloud, has_all(&acked), Duration::from_millis(700))
        .await;
    assert_exact(&up.got, &payloads, &acked, "after cloud SIGKILL");
}

/// 5. Commands sent while the gateway is offline reach it when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_gateway_gets_its_commands_on_return() {
    let mut site = Site::new("");
    let mut down = Collector::subscribe(&site.edge, "commands/gw1/#").await;
    site.edge.stop();
    let commands = numbered("o", 300);
    let acked = publish_all(&site.cloud, "commands/gw1/door", &commands).await;
    assert_eq!(acked.len(), commands.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    site.edge.restart();
    down.drain(&site.edge, has_all(&acked), Duration::from_millis(700))
        .await;
    assert_exact(&down.got, &commands, &acked, "commands after return");
}

/// 6. An alarm published during a large backlog replay arrives before the backlog
/// drains (its class has its own queue and stream, and goes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_overtakes_a_bulk_backlog() {
    // A metered link: 400 KiB/s, so 20,000 messages of 1 KiB take about 50 s.
    let mut site = Site::new("rate_bytes_per_sec = 409600");
    site.cloud.stop();
    let bulk: Vec<String> = (0..20_000)
        .map(|n| format!("bulk:{n}:{}", "x".repeat(1000)))
        .collect();
    let acked = publish_all(&site.edge, "bulk/logs", &bulk).await;
    assert_eq!(acked.len(), bulk.len());
    site.cloud.restart();
    site.wait_bridged();
    let (client, mut el) = AsyncClient::new(options(&site.cloud, "watcher", true), 16);
    client
        .subscribe("site/gw1/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_all(&site.edge, "alarms/fire", &["alarm:0".to_string()]).await;
    let published_at = Instant::now();
    let mut bulk_seen = 0usize;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let alarm_after = loop {
        assert!(Instant::now() < deadline, "the alarm never arrived");
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.payload.starts_with(b"alarm") {
                    break bulk_seen;
                }
                bulk_seen += 1;
            }
            Ok(Ok(_)) => {}
            other => panic!("watcher: {other:?}"),
        }
    };
    assert!(
        alarm_after < bulk.len(),
        "the alarm came only after the whole backlog ({alarm_after} bulk messages first)"
    );
    eprintln!(
        "alarm arrived after {alarm_after} of {} bulk messages, {:?} after it was published",
        bulk.len(),
        published_at.elapsed()
    );
}

/// 7. A gateway with a certificate from another CA, and one whose certificate was
/// revoked, are refused, with a log line on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_revoked_certificates_are_refused() {
    let certs = make_certs(&["gw1"]);
    let stranger_ca = make_certs(&["gw1"]);
    let acceptor = free_port();
    let mut cloud = cloud(&certs, acceptor);
    start(&mut cloud);
    // The stranger trusts the cloud's CA but presents a gw1 certificate from another CA.
    std::fs::copy(certs.join("ca.pem"), stranger_ca.join("ca.pem")).expect("copy CA");
    let mut wrong = edge(&EdgeSetup {
        gateway: "gw1",
        certs: &stranger_ca,
        endpoint: format!("127.0.0.1:{acceptor}"),
        link: "",
        transport: "quic",
    });
    start(&mut wrong);
    assert!(
        wrong
            .wait_log_line(&["cloud refused our certificate"], Duration::from_secs(20))
            .is_some(),
        "edge with a foreign certificate did not log the refusal:\n{}",
        wrong.run_log()
    );
    assert!(
        cloud
            .wait_log_line(&["gateway certificate refused"], Duration::from_secs(20))
            .is_some(),
        "cloud did not log the refusal:\n{}",
        cloud.run_log()
    );
    assert!(!wrong.run_log().contains("bridge: connected peer"));
    wrong.stop();
    // Revoked: the right CA, but on the CRL.
    certs_cmd(&["revoke", "gw1", "--dir", &certs.display().to_string()]);
    cloud.restart();
    let mut revoked = edge(&EdgeSetup {
        gateway: "gw1",
        certs: &certs,
        endpoint: format!("127.0.0.1:{acceptor}"),
        link: "",
        transport: "quic",
    });
    start(&mut revoked);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cloud.run_log().contains("certificate revoked") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cloud.run_log().contains("certificate revoked"),
        "cloud did not log the revoked certificate:\n{}",
        cloud.run_log()
    );
    assert!(
        revoked
            .wait_log_line(&["cloud refused our certificate"], Duration::from_secs(20))
            .is_some(),
        "revoked gateway did not log the refusal:\n{}",
        revoked.run_log()
    );
    assert!(!revoked.run_log().contains("bridge: connected peer"));
}

/// 8. An impaired link: 200 ms RTT, 2 % loss, reordering, 1 Mbit/s, and a 30 s
/// blackhole; the bridge keeps delivering, without loss or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impaired_link_with_a_blackhole() {
    let impairment = Impairment {
        delay: Duration::from_millis(100),
        jitter: Duration::from_millis(10),
        loss: 0.02,
        reorder: 0.02,
        rate_bits_per_sec: Some(1_000_000),
        seed: 6,
    };
    let mut relay = None;
    let site = Site::build("", "quic", |acceptor| {
        let port = free_port();
        relay = Some(
            Relay::udp(
                format!("127.0.0.1:{port}").parse().expect("addr"),
                format!("127.0.0.1:{acceptor}").parse().expect("addr"),
                impairment,
            )
            .expect("relay"),
        );
        format!("127.0.0.1:{port}")
    });
    let relay = relay.expect("relay started");
    site.wait_bridged();
    let mut up = Collector::subscribe(&site.cloud, "site/gw1/#").await;
    let before = numbered("i", 1500);
    let mut acked = publish_all(&site.edge, "sensors/i", &before).await;
    relay.blackhole(true);
    let during = numbered("j", 1500);
    acked.extend(publish_all(&site.edge, "sensors/j", &during).await);
    tokio::time::sleep(Duration::from_secs(30)).await;
    relay.blackhole(false);
    let after = numbered("h", 500);
    acked.extend(publish_all(&site.edge, "sensors/h", &after).await);
    let published: Vec<String> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    up.drain(&site.cloud, has_all(&acked), Duration::from_millis(1000))
        .await;
    assert_exact(&up.got, &published, &acked, "over the impaired link");
    eprintln!("relay: {:?}", relay.stats());
}

/// SIGKILLs process `pid` (a child we spawned) once `acks` reaches `threshold`, while a
/// publisher keeps going; the harness's own `kill` then reaps it.
fn kill_after(pid: u32, acks: &Arc<AtomicUsize>, threshold: usize) -> tokio::task::JoinHandle<()> {
    let acks = Arc::clone(acks);
    tokio::spawn(async move {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        while acks.load(Ordering::Relaxed) < threshold && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SAFETY: kill(2) has no memory effects; `pid` is a child process we spawned
        // and have not reaped, so it cannot name another process.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    })
}

/// UDP blocked: the gateway falls back to TLS over TCP (after a dead first endpoint:
/// failover), and forwarding works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fallback_and_endpoint_failover() {
    // Only TCP reaches the cloud through the relay's port: QUIC datagrams go nowhere.
    // The first endpoint has nothing listening at all.
    let (mut relay, mut relay_port) = (None, 0);
    let site = Site::build("", "auto", |acceptor| {
        relay_port = free_port();
        relay = Some(
            Relay::tcp(
                format!("127.0.0.1:{relay_port}").parse().expect("addr"),
                format!("127.0.0.1:{acceptor}").parse().expect("addr"),
                Impairment::default(),
            )
            .expect("relay"),
        );
        format!("127.0.0.1:{}\", \"127.0.0.1:{relay_port}", free_port())
    });
    let _relay = relay.expect("relay started");
    site.wait_bridged();
    let connected = site
        .edge
        .wait_log_line(&["bridge: connected peer"], Duration::from_secs(1))
        .unwrap_or_default();
    assert!(
        connected.contains(&relay_port.to_string()) && connected.to_lowercase().contains("tcp"),
        "expected a TLS/TCP connection through port {relay_port}: {connected}"
    );
    let mut up = Collector::subscribe(&site.cloud, "site/gw1/#").await;
    let payloads = numbered("f", 1000);
    let acked = publish_all(&site.edge, "sensors/f", &payloads).await;
    up.drain(&site.cloud, has_all(&acked), Duration::from_millis(500))
        .await;
    assert_exact(&up.got, &payloads, &acked, "over the TCP fallback");
}

/// The bridge's state is published under `$SYS/bridge/` on the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_status_in_sys_topics() {
    let site = Site::new("compress = true");
    let payloads = numbered("s", 100);
    let acked = publish_all(&site.edge, "sensors/s", &payloads).await;
    assert_eq!(acked.len(), payloads.len());
    let (client, mut el) = AsyncClient::new(options(&site.edge, "sys-watch", true), 16);
    client
        .subscribe("$SYS/bridge/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let acked_seq = "$SYS/bridge/telemetry/acked_seq";
    while Instant::now() < deadline {
        if values.get("$SYS/bridge/connected").map(String::as_str) == Some("1")
            && values
                .get(acked_seq)
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v >= 100)
        {
            break;
        }
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), el.poll()).await
        {
            values.insert(
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            );
        }
    }
    assert_eq!(
        values.get("$SYS/bridge/connected").map(String::as_str),
        Some("1"),
        "{values:?}"
    );
    let seq: u64 = values
        .get(acked_seq)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(seq >= 100, "acked sequence {seq}: {values:?}");
    for key in [
        "backlog/messages",
        "backlog/bytes",
        "backlog/oldest_seconds",
    ] {
        assert!(
            values.contains_key(&format!("$SYS/bridge/telemetry/{key}")),
            "{key} missing: {values:?}"
        );
    }
}

/// A gateway whose downstream subscriptions reach beyond its own topics is refused (the
/// cloud's `acceptor.restrict_downstream`, on by default), with the reason on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_asking_for_all_traffic_is_refused() {
    let Site {
        cloud,
        edge: greedy,
        ..
    } = Site::build(
        "\n[[bridge.subscribe]]\ntopic = \"#\"\nclass = \"bulk\"\n",
        "quic",
        |acceptor| format!("127.0.0.1:{acceptor}"),
    );
    let refused = greedy.wait_log_line(&["restrict_downstream"], Duration::from_secs(20));
    assert!(
        refused.is_some(),
        "the gateway did not log why it was refused:\n{}",
        greedy.run_log()
    );
    assert!(
        cloud
            .wait_log_line(&["refused gateway"], Duration::from_secs(5))
            .is_some(),
        "the cloud did not log the refusal:\n{}",
        cloud.run_log()
    );
    assert!(!greedy.run_log().contains("bridge: connected peer"));
}

/// One cloud, two gateways at once: each gateway's messages arrive under its own prefix,
/// and each gets only its own commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_cloud() {
    let certs = make_certs(&["gw1", "gw2"]);
    let acceptor = free_port();
    let mut cloud = cloud(&certs, acceptor);
    start(&mut cloud);
    let mut edges = Vec::new();
    for gateway in ["gw1", "gw2"] {
        let mut edge = edge(&EdgeSetup {
            gateway,
            certs: &certs,
            endpoint: format!("127.0.0.1:{acceptor}"),
            link: "",
            transport: "auto",
        });
        start(&mut edge);
        assert!(
            edge.wait_log_line(&["bridge: connected peer"], Duration::from_secs(30))
                .is_some(),
            "{gateway} did not connect:\n{}",
            edge.run_log()
        );
        edges.push(edge);
    }
    let mut up = Collector::subscribe(&cloud, "site/#").await;
    let mut downs = Vec::new();
    // Each gateway's local subscriber takes every command topic: another gateway's
    // command arriving here would show up as a stranger.
    for edge in &edges {
        downs.push(Collector::subscribe(edge, "commands/#").await);
    }
    let mut acked = Vec::new();
    let mut published = Vec::new();
    for (edge, gateway) in edges.iter().zip(["gw1", "gw2"]) {
        let payloads = numbered(gateway, 500);
        acked.extend(publish_all(edge, "sensors/t", &payloads).await);
        published.extend(payloads);
    }
    up.drain(&cloud, has_all(&acked), Duration::from_millis(500))
        .await;
    assert_exact(&up.got, &published, &acked, "two gateways upstream");
    for (i, gateway) in ["gw1", "gw2"].into_iter().enumerate() {
        let commands = numbered(&format!("cmd-{gateway}"), 50);
        let acked = publish_all(&cloud, &format!("commands/{gateway}/valve"), &commands).await;
        downs[i]
            .drain(&edges[i], has_all(&acked), Duration::from_millis(700))
            .await;
        // Exact set: nothing of the other gateway's commands.
        assert_exact(&downs[i].got, &commands, &acked, gateway);
    }
}
