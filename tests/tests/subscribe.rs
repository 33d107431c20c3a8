//! SUBSCRIBE / UNSUBSCRIBE interop: per-filter SUBACK reason codes (granted QoS, invalid
//! filters such as `a/#/b` and `a+` rejected with 0x80 in 3.1.1 and 0x8F in 5.0 while the
//! valid filters of the same packet are granted), UNSUBACK reason codes (v5: 0x00 and 0x11),
//! delivery stopping after UNSUBSCRIBE, and the v5 subscription options: no-local,
//! retain-as-published, retain handling 0/1/2, and subscription identifiers.

mod common;

use common::*;
use raw::{kind, prop, Props, PublishOut};
use v5::{Filter, RetainForwardRule};

/// Filters of one SUBSCRIBE: three valid at QoS 0/1/2, two invalid.
fn mixed_filters(base: &str) -> Vec<(String, u8)> {
    vec![
        (format!("{base}/a"), 0),
        (format!("{base}/b/+"), 1),
        (format!("{base}/c/#"), 2),
        (format!("{base}/#/b"), 1),
        (format!("{base}/a+"), 0),
    ]
}

async fn suback_per_filter(version: u8, invalid: u8) {
    let broker = Broker::start();
    let base = unique("suback");
    let (mut c, _) = RawClient::connect(
        &broker.addr(),
        &raw::Connect::new(version, &unique("suback")),
    )
    .await;
    let filters = mixed_filters(&base);
    let f: Vec<(&str, u8)> = filters.iter().map(|(f, q)| (f.as_str(), *q)).collect();
    let codes = c.subscribe(10, &f, &Props::new()).await;
    assert_eq!(
        codes,
        vec![0, 1, 2, invalid, invalid],
        "one reason code per filter"
    );

    // The valid subscriptions are in force: a QoS 2 publish to `<base>/c/x` comes at QoS 2.
    let mut publ = v4::client(&broker, "suback-pub").await;
    publ.publish(
        &format!("{base}/c/x"),
        v4::QoS::ExactlyOnce,
        false,
        b"granted",
    )
    .await;
    let p = c.expect_publish(WAIT).await;
    assert_eq!(
        (p.topic, p.qos, p.payload),
        (format!("{base}/c/x"), 2, b"granted".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_suback_per_filter_invalid_0x80() {
    suback_per_filter(raw::V4, 0x80).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_suback_per_filter_invalid_0x8f() {
    suback_per_filter(raw::V5, 0x8F).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_rumqttc_subscribe_many_granted() {
    let broker = Broker::start();
    let base = unique("subm");
    let mut c = v4::client(&broker, "subm").await;
    let codes = c
        .subscribe_many(&[
            (&format!("{base}/0"), v4::QoS::AtMostOnce),
            (&format!("{base}/1"), v4::QoS::AtLeastOnce),
            (&format!("{base}/2"), v4::QoS::ExactlyOnce),
        ])
        .await;
    use v4::SubscribeReasonCode::Success;
    assert_eq!(
        codes,
        vec![
            Success(v4::QoS::AtMostOnce),
            Success(v4::QoS::AtLeastOnce),
            Success(v4::QoS::ExactlyOnce)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unsuback_reason_codes_and_delivery_stops() {
    let broker = Broker::start();
    let base = unique("unsub5");
    let (mut c, _) = RawClient::connect(&broker.addr(), &raw_v5("unsub5")).await;
    let a = format!("{base}/a");
    let b = format!("{base}/b");
    assert_eq!(
        c.subscribe(1, &[(&a, 1), (&b, 1)], &Props::new()).await,
        vec![1, 1]
    );
    c.send(&raw::unsubscribe(
        raw::V5,
        2,
        &[&a, &format!("{base}/never")],
    ))
    .await
    .unwrap();
    let p = c.expect(WAIT, "UNSUBACK").await;
    let (pid, _, codes) = p.suback(raw::V5).expect("UNSUBACK");
    assert_eq!(p.kind, kind::UNSUBACK);
    assert_eq!(
        (pid, codes),
        (2, vec![0x00, 0x11]),
        "success, no subscription existed"
    );

    let mut publ = v5::client(&broker, "unsub5-pub").await;
    publ.publish(&a, v5::QoS::AtLeastOnce, false, b"to-a").await;
    publ.publish(&b, v5::QoS::AtLeastOnce, false, b"to-b").await;
    let m = c.expect_publish(WAIT).await;
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        (b.as_str(), &b"to-b"[..])
    );
    c.send(&raw::ack(kind::PUBACK, m.pid.unwrap(), None))
        .await
        .unwrap();
    match c.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("unsubscribed filter still delivers: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_unsubscribe_stops_delivery() {
    let broker = Broker::start();
    let topic = unique("unsub4");
    let (mut c, _) = RawClient::connect(&broker.addr(), &raw_v4("unsub4")).await;
    assert_eq!(c.subscribe(1, &[(&topic, 0)], &Props::new()).await, vec![0]);
    c.send(&raw::unsubscribe(raw::V4, 3, &[&topic]))
        .await
        .unwrap();
    let p = c.expect(WAIT, "UNSUBACK").await;
    assert_eq!(
        (p.kind, p.flags, p.body.clone()),
        (kind::UNSUBACK, 0, vec![0, 3])
    );
    let mut publ = v4::client(&broker, "unsub4-pub").await;
    publ.publish(&topic, v4::QoS::AtLeastOnce, false, b"x")
        .await;
    match c.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("unsubscribed filter still delivers: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_local() {
    let broker = Broker::start();
    let base = unique("nolocal");
    let local = format!("{base}/local");
    let normal = format!("{base}/normal");
    let mut c = v5::client(&broker, "nolocal").await;
    let mut f = Filter::new(local.clone(), v5::QoS::AtLeastOnce);
    f.nolocal = true;
    let codes = c
        .subscribe_filters(
            vec![f, Filter::new(normal.clone(), v5::QoS::AtLeastOnce)],
            None,
        )
        .await;
    assert_eq!(codes.len(), 2);
    c.publish(&local, v5::QoS::AtLeastOnce, false, b"own-local")
        .await;
    c.publish(&normal, v5::QoS::AtLeastOnce, false, b"own-normal")
        .await;
    let mut other = v5::client(&broker, "nolocal-other").await;
    other
        .publish(&local, v5::QoS::AtLeastOnce, false, b"other-local")
        .await;
    let mut got: Vec<_> = c
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (v5::topic(p), p.payload.to_vec()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (local.clone(), b"other-local".to_vec()),
            (normal.clone(), b"own-normal".to_vec())
        ]
    );
    c.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_as_published() {
    let broker = Broker::start();
    let topic = unique("rap");
    let mut rap = v5::client(&broker, "rap-1").await;
    let mut f = Filter::new(topic.clone(), v5::QoS::AtLeastOnce);
    f.preserve_retain = true;
    rap.subscribe_filters(vec![f], None).await;
    let mut plain = v5::client(&broker, "rap-0").await;
    plain.subscribe(&topic, v5::QoS::AtLeastOnce).await;

    let mut publ = v5::client(&broker, "rap-pub").await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, true, b"kept")
        .await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, b"plain")
        .await;
    let a: Vec<_> = rap
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (p.payload.to_vec(), p.retain))
        .collect();
    assert_eq!(
        a,
        vec![(b"kept".to_vec(), true), (b"plain".to_vec(), false)],
        "RAP=1"
    );
    let b: Vec<_> = plain
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (p.payload.to_vec(), p.retain))
        .collect();
    assert_eq!(
        b,
        vec![(b"kept".to_vec(), false), (b"plain".to_vec(), false)],
        "RAP=0"
    );
    // Clean up the retained message for external brokers.
    publ.publish(&topic, v5::QoS::AtLeastOnce, true, b"").await;
}

/// Subscribes twice with the given retain handling and returns how many retained
/// messages arrived after each SUBSCRIBE.
async fn retain_handling_counts(rule: RetainForwardRule) -> (usize, usize) {
    let broker = Broker::start();
    let topic = unique("rh");
    let mut publ = v5::client(&broker, "rh-pub").await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, true, b"retained")
        .await;
    let mut c = v5::client(&broker, "rh-sub").await;
    let mut counts = vec![];
    for _ in 0..2 {
        let mut f = Filter::new(topic.clone(), v5::QoS::AtLeastOnce);
        f.retain_forward_rule = rule.clone();
        c.subscribe_filters(vec![f], None).await;
        let mut n = 0;
        while let Some(p) = c.recv_publish(QUIET).await {
            assert_eq!((&p.payload[..], p.retain), (&b"retained"[..], true));
            n += 1;
        }
        counts.push(n);
    }
    publ.publish(&topic, v5::QoS::AtLeastOnce, true, b"").await;
    (counts[0], counts[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_0_sends_on_every_subscribe() {
    assert_eq!(
        retain_handling_counts(RetainForwardRule::OnEverySubscribe).await,
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_1_sends_only_for_new_subscription() {
    assert_eq!(
        retain_handling_counts(RetainForwardRule::OnNewSubscribe).await,
        (1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retain_handling_2_never_sends() {
    assert_eq!(
        retain_handling_counts(RetainForwardRule::Never).await,
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifiers() {
    let broker = Broker::start();
    let base = unique("subid");
    let (mut c, _) = RawClient::connect(&broker.addr(), &raw_v5("subid")).await;
    let wide = format!("{base}/#");
    let narrow = format!("{base}/x/+");
    let none = format!("{base}/y");
    let sid = |n| Props::new().varint(prop::SUBSCRIPTION_IDENTIFIER, n);
    assert_eq!(c.subscribe(1, &[(&wide, 1)], &sid(7)).await, vec![1]);
    assert_eq!(c.subscribe(2, &[(&narrow, 1)], &sid(300)).await, vec![1]);
    assert_eq!(c.subscribe(3, &[(&none, 1)], &Props::new()).await, vec![1]);

    let mut publ = v5::client(&broker, "subid-pub").await;
    publ.publish(&format!("{base}/x/1"), v5::QoS::AtLeastOnce, false, b"both")
        .await;
    publ.publish(&format!("{base}/z"), v5::QoS::AtLeastOnce, false, b"wide")
        .await;

    let m = c.expect_publish(WAIT).await;
    let mut ids = m.props.ints(prop::SUBSCRIPTION_IDENTIFIER);
    ids.sort();
    assert_eq!((m.payload.as_slice(), ids), (&b"both"[..], vec![7, 300]));
    c.send(&raw::ack(kind::PUBACK, m.pid.unwrap(), None))
        .await
        .unwrap();
    let m = c.expect_publish(WAIT).await;
    assert_eq!(
        (
            m.payload.as_slice(),
            m.props.ints(prop::SUBSCRIPTION_IDENTIFIER)
        ),
        (&b"wide"[..], vec![7])
    );
    c.send(&raw::ack(kind::PUBACK, m.pid.unwrap(), None))
        .await
        .unwrap();

    // `<base>/y` matches `<base>/#` (id 7) and the id-less subscription: only 7.
    let mut raw_pub = RawClient::connect(&broker.addr(), &raw_v5("subid-raw"))
        .await
        .0;
    raw_pub
        .send(&PublishOut::new(&none, b"y").encode(raw::V5))
        .await
        .unwrap();
    let m = c.expect_publish(WAIT).await;
    assert_eq!(
        (
            m.payload.as_slice(),
            m.props.ints(prop::SUBSCRIPTION_IDENTIFIER)
        ),
        (&b"y"[..], vec![7])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifier_seen_by_rumqttc() {
    let broker = Broker::start();
    let topic = unique("subid-r");
    let mut c = v5::client(&broker, "subid-r").await;
    c.subscribe_filters(
        vec![Filter::new(topic.clone(), v5::QoS::AtMostOnce)],
        Some(42),
    )
    .await;
    let mut publ = v5::client(&broker, "subid-r-pub").await;
    publ.publish(&topic, v5::QoS::AtMostOnce, false, b"x").await;
    let m = c.recv_publish(WAIT).await.expect("delivery");
    let props = m.properties.expect("PUBLISH properties");
    assert_eq!(props.subscription_identifiers, vec![42]);
}
