//! Issue 5, "nothing acknowledged is ever lost": the real `tern-edge` process, killed with
//! SIGKILL at random points and restarted on the same data directory, with real clients.
//!
//! * [`acknowledged_messages_survive_sigkill`] is the crash test: a persistent-session
//!   subscriber (rumqttc, MQTT 3.1.1, clean session off) subscribes once and goes offline;
//!   two raw publishers send a numbered QoS 1 stream (MQTT 5) and a numbered QoS 2 stream
//!   (MQTT 3.1.1, persistent session, so that a resent QoS 2 PUBLISH is recognised by its
//!   packet id); the broker is SIGKILLed after a random number of acknowledgements (seeded,
//!   `TERN_TEST_SEED` replays a run) several times and once more after the last
//!   acknowledgement. The publishers reconnect and resend exactly what they hold no
//!   acknowledgement for (PUBLISH with DUP, or PUBREL). Then the subscriber comes back
//!   without resubscribing and drains: every QoS 1 message at least once, every QoS 2
//!   message exactly once, the retained message set before the kills intact (and the one
//!   cleared before the kills still cleared), and the subscriptions still route new
//!   messages.
//! * [`deliveries_survive_sigkill_while_draining`] is its mirror image: the subscriber
//!   drains a QoS 1 and QoS 2 backlog while the broker is SIGKILLed under it, reconnecting
//!   each time and keeping its QoS 2 receiver state as MQTT says; every message arrives,
//!   QoS 2 exactly once.
//! * [`live_deliveries_survive_sigkill`] runs both at once: an online subscriber gets QoS 1
//!   deliveries before their store commit, and acknowledges many within the same commit
//!   group (which then never writes them); every acknowledged message still arrives.
//! * Deterministic cases of the same promise: deliveries in flight at the kill resume
//!   (QoS 1/2 PUBLISH resent with DUP, QoS 2 continued with PUBREL), a QoS 2 PUBLISH that
//!   got PUBREC before the kill is recognised when resent, and expiry (sessions and
//!   messages) keeps counting while the broker is down.
//! * A graceful restart keeps sessions, queues and retained messages too; the `memory`
//!   backend forgets them (and so shows that the default backend is the durable one).
//! * A store file that is garbage, or a directory, stops `tern-edge` at startup with a
//!   non-zero exit and a message naming the file; a truncated store is either recovered
//!   or reported the same way, never a panic.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raw::{kind, prop, Props, PublishOut};

/// QoS 1 messages in the crash test.
const Q1_COUNT: u32 = 1500;
/// QoS 2 messages in the crash test.
const Q2_COUNT: u32 = 800;
/// SIGKILLs while the publishers run (one more follows the last acknowledgement).
const KILLS: usize = 5;
/// Acknowledgements (both streams together) between two kills: uniform in this range.
const ACKS_BETWEEN_KILLS: (u64, u64) = (60, 300);
/// Unacknowledged messages a publisher keeps in flight.
const WINDOW: usize = 24;
/// Longest a publisher waits for an acknowledgement while messages are in flight.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole crash test must finish within this (it is meant to take well under 30 s).
const TEST_DEADLINE: Duration = Duration::from_secs(90);

/// splitmix64: a tiny seeded generator, so that a failing run's kill points replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `TERN_TEST_SEED`, or one from the clock (printed, so that a failure can be replayed).
fn seed() -> u64 {
    std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Where a message of a publisher stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not sent yet.
    Unsent,
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
    /// PUBACK or PUBCOMP received: the broker owns the message.
    Acked,
}

/// One numbered stream and what the broker acknowledged of it.
struct Stream {
    name: &'static str,
    qos: u8,
    topic: String,
    connect: raw::Connect,
    state: Vec<State>,
    /// Packet id → sequence number, for the messages in flight.
    inflight: HashMap<u16, u32>,
    next: u32,
    /// Acknowledgements of all streams together (drives the kills).
    acked_total: Arc<AtomicU64>,
    /// Connections made (1 + reconnects).
    connections: u32,
    /// Messages resent with DUP and PUBRELs resent after a reconnect.
    resent: u32,
    /// Everything that was wrong, for the final report.
    errors: Vec<String>,
}

impl Stream {
    /// `n` numbered messages at `qos` on `topic`, none sent yet.
    fn new(
        name: &'static str,
        qos: u8,
        n: u32,
        topic: String,
        connect: raw::Connect,
        acked_total: &Arc<AtomicU64>,
    ) -> Self {
        Stream {
            name,
            qos,
            topic,
            connect,
            state: vec![State::Unsent; n as usize],
            inflight: HashMap::new(),
            next: 0,
            acked_total: acked_total.clone(),
            connections: 0,
            resent: 0,
            errors: Vec::new(),
        }
    }

    fn pid(seq: u32) -> u16 {
        (seq % 60_000) as u16 + 1
    }

    fn payload(&self, seq: u32) -> Vec<u8> {
        format!("{}:{seq}:{}", self.name, "x".repeat(40)).into_bytes()
    }

    fn publish(&self, seq: u32, dup: bool) -> Vec<u8> {
        let mut p = PublishOut::new(&self.topic, &self.payload(seq)).qos(self.qos, Self::pid(seq));
        p.dup = dup;
        p.encode(self.connect.version)
    }

    fn done(&self) -> bool {
        self.next as usize == self.state.len() && self.inflight.is_empty()
    }

    fn acked(&self) -> BTreeSet<u32> {
        (0..self.state.len() as u32)
            .filter(|&s| self.state[s as usize] == State::Acked)
            .collect()
    }

