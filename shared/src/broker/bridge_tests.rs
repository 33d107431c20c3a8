//! Bridge queues and injection: what is stored, when the bridge may see it, sequence
//! numbers across restarts, and inbound messages with their cursor.

use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::tests::{connect, payloads, publish, Harness};
use super::{BridgeQueue, PeekLimits};
use crate::message::QoS;
use crate::mqtt::packet::ProtocolVersion::{V311, V5};
use crate::mqtt::packet::*;
use crate::mqtt::reason;
use crate::store::{MemoryStore, Store, StoreOp, StoredMessage, StoredProperties};

const ALL: PeekLimits = PeekLimits {
    messages: usize::MAX,
    bytes: usize::MAX,
};

fn restart(h: Harness) -> Harness {
    let store = h.store.expect("persistent harness");
    Harness::persistent(store, h.now + Duration::from_secs(1))
}

fn open(h: &mut Harness, max: usize) -> BridgeQueue {
    let q = h.broker.open_bridge_queue(
        "up/0",
        &[(ByteString::from("site/#"), QoS::AtLeastOnce)],
        max,
        ByteString::from("$bridge/cloud"),
        h.now,
    );
    h.drain();
    q
}

fn peek(h: &Harness, q: BridgeQueue, after: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    h.broker
        .bridge_peek(q, after, ALL, h.now, 1_000_000, &mut out);
    out.into_iter()
        .map(|(seq, m)| (seq, String::from_utf8_lossy(&m.payload).into_owned()))
        .collect()
}

fn stored(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: StoredProperties::default(),
        expires_at: None,
        origin: "device".into(),
    }
}

#[test]
fn bridge_queue_stores_every_qos_and_shows_only_durable_entries() {
    let mut h = Harness::persistent(MemoryStore::default(), Instant::now());
    let q = open(&mut h, 100);
    let p = h.connect("p", V311, true);
    h.broker.handle_packet(
        p,
        Packet::Publish(publish("site/a", "zero", QoS::AtMostOnce, false, None)),
        h.now,
    );
    h.broker.handle_packet(
        p,
        Packet::Publish(publish("site/a", "one", QoS::AtLeastOnce, false, Some(1))),
        h.now,
    );
    assert!(
        peek(&h, q, 0).is_empty(),
        "nothing is visible before its batch is durable"
    );
    let batch = h.broker.poll_store_batch().expect("batch");
    let enqueued = batch
        .ops
        .iter()
        .filter(|op| matches!(op, StoreOp::Enqueue { .. }))
        .count();
    assert_eq!(enqueued, 2, "QoS 0 is stored for the bridge too");
    h.store
        .as_mut()
        .expect("store")
        .apply(&batch.ops)
        .expect("apply");
    h.broker.handle_store_committed(batch.id);
    assert!(h.broker.take_bridge_ready());
    assert_eq!(peek(&h, q, 0), [(1, "zero".into()), (2, "one".into())]);
    assert_eq!(peek(&h, q, 1), [(2, "one".into())]);
    assert_eq!(h.take(p), [Packet::PubAck(PubResponse::new(1))]);
}

#[test]
fn bridge_ack_deletes_and_sequences_survive_restarts_never_reused() {
    let mut h = Harness::persistent(MemoryStore::default(), Instant::now());
    let q = open(&mut h, 100);
    let p = h.connect("p", V311, true);
    for i in 0..3 {
        h.publish(p, "site/x", &i.to_string(), QoS::AtLeastOnce, false);
    }
    h.drain();
    assert_eq!(peek(&h, q, 0).len(), 3);
    h.broker.bridge_ack(q, 2);
    h.drain();
    assert_eq!(peek(&h, q, 0), [(3, "2".into())]);
    // The unacknowledged entry survives; the sequence continues after it.
    let mut h = restart(h);
    let q = open(&mut h, 100);
    assert_eq!(peek(&h, q, 0), [(3, "2".into())]);
    h.broker.bridge_ack(q, 3);
    h.drain();
    // Empty queue, restart: numbers go on from the stored high-water mark.
    let mut h = restart(h);
    let q = open(&mut h, 100);
    let p = h.connect("p", V311, true);
    h.publish(p, "site/x", "new", QoS::AtLeastOnce, false);
    h.drain();
    assert_eq!(peek(&h, q, 0), [(4, "new".into())]);
    let backlog = h.broker.bridge_backlog(q, h.now);
    assert_eq!(
        (backlog.messages, backlog.bytes, backlog.last_seq),
        (1, 3, 4)
    );
}

