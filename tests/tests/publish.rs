//! PUBLISH interop: QoS 0/1/2 in both directions (client → broker and broker → client)
//! for MQTT 3.1.1 and 5.0, ordering, QoS 2 exactly-once on a duplicated inbound PUBLISH,
//! QoS downgrade to the subscription maximum, overlapping subscriptions delivered once at
//! the highest QoS, offline queueing for persistent sessions, resend with DUP=1 and the
//! same packet id after reconnect, and the v5 in-flight window honouring the client's
//! Receive Maximum.

mod common;

use std::time::Duration;

use common::*;
use raw::{kind, prop, Props, PublishOut};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos_0_1_2_both_directions() {
    let broker = Broker::start();
    let base = unique("v4q");
    let mut sub = v4::client(&broker, "v4q-sub").await;
    let codes = sub
        .subscribe(&format!("{base}/#"), v4::QoS::ExactlyOnce)
        .await;
    assert_eq!(
        codes,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::ExactlyOnce)]
    );
    let mut publ = v4::client(&broker, "v4q-pub").await;
    for (i, q) in [
        v4::QoS::AtMostOnce,
        v4::QoS::AtLeastOnce,
        v4::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publ.publish(&format!("{base}/{i}"), q, false, format!("m{i}").as_bytes())
            .await;
    }
    let got = sub.recv_publishes(3).await;
    let got: Vec<_> = got
        .iter()
        .map(|p| (p.topic.clone(), p.qos, p.retain, p.payload.to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                format!("{base}/0"),
                v4::QoS::AtMostOnce,
                false,
                b"m0".to_vec()
            ),
            (
                format!("{base}/1"),
                v4::QoS::AtLeastOnce,
                false,
                b"m1".to_vec()
            ),
            (
                format!("{base}/2"),
                v4::QoS::ExactlyOnce,
                false,
                b"m2".to_vec()
            ),
        ]
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos_0_1_2_both_directions() {
    let broker = Broker::start();
    let base = unique("v5q");
    let mut sub = v5::client(&broker, "v5q-sub").await;
    let codes = sub
        .subscribe(&format!("{base}/#"), v5::QoS::ExactlyOnce)
        .await;
    assert_eq!(
        codes,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::ExactlyOnce)]
    );
    let mut publ = v5::client(&broker, "v5q-pub").await;
    for (i, q) in [
        v5::QoS::AtMostOnce,
        v5::QoS::AtLeastOnce,
        v5::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publ.publish(&format!("{base}/{i}"), q, false, format!("m{i}").as_bytes())
            .await;
    }
    let got = sub.recv_publishes(3).await;
    let got: Vec<_> = got
        .iter()
        .map(|p| (v5::topic(p), p.qos, p.retain, p.payload.to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                format!("{base}/0"),
                v5::QoS::AtMostOnce,
                false,
                b"m0".to_vec()
            ),
            (
                format!("{base}/1"),
                v5::QoS::AtLeastOnce,
                false,
                b"m1".to_vec()
            ),
            (
                format!("{base}/2"),
                v5::QoS::ExactlyOnce,
                false,
                b"m2".to_vec()
            ),
        ]
    );
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos1_order_preserved() {
    let broker = Broker::start();
    let topic = unique("order");
    let mut sub = v4::client(&broker, "ord-sub").await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut publ = v4::client(&broker, "ord-pub").await;
    for i in 0..50 {
        publ.publish(
            &topic,
            v4::QoS::AtLeastOnce,
            false,
            format!("{i}").as_bytes(),
        )
        .await;
    }
    let got: Vec<String> = sub
        .recv_publishes(50)
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    sub.expect_no_publish(QUIET).await;
}

