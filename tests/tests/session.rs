//! MQTT 5 session and message lifetimes: the Session Expiry Interval (a session with
//! expiry 1 s is gone after ~2 s; a DISCONNECT may shorten it to 0), QoS 1 messages queued
//! for an offline v5 session, and the Message Expiry Interval (an expired queued message is
//! not delivered, a live one is forwarded with the remaining, smaller interval, expiry also
//! applies to retained messages).

mod common;

use std::time::Duration;

use common::*;
use raw::{kind, prop, Props, PublishOut};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expires_after_interval() {
    let broker = Broker::start();
    let id = unique("sexp");
    let connect =
        raw::Connect::new(raw::V5, &id).props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 1));
    let (mut c, _) = RawClient::connect(&broker.addr(), &connect).await;
    c.subscribe(1, &[(&unique("sexp/t"), 1)], &Props::new())
        .await;
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;

    // Control: immediately afterwards the session is still there.
    let resume = connect.clone().clean(false);
    let (mut c, ack) = RawClient::connect(&broker.addr(), &resume).await;
    assert!(
        ack.session_present,
        "within the 1 s expiry the session exists"
    );
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_c, ack) = RawClient::connect(&broker.addr(), &resume).await;
    assert!(
        !ack.session_present,
        "session with expiry 1 s must be gone after 2.2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_sets_session_expiry_to_zero() {
    let broker = Broker::start();
    let id = unique("sexp0");
    let connect =
        raw::Connect::new(raw::V5, &id).props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 60));
    let (mut c, _) = RawClient::connect(&broker.addr(), &connect).await;
    c.send(&raw::disconnect(
        raw::V5,
        0,
        &Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 0),
    ))
    .await
    .unwrap();
    let _ = c.wait_closed(WAIT).await;
    let (_c, ack) = RawClient::connect(&broker.addr(), &connect.clean(false)).await;
    assert!(
        !ack.session_present,
        "DISCONNECT with expiry 0 ends the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_offline_queue_and_message_expiry() {
    let broker = Broker::start();
    let id = unique("mexp");
    let topic = unique("mexp/t");
    let connect =
        raw::Connect::new(raw::V5, &id).props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 60));
    let (mut c, _) = RawClient::connect(&broker.addr(), &connect).await;
    assert_eq!(c.subscribe(1, &[(&topic, 1)], &Props::new()).await, vec![1]);
    c.send(&raw::disconnect(raw::V5, 0, &Props::new()))
        .await
        .unwrap();
    let _ = c.wait_closed(WAIT).await;

    let mut publ = v5::client(&broker, "mexp-pub").await;
    let expiring = v5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let lasting = v5::PublishProperties {
        message_expiry_interval: Some(30),
        ..Default::default()
    };
    publ.publish_with(&topic, v5::QoS::AtLeastOnce, false, b"expires", expiring)
        .await;
    publ.publish_with(&topic, v5::QoS::AtLeastOnce, false, b"lasts", lasting)
        .await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, b"forever")
        .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let (mut c, ack) = RawClient::connect(&broker.addr(), &connect.clean(false)).await;
    assert!(ack.session_present);
    let a = c.expect_publish(WAIT).await;
    c.send(&raw::ack(kind::PUBACK, a.pid.unwrap(), None))
        .await
        .unwrap();
    let b = c.expect_publish(WAIT).await;
    c.send(&raw::ack(kind::PUBACK, b.pid.unwrap(), None))
        .await
        .unwrap();
    assert_eq!(
        (a.payload.as_slice(), b.payload.as_slice()),
        (&b"lasts"[..], &b"forever"[..]),
        "the expired message must not be delivered"
    );
    let left = a
        .props
        .int(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("message expiry interval forwarded");
    assert!(
        (25..30).contains(&left),
        "remaining expiry must be the original 30 minus the ~2 s waited, got {left}"
    );
    assert_eq!(b.props.int(prop::MESSAGE_EXPIRY_INTERVAL), None);
    match c.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("nothing more expected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_live_message_keeps_expiry_interval() {
    let broker = Broker::start();
    let topic = unique("mexp-live");
    let (mut c, _) = RawClient::connect(&broker.addr(), &raw_v5("mexp-live")).await;
    c.subscribe(1, &[(&topic, 0)], &Props::new()).await;
    let (mut p, _) = RawClient::connect(&broker.addr(), &raw_v5("mexp-live-pub")).await;
    p.send(
        &PublishOut::new(&topic, b"x")
            .props(Props::new().u32(prop::MESSAGE_EXPIRY_INTERVAL, 100))
            .encode(raw::V5),
    )
    .await
    .unwrap();
    let m = c.expect_publish(WAIT).await;
    let left = m
        .props
        .int(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("expiry forwarded");
    assert!((98..=100).contains(&left), "forwarded interval {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retained_message_expires() {
    let broker = Broker::start();
    let topic = unique("mexp-ret");
    let mut publ = v5::client(&broker, "mexp-ret-pub").await;
    publ.publish_with(
        &topic,
        v5::QoS::AtLeastOnce,
        true,
        b"short-lived",
        v5::PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        },
    )
    .await;
    let mut early = v5::client(&broker, "mexp-ret-early").await;
    early.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    let m = early
        .recv_publish(WAIT)
        .await
        .expect("retained while alive");
    assert_eq!(&m.payload[..], b"short-lived");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut late = v5::client(&broker, "mexp-ret-late").await;
    late.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    late.expect_no_publish(QUIET).await;
}
