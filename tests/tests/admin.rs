//! The admin HTTP endpoint of a real `tern-edge`: `/metrics` in the Prometheus text
//! format with counters that move with MQTT traffic, `/healthz`, 404 elsewhere, and
//! loopback-only binding by default. Needs a `tern-edge` the harness starts itself.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tern_tests::{cloud_binary, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response: status code, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// `GET path` over a fresh connection, HTTP/1.1 with `Connection: close`.
async fn get(addr: SocketAddr, path: &str) -> Response {
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect to admin {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("end of headers");
    let mut lines = head.lines();
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The value of the sample `series` (name with labels, as written) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metric(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// `# HELP` and `# TYPE` once per family, names prefixed `tern_`.
fn check_exposition(text: &str) {
    let mut seen = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().expect("name");
            assert!(name.starts_with("tern_"), "{line}");
            assert!(!seen.contains(&name), "HELP twice for {name}");
            seen.push(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(Some(&name), seen.last(), "TYPE right after HELP: {line}");
            assert!(kind == "counter" || kind == "gauge", "{line}");
        } else {
            let series = line.rsplit_once(' ').expect("sample value").0;
            let name = series.split('{').next().expect("name");
            assert_eq!(
                Some(&name),
                seen.last(),
                "sample of the family above: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_mqtt_traffic() {
    let port = tern_tests::free_port();
    let bind = format!("127.0.0.1:{port}");
    // No `$SYS` (retained messages too), so that the counts are ours alone.
    let env = [
        ("TERN_ADMIN__BIND", bind.as_str()),
        ("TERN_MQTT__SYS_INTERVAL", "0"),
    ];
    let Some(broker) = Broker::start_configured(&env, "admin endpoint on a set port") else {
        return;
    };
    let addr: SocketAddr = bind.parse().expect("addr");
    broker
        .wait_log_line(&[&format!("admin listening on http://{bind}")], WAIT)
        .expect("the bound admin address is logged");

    let health = get(addr, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, "ok");

    let before = get(addr, "/metrics").await;
    assert_eq!(before.status, 200);
    let content_type = before.headers.get("content-type").expect("content type");
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    check_exposition(&before.body);
    let received_before = metric(&before.body, "tern_messages_received_total");
    let sent_before = metric(&before.body, "tern_messages_sent_total");
    let retained_before = metric(&before.body, "tern_retained_messages");

    let mut sub = v4::client(&broker, &unique("admin-sub")).await;
    sub.subscribe("admin/t/#", v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::client(&broker, &unique("admin-pub")).await;
    for i in 0..5 {
        let payload = format!("m{i}");
        publisher
            .publish("admin/t/x", v4::QoS::AtLeastOnce, false, payload.as_bytes())
            .await;
    }
    publisher
        .publish("admin/retained", v4::QoS::AtLeastOnce, true, b"kept")
        .await;
    assert_eq!(sub.recv_publishes(5).await.len(), 5);

    let after = get(addr, "/metrics").await;
    assert_eq!(after.status, 200);
    let text = &after.body;
    check_exposition(text);
    assert!(
        metric(text, "tern_messages_received_total") >= received_before + 6.0,
        "{text}"
    );
    assert!(
        metric(text, "tern_messages_sent_total") >= sent_before + 5.0,
        "{text}"
    );
    assert!(metric(text, "tern_clients_connected") >= 2.0, "{text}");
    assert!(metric(text, "tern_sessions") >= 2.0, "{text}");
    assert!(metric(text, "tern_subscriptions") >= 1.0, "{text}");
    assert_eq!(
        metric(text, "tern_retained_messages"),
        retained_before + 1.0,
        "{text}"
    );
    assert!(metric(text, "tern_store_bytes") > 0.0, "{text}");
    assert!(metric(text, "tern_store_commits_total") >= 1.0, "{text}");
    assert_eq!(metric(text, "tern_store_budget_bytes"), 0.0, "{text}");
    assert!(metric(text, "tern_uptime_seconds") > 0.0, "{text}");
    assert!(
        text.contains("tern_build_info{version=\""),
        "build info in\n{text}"
    );
    // No bridge in the dev profile: no bridge families.
    assert!(!text.contains("tern_bridge_"), "{text}");

    for path in ["/", "/metric", "/metrics/x", "/healthz/"] {
        assert_eq!(get(addr, path).await.status, 404, "{path}");
    }
}

/// A local address of this host that is not loopback, if it has one (no packet is
/// sent: connecting a UDP socket only picks the route).
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_binds_loopback_by_default() {
    // The harness's tern-edge runs the `dev` profile, whose admin binds 127.0.0.1:0;
    // the other profiles bind 127.0.0.1:8080 (checked by a unit test of tern-edge).
    let Some(broker) = Broker::start_configured(&[], "reads the broker's log") else {
        return;
    };
    let line = broker
        .wait_log_line(&["admin listening on http://"], WAIT)
        .expect("the admin address is logged");
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("address in {line:?}"));
    assert!(addr.ip().is_loopback(), "{line}");
    assert_ne!(addr.port(), 0);
    assert_eq!(get(addr, "/healthz").await.status, 200);
    if let Some(ip) = non_loopback_ip() {
        let outside = SocketAddr::new(ip, addr.port());
        let result = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(outside)).await;
        assert!(
            !matches!(result, Ok(Ok(_))),
            "admin reachable on {outside}, not only on loopback"
        );
    }
}

/// The admin address a spawned node logged (the last run's).
fn logged_admin_addr(node: &Broker) -> SocketAddr {
    let line = node
        .wait_log_line(&["admin listening on http://"], WAIT)
        .expect("the admin address is logged");
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("address in {line:?}"))
}

/// Scrapes `addr` until every `(series, at least)` holds, or panics after 30 s.
async fn wait_metrics(addr: SocketAddr, want: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = get(addr, "/metrics").await.body;
        check_exposition(&text);
        if want
            .iter()
            .all(|(series, least)| value(&text, series).is_some_and(|v| v >= *least))
        {
            return text;
        }
        assert!(Instant::now() < deadline, "waiting for {want:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn certs_cmd(args: &[&str]) {
    let out = Command::new(cloud_binary())
        .arg("certs")
        .args(args)
        .output()
        .expect("run tern-cloud certs");
    assert!(out.status.success(), "tern-cloud certs {args:?}: {out:?}");
}

fn bridge_config(certs: &Path, acceptor: u16) -> String {
    let c = certs.display();
    format!(
        r#"
[bridge]
enabled = true
gateway_id = "gw1"
endpoints = ["127.0.0.1:{acceptor}"]
ca = "{c}/ca.pem"
cert = "{c}/gateways/gw1.pem"
key = "{c}/gateways/gw1.key"
classes = ["alarm", "telemetry"]

[[bridge.forward]]
topic = "sensors/#"
remote_prefix = "site/gw1/"
qos = 1
class = "telemetry"

[[bridge.subscribe]]
topic = "commands/gw1/#"
class = "alarm"
"#
    )
}

/// A gateway bridged to a cloud: the gateway's `/metrics` shows its link and upstream
/// backlog per class (`tern_bridge_*{class}`), the cloud's shows the gateway
/// (`tern_gateway_*{gateway,class}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_gateway_metrics() {
    if tern_tests::external_broker().is_some() {
        eprintln!("SKIP: bridge_and_gateway_metrics: needs its own tern-edge and tern-cloud");
        return;
    }
    let certs = std::env::temp_dir().join(unique("tern-admin-certs"));
    let d = certs.display().to_string();
    certs_cmd(&["init", "--dir", &d, "--name", "127.0.0.1"]);
    certs_cmd(&["issue-gateway", "gw1", "--dir", &d]);
    let acceptor = free_port();
    let bind = format!("127.0.0.1:{acceptor}");
    let (ca, cert, key) = (
        format!("{d}/ca.pem"),
        format!("{d}/server.pem"),
        format!("{d}/server.key"),
    );
    let mut cloud = Broker::cloud_stopped(&[
        ("TERN_ACCEPTOR__BIND", &bind),
        ("TERN_ACCEPTOR__CA", &ca),
        ("TERN_ACCEPTOR__CERT", &cert),
        ("TERN_ACCEPTOR__KEY", &key),
        ("TERN_ADMIN__BIND", "127.0.0.1:0"),
    ]);
    cloud
        .try_start(Duration::from_secs(20))
        .expect("cloud starts");
    let mut edge = Broker::configured_stopped(&[], "bridge").expect("spawned tern-edge");
    edge.set_config_file(&bridge_config(&certs, acceptor));
    edge.try_start(Duration::from_secs(20))
        .expect("edge starts");
    let edge_admin = logged_admin_addr(&edge);
    let cloud_admin = logged_admin_addr(&cloud);

    let mut publisher = v4::client(&edge, &unique("admin-bridge-pub")).await;
    for i in 0..3 {
        publisher
            .publish(
                "sensors/t",
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    let text = wait_metrics(
        edge_admin,
        &[
            ("tern_bridge_connected", 1.0),
            ("tern_bridge_acked_seq{class=\"telemetry\"}", 3.0),
            ("tern_bridge_messages_sent_total{class=\"telemetry\"}", 3.0),
        ],
    )
    .await;
    assert_eq!(
        metric(&text, "tern_bridge_backlog_messages{class=\"telemetry\"}"),
        0.0,
        "{text}"
    );
    assert!(
        text.contains("tern_bridge_backlog_oldest_seconds{class=\"alarm\"} 0\n"),
        "{text}"
    );
    let text = wait_metrics(
        cloud_admin,
        &[
            ("tern_gateway_connected{gateway=\"gw1\"}", 1.0),
            (
                "tern_gateway_messages_received_total{gateway=\"gw1\",class=\"telemetry\"}",
                3.0,
            ),
        ],
    )
    .await;
    assert!(
        text.contains("tern_gateway_backlog_messages{gateway=\"gw1\",class=\"alarm\"} 0\n"),
        "{text}"
    );
    assert!(
        !text.contains("tern_bridge_"),
        "the cloud runs no bridge client"
    );
}
