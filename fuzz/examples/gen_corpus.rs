//! Writes the seed corpus of the `mqtt_decode` target: a dozen valid packets (and one
//! CONNECT-then-PUBLISH stream) encoded by the codec itself, so the fuzzer starts from
//! inputs that get past the fixed header.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus`.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tern_core::message::QoS;
use tern_core::mqtt::codec::encode;
use tern_core::mqtt::packet::{
    Auth, ConnAck, Connect, ConnectProperties, Disconnect, LastWill, Packet, ProtocolVersion,
    PubResponse, Publish, PublishProperties, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};

fn s(v: &'static str) -> ByteString {
    ByteString::from_static(v)
}

fn connect(protocol: ProtocolVersion) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: s("seed-client"),
        last_will: Some(LastWill {
            topic: s("will/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties {
                message_expiry_interval: Some(10),
                ..Default::default()
            },
            will_delay_interval: Some(5),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pass")),
        properties: ConnectProperties {
            session_expiry_interval: Some(30),
            receive_maximum: Some(10),
            user_properties: vec![(s("k"), s("v"))],
            ..Default::default()
        },
    }))
}

fn publish(qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: true,
        topic: s("a/b"),
        packet_id: (qos != QoS::AtMostOnce).then_some(7),
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            topic_alias: Some(3),
            correlation_data: Some(Bytes::from_static(b"c")),
            subscription_identifiers: vec![5, 300],
            ..Default::default()
        },
        payload: Bytes::from_static(b"hello"),
    })
}

fn main() -> std::io::Result<()> {
    use ProtocolVersion::{V31, V311, V5};
    let v5_options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendIfNew,
    };
    let seeds: Vec<(&str, ProtocolVersion, Vec<Packet>)> = vec![
        ("connect-v31", V31, vec![connect(V31)]),
        ("connect-v311", V311, vec![connect(V311)]),
        ("connect-v5", V5, vec![connect(V5)]),
        (
            "connect-publish-v5",
            V5,
            vec![connect(V5), publish(QoS::ExactlyOnce)],
        ),
        (
            "connack-v5",
            V5,
            vec![Packet::ConnAck(ConnAck {
                session_present: true,
                ..Default::default()
            })],
        ),
        ("publish-qos0-v311", V311, vec![publish(QoS::AtMostOnce)]),
        ("publish-qos1-v5", V5, vec![publish(QoS::AtLeastOnce)]),
        (
            "pubacks-v5",
            V5,
            vec![
                Packet::PubAck(PubResponse::new(1)),
                Packet::PubRec(PubResponse::with_reason(2, 0x10)),
                Packet::PubRel(PubResponse {
                    reason_string: Some(s("r")),
                    ..PubResponse::new(3)
                }),
                Packet::PubComp(PubResponse::new(4)),
            ],
        ),
        (
            "subscribe-v5",
            V5,
            vec![Packet::Subscribe(Subscribe {
                packet_id: 9,
                subscription_identifier: Some(12),
                user_properties: Vec::new(),
                filters: vec![
                    (s("a/+"), v5_options),
                    (s("$share/g/#"), SubscriptionOptions::new(QoS::AtMostOnce)),
                ],
            })],
        ),
        (
            "suback-v311",
            V311,
            vec![Packet::SubAck(SubAck {
                packet_id: 9,
                reason_string: None,
                reason_codes: vec![0, 1, 0x80],
            })],
        ),
        (
            "unsubscribe-v5",
            V5,
            vec![
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: 10,
                    user_properties: vec![(s("a"), s("b"))],
                    filters: vec![s("a/+")],
                }),
                Packet::UnsubAck(UnsubAck {
                    packet_id: 10,
                    reason_string: None,
                    reason_codes: vec![0x11],
                }),
            ],
        ),
        (
            "ping-disconnect-v5",
            V5,
            vec![
                Packet::PingReq,
                Packet::PingResp,
                Packet::Disconnect(Disconnect::with_reason(0x8E)),
            ],
        ),
        (
            "auth-v5",
            V5,
            vec![Packet::Auth(Auth {
                reason_code: 0x18,
                authentication_method: Some(s("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"\x00\x01")),
                ..Default::default()
            })],
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/mqtt_decode");
    std::fs::create_dir_all(&dir)?;
    for (name, version, packets) in &seeds {
        let mut buf = BytesMut::new();
        for packet in packets {
            encode(packet, *version, &mut buf);
        }
        std::fs::write(dir.join(format!("seed-{name}")), &buf)?;
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}
