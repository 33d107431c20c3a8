//! The broker under attack, and the connection limits of `[limits]`.
//!
//! `abuse_leaves_the_broker_serving_and_bounded` runs, at the same time and against
//! one tern-edge that requires passwords: 3,000 connections opened and dropped
//! without a CONNECT, a flood of CONNECTs with bad passwords (from 127.0.0.3, which
//! the failed-login limit then shuts out), oversized packets before and after
//! login, and a subscriber that never reads while a publisher sends QoS 0 at full
//! speed. Meanwhile a legitimate publisher sends 500 QoS 1 messages to an offline
//! persistent session. Afterwards: a normal client is served, the persistent
//! session gets all 500 messages in order, and the broker's RSS stayed under
//! [`RSS_BOUND_MIB`] throughout (sampled from /proc).
//!
//! The other tests check each connection limit: what is beyond it is closed at
//! accept, without a CONNACK.

mod common;
mod security;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::v4;
use security::{connect_bytes, login_as, password_file, path, read_packet, WAIT};
use tern_tests::{raw, unique, Broker, RawClient, Recv};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The broker's resident memory must stay below this during the attack.
const RSS_BOUND_MIB: u64 = 200;

/// Connections opened and dropped without CONNECT.
const DROPPED_CONNECTIONS: usize = 3_000;

/// CONNECTs with bad passwords.
const BAD_LOGINS: usize = 300;

/// QoS 1 messages to the persistent session during the attack.
const KEPT: usize = 500;

/// How long the never-reading subscriber's publisher sends.
const FLOOD_FOR: Duration = Duration::from_secs(4);

const PW: &str = "correct horse";

/// Resident set size of process `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A TCP connection from local address `from` (any port) to `addr`.
async fn connect_from(from: &str, addr: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("local addr"))?;
    socket.connect(addr.parse().expect("addr")).await
}

