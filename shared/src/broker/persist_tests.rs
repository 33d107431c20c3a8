//! The broker with a store: what it writes, when acknowledgements leave, and what a
//! broker restored from the store after a crash still knows and delivers.

use std::time::Duration;

use super::tests::{connect, payloads, publish, publishes, Harness};
use super::Output;
use crate::message::QoS;
use crate::mqtt::packet::ProtocolVersion::{V311, V5};
use crate::mqtt::packet::*;
use crate::store::{MemoryStore, Store};

/// The broker "crashes": only what it committed to the store survives.
fn restart(h: Harness) -> Harness {
    let store = h.store.expect("persistent harness");
    Harness::persistent(store, h.now + Duration::from_secs(1))
}

#[test]
fn puback_waits_for_the_batch_holding_the_message() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.drop_conn(sub);
    let p = h.connect("p", V311, true);
    // Drive the broker by hand: the batch is not committed yet.
    h.broker.handle_packet(
        p,
        Packet::Publish(publish("t", "m", QoS::AtLeastOnce, false, Some(9))),
        h.now,
    );
    assert_eq!(
        h.broker.poll_output(),
        None,
        "PUBACK before the message is durable"
    );
    let ops = h.commit_batch();
    assert!(ops
        .iter()
        .any(|op| matches!(op, crate::store::StoreOp::Enqueue { .. })));
    assert_eq!(h.take(p), [Packet::PubAck(PubResponse::new(9))]);
}

#[test]
fn a_qos1_delivery_leaves_before_the_commit_a_qos2_delivery_after_it() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let one = h.connect("one", V311, false);
    h.subscribe(one, "t", QoS::AtLeastOnce);
    let two = h.connect("two", V311, false);
    h.subscribe(two, "t", QoS::ExactlyOnce);
    let p = h.connect("p", V311, true);
    h.broker.handle_packet(
        p,
        Packet::Publish(publish("t", "m", QoS::ExactlyOnce, false, Some(9))),
        h.now,
    );
    // A duplicate of a QoS 1 delivery after a crash is within its promise.
    let early: Vec<_> = std::iter::from_fn(|| h.broker.poll_output()).collect();
    assert!(
        matches!(&early[..], [Output::Send(c, Packet::Publish(m))] if *c == one && m.qos == QoS::AtLeastOnce),
        "only the QoS 1 delivery before the commit: {early:?}"
    );
    h.commit_batch();
    assert_eq!(h.take(p), [Packet::PubRec(PubResponse::new(9))]);
    let late = h.take(two);
    assert!(
        matches!(&publishes(&late)[..], [m] if m.qos == QoS::ExactlyOnce),
        "{late:?}"
    );
}

#[test]
fn queued_messages_subscriptions_and_retained_survive_a_restart() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "q/#", QoS::ExactlyOnce);
    h.drop_conn(sub);
    let p = h.connect("p", V311, true);
    for i in 0..5 {
        h.publish(p, "q/x", &i.to_string(), QoS::AtLeastOnce, false);
    }
    h.publish(p, "r", "kept", QoS::AtMostOnce, true);
    h.take(p);
    let mut h = restart(h);
    let (sub, ack) = h.connect_with(connect("sub", V311, false));
    assert!(ack.session_present);
    assert_eq!(payloads(&h.take(sub)), ["0", "1", "2", "3", "4"]);
    // The subscription itself survived: new messages still arrive.
    let p = h.connect("p", V311, true);
    h.publish(p, "q/y", "new", QoS::AtLeastOnce, false);
    assert_eq!(payloads(&h.take(sub)), ["new"]);
    let c = h.connect("c", V311, true);
    h.subscribe(c, "r", QoS::AtMostOnce);
    assert_eq!(payloads(&h.take(c)), ["kept"]);
}