    /// Handles one acknowledgement; returns a packet to send back (PUBREL), if any.
    fn on_ack(&mut self, p: &raw::Packet) -> Option<Vec<u8>> {
        let (pid, reason) = match p.ack() {
            Ok(a) => a,
            Err(e) => {
                self.errors.push(format!("undecodable ack {p:?}: {e}"));
                return None;
            }
        };
        let Some(&seq) = self.inflight.get(&pid) else {
            self.errors
                .push(format!("ack type {} for unknown packet id {pid}", p.kind));
            return None;
        };
        let st = self.state[seq as usize];
        match (p.kind, st) {
            (kind::PUBACK, State::Published) if self.qos == 1 => {
                if reason >= 0x80 {
                    self.errors
                        .push(format!("seq {seq}: PUBACK with reason 0x{reason:02x}"));
                    return None;
                }
                self.state[seq as usize] = State::Acked;
                self.inflight.remove(&pid);
                self.acked_total.fetch_add(1, Ordering::Relaxed);
                None
            }
            (kind::PUBREC, State::Published | State::Released) if self.qos == 2 => {
                if reason >= 0x80 {
                    self.errors
                        .push(format!("seq {seq}: PUBREC with reason 0x{reason:02x}"));
                    return None;
                }
                self.state[seq as usize] = State::Released;
                Some(raw::ack(kind::PUBREL, pid, None))
            }
            (kind::PUBCOMP, State::Released) if self.qos == 2 => {
                if reason >= 0x80 {
                    self.errors
                        .push(format!("seq {seq}: PUBCOMP with reason 0x{reason:02x}"));
                }
                self.state[seq as usize] = State::Acked;
                self.inflight.remove(&pid);
                self.acked_total.fetch_add(1, Ordering::Relaxed);
                None
            }
            (k, st) => {
                self.errors.push(format!(
                    "seq {seq} (packet id {pid}): unexpected packet type {k} in state {st:?}"
                ));
                None
            }
        }
    }
}

