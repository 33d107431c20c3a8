//! Issue 5, "space is reclaimed as queues drain": the store file of a real `tern-edge`
//! shrinks again once a large backlog has been delivered.
//!
//! A persistent session collects several MB of QoS 1 messages while offline, so the
//! redb file grows; a second persistent session holds a few messages that stay queued
//! throughout. Then the first subscriber drains its queue, and:
//!
//! * while running: after `store.compact_idle_secs` without a store write the broker
//!   compacts the file (it logs it), and the file is measured smaller than before the
//!   drain; the same under a steady trickle of messages that never lets the store be
//!   idle, once what is left in the store is small;
//! * at startup: with the idle compaction off, the drained file keeps its size until a
//!   restart, which compacts it before serving.
//!
//! Either way nothing queued is lost: the drained subscriber got every message, and the
//! other session still gets each of its messages, also after a restart on the
//! compacted file.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use raw::{kind, prop, Props, PublishOut};

/// Messages of the large backlog.
const BACKLOG: u32 = 6000;
/// Their payload size: the backlog is ~12 MB of payload.
const PAYLOAD: usize = 2000;
/// Messages queued for the session that is never drained, when they are to be few.
const FEW_KEPT: u32 = 50;
/// ... and when they are to be more than a busy broker compacts (4 MiB, see
/// `BUSY_COMPACT_MAX_IN_USE` in edge/src/group_commit.rs): only an idle one does.
const MANY_KEPT: u32 = 2600;
/// PUBLISHes in flight while filling.
const WINDOW: u32 = 100;
/// How long a compaction may take to show in the log (it is quick; this is a bound
/// for a loaded machine, not a timing assertion).
const COMPACTION_WAIT: Duration = Duration::from_secs(60);

/// Compaction options of the tests: a 1 MiB gain is worth it.
const MIN_BYTES: (&str, &str) = ("TERN_STORE__COMPACT_MIN_BYTES", "1048576");

fn payload(seq: u32) -> Vec<u8> {
    let mut p = format!("compact:{seq}:").into_bytes();
    p.resize(PAYLOAD, b'.');
    p
}

fn seq_of(payload: &[u8]) -> u32 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|t| t.strip_prefix("compact:")?.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("not a test payload: {payload:?}"))
}

/// The size of the broker's store file.
fn store_size(broker: &Broker) -> u64 {
    let path = broker
        .data_dir()
        .expect("a spawned broker")
        .join("tern-edge.redb");
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// A v5 persistent session subscribed to `topic` at QoS 1, then offline; the CONNECT
/// that resumes it.
async fn offline_subscriber(addr: &str, id: &str, topic: &str) -> raw::Connect {
    let connect =
        raw::Connect::new(raw::V5, id).props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 3600));
    let (mut c, _) = RawClient::connect(addr, &connect).await;
    assert_eq!(c.subscribe(1, &[(topic, 1)], &Props::new()).await, vec![1]);
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;
    connect.clean(false)
}

/// Publishes messages `0..n` on `topic` at QoS 1, `WINDOW` in flight, each acknowledged.
async fn publish_acked(addr: &str, topic: &str, n: u32) {
    let (mut c, _) = RawClient::connect(addr, &raw_v5(&unique("compact-pub"))).await;
    let mut next = 0;
    while next < n {
        let end = (next + WINDOW).min(n);
        for seq in next..end {
            let pid = (seq % WINDOW) as u16 + 1;
            let msg = PublishOut::new(topic, &payload(seq)).qos(1, pid);
            c.send(&msg.encode(raw::V5)).await.unwrap();
        }
        for _ in next..end {
            let p = c.expect(WAIT, "PUBACK").await;
            assert_eq!(p.kind, kind::PUBACK, "{p:?}");
            let (_, reason) = p.ack().expect("decode PUBACK");
            assert_eq!(reason, 0, "PUBACK reason");
        }
        next = end;
    }
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
}

/// Resumes the session of `connect` and receives (acknowledging each) until `n`
/// distinct messages came; returns their numbers.
async fn drain(addr: &str, connect: &raw::Connect, n: u32) -> BTreeSet<u32> {
    let (mut c, ack) = RawClient::connect(addr, connect).await;
    assert!(ack.session_present, "the persistent session is gone");
    let mut seen = BTreeSet::new();
    while seen.len() < n as usize {
        let p = c.expect_publish(WAIT).await;
        if let Some(pid) = p.pid {
            c.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
        }
        seen.insert(seq_of(&p.payload));
    }
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;
    seen
}

/// Two offline sessions: `big` with the large backlog, `kept` with `kept_count`
/// messages on `kept_topic`.
struct Filled {
    big: raw::Connect,
    kept: raw::Connect,
    kept_topic: String,
    kept_count: u32,
}

async fn fill(broker: &Broker, kept_count: u32) -> Filled {
    let addr = broker.addr();
    let big_topic = unique("compact/big");
    let kept_topic = unique("compact/kept");
    let big = offline_subscriber(&addr, &unique("compact-big"), &big_topic).await;
    let kept = offline_subscriber(&addr, &unique("compact-kept"), &kept_topic).await;
    publish_acked(&addr, &kept_topic, kept_count).await;
    publish_acked(&addr, &big_topic, BACKLOG).await;
    Filled {
        big,
        kept,
        kept_topic,
        kept_count,
    }
}

/// Drains the large backlog and checks that every message came.
async fn drain_big(broker: &Broker, filled: &Filled) {
    let seen = drain(&broker.addr(), &filled.big, BACKLOG).await;
    assert_eq!(seen, (0..BACKLOG).collect(), "the drained backlog");
}

