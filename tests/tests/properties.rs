//! MQTT 5 PUBLISH properties end to end: user properties (order and repeats kept),
//! payload format indicator, content type, response topic and correlation data passed
//! through unchanged; topic aliases from client to broker (set, use, remap; no alias leaks
//! to a subscriber that did not ask for aliases; an alias above the maximum or 0 gets
//! DISCONNECT 0x94), and from broker to client when the client advertises a Topic Alias
//! Maximum (payloads and topics arrive correctly, aliases stay within the maximum).

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use raw::{prop, Props, PublishOut};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_properties_pass_through() {
    let broker = Broker::start();
    let topic = unique("props");
    let mut sub = v5::client(&broker, "props-sub").await;
    sub.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    let mut publ = v5::client(&broker, "props-pub").await;
    let user = vec![
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "3".to_string()),
    ];
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some(format!("{topic}/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: user.clone(),
        ..Default::default()
    };
    publ.publish_with(&topic, v5::QoS::AtLeastOnce, false, b"{\"k\":1}", props)
        .await;
    let m = sub.recv_publish(WAIT).await.expect("delivery");
    assert_eq!(&m.payload[..], b"{\"k\":1}");
    let p = m.properties.expect("properties forwarded");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic, Some(format!("{topic}/reply")));
    assert_eq!(
        p.correlation_data.as_deref(),
        Some(&b"\x00\x01corr\xff"[..])
    );
    assert_eq!(
        p.user_properties, user,
        "user properties in order, repeats kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_survive_retained_and_raw_decode() {
    let broker = Broker::start();
    let topic = unique("props-ret");
    let (mut p, _) = RawClient::connect(&broker.addr(), &raw_v5("props-ret-pub")).await;
    let props = Props::new()
        .byte(prop::PAYLOAD_FORMAT_INDICATOR, 1)
        .str(prop::CONTENT_TYPE, "text/plain")
        .str(prop::RESPONSE_TOPIC, "r/t")
        .bin(prop::CORRELATION_DATA, b"cd")
        .user("k", "v");
    p.send(
        &PublishOut::new(&topic, b"hello")
            .qos(1, 5)
            .retain(true)
            .props(props)
            .encode(raw::V5),
    )
    .await
    .unwrap();
    let ack = p.expect(WAIT, "PUBACK").await;
    assert_eq!(ack.ack().unwrap().0, 5);

    let (mut s, _) = RawClient::connect(&broker.addr(), &raw_v5("props-ret-sub")).await;
    s.subscribe(1, &[(&topic, 1)], &Props::new()).await;
    let m = s.expect_publish(WAIT).await;
    assert!(m.retain);
    assert_eq!(m.props.int(prop::PAYLOAD_FORMAT_INDICATOR), Some(1));
    assert_eq!(m.props.str(prop::CONTENT_TYPE), Some("text/plain"));
    assert_eq!(m.props.str(prop::RESPONSE_TOPIC), Some("r/t"));
    assert_eq!(m.props.bin(prop::CORRELATION_DATA), Some(&b"cd"[..]));
    assert_eq!(m.props.user(), vec![("k".to_string(), "v".to_string())]);
    p.send(&PublishOut::new(&topic, b"").retain(true).encode(raw::V5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_client_to_broker() {
    let broker = Broker::start();
    let base = unique("alias-in");
    let t1 = format!("{base}/one");
    let t2 = format!("{base}/two");
    // The subscriber does not advertise a Topic Alias Maximum: it must get full topics.
    let (mut s, _) = RawClient::connect(&broker.addr(), &raw_v5("alias-in-sub")).await;
    s.subscribe(1, &[(&format!("{base}/#"), 0)], &Props::new())
        .await;

    let (mut p, ack) = RawClient::connect(&broker.addr(), &raw_v5("alias-in-pub")).await;
    let max = ack.props.int(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    assert!(
        max >= 1,
        "broker must accept topic aliases (Topic Alias Maximum {max})"
    );
    let alias = |a: u16| Props::new().u16(prop::TOPIC_ALIAS, a);
    for (topic, payload) in [(&t1[..], "p1"), ("", "p2"), (&t2[..], "p3"), ("", "p4")] {
        p.send(
            &PublishOut::new(topic, payload.as_bytes())
                .props(alias(1))
                .encode(raw::V5),
        )
        .await
        .unwrap();
    }
    let mut got = vec![];
    for _ in 0..4 {
        let m = s.expect_publish(WAIT).await;
        assert_eq!(
            m.props.int(prop::TOPIC_ALIAS),
            None,
            "no alias to a client without maximum"
        );
        got.push((m.topic, String::from_utf8(m.payload).unwrap()));
    }
    assert_eq!(
        got,
        vec![
            (t1.clone(), "p1".into()),
            (t1.clone(), "p2".into()),
            (t2.clone(), "p3".into()),
            (t2.clone(), "p4".into()),
        ]
    );
}

/// Sends a PUBLISH with topic `topic` and alias `alias_for(maximum)`; expects one
/// DISCONNECT whose reason is in `reasons`, then the close.
async fn alias_rejected(topic: &str, alias_for: impl Fn(u32) -> u16, reasons: &[u8]) {
    let broker = Broker::start();
    let (mut p, ack) = RawClient::connect(&broker.addr(), &raw_v5("alias-bad")).await;
    let max = ack.props.int(prop::TOPIC_ALIAS_MAXIMUM).unwrap_or(0);
    let bad = alias_for(max);
    p.send(
        &PublishOut::new(topic, b"x")
            .props(Props::new().u16(prop::TOPIC_ALIAS, bad))
            .encode(raw::V5),
    )
    .await
    .unwrap();
    let seen = p
        .wait_closed(WAIT)
        .await
        .unwrap_or_else(|s| panic!("alias {bad} (maximum {max}) must close the connection: {s:?}"));
    assert_eq!(seen.len(), 1, "one DISCONNECT before the close: {seen:?}");
    let reason = seen[0].disconnect().expect("DISCONNECT").0;
    assert!(
        reasons.contains(&reason),
        "DISCONNECT reason 0x{reason:02x}, want one of {reasons:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_above_maximum_disconnects_0x94() {
    alias_rejected(&unique("alias-bad"), |max| max as u16 + 1, &[0x94]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_zero_disconnects_0x94() {
    // "A Topic Alias value of 0 ... is a Protocol Error, the receiver uses DISCONNECT with
    // Reason Code of 0x94 (Topic Alias invalid)"; 0x82 (protocol error) is accepted too.
    alias_rejected(&unique("alias-zero"), |_| 0, &[0x94, 0x82]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unknown_topic_alias_disconnects_0x82() {
    // An empty topic with an alias that was never set: Protocol Error.
    alias_rejected("", |_| 1, &[0x82, 0x94]).await;
}

/// The (topic, payload) pairs published by the broker-to-client alias tests.
fn alias_traffic(base: &str) -> Vec<(String, String)> {
    (0..24)
        .map(|i| (format!("{base}/topic-{}", i % 4), format!("payload-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_broker_to_client_raw() {
    let broker = Broker::start();
    let base = unique("alias-out");
    let connect = raw_v5("alias-out-sub").props(Props::new().u16(prop::TOPIC_ALIAS_MAXIMUM, 2));
    let (mut s, _) = RawClient::connect(&broker.addr(), &connect).await;
    s.subscribe(1, &[(&format!("{base}/#"), 0)], &Props::new())
        .await;
    let mut publ = v5::client(&broker, "alias-out-pub").await;
    let traffic = alias_traffic(&base);
    for (t, p) in &traffic {
        publ.publish(t, v5::QoS::AtMostOnce, false, p.as_bytes())
            .await;
    }
    let mut aliases: HashMap<u32, String> = HashMap::new();
    let mut got = vec![];
    let mut used = 0;
    for _ in 0..traffic.len() {
        let m = s.expect_publish(WAIT).await;
        let topic = match m.props.int(prop::TOPIC_ALIAS) {
            Some(a) => {
                used += 1;
                assert!((1..=2).contains(&a), "alias {a} outside 1..=2");
                if !m.topic.is_empty() {
                    aliases.insert(a, m.topic.clone());
                }
                aliases
                    .get(&a)
                    .unwrap_or_else(|| panic!("alias {a} used before it was set"))
                    .clone()
            }
            None => {
                assert!(!m.topic.is_empty(), "empty topic without alias");
                m.topic.clone()
            }
        };
        got.push((topic, String::from_utf8(m.payload).unwrap()));
    }
    assert_eq!(got, traffic);
    eprintln!(
        "broker used topic aliases on {used} of {} PUBLISHes",
        traffic.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_broker_to_client_rumqttc() {
    let broker = Broker::start();
    let base = unique("alias-r");
    let mut o = v5::options(&broker, &unique("alias-r-sub"));
    o.set_topic_alias_max(Some(3));
    let mut s = v5::connect(o).await;
    s.subscribe(&format!("{base}/#"), v5::QoS::AtLeastOnce)
        .await;
    let mut publ = v5::client(&broker, "alias-r-pub").await;
    let traffic = alias_traffic(&base);
    for (t, p) in &traffic {
        publ.publish(t, v5::QoS::AtLeastOnce, false, p.as_bytes())
            .await;
    }
    // rumqttc 0.25 tracks incoming aliases but hands the application the PUBLISH as it
    // was on the wire (empty topic + Topic Alias property), so the application resolves it.
    let mut aliases: HashMap<u16, String> = HashMap::new();
    let mut got = vec![];
    for m in s.recv_publishes(traffic.len()).await {
        let alias = m.properties.as_ref().and_then(|p| p.topic_alias);
        let mut topic = v5::topic(&m);
        if let Some(a) = alias {
            assert!(
                (1..=3).contains(&a),
                "alias {a} above the advertised maximum 3"
            );
            if topic.is_empty() {
                topic = aliases
                    .get(&a)
                    .unwrap_or_else(|| panic!("alias {a} used before it was set"))
                    .clone();
            } else {
                aliases.insert(a, topic.clone());
            }
        }
        assert!(
            !topic.is_empty(),
            "empty topic without a topic alias: {m:?}"
        );
        got.push((topic, String::from_utf8_lossy(&m.payload).into_owned()));
    }
    assert_eq!(got, traffic);
}