/// Sends a numbered stream to completion across broker kills: reconnects while the broker
/// is down, resends what is unacknowledged, keeps [`WINDOW`] messages in flight.
async fn run_publisher(addr: String, mut s: Stream, stop: Arc<AtomicBool>) -> Stream {
    'connections: while !s.done() {
        if stop.load(Ordering::Relaxed) {
            s.errors.push("stopped before completion".into());
            return s;
        }
        let mut c = match RawClient::try_connect(&addr, &s.connect, Duration::from_secs(2)).await {
            Ok((c, ack)) if ack.code == 0 => c,
            Ok((_, ack)) => {
                s.errors
                    .push(format!("CONNACK refused: 0x{:02x}", ack.code));
                return s;
            }
            Err(_) => {
                // The broker is being restarted.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        s.connections += 1;
        // After a reconnect, resend in order what was never acknowledged.
        let mut pending: Vec<(u32, u16)> = s.inflight.iter().map(|(&p, &q)| (q, p)).collect();
        pending.sort_unstable();
        for (seq, pid) in pending {
            let bytes = match s.state[seq as usize] {
                State::Published => s.publish(seq, true),
                State::Released => raw::ack(kind::PUBREL, pid, None),
                st => unreachable!("in flight in state {st:?}"),
            };
            s.resent += 1;
            if c.send(&bytes).await.is_err() {
                continue 'connections;
            }
        }
        loop {
            let mut out = Vec::new();
            while s.inflight.len() < WINDOW && (s.next as usize) < s.state.len() {
                let seq = s.next;
                s.next += 1;
                out.extend(s.publish(seq, false));
                s.state[seq as usize] = State::Published;
                s.inflight.insert(Stream::pid(seq), seq);
            }
            if !out.is_empty() && c.send(&out).await.is_err() {
                continue 'connections;
            }
            if s.done() {
                let _ = c.send(&raw::disconnect(c.version, 0, &Props::new())).await;
                return s;
            }
            match c.recv(ACK_TIMEOUT).await {
                Recv::Packet(p) if p.kind == kind::DISCONNECT => {
                    s.errors
                        .push(format!("broker sent DISCONNECT {:?}", p.disconnect()));
                    continue 'connections;
                }
                Recv::Packet(p) => {
                    if let Some(back) = s.on_ack(&p) {
                        if c.send(&back).await.is_err() {
                            continue 'connections;
                        }
                    }
                }
                Recv::Closed | Recv::Garbage(_) => continue 'connections,
                Recv::Timeout => {
                    s.errors.push(format!(
                        "no acknowledgement within {ACK_TIMEOUT:?} with {} in flight",
                        s.inflight.len()
                    ));
                    return s;
                }
            }
        }
    }
    s
}

fn first_few(set: &BTreeSet<u32>) -> Vec<u32> {
    set.iter().take(20).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let Some(mut broker) = Broker::start_configured(&[], "kills and restarts the broker") else {
        return;
    };
    let seed = seed();
    eprintln!("crash test seed {seed} (TERN_TEST_SEED={seed} replays the kill points)");
    let started = Instant::now();
    let result = tokio::time::timeout(TEST_DEADLINE, crash_test(&mut broker, seed)).await;
    assert!(
        result.is_ok(),
        "crash test (seed {seed}) did not finish within {TEST_DEADLINE:?}; broker log:\n{}",
        tail(&broker.log(), 60)
    );
    eprintln!("crash test took {:?}", started.elapsed());
}

async fn crash_test(broker: &mut Broker, seed: u64) {
    let mut rng = Rng(seed);
    let run = unique("crash");
    let sub_id = format!("{run}-sub");
    let q1_topic = format!("crash/q1/{run}");
    let q2_topic = format!("crash/q2/{run}");
    let kept_topic = format!("crash/retained/{run}/kept");
    let cleared_topic = format!("crash/retained/{run}/cleared");

    // The subscriber: persistent session, subscribes once, goes offline.
    let mut opts = v4::options(broker, &sub_id);
    opts.set_clean_session(false);
    let mut sub = v4::connect(opts.clone()).await;
    let (f1, f2) = (format!("crash/q1/{run}/#"), format!("crash/q2/{run}/#"));
    let codes = sub
        .subscribe_many(&[(&f1, v4::QoS::AtLeastOnce), (&f2, v4::QoS::ExactlyOnce)])
        .await;
    assert_eq!(
        codes,
        vec![
            v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce),
            v4::SubscribeReasonCode::Success(v4::QoS::ExactlyOnce)
        ],
        "SUBACK"
    );
    sub.disconnect().await;

    // Retained messages before the kills: one kept, one set and cleared again.
    let mut r = v4::client(broker, "crash-retain").await;
    r.publish(&kept_topic, v4::QoS::AtLeastOnce, true, b"kept")
        .await;
    r.publish(&cleared_topic, v4::QoS::AtLeastOnce, true, b"gone")
        .await;
    r.publish(&cleared_topic, v4::QoS::AtLeastOnce, true, b"")
        .await;
    r.disconnect().await;

    let acked_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let q1 = Stream::new(
        "q1",
        1,
        Q1_COUNT,
        format!("{q1_topic}/s"),
        raw::Connect::new(raw::V5, &format!("{run}-pub1")),
        &acked_total,
    );
    // QoS 2 exactly-once across reconnects needs the publisher's session (the broker
    // remembers the packet ids it sent PUBREC for).
    let q2 = Stream::new(
        "q2",
        2,
        Q2_COUNT,
        format!("{q2_topic}/s"),
        raw::Connect::new(raw::V4, &format!("{run}-pub2")).clean(false),
        &acked_total,
    );
    let t1 = tokio::spawn(run_publisher(broker.addr(), q1, stop.clone()));
    let t2 = tokio::spawn(run_publisher(broker.addr(), q2, stop.clone()));

    // The kills: each after a random number of further acknowledgements.
    let kill_points = kill_along(
        broker,
        &mut rng,
        &acked_total,
        ACKS_BETWEEN_KILLS,
        100,
        || t1.is_finished() && t2.is_finished(),
    )
    .await;
    let (q1, q2) = match tokio::time::timeout(Duration::from_secs(40), async {
        (t1.await.expect("q1 task"), t2.await.expect("q2 task"))
    })
    .await
    {
        Ok(r) => r,
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "publishers did not finish; log:\n{}",
                tail(&broker.run_log(), 40)
            );
        }
    };
    for s in [&q1, &q2] {
        eprintln!(
            "{}: {} acknowledged, {} connections, {} resent after reconnects",
            s.name,
            s.acked().len(),
            s.connections,
            s.resent
        );
    }
    assert_eq!(
        kill_points.len(),
        KILLS,
        "the publishers finished before all kills happened (kill points {kill_points:?}): \
         the test proved less than it should; raise the message counts"
    );
    for s in [&q1, &q2] {
        assert!(
            s.errors.is_empty(),
            "{} publisher saw errors: {:?}; log:\n{}",
            s.name,
            s.errors,
            tail(&broker.log(), 40)
        );
    }

    // One more kill after the last acknowledgement: everything is read back from the store.
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    assert!(
        broker.run_log().contains("restored") || !broker.run_log().is_empty(),
        "restarted broker wrote nothing"
    );

    // The subscriber comes back without subscribing and drains.
    let mut sub = v4::connect(opts.clone()).await;
    assert!(
        sub.connack.session_present,
        "the subscriber's session must survive {} kills (CONNACK session present = 0)",
        KILLS + 1
    );
    let want1 = q1.acked();
    let want2 = q2.acked();
    let mut got1: BTreeMap<u32, u32> = BTreeMap::new();
    let mut got2: BTreeMap<u32, u32> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut record =
        |p: &v4::Publish, got1: &mut BTreeMap<u32, u32>, got2: &mut BTreeMap<u32, u32>| {
            let text = String::from_utf8_lossy(&p.payload).into_owned();
            let mut parts = text.splitn(3, ':');
            let (name, seq) = (
                parts.next(),
                parts.next().and_then(|s| s.parse::<u32>().ok()),
            );
            match (name, seq, p.qos) {
                (Some("q1"), Some(seq), v4::QoS::AtLeastOnce) => *got1.entry(seq).or_default() += 1,
                (Some("q2"), Some(seq), v4::QoS::ExactlyOnce) => *got2.entry(seq).or_default() += 1,
                _ => wrong.push(format!("{:?} qos {:?}: {text}", p.topic, p.qos)),
            }
        };
    loop {
        let complete = want1.iter().all(|s| got1.contains_key(s))
            && want2.iter().all(|s| got2.contains_key(s));
        // Once everything arrived, wait a little longer for duplicates.
        let wait = if complete { QUIET * 2 } else { WAIT };
        match sub.recv_publish(wait).await {
            Some(p) => record(&p, &mut got1, &mut got2),
            None if complete => break,
            None => {
                let missing1: BTreeSet<u32> = want1
                    .iter()
                    .filter(|s| !got1.contains_key(s))
                    .copied()
                    .collect();
                let missing2: BTreeSet<u32> = want2
                    .iter()
                    .filter(|s| !got2.contains_key(s))
                    .copied()
                    .collect();
                panic!(
                    "acknowledged messages lost (seed {seed}, kills after {kill_points:?} acks): \
                     QoS 1 {} of {} missing, first {:?}; QoS 2 {} of {} missing, first {:?}; \
                     broker log:\n{}",
                    missing1.len(),
                    want1.len(),
                    first_few(&missing1),
                    missing2.len(),
                    want2.len(),
                    first_few(&missing2),
                    tail(&broker.log(), 60)
                );
            }
        }
    }
    assert!(wrong.is_empty(), "unexpected deliveries: {wrong:?}");
    let dup1 = got1.values().filter(|&&n| n > 1).count();
    let dup2: Vec<(u32, u32)> = got2
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&s, &n)| (s, n))
        .collect();
    eprintln!(
        "drained: QoS 1 {} distinct ({} duplicated, allowed), QoS 2 {} distinct",
        got1.len(),
        dup1,
        got2.len()
    );
    assert!(
        dup2.is_empty(),
        "QoS 2 must be delivered exactly once, duplicates (seq, times): {:?} (seed {seed})",
        &dup2[..dup2.len().min(20)]
    );
    let extra2: Vec<u32> = got2
        .keys()
        .filter(|s| !want2.contains(s))
        .copied()
        .collect();
    assert!(
        extra2.is_empty(),
        "QoS 2 messages delivered that were never sent: {extra2:?}"
    );

    // The subscriptions still route, without a new SUBSCRIBE.
    let mut p = v4::client(broker, "crash-live").await;
    p.publish(
        &format!("{q1_topic}/live"),
        v4::QoS::AtLeastOnce,
        false,
        b"q1:live",
    )
    .await;
    p.publish(
        &format!("{q2_topic}/live"),
        v4::QoS::ExactlyOnce,
        false,
        b"q2:live",
    )
    .await;
    let live = sub.recv_publishes(2).await;
    let mut payloads: Vec<Vec<u8>> = live.iter().map(|p| p.payload.to_vec()).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"q1:live".to_vec(), b"q2:live".to_vec()]);

    // Retained: the kept one is there, the cleared one stays cleared.
    let mut r = v4::client(broker, "crash-retain-check").await;
    r.subscribe(&format!("crash/retained/{run}/#"), v4::QoS::AtLeastOnce)
        .await;
    let kept = r
        .recv_publish(WAIT)
        .await
        .expect("the retained message set before the kills is gone");
    assert_eq!(
        (kept.topic.clone(), kept.payload.as_ref(), kept.retain),
        (kept_topic.clone(), &b"kept"[..], true)
    );
    r.expect_no_publish(QUIET).await;
}

