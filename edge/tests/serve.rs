//! The edge embedded in-process (`Edge::start` on 127.0.0.1:0) against small MQTT
//! clients written with the core codec: routing through the glue, batching, decode
//! errors, the close path (wills) and shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_core::message::QoS;
use tern_core::mqtt::codec::{decode, encode};
use tern_core::mqtt::packet::{
    Connect, ConnectProperties, Disconnect, LastWill, Packet, ProtocolVersion, PubResponse,
    Publish, PublishProperties, Subscribe, SubscriptionOptions,
};
use tern_edge::{Edge, EdgeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

fn config() -> EdgeConfig {
    let mut config = EdgeConfig::default();
    config.listeners.tcp.bind = "127.0.0.1:0".parse().expect("address");
    // Several edges at once: the admin endpoint on any free port, not 8080.
    config.admin.bind = "127.0.0.1:0".parse().expect("address");
    config.mqtt.sys_interval = 0;
    // In-process tests run in parallel: each keeps its state in memory.
    config.store.backend = tern_edge::config::StoreBackend::Memory;
    // The built-in default refuses anonymous clients; these tests are about routing.
    config.auth.allow_anonymous = true;
    config
}

async fn start(config: EdgeConfig) -> (Edge, SocketAddr) {
    let edge = Edge::start(config).await.expect("edge starts");
    let addr = edge.local_addr().expect("tcp listener");
    assert_ne!(addr.port(), 0);
    (edge, addr)
}

/// A minimal MQTT client over the core codec.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    async fn raw(addr: SocketAddr, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client {
            stream,
            buf: BytesMut::new(),
            version,
        }
    }

    async fn connect(addr: SocketAddr, version: ProtocolVersion, id: &str) -> Client {
        Client::connect_with_will(addr, version, id, None).await
    }

    async fn connect_with_will(
        addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        last_will: Option<LastWill>,
    ) -> Client {
        let mut client = Client::raw(addr, version).await;
        client
            .send(Packet::Connect(Box::new(Connect {
                protocol: version,
                clean_start: true,
                keep_alive: 60,
                client_id: id.into(),
                last_will,
                username: None,
                password: None,
                properties: ConnectProperties::default(),
            })))
            .await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, 0, "CONNACK {ack:?}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    async fn send(&mut self, packet: Packet) {
        self.send_all(&[packet]).await;
    }

    /// Encodes every packet into one buffer and writes it with one call.
    async fn send_all(&mut self, packets: &[Packet]) {
        let mut out = BytesMut::new();
        for packet in packets {
            encode(packet, self.version, &mut out);
        }
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, or `None` at end of stream. Panics after `WAIT`.
    async fn recv(&mut self) -> Option<Packet> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(packet) =
                decode(&mut self.buf, Some(self.version), 16 << 20).expect("server bytes decode")
            {
                return Some(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left, self.stream.read_buf(&mut self.buf))
                .await
                .expect("no packet from the server in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![(filter.into(), SubscriptionOptions::new(qos))],
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![qos as u8]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(publish)) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    })
}

#[tokio::test]
async fn routes_qos0_and_qos1_between_clients() {
    let (mut edge, addr) = start(config()).await;
    let mut sub = Client::connect(addr, ProtocolVersion::V5, "sub").await;
    sub.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut pub_ = Client::connect(addr, ProtocolVersion::V311, "pub").await;

    pub_.send(publish("t/zero", QoS::AtMostOnce, None, b"0"))
        .await;
    pub_.send(publish("t/one", QoS::AtLeastOnce, Some(7), b"1"))
        .await;
    match pub_.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }

    let first = sub.expect_publish().await;
    assert_eq!((&*first.topic, &first.payload[..]), ("t/zero", &b"0"[..]));
    let second = sub.expect_publish().await;
    assert_eq!((&*second.topic, second.qos), ("t/one", QoS::AtLeastOnce));
    let id = second.packet_id.expect("QoS 1 has a packet id");
    sub.send(Packet::PubAck(PubResponse::new(id))).await;

    edge.shutdown().await;
}