fn creds(o: &mut v4::MqttOptions) {
    o.set_credentials("alice", PW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abuse_leaves_the_broker_serving_and_bounded() {
    let file = password_file(&[("alice", PW)]);
    let file = path(&file);
    let env = [
        ("TERN_AUTH__ALLOW_ANONYMOUS", "false"),
        ("TERN_AUTH__PASSWORD_FILE", file.as_str()),
        ("TERN_MQTT__MAX_PACKET_SIZE", "65536"),
        ("TERN_MQTT__MAX_QUEUED_MESSAGES", "2000"),
        ("TERN_LOG__LEVEL", "info"),
    ];
    let Some(b) = Broker::start_configured(&env, "abuse with a password file") else {
        return;
    };
    let started = Instant::now();
    let addr = b.addr();
    let pid = b.pid().expect("pid of the spawned broker");
    let base_rss = rss_kib(pid).expect("VmRSS");

    // The persistent session, offline during the attack.
    let keep_topic = unique("abuse/keep");
    let keeper_id = unique("keeper");
    let mut o = v4::options(&b, &keeper_id);
    o.set_clean_session(false);
    creds(&mut o);
    let mut keeper = v4::connect(o).await;
    keeper.subscribe(&keep_topic, v4::QoS::AtLeastOnce).await;
    keeper.disconnect().await;

    // RSS sampler.
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(base_rss));
    let sampler = {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    max_rss.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // 1. Connections opened and dropped without CONNECT, 100 at a time.
    let droppers = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut opened = 0usize;
            for _ in 0..DROPPED_CONNECTIONS / 100 {
                let batch: Vec<_> = (0..100)
                    .map(|_| {
                        let addr = addr.clone();
                        tokio::spawn(async move { TcpStream::connect(addr).await.is_ok() })
                    })
                    .collect();
                for c in batch {
                    opened += usize::from(c.await.unwrap_or(false));
                }
            }
            opened
        })
    };

    // 2. CONNECT flood with bad passwords from 127.0.0.3, 20 at a time.
    let flood = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut codes = std::collections::BTreeMap::<u8, usize>::new();
            for round in 0..BAD_LOGINS / 20 {
                let batch: Vec<_> = (0..20)
                    .map(|i| {
                        let addr = addr.clone();
                        tokio::spawn(async move {
                            let mut s = connect_from("127.0.0.3", &addr).await.ok()?;
                            let pw = format!("guess-{round}-{i}");
                            let c =
                                connect_bytes(raw::V5, &unique("flood"), Some("alice"), Some(&pw));
                            s.write_all(&c).await.ok()?;
                            let mut buf = Vec::new();
                            let p = read_packet(&mut s, &mut buf).await?;
                            Some(p.connack(raw::V5).ok()?.code)
                        })
                    })
                    .collect();
                for c in batch {
                    if let Ok(Some(code)) = c.await {
                        *codes.entry(code).or_default() += 1;
                    }
                }
            }
            codes
        })
    };

    // 3. Oversized packets: a CONNECT before login, a PUBLISH after.
    let oversized = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut closed = 0;
            for i in 0..20 {
                let mut c = if i % 2 == 0 {
                    RawClient::tcp(&addr, raw::V5).await
                } else {
                    login_as(&addr, raw::V5, &unique("big"), "alice", PW, None).await
                };
                // Fixed header claiming 16 MiB, then a first chunk of it.
                let kind = if i % 2 == 0 { 0x10 } else { 0x30 };
                let mut bytes = vec![kind, 0x80, 0x80, 0x80, 0x08];
                bytes.extend(std::iter::repeat_n(b'x', 4096));
                let _ = c.send(&bytes).await;
                if c.wait_closed(WAIT).await.is_ok() {
                    closed += 1;
                }
            }
            closed
        })
    };

    // 4. A subscriber that never reads, and a QoS 0 publisher at full speed.
    let flood_topic = unique("abuse/flood");
    let mut stuck = login_as(&addr, raw::V4, &unique("stuck"), "alice", PW, None).await;
    assert_eq!(
        stuck
            .subscribe(1, &[(&flood_topic, 0)], &raw::Props::new())
            .await,
        [0]
    );
    let firehose = {
        let (addr, topic) = (addr.clone(), flood_topic.clone());
        tokio::spawn(async move {
            let mut p = login_as(&addr, raw::V4, &unique("hose"), "alice", PW, None).await;
            let one = raw::PublishOut::new(&topic, &[7u8; 1024]).encode(raw::V4);
            let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
            let end = Instant::now() + FLOOD_FOR;
            let mut sent = 0u64;
            while Instant::now() < end {
                match tokio::time::timeout(Duration::from_secs(1), p.send(&batch)).await {
                    Ok(Ok(())) => sent += 64,
                    Ok(Err(_)) => break,
                    Err(_) => {} // Pushed back: keep trying until the end.
                }
            }
            sent
        })
    };

    // Meanwhile, the legitimate QoS 1 traffic to the offline persistent session.
    let mut o = v4::options(&b, &unique("legit"));
    creds(&mut o);
    let mut publisher = v4::connect(o).await;
    for i in 0..KEPT {
        publisher
            .publish(
                &keep_topic,
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }

    let opened = droppers.await.expect("droppers");
    let codes = flood.await.expect("flood");
    let closed = oversized.await.expect("oversized");
    let sent = firehose.await.expect("firehose");
    drop(stuck);

    // Afterwards: a normal client is served...
    let mut o = v4::options(&b, &unique("after"));
    creds(&mut o);
    let mut after = v4::connect(o).await;
    let t = unique("abuse/after");
    after.subscribe(&t, v4::QoS::AtLeastOnce).await;
    after
        .publish(&t, v4::QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(
        &after.recv_publish(WAIT).await.expect("served").payload[..],
        b"still here"
    );

    // ...and the persistent session lost nothing.
    let mut o = v4::options(&b, &keeper_id);
    o.set_clean_session(false);
    creds(&mut o);
    let mut keeper = v4::connect(o).await;
    let got = keeper.recv_publishes(KEPT).await;
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.payload, format!("{i}").as_bytes(), "message {i} in order");
    }
    keeper.expect_no_publish(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let max_mib = max_rss.load(Ordering::Relaxed) / 1024;
    let elapsed = started.elapsed();
    eprintln!(
        "abuse: {opened} connections dropped, bad logins {codes:?}, {closed}/20 oversized \
         closed, {sent} QoS 0 messages at a stuck subscriber; RSS {} MiB at start, at most \
         {max_mib} MiB; {elapsed:?}",
        base_rss / 1024
    );
    assert!(opened >= DROPPED_CONNECTIONS * 9 / 10, "{opened} opened");
    assert_eq!(closed, 20, "every oversized packet closes its connection");
    let refused: usize = codes.values().sum();
    assert!(refused >= BAD_LOGINS * 9 / 10, "{codes:?}");
    assert!(!codes.contains_key(&0), "no bad password got in: {codes:?}");
    assert!(
        codes.get(&0x86).copied().unwrap_or(0) <= 10,
        "only the allowance was verified, the rest refused unchecked: {codes:?}"
    );
    assert!(
        codes.get(&0x9F).copied().unwrap_or(0) >= BAD_LOGINS * 8 / 10,
        "{codes:?}"
    );
    assert!(max_mib < RSS_BOUND_MIB, "RSS reached {max_mib} MiB");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert!(b.log().contains("too many failed logins"), "{}", b.log());
}