/// What the draining subscriber of [`deliveries_survive_sigkill_while_draining`] saw,
/// with the receiver side of QoS 2 done by the book: a PUBLISH whose packet id awaits
/// PUBREL is a resend, answered with PUBREC but not delivered again.
#[derive(Default)]
struct Drained {
    /// Deliveries to the application per (stream, seq).
    delivered: BTreeMap<(String, u32), u32>,
    /// QoS 2 packet ids that got PUBREC and wait for PUBREL (session state: kept across
    /// reconnects).
    awaiting_rel: BTreeSet<u16>,
    connections: u32,
    errors: Vec<String>,
}

impl Drained {
    /// Asserts that every `(stream, seq)` of `want` was delivered, and nothing of the QoS 2
    /// stream ("q2") more than once.
    fn assert_got<'a>(&self, want: impl Iterator<Item = (&'a str, u32)>, seed: u64) {
        let missing: Vec<String> = want
            .filter(|&(n, s)| !self.delivered.contains_key(&(n.to_string(), s)))
            .take(20)
            .map(|(n, s)| format!("{n}:{s}"))
            .collect();
        assert!(
            missing.is_empty(),
            "messages lost across the kills (seed {seed}, first 20): {missing:?}"
        );
        let dup2: Vec<u32> = self
            .delivered
            .iter()
            .filter(|((n, _), &c)| n == "q2" && c > 1)
            .map(|((_, s), _)| *s)
            .take(20)
            .collect();
        assert!(
            dup2.is_empty(),
            "QoS 2 delivered more than once across the kills (seed {seed}): {dup2:?}"
        );
    }
}