#[test]
fn bridge_peek_honours_limits_but_returns_at_least_one() {
    let mut h = Harness::persistent(MemoryStore::default(), Instant::now());
    let q = open(&mut h, 100);
    let p = h.connect("p", V311, true);
    for i in 0..5 {
        h.publish(p, "site/x", &format!("m{i}"), QoS::AtLeastOnce, false);
    }
    h.drain();
    let mut out = Vec::new();
    let two = PeekLimits {
        messages: 2,
        bytes: usize::MAX,
    };
    h.broker.bridge_peek(q, 0, two, h.now, 0, &mut out);
    assert_eq!(out.len(), 2);
    out.clear();
    let tiny = PeekLimits {
        messages: 10,
        bytes: 1,
    };
    h.broker.bridge_peek(q, 3, tiny, h.now, 0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 4);
}

#[test]
fn full_bridge_queue_refuses_with_quota_exceeded() {
    let mut h = Harness::persistent(MemoryStore::default(), Instant::now());
    let q = open(&mut h, 2);
    let p = h.connect("p", V5, true);
    for id in 1..=3 {
        h.send(
            p,
            Packet::Publish(publish("site/x", "m", QoS::AtLeastOnce, false, Some(id))),
        );
    }
    let acks = h.take(p);
    assert_eq!(
        acks[2],
        Packet::PubAck(PubResponse::with_reason(3, reason::QUOTA_EXCEEDED))
    );
    assert_eq!(peek(&h, q, 0).len(), 2);
}

#[test]
fn inject_routes_sets_its_cursor_and_reports_after_the_batch() {
    let mut h = Harness::persistent(MemoryStore::default(), Instant::now());
    let q = open(&mut h, 100);
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "cmd/#", QoS::AtLeastOnce);
    h.subscribe(sub, "site/#", QoS::AtLeastOnce);
    let origin = ByteString::from("$bridge/cloud");
    h.broker.inject(
        vec![stored("cmd/a", "go"), stored("site/echo", "loop?")],
        &origin,
        ("in/0".into(), 7),
        42,
        h.now,
        1_000_000,
    );
    assert_eq!(h.broker.cursor("in/0"), None, "not durable yet");
    h.drain();
    assert_eq!(h.injected, [(42, true)]);
    assert_eq!(h.broker.cursor("in/0"), Some(7));
    assert_eq!(payloads(&h.take(sub)), ["go", "loop?"]);
    assert!(
        peek(&h, q, 0).is_empty(),
        "what came from the peer is not sent back to it"
    );
    let h = restart(h);
    assert_eq!(h.broker.cursor("in/0"), Some(7));
}

#[test]
fn clients_may_not_take_a_bridge_client_id() {
    let mut h = Harness::new();
    let (_, ack) = h.connect_with(connect("$bridge/up/0", V5, true));
    assert_eq!(ack.reason_code, reason::CLIENT_IDENTIFIER_NOT_VALID);
}

#[test]
fn without_a_store_bridge_entries_are_visible_at_once() {
    let mut h = Harness::new();
    let q = open(&mut h, 100);
    let p = h.connect("p", V311, true);
    h.publish(p, "site/x", "m", QoS::AtMostOnce, false);
    assert_eq!(peek(&h, q, 0), [(1, "m".into())]);
    h.broker.bridge_ack(q, 1);
    assert!(peek(&h, q, 0).is_empty());
}
