//! Issue 5, bounds: a full store. `tern-edge` runs with a small store budget
//! (`TERN_STORE__MAX_BYTES`); an offline persistent subscriber collects QoS 1 messages
//! until the budget is reached. Then:
//!
//! * the publisher is refused in a way an MQTT 5 client can read: reason 0x97 (quota
//!   exceeded), on the PUBACK (the wording) or on a DISCONNECT (the lead's
//!   contract); which one it was is printed. An MQTT 3.1.1 publisher, which has no reason
//!   codes, gets no PUBACK (its connection is closed);
//! * a retry of the refused message is refused again while nothing drained;
//! * the broker keeps serving everyone else: connects, pings, and QoS 0/1 traffic between
//!   clean sessions (which needs no store space);
//! * nothing acknowledged before is lost: the subscriber drains every message that got a
//!   PUBACK (each at least once);
//! * once the subscriber drained, publishing to it works again, refused message included,
//!   and it still holds after a restart (store and memory agree).
//!
//! The other tests look at what a refusal leaves behind, because a refused batch must
//! change nothing, in memory as on disk: a refused QoS 2 PUBLISH that its publisher resends
//! is delivered exactly once (also across a SIGKILL), a SUBSCRIBE granted right after a
//! refusal survives a crash, and a persistent session created while the store was full is
//! served once there is room again. Two more bounds of issue 5: the per-session queue
//! limit must not acknowledge a message it drops, and a full store is logged once per
//! interval, not once per refusal.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use raw::{kind, prop, Props, PublishOut};

/// Store budget in bytes.
const MAX_BYTES: &str = "60000";
/// Payload size of the stored messages.
const PAYLOAD: usize = 400;
/// If nothing is refused after this many messages, the budget is not enforced.
const GIVE_UP_AFTER: u32 = 2000;
/// MQTT 5 reason code "Quota exceeded".
const QUOTA_EXCEEDED: u8 = 0x97;

fn payload(seq: u32) -> Vec<u8> {
    let mut p = format!("full:{seq}:").into_bytes();
    p.resize(PAYLOAD, b'.');
    p
}

fn seq_of(payload: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(payload).ok()?;
    text.strip_prefix("full:")?.split(':').next()?.parse().ok()
}

/// How the broker answered one QoS 1 PUBLISH.
#[derive(Debug)]
enum Answer {
    /// PUBACK with this reason code.
    PubAck(u8),
    /// DISCONNECT with this reason code (and the connection closed).
    Disconnect(u8),
    /// Connection closed without a PUBACK or DISCONNECT.
    Closed,
    /// Nothing within the timeout.
    Timeout,
}

/// Sends one QoS `qos` PUBLISH and reads the answer (PUBACK, or PUBREC then PUBREL/PUBCOMP).
async fn publish_one(c: &mut RawClient, topic: &str, seq: u32, qos: u8, dup: bool) -> Answer {
    let pid = (seq % 60_000) as u16 + 1;
    let mut p = PublishOut::new(topic, &payload(seq)).qos(qos, pid);
    p.dup = dup;
    if c.send(&p.encode(c.version)).await.is_err() {
        return Answer::Closed;
    }
    loop {
        match c.recv(WAIT).await {
            Recv::Packet(p) if p.kind == kind::PUBACK || p.kind == kind::PUBCOMP => {
                let (got, reason) = p.ack().expect("decode ack");
                assert_eq!(got, pid, "acknowledgement for another packet id");
                return Answer::PubAck(reason);
            }
            Recv::Packet(p) if p.kind == kind::PUBREC => {
                let (got, reason) = p.ack().expect("decode PUBREC");
                assert_eq!(got, pid, "PUBREC for another packet id");
                if reason >= 0x80 {
                    return Answer::PubAck(reason);
                }
                c.send(&raw::ack(kind::PUBREL, pid, None)).await.ok();
            }
            Recv::Packet(p) if p.kind == kind::DISCONNECT => {
                let (reason, _) = p.disconnect().expect("decode DISCONNECT");
                let _ = c.wait_closed(WAIT).await;
                return Answer::Disconnect(reason);
            }
            Recv::Packet(p) if p.kind == kind::PINGRESP => {}
            Recv::Packet(p) => panic!("unexpected packet while publishing: {p:?}"),
            Recv::Closed | Recv::Garbage(_) => return Answer::Closed,
            Recv::Timeout => return Answer::Timeout,
        }
    }
}