/// Drains a persistent v4 session until `want` distinct messages arrived, reconnecting
/// whenever the broker goes away; counts distinct deliveries in `progress`.
async fn drain_across_kills(
    addr: String,
    connect: raw::Connect,
    want: usize,
    progress: Arc<AtomicU64>,
) -> Drained {
    let mut d = Drained::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    'connections: loop {
        if Instant::now() > deadline {
            d.errors.push("drain did not finish within 60 s".into());
            return d;
        }
        let mut c = match RawClient::try_connect(&addr, &connect, Duration::from_secs(2)).await {
            Ok((c, ack)) if ack.code == 0 && ack.session_present => c,
            Ok((_, ack)) => {
                d.errors.push(format!(
                    "reconnect: code {} session present {}",
                    ack.code, ack.session_present
                ));
                return d;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        d.connections += 1;
        loop {
            let wait = if d.delivered.len() >= want {
                QUIET * 2
            } else {
                ACK_TIMEOUT
            };
            match c.recv(wait).await {
                Recv::Packet(p) if p.kind == kind::PUBLISH => {
                    let publ = match p.publish(raw::V4) {
                        Ok(publ) => publ,
                        Err(e) => {
                            d.errors.push(e);
                            return d;
                        }
                    };
                    let pid = publ.pid.unwrap_or(0);
                    let resend = publ.qos == 2 && d.awaiting_rel.contains(&pid);
                    if !resend {
                        let text = String::from_utf8_lossy(&publ.payload).into_owned();
                        let mut parts = text.splitn(3, ':');
                        let name = parts.next().unwrap_or("").to_string();
                        let seq = parts
                            .next()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(u32::MAX);
                        let n = d.delivered.entry((name, seq)).or_default();
                        *n += 1;
                        if *n == 1 {
                            progress.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let back = match publ.qos {
                        2 => {
                            d.awaiting_rel.insert(pid);
                            raw::ack(kind::PUBREC, pid, None)
                        }
                        _ => raw::ack(kind::PUBACK, pid, None),
                    };
                    if c.send(&back).await.is_err() {
                        continue 'connections;
                    }
                }
                Recv::Packet(p) if p.kind == kind::PUBREL => {
                    let pid = p.ack().map(|a| a.0).unwrap_or(0);
                    d.awaiting_rel.remove(&pid);
                    if c.send(&raw::ack(kind::PUBCOMP, pid, None)).await.is_err() {
                        continue 'connections;
                    }
                }
                Recv::Packet(_) => {}
                Recv::Closed | Recv::Garbage(_) => continue 'connections,
                Recv::Timeout if d.delivered.len() >= want => {
                    let _ = c.send(&raw::disconnect(raw::V4, 0, &Props::new())).await;
                    return d;
                }
                Recv::Timeout => {
                    d.errors.push(format!(
                        "nothing for {ACK_TIMEOUT:?} with {} of {want} delivered",
                        d.delivered.len()
                    ));
                    return d;
                }
            }
        }
    }
}

/// The delivery side of the promise: an offline persistent subscriber with a QoS 1 and a
/// QoS 2 backlog drains it while the broker is SIGKILLed at random points (seeded) and
/// restarted; the subscriber reconnects each time and keeps its QoS 2 receiver state.
/// Every message arrives, QoS 2 exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_sigkill_while_draining() {
    let Some(mut broker) = Broker::start_configured(&[], "kills and restarts the broker") else {
        return;
    };
    let seed = seed() ^ 0x5EED;
    eprintln!("drain crash test seed {seed}");
    let mut rng = Rng(seed);
    let run = unique("dcrash");
    let connect = raw::Connect::new(raw::V4, &format!("{run}-sub")).clean(false);
    subscribe_and_leave(&broker, &connect, "dcrash", &run).await;

    let (n1, n2) = (1500u32, 1000u32);
    let acked_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (q1, q2) = two_streams("dcrash", &run, (n1, n2), raw::V4, &acked_total);
    let (q1, q2) = tokio::join!(
        run_publisher(broker.addr(), q1, stop.clone()),
        run_publisher(broker.addr(), q2, stop.clone())
    );
    assert!(
        q1.errors.is_empty() && q2.errors.is_empty(),
        "{:?} {:?}",
        q1.errors,
        q2.errors
    );

    let progress = Arc::new(AtomicU64::new(0));
    let want = (n1 + n2) as usize;
    let task = tokio::spawn(drain_across_kills(
        broker.addr(),
        connect,
        want,
        progress.clone(),
    ));
    let kills = kill_along(&mut broker, &mut rng, &progress, (100, 350), 60, || {
        task.is_finished()
    })
    .await;
    let d = tokio::time::timeout(Duration::from_secs(70), task)
        .await
        .expect("drain task hung")
        .expect("drain task");
    eprintln!(
        "drain: kills after {kills:?} deliveries, {} connections, {} distinct",
        d.connections,
        d.delivered.len()
    );
    assert!(
        d.errors.is_empty(),
        "subscriber (seed {seed}): {:?}; log:\n{}",
        d.errors,
        tail(&broker.log(), 40)
    );
    assert_eq!(
        kills.len(),
        KILLS,
        "the drain finished before all kills happened"
    );
    d.assert_got(
        (0..n1).map(|s| ("q1", s)).chain((0..n2).map(|s| ("q2", s))),
        seed,
    );
    assert_eq!(
        d.delivered.len(),
        want,
        "deliveries of unknown messages: {:?}",
        d.delivered.keys().filter(|(_, s)| *s == u32::MAX).count()
    );
}

/// Both at once, the path where a QoS 1 delivery leaves before its store commit and a
/// commit group drops the entries acknowledged within it: the publishers and an online
/// persistent subscriber run together while the broker is SIGKILLed at random points.
/// Every acknowledged message arrives, QoS 2 exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_deliveries_survive_sigkill() {
    let Some(mut broker) = Broker::start_configured(&[], "kills and restarts the broker") else {
        return;
    };
    let seed = seed() ^ 0x11FE;
    eprintln!("live crash test seed {seed}");
    let mut rng = Rng(seed);
    let run = unique("lcrash");
    let connect = raw::Connect::new(raw::V4, &format!("{run}-sub")).clean(false);
    subscribe_and_leave(&broker, &connect, "lcrash", &run).await;

    let (n1, n2) = (Q1_COUNT, Q2_COUNT);
    let acked_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (q1, q2) = two_streams("lcrash", &run, (n1, n2), raw::V5, &acked_total);
    let received = Arc::new(AtomicU64::new(0));
    let sub = tokio::spawn(drain_across_kills(
        broker.addr(),
        connect,
        (n1 + n2) as usize,
        received,
    ));
    let t1 = tokio::spawn(run_publisher(broker.addr(), q1, stop.clone()));
    let t2 = tokio::spawn(run_publisher(broker.addr(), q2, stop.clone()));
    let kills = kill_along(
        &mut broker,
        &mut rng,
        &acked_total,
        ACKS_BETWEEN_KILLS,
        60,
        || t1.is_finished() && t2.is_finished(),
    )
    .await;
    let (q1, q2, d) = tokio::time::timeout(Duration::from_secs(70), async {
        let q1 = t1.await.expect("q1 task");
        let q2 = t2.await.expect("q2 task");
        (q1, q2, sub.await.expect("subscriber task"))
    })
    .await
    .expect("publishers or subscriber hung");
    eprintln!(
        "live: kills after {kills:?} acknowledgements, subscriber {} connections, {} distinct",
        d.connections,
        d.delivered.len()
    );
    assert_eq!(
        kills.len(),
        KILLS,
        "the publishers finished before all kills"
    );
    assert!(
        q1.errors.is_empty() && q2.errors.is_empty() && d.errors.is_empty(),
        "seed {seed}: publishers {:?} {:?}, subscriber {:?}; log:\n{}",
        q1.errors,
        q2.errors,
        d.errors,
        tail(&broker.log(), 40)
    );
    d.assert_got(
        [&q1, &q2]
            .into_iter()
            .flat_map(|s| s.acked().into_iter().map(move |seq| (s.name, seq))),
        seed,
    );
}

/// The two numbered streams of a crash test, on `<prefix>/q1/<run>/s` (QoS 1, an MQTT
/// `q1_version` client) and `<prefix>/q2/<run>/s` (QoS 2, a persistent v4 session, so that
/// the broker recognises a resent QoS 2 PUBLISH).
fn two_streams(
    prefix: &str,
    run: &str,
    (n1, n2): (u32, u32),
    q1_version: u8,
    acked_total: &Arc<AtomicU64>,
) -> (Stream, Stream) {
    let q1 = Stream::new(
        "q1",
        1,
        n1,
        format!("{prefix}/q1/{run}/s"),
        raw::Connect::new(q1_version, &format!("{run}-p1")),
        acked_total,
    );
    let q2 = Stream::new(
        "q2",
        2,
        n2,
        format!("{prefix}/q2/{run}/s"),
        raw::Connect::new(raw::V4, &format!("{run}-p2")).clean(false),
        acked_total,
    );
    (q1, q2)
}

/// Subscribes the persistent v4 session `connect` to `<prefix>/q1/<run>/#` at QoS 1 and
/// `<prefix>/q2/<run>/#` at QoS 2, then disconnects: its messages queue from now on.
async fn subscribe_and_leave(broker: &Broker, connect: &raw::Connect, prefix: &str, run: &str) {
    let (mut s, _) = RawClient::connect(&broker.addr(), connect).await;
    let (f1, f2) = (
        format!("{prefix}/q1/{run}/#"),
        format!("{prefix}/q2/{run}/#"),
    );
    assert_eq!(
        s.subscribe(1, &[(&f1, 1), (&f2, 2)], &Props::new()).await,
        vec![1, 2]
    );
    s.send(&raw::disconnect(raw::V4, 0, &Props::new()))
        .await
        .unwrap();
    let _ = s.wait_closed(WAIT).await;
}

/// SIGKILLs and restarts `broker` [`KILLS`] times, each once `counter` grew by a seeded
/// random amount in `between`, down for up to `down_ms`; stops early once `finished()`.
/// Returns the counts at the kills.
async fn kill_along(
    broker: &mut Broker,
    rng: &mut Rng,
    counter: &AtomicU64,
    between: (u64, u64),
    down_ms: u64,
    finished: impl Fn() -> bool,
) -> Vec<u64> {
    let mut kills = Vec::new();
    for k in 0..KILLS {
        let target = counter.load(Ordering::Relaxed) + rng.range(between.0, between.1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while counter.load(Ordering::Relaxed) < target && !finished() {
            assert!(
                Instant::now() < deadline,
                "kill {k}: progress stuck at {} (waiting for {target}); log:\n{}",
                counter.load(Ordering::Relaxed),
                tail(&broker.run_log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if finished() {
            break;
        }
        let at = counter.load(Ordering::Relaxed);
        let status = tokio::task::block_in_place(|| broker.kill());
        kills.push(at);
        eprintln!("kill {k}: SIGKILL at {at} ({status:?})");
        tokio::time::sleep(Duration::from_millis(rng.range(0, down_ms))).await;
        tokio::task::block_in_place(|| broker.restart());
    }
    kills
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Publishes `n` QoS 1 messages on `topic` with a raw v4 client, each acknowledged.
async fn publish_acked(addr: &str, topic: &str, n: u32, retain: bool) {
    let (mut c, _) = RawClient::connect(addr, &raw_v4("pub")).await;
    for i in 0..n {
        let pid = i as u16 + 1;
        let msg = PublishOut::new(topic, format!("m{i}").as_bytes())
            .qos(1, pid)
            .retain(retain);
        c.send(&msg.encode(raw::V4)).await.unwrap();
        let p = c.expect(WAIT, "PUBACK").await;
        assert_eq!((p.kind, p.ack().unwrap().0), (kind::PUBACK, pid));
    }
    c.send(&raw::disconnect(raw::V4, 0, &Props::new()))
        .await
        .unwrap();
}

/// A v5 persistent session subscribed to `filter` at QoS 1, then offline.
async fn offline_subscriber(addr: &str, id: &str, filter: &str) -> raw::Connect {
    let connect =
        raw::Connect::new(raw::V5, id).props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let (mut c, _) = RawClient::connect(addr, &connect).await;
    assert_eq!(c.subscribe(1, &[(filter, 1)], &Props::new()).await, vec![1]);
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;
    connect.clean(false)
}

/// Receives up to `n` PUBLISHes (acknowledging each), stopping early after `quiet`.
async fn drain(c: &mut RawClient, n: usize, quiet: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.recv(quiet).await {
            Recv::Packet(p) if p.kind == kind::PUBLISH => {
                let publ = p.publish(c.version).unwrap();
                if let Some(pid) = publ.pid {
                    c.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
                }
                out.push(publ.payload);
            }
            Recv::Packet(_) => {}
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_sessions_queues_and_retained() {
    let Some(mut broker) = Broker::start_configured(&[], "restarts the broker") else {
        return;
    };
    let addr = broker.addr();
    let topic = unique("restart/q");
    let resume = offline_subscriber(&addr, &unique("restart-sub"), &topic).await;
    publish_acked(&addr, &topic, 20, false).await;
    publish_acked(&addr, &format!("{topic}/retained"), 1, true).await;
    let status = tokio::task::block_in_place(|| broker.stop());
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM should end tern-edge cleanly, got {status:?}; log:\n{}",
        tail(&broker.run_log(), 30)
    );
    tokio::task::block_in_place(|| broker.restart());

    let (mut c, ack) = RawClient::connect(&addr, &resume).await;
    assert!(
        ack.session_present,
        "session lost across a graceful restart"
    );
    let got = drain(&mut c, 20, WAIT).await;
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(got, want, "queued messages after a graceful restart");

    let (mut r, _) = RawClient::connect(&addr, &raw_v4("restart-r")).await;
    r.subscribe(1, &[(&format!("{topic}/retained"), 0)], &Props::new())
        .await;
    let p = r.expect_publish(WAIT).await;
    assert_eq!((p.payload.as_slice(), p.retain), (&b"m0"[..], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_forgets_on_restart() {
    let Some(mut broker) =
        Broker::start_configured(&[("TERN_STORE__BACKEND", "memory")], "memory backend")
    else {
        return;
    };
    let addr = broker.addr();
    let topic = unique("mem/q");
    let resume = offline_subscriber(&addr, &unique("mem-sub"), &topic).await;
    publish_acked(&addr, &topic, 3, false).await;
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    let (_c, ack) = RawClient::connect(&addr, &resume).await;
    assert!(
        !ack.session_present,
        "backend = \"memory\" must not keep sessions across a restart"
    );
    let files: Vec<_> = std::fs::read_dir(broker.data_dir().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".redb"))
        .collect();
    assert!(
        files.is_empty(),
        "memory backend wrote store files: {files:?}"
    );
}

/// Starts a prepared broker that must refuse to start; returns its log.
fn expect_start_refused(broker: &mut Broker, store: &Path, what: &str) -> String {
    let err = match broker.try_start(Duration::from_secs(10)) {
        Ok(()) => panic!(
            "tern-edge started on {what} at {}; log:\n{}",
            store.display(),
            broker.run_log()
        ),
        Err(e) => e,
    };
    let status = err.status.unwrap_or_else(|| {
        panic!(
            "tern-edge neither started nor exited on {what}: {}",
            err.log
        )
    });
    assert!(
        !status.success(),
        "tern-edge exited with success on {what}; log:\n{}",
        err.log
    );
    assert!(
        err.log.contains(&store.display().to_string()),
        "the error for {what} must name the store file {}; log:\n{}",
        store.display(),
        err.log
    );
    assert!(
        !err.log.contains("panicked"),
        "{what} must be reported, not panic; log:\n{}",
        err.log
    );
    err.log
}

#[test]
fn corrupt_store_file_stops_startup_naming_the_file() {
    let Some(mut broker) = Broker::configured_stopped(&[], "writes its store file") else {
        return;
    };
    let store = broker.data_dir().unwrap().join("tern-edge.redb");
    let mut garbage = Vec::new();
    let mut rng = Rng(7);
    while garbage.len() < 64 * 1024 {
        garbage.extend_from_slice(&rng.next().to_le_bytes());
    }
    std::fs::write(&store, &garbage).unwrap();
    let log = expect_start_refused(&mut broker, &store, "a store file of random bytes");
    let lower = log.to_lowercase();
    assert!(
        ["remove", "delete", "restore", "move", "rename", "backup"]
            .iter()
            .any(|w| lower.contains(w)),
        "the error should say what to do (remove/restore/move the file); log:\n{log}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        garbage,
        "tern-edge must not overwrite a store it cannot read"
    );
}

#[test]
fn store_path_that_is_a_directory_stops_startup_naming_it() {
    let Some(mut broker) = Broker::configured_stopped(&[], "writes its store path") else {
        return;
    };
    let store = broker.data_dir().unwrap().join("tern-edge.redb");
    std::fs::create_dir_all(&store).unwrap();
    expect_start_refused(
        &mut broker,
        &store,
        "a directory in place of the store file",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_store_is_recovered_or_reported() {
    let Some(mut broker) = Broker::start_configured(&[], "truncates its store file") else {
        return;
    };
    let addr = broker.addr();
    let topic = unique("trunc/q");
    offline_subscriber(&addr, &unique("trunc-sub"), &topic).await;
    publish_acked(&addr, &topic, 200, false).await;
    tokio::task::block_in_place(|| broker.kill());
    let store = broker.data_dir().unwrap().join("tern-edge.redb");
    let len = std::fs::metadata(&store)
        .unwrap_or_else(|e| panic!("no store file at {}: {e}", store.display()))
        .len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    match tokio::task::block_in_place(|| broker.try_start(Duration::from_secs(10))) {
        Ok(()) => {
            // Recovered: it must serve.
            let (mut c, ack) = RawClient::connect(&addr, &raw_v4("trunc-after")).await;
            assert_eq!(ack.code, 0);
            c.send(&raw::pingreq()).await.unwrap();
            assert_eq!(c.expect(WAIT, "PINGRESP").await.kind, kind::PINGRESP);
            eprintln!("truncated store ({len} → {} bytes): recovered", len / 2);
        }
        Err(e) => {
            assert!(
                e.status.is_some_and(|s| !s.success()),
                "truncated store: neither served nor exited with an error: {e:?}"
            );
            assert!(
                e.log.contains(&store.display().to_string()) && !e.log.contains("panicked"),
                "truncated store must be reported with its path, not a panic; log:\n{}",
                e.log
            );
            eprintln!("truncated store: refused: {}", tail(&e.log, 3));
        }
    }
}

/// Reads packets until `n` arrived (PINGRESPs skipped), each within [`WAIT`].
async fn packets(c: &mut RawClient, n: usize) -> Vec<raw::Packet> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.recv(WAIT).await {
            Recv::Packet(p) if p.kind == kind::PINGRESP => {}
            Recv::Packet(p) => out.push(p),
            other => panic!("expected {n} packets, got {out:?} then {other:?}"),
        }
    }
    out
}

/// Deliveries in flight when the broker is killed resume as MQTT requires: an unacknowledged
/// QoS 1 or QoS 2 PUBLISH is resent with DUP and the same packet id, a QoS 2 delivery the
/// subscriber already answered with PUBREC continues with PUBREL (resending the PUBLISH
/// there would be a second delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_deliveries_resume_after_sigkill() {
    let Some(mut broker) = Broker::start_configured(&[], "kills the broker") else {
        return;
    };
    let addr = broker.addr();
    let base = unique("inflight");
    let connect = raw::Connect::new(raw::V4, &format!("{base}-sub")).clean(false);
    let (mut s, _) = RawClient::connect(&addr, &connect).await;
    let filters = [
        (format!("{base}/q1"), 1u8),
        (format!("{base}/q2a"), 2),
        (format!("{base}/q2b"), 2),
    ];
    let f: Vec<(&str, u8)> = filters.iter().map(|(t, q)| (t.as_str(), *q)).collect();
    assert_eq!(s.subscribe(1, &f, &Props::new()).await, vec![1, 2, 2]);

    let mut p = v4::client(&broker, "inflight-pub").await;
    p.publish(&filters[0].0, v4::QoS::AtLeastOnce, false, b"m1")
        .await;
    p.publish(&filters[1].0, v4::QoS::ExactlyOnce, false, b"m2")
        .await;
    p.publish(&filters[2].0, v4::QoS::ExactlyOnce, false, b"m3")
        .await;
    let mut pids = HashMap::new();
    for pk in packets(&mut s, 3).await {
        let publ = pk.publish(raw::V4).expect("PUBLISH");
        pids.insert(publ.payload.clone(), (publ.pid.unwrap(), publ.qos));
    }
    let (m3_pid, _) = pids[&b"m3".to_vec()];
    s.send(&raw::ack(kind::PUBREC, m3_pid, None)).await.unwrap();
    let rel = s.expect(WAIT, "PUBREL").await;
    assert_eq!((rel.kind, rel.ack().unwrap().0), (kind::PUBREL, m3_pid));
    // No PUBACK for m1, no PUBREC for m2, no PUBCOMP for m3. Kill.
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    let (mut s, ack) = RawClient::connect(&addr, &connect).await;
    assert!(ack.session_present, "session lost");
    let mut got = Vec::new();
    for pk in packets(&mut s, 3).await {
        match pk.kind {
            kind::PUBLISH => {
                let publ = pk.publish(raw::V4).unwrap();
                got.push((
                    String::from_utf8_lossy(&publ.payload).into_owned(),
                    publ.pid.unwrap(),
                    publ.qos,
                    publ.dup,
                ));
            }
            kind::PUBREL => got.push(("PUBREL".into(), pk.ack().unwrap().0, 1, false)),
            other => panic!("unexpected packet type {other} after the restart"),
        }
    }
    got.sort();
    let (m1_pid, _) = pids[&b"m1".to_vec()];
    let (m2_pid, _) = pids[&b"m2".to_vec()];
    let mut want = vec![
        ("PUBREL".to_string(), m3_pid, 1, false),
        ("m1".to_string(), m1_pid, 1, true),
        ("m2".to_string(), m2_pid, 2, true),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "after a SIGKILL: (payload or PUBREL, packet id, QoS, DUP) resent to the subscriber"
    );
    match s.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("nothing else may be resent (m3 was received already), got {other:?}"),
    }
}

/// The incoming side of QoS 2: a PUBLISH the broker answered with PUBREC, resent by the
/// publisher after a SIGKILL (it never saw the PUBREC), is recognised by its packet id and
/// delivered once; the PUBREL that follows gets its PUBCOMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_qos2_is_recognised_after_sigkill() {
    let Some(mut broker) = Broker::start_configured(&[], "kills the broker") else {
        return;
    };
    let addr = broker.addr();
    let topic = unique("in-q2/t");
    let resume = offline_subscriber(&addr, &unique("in-q2-sub"), &topic).await;
    let pub_connect = raw::Connect::new(raw::V4, &unique("in-q2-pub")).clean(false);
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    let msg = PublishOut::new(&topic, b"exactly-once").qos(2, 42);
    p.send(&msg.encode(raw::V4)).await.unwrap();
    let rec = p.expect(WAIT, "PUBREC").await;
    assert_eq!((rec.kind, rec.ack().unwrap().0), (kind::PUBREC, 42));
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    let (mut p, ack) = RawClient::connect(&addr, &pub_connect).await;
    assert!(ack.session_present, "publisher session lost");
    let mut dup = msg.clone();
    dup.dup = true;
    p.send(&dup.encode(raw::V4)).await.unwrap();
    let rec = p.expect(WAIT, "PUBREC").await;
    assert_eq!((rec.kind, rec.ack().unwrap().0), (kind::PUBREC, 42));
    p.send(&raw::ack(kind::PUBREL, 42, None)).await.unwrap();
    let comp = p.expect(WAIT, "PUBCOMP").await;
    assert_eq!((comp.kind, comp.ack().unwrap().0), (kind::PUBCOMP, 42));

    let (mut s, _) = RawClient::connect(&addr, &resume).await;
    let got = drain(&mut s, 5, Duration::from_secs(1)).await;
    assert_eq!(
        got,
        vec![b"exactly-once".to_vec()],
        "a QoS 2 PUBLISH resent after a SIGKILL must be delivered exactly once"
    );
}

/// Expiry is wall-clock time and keeps running while the broker is down: a session whose
/// expiry passed during the outage is gone, a message whose expiry passed is not delivered,
/// a live one is, with the remaining interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_keeps_counting_across_a_restart() {
    let Some(mut broker) = Broker::start_configured(&[], "kills the broker") else {
        return;
    };
    let addr = broker.addr();
    let topic = unique("exp/t");
    // A session that expires 1 s after going offline, and one that lasts.
    let short = raw::Connect::new(raw::V5, &unique("exp-short"))
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 1));
    let (mut c, _) = RawClient::connect(&addr, &short).await;
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;
    let lasting = offline_subscriber(&addr, &unique("exp-long"), &topic).await;
    let (mut p, _) = RawClient::connect(&addr, &raw_v5("exp-pub")).await;
    for (pid, payload, expiry) in [(1u16, &b"expires"[..], 1u32), (2, &b"lasts"[..], 60)] {
        let m = PublishOut::new(&topic, payload)
            .qos(1, pid)
            .props(Props::new().u32(prop::MESSAGE_EXPIRY_INTERVAL, expiry));
        p.send(&m.encode(raw::V5)).await.unwrap();
        let ack = p.expect(WAIT, "PUBACK").await;
        assert_eq!(ack.kind, kind::PUBACK);
    }
    tokio::task::block_in_place(|| broker.kill());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tokio::task::block_in_place(|| broker.restart());

    let (mut s, ack) = RawClient::connect(&addr, &lasting).await;
    assert!(ack.session_present, "the 600 s session must survive");
    let publ = s.expect_publish(WAIT).await;
    s.send(&raw::ack(kind::PUBACK, publ.pid.unwrap(), None))
        .await
        .unwrap();
    assert_eq!(
        publ.payload, b"lasts",
        "the message that expired during the outage must not be delivered"
    );
    let left = publ
        .props
        .int(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("message expiry interval forwarded");
    assert!(
        (50..=58).contains(&left),
        "remaining expiry after ~2.5 s down should be ~57 s, got {left}"
    );
    match s.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("only one message was due, then {other:?}"),
    }
    // Clients reconnect as soon as the broker is back: no grace time here.
    let (_c, ack) = RawClient::connect(&addr, &short.clone().clean(false)).await;
    assert!(
        !ack.session_present,
        "a session with expiry 1 s, offline since before a 2.5 s outage, must be gone when \
         its client reconnects right after the restart (CONNACK session present = 1)"
    );
}
