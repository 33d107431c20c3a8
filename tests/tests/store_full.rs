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