/// The file size of the redb store, if there is one.
fn store_size(broker: &Broker) -> Option<u64> {
    let dir = broker.data_dir()?;
    std::fs::metadata(dir.join("tern-edge.redb"))
        .ok()
        .map(|m| m.len())
}

/// QoS 0 and QoS 1 between clean sessions, a fresh CONNECT and a ping: all must work.
async fn others_are_served(broker: &Broker, topic: &str, when: &str) {
    let mut sub = v4::client(broker, "full-other-sub").await;
    sub.subscribe(topic, v4::QoS::AtLeastOnce).await;
    let mut publ = v5::client(broker, "full-other-pub").await;
    publ.publish(topic, v5::QoS::AtMostOnce, false, b"qos0")
        .await;
    publ.publish(topic, v5::QoS::AtLeastOnce, false, b"qos1")
        .await;
    let got = sub.recv_publishes(2).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(
        payloads,
        vec![&b"qos0"[..], &b"qos1"[..]],
        "{when}: traffic between clean sessions must keep flowing"
    );
    let (mut c, ack) = RawClient::connect(&broker.addr(), &raw_v4("full-ping")).await;
    assert_eq!(ack.code, 0, "{when}: CONNECT refused");
    c.send(&raw::pingreq()).await.unwrap();
    assert_eq!(c.expect(WAIT, "PINGRESP").await.kind, kind::PINGRESP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_refuses_with_quota_keeps_what_it_acked_and_recovers() {
    let Some(mut broker) = Broker::start_configured(
        &[("TERN_STORE__MAX_BYTES", MAX_BYTES)],
        "needs a small store budget",
    ) else {
        return;
    };
    let addr = broker.addr();
    let run = unique("full");
    let topic = format!("full/{run}/t");
    let other_topic = format!("other/{run}/t");

    // The offline persistent subscriber.
    let sub_connect = raw::Connect::new(raw::V5, &format!("{run}-sub"))
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let (mut s, _) = RawClient::connect(&addr, &sub_connect).await;
    assert_eq!(
        s.subscribe(1, &[(&format!("full/{run}/#"), 1)], &Props::new())
            .await,
        vec![1]
    );
    s.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = s.wait_closed(WAIT).await;
    let sub_resume = sub_connect.clean(false);
    let size_empty = store_size(&broker);

    // Publish one message at a time until refused.
    let pub_connect = raw::Connect::new(raw::V5, &format!("{run}-pub"));
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    let mut acked = BTreeSet::new();
    let mut seq = 0u32;
    let refusal = loop {
        assert!(
            seq < GIVE_UP_AFTER,
            "no refusal after {GIVE_UP_AFTER} messages of {PAYLOAD} bytes with a store budget \
             of {MAX_BYTES} bytes"
        );
        match publish_one(&mut p, &topic, seq, 1, false).await {
            Answer::PubAck(r) if r < 0x80 => {
                acked.insert(seq);
                seq += 1;
            }
            Answer::Timeout => panic!(
                "message {seq}: no answer within {WAIT:?}; log:\n{}",
                broker.run_log()
            ),
            other => break other,
        }
    };
    let refused = seq;
    let how = match refusal {
        Answer::PubAck(QUOTA_EXCEEDED) => "PUBACK 0x97",
        Answer::Disconnect(QUOTA_EXCEEDED) => "DISCONNECT 0x97",
        other => panic!(
            "message {refused} (after {} acknowledged): a full store must be refused with \
             reason 0x97 (quota exceeded) on the PUBACK or a DISCONNECT, got {other:?}; log:\n{}",
            acked.len(),
            broker.run_log()
        ),
    };
    eprintln!(
        "store full after {} acknowledged messages of {PAYLOAD} bytes (budget {MAX_BYTES}): \
         v5 publisher refused with {how}",
        acked.len()
    );
    assert!(
        acked.len() >= 10,
        "the budget should hold some messages before refusing, held {}",
        acked.len()
    );
    let warnings = broker
        .run_log()
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("full") || l.contains("quota") || l.contains("budget")
        })
        .count();
    eprintln!("log lines about the full store so far: {warnings}");

    others_are_served(&broker, &other_topic, "store full").await;

    // The refused message is refused again while nothing drained (QoS 1 with DUP, then
    // QoS 2 from MQTT 5: 0x97 on the PUBREC or a DISCONNECT).
    if matches!(refusal, Answer::Disconnect(_)) {
        p = RawClient::connect(&addr, &pub_connect).await.0;
    }
    match publish_one(&mut p, &topic, refused, 1, true).await {
        Answer::PubAck(QUOTA_EXCEEDED) | Answer::Disconnect(QUOTA_EXCEEDED) => {}
        other => panic!("retry of the refused message while still full: {other:?}"),
    }
    let (mut p2, _) = RawClient::connect(&addr, &raw_v5("full-q2")).await;
    match publish_one(&mut p2, &topic, refused + 1, 2, false).await {
        Answer::PubAck(QUOTA_EXCEEDED) | Answer::Disconnect(QUOTA_EXCEEDED) => {}
        other => panic!("QoS 2 PUBLISH from MQTT 5 to a full store: {other:?}"),
    }
    // MQTT 3.1.1 has no reason code: no PUBACK, the connection is closed.
    let (mut p4, _) = RawClient::connect(&addr, &raw_v4("full-v4")).await;
    match publish_one(&mut p4, &topic, refused + 2, 1, false).await {
        Answer::Closed => {}
        other => panic!("MQTT 3.1.1 PUBLISH to a full store: expected the connection closed without PUBACK, got {other:?}"),
    }
    others_are_served(&broker, &other_topic, "store still full").await;
    let size_full = store_size(&broker);

    // The subscriber drains: everything acknowledged is there.
    let (mut s, ack) = RawClient::connect(&addr, &sub_resume).await;
    assert!(ack.session_present, "the subscriber's session is gone");
    let mut got = BTreeSet::new();
    let mut unacked_delivered = BTreeSet::new();
    let mut count = 0usize;
    loop {
        match s.recv(Duration::from_secs(2)).await {
            Recv::Packet(pk) if pk.kind == kind::PUBLISH => {
                let publ = pk.publish(raw::V5).unwrap();
                if let Some(pid) = publ.pid {
                    s.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
                }
                let n = seq_of(&publ.payload).expect("payload of a full/ message");
                count += 1;
                if acked.contains(&n) {
                    got.insert(n);
                } else {
                    unacked_delivered.insert(n);
                }
            }
            Recv::Packet(_) => {}
            Recv::Timeout => break,
            other => panic!("subscriber connection while draining: {other:?}"),
        }
    }
    let missing: Vec<u32> = acked.difference(&got).copied().collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages lost when the store filled up: {} of {} missing, first {:?}; log:\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)],
        broker.run_log()
    );
    eprintln!(
        "drained {count} deliveries: all {} acknowledged; never-acknowledged ones delivered \
         anyway: {unacked_delivered:?}",
        acked.len()
    );

    // Service resumes: the refused messages and new ones go through and arrive.
    if !matches!(refusal, Answer::Disconnect(_)) {
        let _ = p.send(&raw::disconnect(raw::V5, 0, &Props::new())).await;
    }
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    let again: Vec<u32> = (refused..refused + 20).collect();
    for &n in &again {
        match publish_one(&mut p, &topic, n, 1, n == refused).await {
            Answer::PubAck(r) if r < 0x80 => {}
            other => panic!(
                "message {n} after the subscriber drained: {other:?} (service must resume); log:\n{}",
                tail(&broker.run_log(), 30)
            ),
        }
    }
    let mut live = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while live.len() < again.len() && Instant::now() < deadline {
        match s.recv(WAIT).await {
            Recv::Packet(pk) if pk.kind == kind::PUBLISH => {
                let publ = pk.publish(raw::V5).unwrap();
                if let Some(pid) = publ.pid {
                    s.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
                }
                live.insert(seq_of(&publ.payload).unwrap());
            }
            Recv::Packet(_) => {}
            other => panic!("subscriber after draining: {other:?}"),
        }
    }
    let not_live: Vec<u32> = again
        .iter()
        .filter(|n| !live.contains(n))
        .copied()
        .collect();
    assert!(
        not_live.is_empty(),
        "after draining, messages were acknowledged but not delivered: {not_live:?}"
    );
    let size_drained = store_size(&broker);
    eprintln!(
        "store file size: empty {size_empty:?}, full {size_full:?}, drained {size_drained:?}"
    );

    // Store and memory agree: a restart with the subscriber offline keeps working, and the
    // queue it builds up is delivered.
    s.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = s.wait_closed(WAIT).await;
    let _ = p.send(&raw::disconnect(raw::V5, 0, &Props::new())).await;
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    for n in 10_000..10_010 {
        match publish_one(&mut p, &topic, n, 1, false).await {
            Answer::PubAck(r) if r < 0x80 => {}
            other => panic!("message {n} after a restart: {other:?}"),
        }
    }
    let (mut s, ack) = RawClient::connect(&addr, &sub_resume).await;
    assert!(ack.session_present, "session lost in the restart");
    let mut after = BTreeSet::new();
    while after.len() < 10 {
        match s.recv(WAIT).await {
            Recv::Packet(pk) if pk.kind == kind::PUBLISH => {
                let publ = pk.publish(raw::V5).unwrap();
                if let Some(pid) = publ.pid {
                    s.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
                }
                let n = seq_of(&publ.payload).unwrap();
                if n >= 10_000 {
                    after.insert(n);
                }
            }
            Recv::Packet(_) => {}
            other => panic!(
                "after the restart, {} of 10 queued messages arrived, then {other:?}",
                after.len()
            ),
        }
    }
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A store with a budget, an offline persistent v5 subscriber on `full/{run}/#`, and
/// QoS 1 messages published until the store refuses one. The `early` CONNECTs are made
/// (and disconnected) first, so their sessions are stored while there is room. Returns the
/// broker, the subscriber's resuming CONNECT, the acknowledged sequence numbers and the
/// refused one.
async fn filled_store(
    run: &str,
    early: &[&raw::Connect],
) -> Option<(Broker, raw::Connect, BTreeSet<u32>, u32)> {
    let broker = Broker::start_configured(
        &[("TERN_STORE__MAX_BYTES", MAX_BYTES)],
        "needs a small store budget",
    )?;
    let addr = broker.addr();
    for connect in early {
        let (mut c, ack) = RawClient::connect(&addr, connect).await;
        assert_eq!(ack.code, 0);
        c.send(&raw::disconnect(c.version, 0, &Props::new()))
            .await
            .unwrap();
        let _ = c.wait_closed(WAIT).await;
    }
    let sub_connect = raw::Connect::new(raw::V5, &format!("{run}-sub"))
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let (mut s, _) = RawClient::connect(&addr, &sub_connect).await;
    assert_eq!(
        s.subscribe(1, &[(&format!("full/{run}/#"), 1)], &Props::new())
            .await,
        vec![1]
    );
    s.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = s.wait_closed(WAIT).await;
    let (mut p, _) = RawClient::connect(&addr, &raw_v5("fill")).await;
    let topic = format!("full/{run}/t");
    let mut acked = BTreeSet::new();
    for seq in 0..GIVE_UP_AFTER {
        match publish_one(&mut p, &topic, seq, 1, false).await {
            Answer::PubAck(r) if r < 0x80 => {
                acked.insert(seq);
            }
            Answer::PubAck(QUOTA_EXCEEDED) | Answer::Disconnect(QUOTA_EXCEEDED) => {
                return Some((broker, sub_connect.clean(false), acked, seq));
            }
            other => panic!("filling the store, message {seq}: {other:?}"),
        }
    }
    panic!("no refusal after {GIVE_UP_AFTER} messages");
}

