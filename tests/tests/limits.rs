//! Limits and server-initiated disconnects: the broker's Maximum Packet Size (a larger
//! PUBLISH gets v5 DISCONNECT 0x95 / a closed v3 connection; other clients unaffected),
//! the client's Maximum Packet Size (a message larger than the client accepts is not
//! delivered to it, smaller ones are), and v5 DISCONNECT reason codes for malformed packets
//! (0x81) and protocol errors (0x82). tern-edge must send these DISCONNECTs (DESIGN: bad
//! input gets the protocol's own error); the spec only allows them ("MAY"), so under an
//! external broker only the close is required.

mod common;

use common::*;
use raw::{frame, kind, prop, Props, PublishOut};

async fn oversized_publish(version: u8) {
    let Some(broker) = Broker::start_configured(
        &[("TERN_MQTT__MAX_PACKET_SIZE", "1024")],
        "needs max_packet_size=1024",
    ) else {
        return;
    };
    let topic = unique("big");
    let mut watcher = v4::client(&broker, "big-watch").await;
    watcher.subscribe(&topic, v4::QoS::AtLeastOnce).await;

    let (mut c, ack) =
        RawClient::connect(&broker.addr(), &raw::Connect::new(version, &unique("big"))).await;
    if version == raw::V5 {
        assert_eq!(ack.props.int(prop::MAXIMUM_PACKET_SIZE), Some(1024));
    }
    // Just under the limit is fine.
    let small = PublishOut::new(&topic, &[b's'; 900])
        .qos(1, 1)
        .encode(version);
    assert!(small.len() <= 1024);
    c.send(&small).await.unwrap();
    let p = c.expect(WAIT, "PUBACK").await;
    assert_eq!(p.kind, kind::PUBACK);
    let m = watcher.recv_publish(WAIT).await.expect("small message");
    assert_eq!(m.payload.len(), 900);

    let big = PublishOut::new(&topic, &[b'b'; 2000])
        .qos(1, 2)
        .encode(version);
    let _ = c.send(&big).await;
    let seen = c
        .wait_closed(WAIT)
        .await
        .unwrap_or_else(|s| panic!("2 KB PUBLISH over a 1 KB maximum must close: {s:?}"));
    if version == raw::V5 {
        assert_eq!(
            seen.len(),
            1,
            "v5: one DISCONNECT before the close: {seen:?}"
        );
        assert_eq!(
            seen[0].disconnect().expect("DISCONNECT").0,
            0x95,
            "Packet too large"
        );
    } else {
        assert!(seen.is_empty(), "v3: no packet before the close: {seen:?}");
    }
    watcher.expect_no_publish(QUIET).await;
    // Other clients are unaffected.
    let mut publ = v4::client(&broker, "big-pub").await;
    publ.publish(&topic, v4::QoS::AtLeastOnce, false, b"after")
        .await;
    let m = watcher
        .recv_publish(WAIT)
        .await
        .expect("broker still works");
    assert_eq!(&m.payload[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_publish_over_server_maximum_closes() {
    oversized_publish(raw::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_over_server_maximum_disconnects_0x95() {
    oversized_publish(raw::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_over_client_maximum_not_delivered() {
    let broker = Broker::start();
    let topic = unique("climax");
    let connect = raw_v5("climax-sub").props(Props::new().u32(prop::MAXIMUM_PACKET_SIZE, 256));
    let (mut s, _) = RawClient::connect(&broker.addr(), &connect).await;
    assert_eq!(s.subscribe(1, &[(&topic, 1)], &Props::new()).await, vec![1]);
    let mut publ = v5::client(&broker, "climax-pub").await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, b"small-1")
        .await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, &[b'x'; 1000])
        .await;
    publ.publish(&topic, v5::QoS::AtMostOnce, false, &[b'y'; 600])
        .await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, b"small-2")
        .await;
    let mut got = vec![];
    for _ in 0..2 {
        let m = s.expect_publish(WAIT).await;
        if let Some(pid) = m.pid {
            s.send(&raw::ack(kind::PUBACK, pid, None)).await.unwrap();
        }
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(got, vec!["small-1", "small-2"]);
    match s.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("only the small messages may arrive: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_rumqttc_max_packet_size_respected() {
    let broker = Broker::start();
    let topic = unique("climax-r");
    let mut o = v5::options(&broker, &unique("climax-r-sub"));
    o.set_max_packet_size(Some(512));
    let mut s = v5::connect(o).await;
    s.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    let mut publ = v5::client(&broker, "climax-r-pub").await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, &[b'x'; 2000])
        .await;
    publ.publish(&topic, v5::QoS::AtLeastOnce, false, b"fits")
        .await;
    let m = s.recv_publish(WAIT).await.expect("the small message");
    assert_eq!(&m.payload[..], b"fits");
    s.expect_no_publish(QUIET).await;
}

/// Sends `bad` on a connected v5 session and expects the connection to close; on tern-edge
/// a DISCONNECT with `reason` must come first.
async fn v5_bad_packet(bad: Vec<u8>, reason: u8) {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect(&broker.addr(), &raw_v5("bad5")).await;
    c.send(&bad).await.unwrap();
    let seen = c
        .wait_closed(WAIT)
        .await
        .unwrap_or_else(|s| panic!("connection must be closed after {bad:02x?}: {s:?}"));
    let disconnects: Vec<u8> = seen
        .iter()
        .filter(|p| p.kind == kind::DISCONNECT)
        .map(|p| p.disconnect().expect("DISCONNECT").0)
        .collect();
    if broker.is_external() {
        assert!(disconnects.iter().all(|r| *r >= 0x80), "{disconnects:02x?}");
        eprintln!("external broker sent DISCONNECT reasons {disconnects:02x?} (tern-edge must send 0x{reason:02x})");
    } else {
        assert_eq!(
            disconnects,
            vec![reason],
            "tern-edge must send DISCONNECT 0x{reason:02x}"
        );
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_malformed_property_length_disconnects_0x81() {
    // PUBLISH whose property length (100) runs past the end of the packet.
    let mut body = vec![];
    raw::put_str(&mut body, "t");
    body.push(100);
    body.extend_from_slice(b"abc");
    v5_bad_packet(frame(0x30, &body), 0x81).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_qos3_disconnects_0x81() {
    let mut body = vec![];
    raw::put_str(&mut body, "t");
    body.extend_from_slice(&[0, 1, 0]);
    v5_bad_packet(frame(0x36, &body), 0x81).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_duplicate_property_disconnects_0x82() {
    // Payload Format Indicator twice: "It is a Protocol Error to include ... more than once".
    let p = PublishOut::new("t", b"x").props(
        Props::new()
            .byte(prop::PAYLOAD_FORMAT_INDICATOR, 0)
            .byte(prop::PAYLOAD_FORMAT_INDICATOR, 1),
    );
    v5_bad_packet(p.encode(raw::V5), 0x82).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscribe_bad_reserved_flags_disconnects_0x81() {
    // SUBSCRIBE must have fixed-header flags 0b0010; 0b0000 is malformed.
    let mut s = raw::subscribe(raw::V5, 1, &[("a/b", 0)], &Props::new());
    s[0] = 0x80;
    v5_bad_packet(s, 0x81).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_malformed_packet_closes() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect(&broker.addr(), &raw_v4("bad4")).await;
    // PUBLISH whose topic length (0x4000) runs past the end of the packet.
    c.send(&[0x30, 0x04, 0x40, 0x00, b'a', b'b']).await.unwrap();
    let seen = c.wait_closed(WAIT).await.expect("closed");
    assert!(
        seen.is_empty(),
        "v3: nothing is sent before the close: {seen:?}"
    );
}