#[tokio::test]
async fn a_burst_in_one_write_arrives_complete_and_in_order() {
    let (mut edge, addr) = start(config()).await;
    let mut sub = Client::connect(addr, ProtocolVersion::V311, "sub").await;
    sub.subscribe("burst", QoS::AtMostOnce).await;
    let mut pub_ = Client::connect(addr, ProtocolVersion::V311, "pub").await;

    const N: usize = 2000;
    let payloads: Vec<&'static [u8]> = (0..N)
        .map(|i| &*Box::leak(i.to_string().into_bytes().into_boxed_slice()))
        .collect();
    let burst: Vec<Packet> = payloads
        .iter()
        .map(|p| publish("burst", QoS::AtMostOnce, None, p))
        .collect();
    pub_.send_all(&burst).await;
    for expected in &payloads {
        let got = sub.expect_publish().await;
        assert_eq!(&got.payload[..], *expected);
    }
    edge.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_disconnect_and_close_without_hurting_others() {
    let (mut edge, addr) = start(config()).await;
    let mut bystander = Client::connect(addr, ProtocolVersion::V311, "bystander").await;
    bystander.subscribe("still/#", QoS::AtMostOnce).await;

    let mut bad = Client::connect(addr, ProtocolVersion::V5, "bad").await;
    // Packet type 0 is reserved.
    bad.stream.write_all(&[0x00, 0x00]).await.expect("write");
    match bad.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x81, "{d:?}"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(bad.recv().await, None, "the connection is closed");

    let mut pub_ = Client::connect(addr, ProtocolVersion::V311, "pub").await;
    pub_.send(publish("still/here", QoS::AtMostOnce, None, b"yes"))
        .await;
    assert_eq!(&*bystander.expect_publish().await.topic, "still/here");
    edge.shutdown().await;
}

#[tokio::test]
async fn oversized_packet_is_refused_with_packet_too_large() {
    let mut config = config();
    config.mqtt.max_packet_size = 1024;
    let (mut edge, addr) = start(config).await;
    let mut client = Client::connect(addr, ProtocolVersion::V5, "big").await;
    client
        .send(publish("big", QoS::AtMostOnce, None, &[b'x'; 4096]))
        .await;
    match client.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x95, "{d:?}"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(client.recv().await, None);
    edge.shutdown().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_a_v3_connack() {
    let (mut edge, addr) = start(config()).await;
    let mut client = Client::raw(addr, ProtocolVersion::V311).await;
    // CONNECT, protocol name MQTT, level 9, clean session, keep-alive 60, id "x".
    let connect = [
        0x10, 13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 9, 0x02, 0x00, 60, 0x00, 0x01, b'x',
    ];
    client.stream.write_all(&connect).await.expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, client.stream.read_to_end(&mut reply))
        .await
        .expect("closed in time")
        .expect("read");
    // 3.1.1 CONNACK, return code 1: unacceptable protocol version.
    assert_eq!(reply, [0x20, 0x02, 0x00, 0x01]);
    edge.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_publishes_its_will() {
    let (mut edge, addr) = start(config()).await;
    let mut watcher = Client::connect(addr, ProtocolVersion::V311, "watcher").await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;

    let will = LastWill {
        topic: "will/device".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PublishProperties::default(),
        will_delay_interval: None,
    };
    let device = Client::connect_with_will(addr, ProtocolVersion::V311, "device", Some(will)).await;
    drop(device); // No DISCONNECT: the socket just closes.

    let got = watcher.expect_publish().await;
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("will/device", &b"gone"[..])
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn a_clean_disconnect_suppresses_the_will() {
    let (mut edge, addr) = start(config()).await;
    let mut watcher = Client::connect(addr, ProtocolVersion::V311, "watcher").await;
    watcher.subscribe("#", QoS::AtMostOnce).await;
    let will = LastWill {
        topic: "will/device".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: PublishProperties::default(),
        will_delay_interval: None,
    };
    let mut device =
        Client::connect_with_will(addr, ProtocolVersion::V311, "device", Some(will)).await;
    device.send(Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(
        device.recv().await,
        None,
        "the server closes after DISCONNECT"
    );

    let mut pub_ = Client::connect(addr, ProtocolVersion::V311, "pub").await;
    pub_.send(publish("after", QoS::AtMostOnce, None, b"x"))
        .await;
    assert_eq!(
        &*watcher.expect_publish().await.topic,
        "after",
        "no will came first"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_promptly() {
    let (mut edge, addr) = start(config()).await;
    let mut v5 = Client::connect(addr, ProtocolVersion::V5, "five").await;
    let mut v3 = Client::connect(addr, ProtocolVersion::V311, "three").await;

    let started = Instant::now();
    edge.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    match v5.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x8B, "server shutting down"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(v5.recv().await, None);
    assert_eq!(v3.recv().await, None);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_stuck_subscriber_does_not_stop_the_others() {
    let mut config = config();
    config.mqtt.max_queued_messages = 64;
    let (mut edge, addr) = start(config).await;
    let mut stuck = Client::connect(addr, ProtocolVersion::V311, "stuck").await;
    stuck.subscribe("s/#", QoS::AtMostOnce).await;
    let mut healthy = Client::connect(addr, ProtocolVersion::V311, "healthy").await;
    healthy.subscribe("s/#", QoS::AtMostOnce).await;
    let mut pub_ = Client::connect(addr, ProtocolVersion::V311, "pub").await;

    // Far more than the stuck client's socket buffers and queue can hold.
    const N: usize = 20_000;
    let reader = tokio::spawn(async move {
        for _ in 0..N {
            let got = healthy.expect_publish().await;
            assert_eq!(got.payload.len(), 1024);
        }
    });
    let burst: Vec<Packet> = (0..100)
        .map(|_| publish("s/x", QoS::AtMostOnce, None, &[7; 1024]))
        .collect();
    for _ in 0..N / 100 {
        pub_.send_all(&burst).await;
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the healthy subscriber got everything in time")
        .expect("reader ok");
    pub_.send(Packet::PingReq).await;
    assert_eq!(
        pub_.recv().await,
        Some(Packet::PingResp),
        "the publisher is still served"
    );
    drop(stuck);
    edge.shutdown().await;
}

#[tokio::test]
async fn the_disconnect_survives_unread_input() {
    // The server stops reading at a decode error while the client still has bytes in
    // flight; closing such a socket at once would send RST and could destroy the
    // DISCONNECT before the client reads it.
    let mut config = config();
    config.mqtt.max_packet_size = 1024;
    let (mut edge, addr) = start(config).await;
    let mut client = Client::connect(addr, ProtocolVersion::V5, "late-reader").await;
    let big = vec![b'x'; 256 * 1024];
    let mut out = BytesMut::new();
    for _ in 0..4 {
        encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "big".into(),
                packet_id: None,
                properties: PublishProperties::default(),
                payload: Bytes::from(big.clone()),
            }),
            ProtocolVersion::V5,
            &mut out,
        );
    }
    let _ = client.stream.write_all(&out).await; // May fail once the server closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match client.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x95, "{d:?}"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    edge.shutdown().await;
}

/// Tern-cloud's seam: a source added after start shows on `/metrics`, served on the
/// bound admin address next to the broker's own families.
#[tokio::test]
async fn admin_serves_registered_metrics_sources() {
    use std::sync::Arc;
    use tern_edge::admin::{Kind, MetricsSource, MetricsWriter};

    struct Extra;
    impl MetricsSource for Extra {
        fn render(&self, out: &mut MetricsWriter) {
            out.family("tern_extra", Kind::Gauge, "A test family.")
                .sample(&[("gateway", "gw-1")], 42);
        }
    }

    let (mut edge, _) = start(config()).await;
    let admin = edge.admin_addr().expect("admin enabled by default");
    assert!(admin.ip().is_loopback());
    assert_ne!(admin.port(), 0);
    edge.add_metrics_source(Arc::new(Extra));
    let mut stream = TcpStream::connect(admin).await.expect("connect admin");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("in time")
        .expect("read");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        response.contains("tern_extra{gateway=\"gw-1\"} 42\n"),
        "{response}"
    );
    assert!(
        response.contains("\ntern_messages_received_total 0\n"),
        "{response}"
    );
    assert!(edge.render_metrics().contains("# TYPE tern_extra gauge\n"));
    edge.shutdown().await;

    let mut disabled = config();
    disabled.admin.enabled = false;
    let (mut edge, _) = start(disabled).await;
    assert_eq!(edge.admin_addr(), None);
    edge.shutdown().await;
}