/// Receives until a second passes quietly, completing QoS 1 and QoS 2 deliveries;
/// appends the sequence numbers delivered.
async fn drain_until_quiet(s: &mut RawClient, seen: &mut Vec<u32>) {
    loop {
        match s.recv(Duration::from_secs(1)).await {
            Recv::Packet(pk) if pk.kind == kind::PUBLISH => {
                let publ = pk.publish(raw::V5).unwrap();
                let pid = publ.pid.unwrap();
                let back = if publ.qos == 2 {
                    kind::PUBREC
                } else {
                    kind::PUBACK
                };
                s.send(&raw::ack(back, pid, None)).await.unwrap();
                seen.push(seq_of(&publ.payload).unwrap());
            }
            Recv::Packet(pk) if pk.kind == kind::PUBREL => {
                let (pid, _) = pk.ack().unwrap();
                s.send(&raw::ack(kind::PUBCOMP, pid, None)).await.unwrap();
            }
            Recv::Packet(_) => {}
            Recv::Timeout => return,
            other => panic!("subscriber: {other:?}"),
        }
    }
}

/// Exactly once means a message the broker refused (no PUBREC: the publisher still owns
/// it and will send it again) must not reach subscribers: otherwise the resend is a
/// second delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_qos2_publish_is_delivered_once_after_the_resend() {
    refused_qos2_is_delivered_once(false).await;
}