/// The messages of the session that was never drained are all still there.
async fn kept_are_intact(broker: &Broker, filled: &Filled, when: &str) {
    let n = filled.kept_count;
    let seen = drain(&broker.addr(), &filled.kept, n).await;
    assert_eq!(seen, (0..n).collect(), "queued messages {when}");
}

/// The "store file compacted" lines of the current run that name `when`.
fn compaction_lines(broker: &Broker, when: &str) -> Vec<String> {
    broker
        .run_log()
        .lines()
        .filter(|l| l.contains("store file compacted") && l.contains(when))
        .map(str::to_owned)
        .collect()
}

/// Waits for a `when` compaction after the first `seen` ones; its log line.
fn wait_compaction(broker: &Broker, when: &str, seen: usize) -> String {
    let deadline = std::time::Instant::now() + COMPACTION_WAIT;
    loop {
        if let Some(line) = compaction_lines(broker, when).into_iter().nth(seen) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {when} compaction logged; log:\n{}",
            broker.run_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_store_file_shrinks_while_idle() {
    let Some(mut broker) = Broker::start_configured(
        &[MIN_BYTES, ("TERN_STORE__COMPACT_IDLE_SECS", "1")],
        "needs the idle compaction configured",
    ) else {
        return;
    };
    let filled = fill(&broker, MANY_KEPT).await;
    let full = store_size(&broker);
    assert!(
        full > 10_000_000,
        "the backlog grows the file: {full} bytes"
    );
    // A pause in the fill on a loaded machine may have compacted already; the
    // compaction that counts is the one after the drain.
    let before = compaction_lines(&broker, "idle").len();
    drain_big(&broker, &filled).await;
    let line = tokio::task::block_in_place(|| wait_compaction(&broker, "idle", before));
    let after = store_size(&broker);
    eprintln!("file {full} -> {after} bytes; {line}");
    assert!(
        after * 2 < full,
        "the drained file shrinks: {full} -> {after} bytes"
    );
    kept_are_intact(&broker, &filled, "after the idle compaction").await;

    // The compacted file is a sound store: more traffic, then a restart on it.
    let addr = broker.addr();
    let topic = unique("compact/after");
    let again = offline_subscriber(&addr, &unique("compact-again"), &topic).await;
    publish_acked(&addr, &topic, 10).await;
    tokio::task::block_in_place(|| broker.restart());
    let seen = drain(&addr, &again, 10).await;
    assert_eq!(
        seen,
        (0..10).collect(),
        "messages queued after the compaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_store_file_shrinks_at_startup() {
    let Some(mut broker) = Broker::start_configured(
        &[MIN_BYTES, ("TERN_STORE__COMPACT_IDLE_SECS", "0")],
        "needs the idle compaction off",
    ) else {
        return;
    };
    let filled = fill(&broker, FEW_KEPT).await;
    drain_big(&broker, &filled).await;
    let drained = store_size(&broker);
    assert!(drained > 10_000_000, "the file grew: {drained} bytes");
    assert_eq!(
        compaction_lines(&broker, "idle"),
        Vec::<String>::new(),
        "compact_idle_secs = 0 never compacts while running"
    );
    // SIGKILL: the compaction at startup must not need a clean shutdown.
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    let line = compaction_lines(&broker, "startup")
        .pop()
        .unwrap_or_else(|| panic!("no startup compaction logged:\n{}", broker.run_log()));
    let after = store_size(&broker);
    eprintln!("file {drained} -> {after} bytes; {line}");
    assert!(
        after * 2 < drained,
        "the drained file shrinks at startup: {drained} -> {after} bytes"
    );
    kept_are_intact(&broker, &filled, "after the startup compaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_store_file_shrinks_under_steady_traffic() {
    let Some(broker) = Broker::start_configured(
        &[MIN_BYTES, ("TERN_STORE__COMPACT_IDLE_SECS", "1")],
        "needs the idle compaction configured",
    ) else {
        return;
    };
    let filled = fill(&broker, FEW_KEPT).await;
    let full = store_size(&broker);
    let before = compaction_lines(&broker, "busy").len();
    drain_big(&broker, &filled).await;
    // A stored QoS 1 message every 200 ms: the store is never idle for a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = tokio::spawn({
        let (addr, topic, stop) = (broker.addr(), filled.kept_topic.clone(), stop.clone());
        async move {
            let (mut c, _) = RawClient::connect(&addr, &raw_v5(&unique("compact-trickle"))).await;
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let seq = FEW_KEPT + sent;
                let pid = (sent % 1000) as u16 + 1;
                let msg = PublishOut::new(&topic, &payload(seq)).qos(1, pid);
                c.send(&msg.encode(raw::V5)).await.unwrap();
                let p = c.expect(WAIT, "PUBACK").await;
                assert_eq!(p.kind, kind::PUBACK, "{p:?}");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sent
        }
    });
    let line = tokio::task::block_in_place(|| wait_compaction(&broker, "busy", before));
    let after = store_size(&broker);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = trickle.await.expect("trickle publisher");
    eprintln!("file {full} -> {after} bytes under traffic; {line}");
    assert_eq!(
        compaction_lines(&broker, "idle"),
        Vec::<String>::new(),
        "the store was never idle"
    );
    assert!(
        after * 2 < full,
        "the drained file shrinks under traffic: {full} -> {after} bytes"
    );
    let n = FEW_KEPT + sent;
    let seen = drain(&broker.addr(), &filled.kept, n).await;
    assert_eq!(seen, (0..n).collect(), "queued and trickled messages");
}