/// A QoS 2 PUBLISH sent twice (the second with DUP) before PUBREL is delivered once.
async fn qos2_inbound_duplicate_delivered_once(version: u8) {
    let broker = Broker::start();
    let topic = unique("qos2dup");
    let mut sub = v4::client(&broker, "qos2dup-sub").await;
    sub.subscribe(&topic, v4::QoS::ExactlyOnce).await;

    let (mut p, _) = RawClient::connect(
        &broker.addr(),
        &raw::Connect::new(version, &unique("qos2dup-pub")),
    )
    .await;
    let publish = PublishOut::new(&topic, b"once").qos(2, 7);
    p.send(&publish.encode(version)).await.unwrap();
    let rec = p.expect(WAIT, "PUBREC").await;
    assert_eq!(rec.kind, kind::PUBREC);
    assert_eq!(rec.ack().unwrap().0, 7);
    let mut again = publish.clone();
    again.dup = true;
    p.send(&again.encode(version)).await.unwrap();
    let rec = p.expect(WAIT, "second PUBREC").await;
    assert_eq!((rec.kind, rec.ack().unwrap().0), (kind::PUBREC, 7));
    p.send(&raw::ack(kind::PUBREL, 7, None)).await.unwrap();
    let comp = p.expect(WAIT, "PUBCOMP").await;
    assert_eq!((comp.kind, comp.ack().unwrap().0), (kind::PUBCOMP, 7));

    let m = sub.recv_publish(WAIT).await.expect("the message");
    assert_eq!(&m.payload[..], b"once");
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos2_inbound_duplicate_delivered_once() {
    qos2_inbound_duplicate_delivered_once(raw::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_inbound_duplicate_delivered_once() {
    qos2_inbound_duplicate_delivered_once(raw::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos_downgraded_to_subscription_maximum() {
    let broker = Broker::start();
    let base = unique("down4");
    let mut s0 = v4::client(&broker, "down4-s0").await;
    s0.subscribe(&format!("{base}/+"), v4::QoS::AtMostOnce)
        .await;
    let mut s1 = v4::client(&broker, "down4-s1").await;
    s1.subscribe(&format!("{base}/+"), v4::QoS::AtLeastOnce)
        .await;
    let mut publ = v4::client(&broker, "down4-pub").await;
    publ.publish(&format!("{base}/a"), v4::QoS::ExactlyOnce, false, b"q2")
        .await;
    publ.publish(&format!("{base}/b"), v4::QoS::AtMostOnce, false, b"q0")
        .await;
    let got0: Vec<_> = s0
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (p.payload.to_vec(), p.qos))
        .collect();
    assert_eq!(
        got0,
        vec![
            (b"q2".to_vec(), v4::QoS::AtMostOnce),
            (b"q0".to_vec(), v4::QoS::AtMostOnce)
        ]
    );
    let got1: Vec<_> = s1
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (p.payload.to_vec(), p.qos))
        .collect();
    assert_eq!(
        got1,
        vec![
            (b"q2".to_vec(), v4::QoS::AtLeastOnce),
            (b"q0".to_vec(), v4::QoS::AtMostOnce)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos_downgraded_to_subscription_maximum() {
    let broker = Broker::start();
    let base = unique("down5");
    let mut s1 = v5::client(&broker, "down5-s1").await;
    s1.subscribe(&format!("{base}/+"), v5::QoS::AtLeastOnce)
        .await;
    let mut publ = v5::client(&broker, "down5-pub").await;
    publ.publish(&format!("{base}/a"), v5::QoS::ExactlyOnce, false, b"q2")
        .await;
    let m = s1.recv_publish(WAIT).await.expect("delivery");
    assert_eq!((&m.payload[..], m.qos), (&b"q2"[..], v5::QoS::AtLeastOnce));
    s1.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_overlapping_subscriptions_delivered_once_at_highest_qos() {
    let broker = Broker::start();
    let base = unique("ovl4");
    let mut sub = v4::client(&broker, "ovl4-sub").await;
    let codes = sub
        .subscribe_many(&[
            (&format!("{base}/#"), v4::QoS::AtMostOnce),
            (&format!("{base}/+/c"), v4::QoS::ExactlyOnce),
            (&format!("{base}/b/c"), v4::QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(
        codes,
        vec![
            v4::SubscribeReasonCode::Success(v4::QoS::AtMostOnce),
            v4::SubscribeReasonCode::Success(v4::QoS::ExactlyOnce),
            v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce),
        ]
    );
    let mut publ = v4::client(&broker, "ovl4-pub").await;
    publ.publish(&format!("{base}/b/c"), v4::QoS::ExactlyOnce, false, b"x")
        .await;
    let m = sub.recv_publish(WAIT).await.expect("one delivery");
    assert_eq!((&m.payload[..], m.qos), (&b"x"[..], v4::QoS::ExactlyOnce));
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_overlapping_subscriptions_delivered_once_at_highest_qos() {
    let broker = Broker::start();
    let base = unique("ovl5");
    let mut sub = v5::client(&broker, "ovl5-sub").await;
    sub.subscribe(&format!("{base}/#"), v5::QoS::AtMostOnce)
        .await;
    sub.subscribe(&format!("{base}/b/+"), v5::QoS::AtLeastOnce)
        .await;
    let mut publ = v5::client(&broker, "ovl5-pub").await;
    publ.publish(&format!("{base}/b/c"), v5::QoS::ExactlyOnce, false, b"x")
        .await;
    let m = sub.recv_publish(WAIT).await.expect("one delivery");
    assert_eq!((&m.payload[..], m.qos), (&b"x"[..], v5::QoS::AtLeastOnce));
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_offline_messages_queued_for_persistent_session() {
    let broker = Broker::start();
    let id = unique("offline4");
    let topic = unique("offline4/t");
    let mut o = v4::options(&broker, &id);
    o.set_clean_session(false);
    let mut c = v4::connect(o.clone()).await;
    c.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v4::client(&broker, "offline4-pub").await;
    for i in 0..5 {
        publ.publish(
            &topic,
            v4::QoS::AtLeastOnce,
            false,
            format!("q1-{i}").as_bytes(),
        )
        .await;
    }
    let mut c = v4::connect(o).await;
    assert!(c.connack.session_present);
    let got: Vec<_> = c
        .recv_publishes(5)
        .await
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), p.qos))
        .collect();
    let want: Vec<_> = (0..5)
        .map(|i| (format!("q1-{i}"), v4::QoS::AtLeastOnce))
        .collect();
    assert_eq!(got, want);
    c.expect_no_publish(QUIET).await;
}

/// Subscribe at QoS 1, receive a PUBLISH, don't acknowledge, drop the connection and
/// resume the session: the PUBLISH is resent with DUP=1 and the same packet id.
async fn dup_on_resend(version: u8) {
    let broker = Broker::start();
    let id = unique("dup");
    let topic = unique("dup/t");
    let mut connect = raw::Connect::new(version, &id).clean(false);
    if version == raw::V5 {
        connect = connect
            .clean(true)
            .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 60));
    }
    let (mut c, ack) = RawClient::connect(&broker.addr(), &connect).await;
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe(1, &[(&topic, 1)], &Props::new()).await, vec![1]);

    let mut publ = v4::client(&broker, "dup-pub").await;
    publ.publish(&topic, v4::QoS::AtLeastOnce, false, b"resend me")
        .await;
    let first = c.expect_publish(WAIT).await;
    assert_eq!(
        (first.dup, first.qos, first.payload.as_slice()),
        (false, 1, &b"resend me"[..]),
        "first delivery"
    );
    let pid = first.pid.expect("QoS 1 has a packet id");
    c.abort().await;

    let resume = if version == raw::V5 {
        connect.clone().clean(false)
    } else {
        connect.clone()
    };
    let (mut c, ack) = RawClient::connect(&broker.addr(), &resume).await;
    assert!(ack.session_present, "session must be resumed");
    let again = c.expect_publish(WAIT).await;
    assert_eq!(
        (
            again.dup,
            again.qos,
            again.pid,
            again.topic.as_str(),
            again.payload.as_slice()
        ),
        (true, 1, Some(pid), topic.as_str(), &b"resend me"[..]),
        "resend must have DUP=1 and the same packet id"
    );
    c.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
    match c.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("nothing more expected after the PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_dup_on_resend_after_reconnect() {
    dup_on_resend(raw::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_dup_on_resend_after_reconnect() {
    dup_on_resend(raw::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_inflight_window_honours_receive_maximum() {
    let broker = Broker::start();
    let topic = unique("rmax");
    let connect = raw_v5("rmax-sub").props(Props::new().u16(prop::RECEIVE_MAXIMUM, 2));
    let (mut c, _) = RawClient::connect(&broker.addr(), &connect).await;
    assert_eq!(c.subscribe(1, &[(&topic, 1)], &Props::new()).await, vec![1]);

    let mut publ = v5::client(&broker, "rmax-pub").await;
    for i in 0..5 {
        publ.publish(
            &topic,
            v5::QoS::AtLeastOnce,
            false,
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    let a = c.expect_publish(WAIT).await;
    let b = c.expect_publish(WAIT).await;
    assert_eq!(
        (a.payload.as_slice(), b.payload.as_slice()),
        (&b"m0"[..], &b"m1"[..])
    );
    match c.recv(Duration::from_millis(800)).await {
        Recv::Timeout => {}
        other => panic!("receive maximum 2: a third unacknowledged PUBLISH arrived: {other:?}"),
    }
    // Acknowledge one: exactly one more may come.
    c.send(&raw::ack(kind::PUBACK, a.pid.unwrap(), None))
        .await
        .unwrap();
    let d = c.expect_publish(WAIT).await;
    assert_eq!(d.payload, b"m2");
    match c.recv(Duration::from_millis(800)).await {
        Recv::Timeout => {}
        other => panic!("window of 2 exceeded after one PUBACK: {other:?}"),
    }
    // Acknowledge everything: the rest arrive, in order.
    let mut payloads = vec![];
    c.send(&raw::ack(kind::PUBACK, b.pid.unwrap(), None))
        .await
        .unwrap();
    c.send(&raw::ack(kind::PUBACK, d.pid.unwrap(), None))
        .await
        .unwrap();
    for _ in 0..2 {
        let p = c.expect_publish(WAIT).await;
        payloads.push(String::from_utf8(p.payload.clone()).unwrap());
        c.send(&raw::ack(kind::PUBACK, p.pid.unwrap(), None))
            .await
            .unwrap();
    }
    assert_eq!(payloads, vec!["m3", "m4"]);
}