/// As above, with a SIGKILL between the drain and the resend: the restarted broker knows
/// only what it stored, so it routes the resend as a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_qos2_publish_is_delivered_once_after_a_crash_and_the_resend() {
    refused_qos2_is_delivered_once(true).await;
}

async fn refused_qos2_is_delivered_once(kill: bool) {
    let run = unique("full2");
    // The publisher's persistent v5 session exists before the store fills up.
    let pub_connect = raw::Connect::new(raw::V5, &format!("{run}-q2pub"))
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let Some((mut broker, sub_resume, acked, _)) = filled_store(&run, &[&pub_connect]).await else {
        return;
    };
    let addr = broker.addr();
    let topic = format!("full/{run}/t");
    let pub_connect = pub_connect.clean(false);
    // A QoS 2 message from that session: refused with 0x97.
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    const ONCE: u32 = 50_000;
    match publish_one(&mut p, &topic, ONCE, 2, false).await {
        Answer::PubAck(QUOTA_EXCEEDED) | Answer::Disconnect(QUOTA_EXCEEDED) => {}
        other => panic!("QoS 2 PUBLISH to a full store: {other:?}"),
    }
    // The subscriber drains (its queue has room again), then the publisher resends the
    // message it holds no PUBREC for, as MQTT requires, and gets it through.
    let (mut s, _) = RawClient::connect(&addr, &sub_resume).await;
    let mut seen = Vec::new();
    drain_until_quiet(&mut s, &mut seen).await;
    let before = seen.iter().filter(|&&n| n == ONCE).count();
    if kill {
        let _ = s.send(&raw::disconnect(raw::V5, 0, &Props::new())).await;
        let _ = s.wait_closed(WAIT).await;
        tokio::task::block_in_place(|| {
            broker.kill();
            broker.restart();
        });
    }
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    match publish_one(&mut p, &topic, ONCE, 2, true).await {
        Answer::PubAck(r) if r < 0x80 => {}
        other => panic!("resending the refused QoS 2 message after the drain: {other:?}"),
    }
    if kill {
        s = RawClient::connect(&addr, &sub_resume).await.0;
    }
    drain_until_quiet(&mut s, &mut seen).await;
    let missing: Vec<u32> = acked
        .iter()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages lost: {missing:?}"
    );
    let times = seen.iter().filter(|&&n| n == ONCE).count();
    assert_eq!(
        times,
        1,
        "the QoS 2 message refused with 0x97 and then resent (PUBCOMP){} must be delivered \
         exactly once, it was delivered {times} times ({before} of them before the resend: \
         the broker routed the PUBLISH it refused)",
        if kill { " after a SIGKILL" } else { "" }
    );
}