#[test]
fn unacknowledged_deliveries_are_resent_after_a_restart_and_acks_are_remembered() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let sub = h.connect("sub", V5, false);
    let mut c = connect("sub", V5, false);
    c.properties.session_expiry_interval = Some(3600);
    h.drop_conn(sub);
    let (sub, _) = h.connect_with(c.clone());
    h.subscribe(sub, "a", QoS::AtLeastOnce);
    let p = h.connect("p", V5, true);
    h.publish(p, "a", "acked", QoS::AtLeastOnce, false);
    h.publish(p, "a", "pending", QoS::AtLeastOnce, false);
    let got = h.take(sub);
    let ps = publishes(&got);
    h.send(
        sub,
        Packet::PubAck(PubResponse::new(ps[0].packet_id.expect("id"))),
    );
    h.take(sub);
    let pending_id = ps[1].packet_id;
    let mut h = restart(h);
    let (sub, _) = h.connect_with(c);
    let got = h.take(sub);
    let ps = publishes(&got);
    assert_eq!(
        ps.len(),
        1,
        "only the unacknowledged message comes back: {ps:?}"
    );
    assert!(ps[0].dup);
    assert_eq!(ps[0].packet_id, pending_id);
    assert_eq!(&ps[0].payload[..], b"pending");
}

#[test]
fn incoming_qos2_is_deduplicated_across_a_restart() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let watcher = h.connect("w", V311, false);
    h.subscribe(watcher, "x", QoS::ExactlyOnce);
    h.drop_conn(watcher);
    let p = h.connect("p", V311, false);
    h.publish(p, "x", "once", QoS::ExactlyOnce, false);
    assert_eq!(h.take(p), [Packet::PubRec(PubResponse::new(7))]);
    // Crash before PUBREL: the publisher resends with DUP after the restart.
    let mut h = restart(h);
    let (p, ack) = h.connect_with(connect("p", V311, false));
    assert!(ack.session_present);
    let mut again = publish("x", "once", QoS::ExactlyOnce, false, Some(7));
    again.dup = true;
    h.send(p, Packet::Publish(again));
    assert_eq!(h.take(p), [Packet::PubRec(PubResponse::new(7))]);
    h.send(p, Packet::PubRel(PubResponse::new(7)));
    assert_eq!(h.take(p), [Packet::PubComp(PubResponse::new(7))]);
    let (w, _) = h.connect_with(connect("w", V311, false));
    assert_eq!(payloads(&h.take(w)), ["once"]);
}

#[test]
fn ended_sessions_and_cleared_retained_leave_the_store_empty() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let mut c = connect("s", V5, false);
    c.properties.session_expiry_interval = Some(2);
    let (s, _) = h.connect_with(c);
    h.subscribe(s, "a", QoS::AtLeastOnce);
    h.publish(s, "r", "x", QoS::AtMostOnce, true);
    h.publish(s, "r", "", QoS::AtMostOnce, true);
    let p = h.connect("p", V5, true);
    h.drop_conn(s);
    h.publish(p, "a", "queued", QoS::AtLeastOnce, false);
    h.advance(Duration::from_secs(4));
    let stats = h.store.as_ref().expect("store").stats();
    assert_eq!(
        (
            stats.sessions,
            stats.entries,
            stats.messages,
            stats.retained
        ),
        (0, 0, 0, 0)
    );
}

/// Found by the `broker_session` fuzz target: an acknowledgement held for its batch
/// must not be sent to a socket that closed before the batch committed.
#[test]
fn nothing_is_sent_to_a_socket_that_closed_while_its_ack_waited() {
    let mut h = Harness::persistent(MemoryStore::default(), std::time::Instant::now());
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    h.drop_conn(sub);
    let p = h.connect("p", V311, true);
    h.broker.handle_packet(
        p,
        Packet::Publish(publish("t", "m", QoS::AtLeastOnce, false, Some(9))),
        h.now,
    );
    h.broker.handle_closed(p, h.now);
    h.commit_batch();
    assert_eq!(h.broker.poll_output(), None);
}
