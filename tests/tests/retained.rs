//! Retained messages, 3.1.1 and 5.0: set, replace, clear with an empty payload, delivered
//! on subscribe with the RETAIN flag (at the lower of the stored and the granted QoS),
//! many retained topics matched by a wildcard subscription, and live forwards carrying
//! RETAIN=0.

mod common;

use std::collections::BTreeSet;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_retained_set_replace_clear() {
    let broker = Broker::start();
    let topic = unique("ret4");
    let mut publ = v4::client(&broker, "ret4-pub").await;

    publ.publish(&topic, v4::QoS::AtLeastOnce, true, b"first")
        .await;
    let mut s = v4::client(&broker, "ret4-s1").await;
    s.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let m = s.recv_publish(WAIT).await.expect("retained on subscribe");
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.retain, m.qos),
        (topic.as_str(), &b"first"[..], true, v4::QoS::AtLeastOnce)
    );
    s.expect_no_publish(QUIET).await;

    // Replace: the existing subscriber sees a live forward (RETAIN=0) ...
    publ.publish(&topic, v4::QoS::AtLeastOnce, true, b"second")
        .await;
    let m = s.recv_publish(WAIT).await.expect("live forward");
    assert_eq!((&m.payload[..], m.retain), (&b"second"[..], false));
    // ... and a new subscriber sees only the replacement.
    let mut s2 = v4::client(&broker, "ret4-s2").await;
    s2.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let m = s2.recv_publish(WAIT).await.expect("replaced retained");
    assert_eq!((&m.payload[..], m.retain), (&b"second"[..], true));
    s2.expect_no_publish(QUIET).await;

    // Clear with an empty retained payload: forwarded normally, then nothing is retained.
    publ.publish(&topic, v4::QoS::AtLeastOnce, true, b"").await;
    let m = s
        .recv_publish(WAIT)
        .await
        .expect("clearing message is forwarded");
    assert_eq!(&m.payload[..], b"");
    let mut s3 = v4::client(&broker, "ret4-s3").await;
    s3.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    s3.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retained_set_replace_clear() {
    let broker = Broker::start();
    let topic = unique("ret5");
    let mut publ = v5::client(&broker, "ret5-pub").await;
    publ.publish(&topic, v5::QoS::AtMostOnce, true, b"first")
        .await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, true, b"second")
        .await;

    let mut s = v5::client(&broker, "ret5-s1").await;
    s.subscribe(&topic, v5::QoS::ExactlyOnce).await;
    let m = s.recv_publish(WAIT).await.expect("retained on subscribe");
    assert_eq!(
        (v5::topic(&m), &m.payload[..], m.retain, m.qos),
        (topic.clone(), &b"second"[..], true, v5::QoS::AtLeastOnce)
    );
    s.expect_no_publish(QUIET).await;

    publ.publish(&topic, v5::QoS::AtLeastOnce, true, b"").await;
    let mut s2 = v5::client(&broker, "ret5-s2").await;
    s2.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    s2.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_retained_qos_is_min_of_stored_and_granted() {
    let broker = Broker::start();
    let topic = unique("retq");
    let mut publ = v4::client(&broker, "retq-pub").await;
    publ.publish(&topic, v4::QoS::ExactlyOnce, true, b"q2")
        .await;
    let mut s0 = v4::client(&broker, "retq-s0").await;
    s0.subscribe(&topic, v4::QoS::AtMostOnce).await;
    let m = s0.recv_publish(WAIT).await.expect("retained");
    assert_eq!((m.qos, m.retain), (v4::QoS::AtMostOnce, true));
    let mut s2 = v4::client(&broker, "retq-s2").await;
    s2.subscribe(&topic, v4::QoS::ExactlyOnce).await;
    let m = s2.recv_publish(WAIT).await.expect("retained");
    assert_eq!((m.qos, m.retain), (v4::QoS::ExactlyOnce, true));
    publ.publish(&topic, v4::QoS::AtLeastOnce, true, b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_wildcard_subscription_gets_every_retained_topic() {
    let broker = Broker::start();
    let base = unique("retw");
    let mut publ = v4::client(&broker, "retw-pub").await;
    let topics = [
        format!("{base}/a"),
        format!("{base}/b/c"),
        format!("{base}/b/d/e"),
    ];
    for t in &topics {
        publ.publish(t, v4::QoS::AtLeastOnce, true, t.as_bytes())
            .await;
    }
    publ.publish(
        &format!("{base}/b/not-retained"),
        v4::QoS::AtLeastOnce,
        false,
        b"x",
    )
    .await;
    let mut s = v4::client(&broker, "retw-sub").await;
    s.subscribe(&format!("{base}/#"), v4::QoS::AtLeastOnce)
        .await;
    let got: BTreeSet<_> = s
        .recv_publishes(3)
        .await
        .iter()
        .map(|p| {
            assert!(p.retain, "{p:?}");
            assert_eq!(p.topic.as_bytes(), &p.payload[..]);
            p.topic.clone()
        })
        .collect();
    assert_eq!(got, topics.iter().cloned().collect());
    s.expect_no_publish(QUIET).await;

    let mut s2 = v4::client(&broker, "retw-sub2").await;
    s2.subscribe(&format!("{base}/b/+"), v4::QoS::AtLeastOnce)
        .await;
    let m = s2.recv_publish(WAIT).await.expect("one retained under b/+");
    assert_eq!(m.topic, topics[1]);
    s2.expect_no_publish(QUIET).await;
    for t in &topics {
        publ.publish(t, v4::QoS::AtLeastOnce, true, b"").await;
    }
}