/// After a refusal, the broker's memory and its store must still agree: a SUBSCRIBE that
/// got its SUBACK survives a crash. (Here the SUBSCRIBE is processed together with the
/// first deliveries to the resumed session, which include the refused message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_granted_after_a_refusal_survives_a_crash() {
    let run = unique("full3");
    let Some((mut broker, sub_resume, _, _)) = filled_store(&run, &[]).await else {
        return;
    };
    let addr = broker.addr();
    let extra = format!("extra/{run}/#");
    // CONNECT and SUBSCRIBE in one write.
    let mut c = RawClient::tcp(&addr, raw::V5).await;
    let mut bytes = sub_resume.encode();
    bytes.extend(raw::subscribe(raw::V5, 7, &[(&extra, 1)], &Props::new()));
    c.send(&bytes).await.unwrap();
    let mut suback = None;
    loop {
        match c.recv(Duration::from_secs(1)).await {
            Recv::Packet(pk) if pk.kind == kind::PUBLISH => {
                let publ = pk.publish(raw::V5).unwrap();
                c.send(&raw::ack(kind::PUBACK, publ.pid.unwrap(), None))
                    .await
                    .unwrap();
            }
            Recv::Packet(pk) if pk.kind == kind::SUBACK => {
                suback = Some(pk.suback(raw::V5).unwrap().2);
            }
            Recv::Packet(_) => {}
            Recv::Timeout => break,
            other => panic!("subscriber: {other:?}"),
        }
    }
    assert_eq!(suback, Some(vec![1]), "SUBACK for {extra}");
    let _ = c.send(&raw::disconnect(raw::V5, 0, &Props::new())).await;
    let _ = c.wait_closed(WAIT).await;
    let errors: Vec<String> = broker
        .run_log()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect();

    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    let (mut p, _) = RawClient::connect(&addr, &raw_v5("extra-pub")).await;
    let topic = format!("extra/{run}/x");
    match publish_one(&mut p, &topic, 1, 1, false).await {
        Answer::PubAck(r) if r < 0x80 => {
            assert_ne!(
                r, 0x10,
                "PUBACK 0x10 (no matching subscribers): the subscription to {extra} that got \
                 a SUBACK before the crash is gone; errors logged before the crash: {errors:#?}"
            );
        }
        other => panic!("publish after the restart: {other:?}"),
    }
    let (mut c, ack) = RawClient::connect(&addr, &sub_resume).await;
    assert!(ack.session_present);
    let mut got = false;
    while let Recv::Packet(pk) = c.recv(Duration::from_secs(2)).await {
        if pk.kind == kind::PUBLISH {
            let publ = pk.publish(raw::V5).unwrap();
            c.send(&raw::ack(kind::PUBACK, publ.pid.unwrap(), None))
                .await
                .unwrap();
            if publ.topic == topic {
                got = true;
                break;
            }
        }
    }
    assert!(
        got,
        "the acknowledged message on {topic} never arrived: the subscription granted before \
         the crash was not stored; errors logged before the crash: {errors:#?}"
    );
}