/// Sends an anonymous CONNECT on a fresh connection from `from`: true if a CONNACK
/// came, false if the connection was closed without one.
async fn admitted_from(from: &str, addr: &str) -> (bool, Option<TcpStream>) {
    let Ok(mut s) = connect_from(from, addr).await else {
        return (false, None);
    };
    let c = connect_bytes(raw::V4, &unique("lim"), None, None);
    if s.write_all(&c).await.is_err() {
        return (false, None);
    }
    let mut buf = Vec::new();
    match read_packet(&mut s, &mut buf).await {
        Some(p) if p.kind == raw::kind::CONNACK => (true, Some(s)),
        _ => (false, None),
    }
}

#[tokio::test]
async fn max_connections_closes_the_extra_ones_at_accept() {
    let Some(b) =
        Broker::start_configured(&[("TERN_LIMITS__MAX_CONNECTIONS", "4")], "connection limit")
    else {
        return;
    };
    let addr = b.addr();
    let mut held = Vec::new();
    for i in 0..4 {
        let (ok, s) = admitted_from("127.0.0.1", &addr).await;
        assert!(ok, "connection {i} within the limit");
        held.push(s);
    }
    let (ok, _) = admitted_from("127.0.0.1", &addr).await;
    assert!(!ok, "the fifth is closed without a CONNACK");
    let (ok, _) = admitted_from("127.0.0.2", &addr).await;
    assert!(!ok, "from any address");
    // Closing one frees its place.
    held.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        if admitted_from("127.0.0.1", &addr).await.0 {
            break;
        }
        assert!(Instant::now() < deadline, "a place should free up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.log().contains("refused at accept"), "{}", b.log());
}

#[tokio::test]
async fn max_connections_per_ip_counts_each_address() {
    let Some(b) = Broker::start_configured(
        &[("TERN_LIMITS__MAX_CONNECTIONS_PER_IP", "3")],
        "per-address limit",
    ) else {
        return;
    };
    let addr = b.addr();
    let mut held = Vec::new();
    for i in 0..3 {
        let (ok, s) = admitted_from("127.0.0.1", &addr).await;
        assert!(ok, "connection {i}");
        held.push(s);
    }
    assert!(
        !admitted_from("127.0.0.1", &addr).await.0,
        "fourth from 127.0.0.1"
    );
    let (ok, s) = admitted_from("127.0.0.2", &addr).await;
    assert!(ok, "another address has its own count");
    held.push(s);
}

#[tokio::test]
async fn connect_rate_limits_new_connections_per_second() {
    let Some(b) = Broker::start_configured(&[("TERN_LIMITS__CONNECT_RATE", "5")], "connect rate")
    else {
        return;
    };
    let addr = b.addr();
    // The harness's readiness probe may have used a token; wait for a full bucket.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut admitted = 0;
    let mut held = Vec::new();
    for _ in 0..15 {
        let (ok, s) = admitted_from("127.0.0.1", &addr).await;
        admitted += usize::from(ok);
        held.push(s);
    }
    assert!(
        (5..=7).contains(&admitted),
        "{admitted} of 15 admitted in a burst"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        admitted_from("127.0.0.1", &addr).await.0,
        "the bucket refills"
    );
    // Existing connections are not affected.
    let mut c = RawClient::connect(&addr, &raw::Connect::new(raw::V4, &unique("x")))
        .await
        .0;
    c.send(&raw::pingreq()).await.expect("ping");
    assert!(matches!(c.recv(WAIT).await, Recv::Packet(_)));
}