/// A client that connects with a persistent session while the store is full (its session
/// record does not fit) and subscribes must be served like anyone else once there is room
/// again: messages to it are acknowledged and delivered, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_created_while_full_is_served_after_the_drain() {
    let run = unique("full4");
    let Some((broker, sub_resume, acked, _)) = filled_store(&run, &[]).await else {
        return;
    };
    let addr = broker.addr();
    // A new persistent session while the store is full; it stays online. Its long client
    // id makes sure its record does not fit in what the refused message left free.
    let late_id = format!("{run}-late-{}", "l".repeat(1000));
    let late = raw::Connect::new(raw::V5, &late_id)
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let (mut late_c, ack) = RawClient::connect(&addr, &late).await;
    assert_eq!(ack.code, 0, "CONNACK while the store is full");
    let codes = late_c
        .subscribe(1, &[(&format!("late/{run}/#"), 1)], &Props::new())
        .await;
    eprintln!("SUBACK while the store is full: {codes:?}");

    // The first subscriber drains: the store has room again.
    let (mut s, _) = RawClient::connect(&addr, &sub_resume).await;
    let mut seen = Vec::new();
    drain_until_quiet(&mut s, &mut seen).await;
    assert!(
        acked.iter().all(|n| seen.contains(n)),
        "acknowledged messages lost"
    );

    if codes != vec![1] {
        // Refusing the subscription (0x97) is a legitimate answer; then there is nothing
        // more to check here.
        return;
    }
    let (mut p, _) = RawClient::connect(&addr, &raw_v5("late-pub")).await;
    let topic = format!("late/{run}/x");
    for n in 0..5 {
        match publish_one(&mut p, &topic, n, 1, false).await {
            Answer::PubAck(r) if r < 0x80 => {}
            other => panic!(
                "message {n} to the session created while the store was full, after the \
                 drain: {other:?} (service must resume); log:\n{}",
                tail(&broker.run_log(), 12)
            ),
        }
    }
    let mut got = Vec::new();
    drain_until_quiet(&mut late_c, &mut got).await;
    assert_eq!(got, vec![0, 1, 2, 3, 4], "deliveries to the late session");
}

/// The other bound of issue 5, the per-session queue (`max_queued_messages`): a QoS 1
/// message that an offline persistent session cannot take any more must not be
/// acknowledged as a success, or an acknowledged message is lost. The issue asks for
/// v5 reason 0x97 on the PUBACK; a DISCONNECT 0x97 also tells the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_queue_limit_is_not_acknowledged_as_success() {
    let Some(broker) = Broker::start_configured(
        &[("TERN_MQTT__MAX_QUEUED_MESSAGES", "10")],
        "needs a small per-session queue",
    ) else {
        return;
    };
    let addr = broker.addr();
    let run = unique("qlimit");
    let sub_connect = raw::Connect::new(raw::V5, &format!("{run}-sub"))
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let (mut s, _) = RawClient::connect(&addr, &sub_connect).await;
    assert_eq!(
        s.subscribe(1, &[(&format!("q/{run}/#"), 1)], &Props::new())
            .await,
        vec![1]
    );
    s.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = s.wait_closed(WAIT).await;

    let topic = format!("q/{run}/t");
    let pub_connect = raw::Connect::new(raw::V5, &format!("{run}-pub"));
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    let mut answers = Vec::new();
    let mut acked = BTreeSet::new();
    for seq in 0..15 {
        let a = publish_one(&mut p, &topic, seq, 1, false).await;
        match a {
            Answer::PubAck(r) if r < 0x80 => {
                acked.insert(seq);
            }
            Answer::Disconnect(_) | Answer::Closed => {
                p = RawClient::connect(&addr, &pub_connect).await.0;
            }
            _ => {}
        }
        answers.push(format!("{seq}: {a:?}"));
    }
    eprintln!("per-session queue limit 10, 15 QoS 1 messages: {answers:?}");
    let (mut s, _) = RawClient::connect(&addr, &sub_connect.clean(false)).await;
    let mut seen = Vec::new();
    drain_until_quiet(&mut s, &mut seen).await;
    let lost: Vec<u32> = acked
        .iter()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "messages acknowledged with a success PUBACK but never delivered (dropped by the \
         per-session queue limit of 10): {lost:?}; the broker answered: {answers:?}"
    );
    let quota = answers.iter().filter(|a| a.contains("(151)")).count();
    assert!(
        quota > 0,
        "the per-session queue limit must be reported with 0x97; answers: {answers:?}"
    );
}

/// "Logs it once per interval": a publisher that keeps hitting a full store must not
/// produce a log line per refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_is_logged_once_per_interval() {
    let run = unique("full5");
    let Some((broker, _, _, refused)) = filled_store(&run, &[]).await else {
        return;
    };
    let addr = broker.addr();
    let topic = format!("full/{run}/t");
    let count_lines = || {
        broker
            .run_log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count()
    };
    let before = count_lines();
    let started = Instant::now();
    let mut refusals = 0;
    for _ in 0..30 {
        let (mut p, _) = RawClient::connect(&addr, &raw_v5("full-log")).await;
        match publish_one(&mut p, &topic, refused, 1, true).await {
            Answer::PubAck(QUOTA_EXCEEDED) | Answer::Disconnect(QUOTA_EXCEEDED) => refusals += 1,
            other => panic!("still full, expected 0x97, got {other:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = count_lines() - before;
    eprintln!("{refusals} refusals in {secs:.1} s: {lines} WARN/ERROR log lines");
    assert!(
        lines <= 2 * (secs.ceil() as usize + 1),
        "{refusals} refusals in {secs:.1} s produced {lines} WARN/ERROR log lines; issue 5 asks \
         for the full store to be logged once per interval. Last lines:\n{}",
        tail(&broker.run_log(), 6)
    );
}

/// The same per-session queue limit seen by an MQTT 3.1.1 publisher, which has no reason
/// codes: a message the offline session cannot take must not get a PUBACK (the full store
/// closes the connection instead), or an acknowledged message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_queue_limit_is_not_acknowledged_to_a_v4_publisher() {
    let Some(broker) = Broker::start_configured(
        &[("TERN_MQTT__MAX_QUEUED_MESSAGES", "10")],
        "needs a small per-session queue",
    ) else {
        return;
    };
    let addr = broker.addr();
    let run = unique("qlimit4");
    // The subscriber speaks v5 (the drain helper reads v5); the publisher is the point.
    let sub_connect = raw::Connect::new(raw::V5, &format!("{run}-sub"))
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 600));
    let (mut s, _) = RawClient::connect(&addr, &sub_connect).await;
    assert_eq!(
        s.subscribe(1, &[(&format!("q/{run}/#"), 1)], &Props::new())
            .await,
        vec![1]
    );
    s.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = s.wait_closed(WAIT).await;

    let topic = format!("q/{run}/t");
    let pub_connect = raw::Connect::new(raw::V4, &format!("{run}-pub"));
    let (mut p, _) = RawClient::connect(&addr, &pub_connect).await;
    let mut answers = Vec::new();
    let mut acked = BTreeSet::new();
    for seq in 0..15 {
        let a = publish_one(&mut p, &topic, seq, 1, false).await;
        match a {
            Answer::PubAck(r) if r < 0x80 => {
                acked.insert(seq);
            }
            Answer::Disconnect(_) | Answer::Closed | Answer::Timeout => {
                p = RawClient::connect(&addr, &pub_connect).await.0;
            }
            _ => {}
        }
        answers.push(format!("{seq}: {a:?}"));
    }
    eprintln!("MQTT 3.1.1, per-session queue limit 10, 15 QoS 1 messages: {answers:?}");
    let (mut s, _) = RawClient::connect(&addr, &sub_connect.clean(false)).await;
    let mut seen = Vec::new();
    drain_until_quiet(&mut s, &mut seen).await;
    let lost: Vec<u32> = acked
        .iter()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "MQTT 3.1.1: messages that got a PUBACK but were dropped by the per-session queue \
         limit of 10 and never delivered: {lost:?}; the broker answered: {answers:?}"
    );
}
