//! Codec tests across packet types: round trips in every version with every property
//! set, the error cases of the brief, partial input at every split point, early size
//! rejection, the regression packets that mqttbytes gets wrong, and the no-allocation
//! promise of the PUBLISH hot path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{decode, encode, encoded_len, DecodeError};
use crate::message::QoS;
use crate::mqtt::packet::*;
use crate::mqtt::reason;

const MAX: usize = 1 << 20;
const V3: Option<ProtocolVersion> = Some(ProtocolVersion::V311);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

fn s(v: &'static str) -> ByteString {
    ByteString::from_static(v)
}

fn b(v: &'static [u8]) -> Bytes {
    Bytes::from_static(v)
}

fn user_props() -> Vec<UserProperty> {
    vec![(s("k1"), s("v1")), (s("k1"), s("v2")), (s("ключ"), s(""))]
}

fn full_publish_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        topic_alias: Some(7),
        response_topic: Some(s("reply/here")),
        correlation_data: Some(b(b"\x00corr")),
        user_properties: user_props(),
        subscription_identifiers: vec![1, 128, 268_435_455],
        content_type: Some(s("application/json")),
    }
}

fn full_connect() -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: s("client-1"),
        last_will: Some(LastWill {
            topic: s("will/topic"),
            payload: b(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                ..full_publish_properties()
            },
            will_delay_interval: Some(10),
        }),
        username: Some(s("user")),
        password: Some(b(b"\x00\xFFsecret")),
        properties: ConnectProperties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(20),
            maximum_packet_size: Some(65_536),
            topic_alias_maximum: Some(10),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: user_props(),
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(b(b"client-first")),
        },
    }
}

/// One packet of every type with every field and property populated.
fn full_packets() -> Vec<Packet> {
    let response = PubResponse {
        packet_id: 42,
        reason_code: reason::NO_MATCHING_SUBSCRIBERS,
        reason_string: Some(s("nobody")),
        user_properties: user_props(),
    };
    vec![
        Packet::Connect(Box::new(full_connect())),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: reason::BAD_USERNAME_OR_PASSWORD,
            properties: ConnAckProperties {
                session_expiry_interval: Some(60),
                receive_maximum: Some(100),
                maximum_qos: Some(1),
                retain_available: Some(false),
                maximum_packet_size: Some(1 << 20),
                assigned_client_identifier: Some(s("auto-1")),
                topic_alias_maximum: Some(16),
                reason_string: Some(s("bad credentials")),
                user_properties: user_props(),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(false),
                server_keep_alive: Some(45),
                response_information: Some(s("resp/")),
                server_reference: Some(s("other:1883")),
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(b(b"server-final")),
            },
        }),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0,
            properties: Default::default(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: s("a/b/c"),
            packet_id: Some(0xBEEF),
            properties: full_publish_properties(),
            payload: Bytes::from(vec![0xAB; 300]),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("t"),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::new(),
        }),
        Packet::PubAck(response.clone()),
        Packet::PubRec(response.clone()),
        Packet::PubRel(PubResponse {
            reason_code: reason::PACKET_IDENTIFIER_NOT_FOUND,
            ..response.clone()
        }),
        Packet::PubComp(response),
        Packet::PubAck(PubResponse::new(1)),
        Packet::PubRec(PubResponse::with_reason(2, reason::QUOTA_EXCEEDED)),
        Packet::Subscribe(Subscribe {
            packet_id: 9,
            subscription_identifier: Some(99_999),
            user_properties: user_props(),
            filters: vec![
                (s("a/+/c"), SubscriptionOptions::new(QoS::AtMostOnce)),
                (
                    s("$share/g/x/#"),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                (
                    s("d"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendIfNew,
                    },
                ),
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 9,
            reason_string: Some(s("partly")),
            reason_codes: vec![0, 1, 2, reason::NOT_AUTHORIZED, reason::UNSPECIFIED_ERROR],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            user_properties: user_props(),
            filters: vec![s("a/+/c"), s("$share/g/x/#")],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            reason_string: Some(s("done")),
            reason_codes: vec![0, reason::NO_SUBSCRIPTION_EXISTED],
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason_code: reason::DISCONNECT_WITH_WILL,
            session_expiry_interval: Some(0),
            reason_string: Some(s("bye")),
            user_properties: user_props(),
            server_reference: Some(s("elsewhere")),
        }),
        Packet::Disconnect(Disconnect::default()),
        Packet::Disconnect(Disconnect::with_reason(reason::SESSION_TAKEN_OVER)),
        Packet::Auth(Auth {
            reason_code: 0x18,
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(b(b"\x01\x02")),
            reason_string: Some(s("continue")),
            user_properties: user_props(),
        }),
        Packet::Auth(Auth::default()),
    ]
}

/// What a 3.1.1 round trip of `packet` yields: the 5.0-only parts dropped or mapped.
fn v3_view(packet: &Packet) -> Option<Packet> {
    let response = |r: &PubResponse| PubResponse::new(r.packet_id);
    Some(match packet.clone() {
        Packet::Connect(mut c) => {
            c.protocol = ProtocolVersion::V311;
            c.properties = Default::default();
            if let Some(w) = &mut c.last_will {
                w.properties = Default::default();
                w.will_delay_interval = None;
            }
            Packet::Connect(c)
        }
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            reason_code: c.reason_code,
            properties: Default::default(),
        }),
        Packet::Publish(p) => Packet::Publish(Publish {
            properties: Default::default(),
            ..p
        }),
        Packet::PubAck(r) => Packet::PubAck(response(&r)),
        Packet::PubRec(r) => Packet::PubRec(response(&r)),
        Packet::PubRel(r) => Packet::PubRel(response(&r)),
        Packet::PubComp(r) => Packet::PubComp(response(&r)),
        Packet::Subscribe(sub) => Packet::Subscribe(Subscribe {
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: sub
                .filters
                .iter()
                .map(|(f, o)| (f.clone(), SubscriptionOptions::new(o.qos)))
                .collect(),
            ..sub
        }),
        Packet::SubAck(a) => Packet::SubAck(SubAck {
            packet_id: a.packet_id,
            reason_string: None,
            reason_codes: a
                .reason_codes
                .iter()
                .map(|&c| if c >= 0x80 { 0x80 } else { c })
                .collect(),
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            user_properties: Vec::new(),
            ..u
        }),
        Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck {
            packet_id: a.packet_id,
            reason_string: None,
            reason_codes: Vec::new(),
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::default()),
        Packet::Auth(_) => return None,
        other => other,
    })
}

fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf);
    buf
}

/// The version to decode `packet` with: CONNECT is read before the version is known.
fn decode_version(packet: &Packet, version: ProtocolVersion) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    }
}

fn decode_all(
    bytes: &[u8],
    version: Option<ProtocolVersion>,
) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, MAX);
    if let Ok(Some(_)) = packet {
        assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    }
    packet
}

fn malformed<T: std::fmt::Debug>(r: Result<T, DecodeError>) {
    assert!(
        matches!(r, Err(DecodeError::Malformed(_))),
        "expected Malformed, got {r:?}"
    );
}

fn protocol<T: std::fmt::Debug>(r: Result<T, DecodeError>) {
    assert!(
        matches!(r, Err(DecodeError::Protocol(_))),
        "expected Protocol, got {r:?}"
    );
}

/// Builds a packet from its first byte and body, computing the remaining length.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u8(byte1);
    super::wire::write_varint(&mut buf, body.len());
    buf.put_slice(body);
    buf.to_vec()
}

#[test]
fn round_trip_every_packet_in_v5() {
    for packet in full_packets() {
        let bytes = encode_to_vec(&packet, ProtocolVersion::V5);
        assert_eq!(
            bytes.len(),
            encoded_len(&packet, ProtocolVersion::V5),
            "{packet:?}"
        );
        let decoded = decode_all(&bytes, decode_version(&packet, ProtocolVersion::V5));
        assert_eq!(decoded, Ok(Some(packet)));
    }
}

#[test]
fn round_trip_every_packet_in_v311_and_v31() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V31] {
        for packet in full_packets() {
            let bytes = encode_to_vec(&packet, version);
            let Some(mut expected) = v3_view(&packet) else {
                assert!(bytes.is_empty(), "{packet:?} must not be encoded in 3.1.1");
                assert_eq!(encoded_len(&packet, version), usize::MAX);
                continue;
            };
            if let Packet::Connect(c) = &mut expected {
                c.protocol = version;
            }
            assert_eq!(bytes.len(), encoded_len(&packet, version), "{packet:?}");
            let decoded = decode_all(&bytes, decode_version(&packet, version));
            assert_eq!(decoded, Ok(Some(expected)), "{version:?}");
        }
    }
}

#[test]
fn v31_connect_uses_mqisdp_level_3() {
    let packet = Packet::Connect(Box::new(full_connect()));
    let bytes = encode_to_vec(&packet, ProtocolVersion::V31);
    assert_eq!(&bytes[2..11], b"\x00\x06MQIsdp\x03");
    let bytes = encode_to_vec(&packet, ProtocolVersion::V311);
    assert_eq!(&bytes[2..9], b"\x00\x04MQTT\x04");
}

#[test]
fn partial_input_at_every_split_point() {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for packet in full_packets() {
            let bytes = encode_to_vec(&packet, version);
            if bytes.is_empty() {
                continue;
            }
            let decode_as = decode_version(&packet, version);
            let expected = decode_all(&bytes, decode_as);
            assert!(matches!(expected, Ok(Some(_))));
            for split in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..split]);
                assert_eq!(decode(&mut buf, decode_as, MAX), Ok(None), "split {split}");
                assert_eq!(buf.len(), split, "nothing consumed at split {split}");
                buf.extend_from_slice(&bytes[split..]);
                assert_eq!(decode(&mut buf, decode_as, MAX), expected, "split {split}");
                assert!(buf.is_empty());
            }
        }
    }
}

#[test]
fn consumes_exactly_one_packet() {
    let mut buf = BytesMut::new();
    let first = Packet::PubAck(PubResponse::new(1));
    let second = Packet::PingReq;
    encode(&first, ProtocolVersion::V5, &mut buf);
    encode(&second, ProtocolVersion::V5, &mut buf);
    buf.put_u8(0x30);
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(first)));
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(second)));
    assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
    assert_eq!(&buf[..], &[0x30]);
}

#[test]
fn oversized_packet_rejected_from_the_fixed_header_alone() {
    // Largest announced remaining length, nothing of the body buffered.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let err = decode(&mut buf, V5, 1024);
    assert_eq!(
        err,
        Err(DecodeError::PacketTooLarge {
            size: 5 + 268_435_455,
            max: 1024
        })
    );
    assert_eq!(
        err.map_err(|e| e.reason_code()),
        Err(reason::PACKET_TOO_LARGE)
    );

    // Exactly at the limit waits for the body; one byte more is rejected.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x08][..]);
    assert_eq!(decode(&mut buf, V3, 3 + 1024), Ok(None));
    assert_eq!(
        decode(&mut buf, V3, 3 + 1023),
        Err(DecodeError::PacketTooLarge {
            size: 1027,
            max: 1026
        })
    );
    // Also before CONNECT.
    let mut buf = BytesMut::from(&[0x10, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(
        decode(&mut buf, None, 4096),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn remaining_length_over_four_bytes_is_malformed() {
    malformed(decode_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V5));
    // Decided as soon as the fifth byte is visible, without waiting for a body.
    malformed(decode_all(&[0xC0, 0x80, 0x80, 0x80, 0x80], V3));
}

// ---- Regression packets from the design brief (mqttbytes drops them) ----

#[test]
fn regression_bare_v5_disconnect() {
    let packet = decode_all(&[0xE0, 0x00], V5);
    assert_eq!(packet, Ok(Some(Packet::Disconnect(Disconnect::default()))));
}

#[test]
fn regression_reason_code_only_v5_disconnect() {
    let packet = decode_all(&[0xE0, 0x01, 0x8E], V5);
    assert_eq!(
        packet,
        Ok(Some(Packet::Disconnect(Disconnect::with_reason(0x8E))))
    );
    // The encoder adds an empty property length: rumqttc cannot decode the short form.
    let bytes = encode_to_vec(
        &Packet::Disconnect(Disconnect::with_reason(0x8E)),
        ProtocolVersion::V5,
    );
    assert_eq!(&bytes[..], &[0xE0, 0x02, 0x8E, 0x00]);
}

#[test]
fn regression_v5_auth() {
    assert_eq!(
        decode_all(&[0xF0, 0x00], V5),
        Ok(Some(Packet::Auth(Auth::default())))
    );
    let body = [0x18, 8, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M'];
    let with_props = frame(0xF0, &body);
    let packet = decode_all(&with_props, V5);
    assert_eq!(
        packet,
        Ok(Some(Packet::Auth(Auth {
            reason_code: 0x18,
            authentication_method: Some(s("SCRAM")),
            ..Auth::default()
        })))
    );
    // Reason code only.
    let packet = decode_all(&[0xF0, 0x01, 0x19], V5);
    assert_eq!(
        packet,
        Ok(Some(Packet::Auth(Auth {
            reason_code: 0x19,
            ..Auth::default()
        })))
    );
}

#[test]
fn regression_auth_in_v311_is_a_protocol_error() {
    protocol(decode_all(&[0xF0, 0x00], V3));
    protocol(decode_all(&[0xF0, 0x00], Some(ProtocolVersion::V31)));
}

#[test]
fn regression_duplicated_property_is_a_protocol_error() {
    // PUBLISH QoS 0 "t" with Message Expiry Interval twice.
    let body = [0, 1, b't', 10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2, b'x'];
    protocol(decode_all(&frame(0x30, &body), V5));
    // CONNACK with Maximum QoS twice.
    protocol(decode_all(&frame(0x20, &[0, 0, 4, 0x24, 0, 0x24, 1]), V5));
    // SUBSCRIBE with two subscription identifiers (PUBLISH may repeat them, SUBSCRIBE not).
    let body = [0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0];
    protocol(decode_all(&frame(0x82, &body), V5));
    // ... while PUBLISH may.
    let body = [0, 1, b't', 4, 0x0B, 1, 0x0B, 2];
    let packet = decode_all(&frame(0x30, &body), V5);
    let Ok(Some(Packet::Publish(p))) = packet else {
        panic!("{packet:?}")
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn v5_acks_with_remaining_length_2_use_reason_0() {
    for byte1 in [0x40, 0x50, 0x62, 0x70] {
        let packet = decode_all(&[byte1, 0x02, 0x00, 0x07], V5);
        let expected = PubResponse::new(7);
        let expected = match byte1 {
            0x40 => Packet::PubAck(expected),
            0x50 => Packet::PubRec(expected),
            0x62 => Packet::PubRel(expected),
            _ => Packet::PubComp(expected),
        };
        assert_eq!(packet, Ok(Some(expected.clone())));
        assert_eq!(
            &encode_to_vec(&expected, ProtocolVersion::V5)[..],
            &[byte1, 0x02, 0x00, 0x07]
        );
    }
    let reason_only = decode_all(&[0x40, 0x03, 0x00, 0x07, 0x10], V5);
    assert_eq!(
        reason_only,
        Ok(Some(Packet::PubAck(PubResponse::with_reason(7, 0x10))))
    );
    let bytes = encode_to_vec(
        &Packet::PubAck(PubResponse::with_reason(7, 0x10)),
        ProtocolVersion::V5,
    );
    assert_eq!(&bytes[..], &[0x40, 0x03, 0x00, 0x07, 0x10]);
}

// ---- CONNECT ----

fn v311_connect_body(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04".to_vec();
    body.push(flags);
    body.extend_from_slice(&[0, 60]);
    body.extend_from_slice(payload);
    body
}

#[test]
fn connect_protocol_names_and_levels() {
    let minimal = |name: &[u8], level: u8| {
        let mut body = (name.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'c']);
        decode_all(&frame(0x10, &body), None)
    };
    let version = |r: Result<Option<Packet>, DecodeError>| match r {
        Ok(Some(Packet::Connect(c))) => Ok(c.protocol),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(version(minimal(b"MQTT", 4)), Ok(ProtocolVersion::V311));
    assert_eq!(version(minimal(b"MQIsdp", 3)), Ok(ProtocolVersion::V31));
    assert_eq!(
        version(minimal(b"MQTT", 3)),
        Err(DecodeError::UnsupportedProtocol(3))
    );
    assert_eq!(
        version(minimal(b"MQTT", 6)),
        Err(DecodeError::UnsupportedProtocol(6))
    );
    assert_eq!(
        version(minimal(b"MQIsdp", 4)),
        Err(DecodeError::UnsupportedProtocol(4))
    );
    assert_eq!(
        minimal(b"MQTT", 9).map_err(|e| e.reason_code()),
        Err(reason::UNSUPPORTED_PROTOCOL_VERSION)
    );
    malformed(minimal(b"HTTP", 4));
    // 5.0 needs a property block, so the 3.1.1-shaped body is too short for level 5.
    malformed(minimal(b"MQTT", 5));
}

#[test]
fn connect_flag_errors() {
    let client = [0, 1, b'c'];
    // Reserved bit.
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x03, &client)),
        None,
    ));
    // Will QoS 3.
    let will = [0, 1, b'c', 0, 1, b't', 0, 0];
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x04 | 0x18, &will)),
        None,
    ));
    // Will QoS or retain without the will flag.
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x08, &client)),
        None,
    ));
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x20, &client)),
        None,
    ));
    // Password without user name in 3.1.1 ...
    let password = [0, 1, b'c', 0, 2, b'p', b'w'];
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x40, &password)),
        None,
    ));
    // ... is fine in 5.0.
    let mut body = b"\x00\x04MQTT\x05\x40\x00\x3C\x00".to_vec();
    body.extend_from_slice(&password);
    let packet = decode_all(&frame(0x10, &body), None);
    let Ok(Some(Packet::Connect(c))) = packet else {
        panic!("{packet:?}")
    };
    assert_eq!((c.username, c.password), (None, Some(b(b"pw"))));
}

#[test]
fn connect_length_mismatches_are_malformed() {
    let good = v311_connect_body(0x02, &[0, 1, b'c']);
    assert!(matches!(decode_all(&frame(0x10, &good), None), Ok(Some(_))));
    let mut longer = good.clone();
    longer.push(0);
    malformed(decode_all(&frame(0x10, &longer), None));
    malformed(decode_all(&frame(0x10, &good[..good.len() - 1]), None));
    // User name flag set but no user name.
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x82, &[0, 1, b'c'])),
        None,
    ));
}

#[test]
fn connect_strings_are_validated() {
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x02, &[0, 2, b'c', 0])),
        None,
    ));
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x02, &[0, 2, 0xC0, 0x80])),
        None,
    ));
    malformed(decode_all(
        &frame(0x10, &v311_connect_body(0x02, &[0, 1, 0xFF])),
        None,
    ));
}

#[test]
fn v5_will_properties_land_in_last_will() {
    let mut body = b"\x00\x04MQTT\x05\x06\x00\x3C".to_vec();
    body.extend_from_slice(&[0]); // connect properties
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(&[7, 0x18, 0, 0, 0, 30, 0x01, 1]); // will delay, payload format
    body.extend_from_slice(&[0, 1, b'w', 0, 1, b'x']);
    let packet = decode_all(&frame(0x10, &body), None);
    let Ok(Some(Packet::Connect(c))) = packet else {
        panic!("{packet:?}")
    };
    let will = c.last_will.expect("will flag set");
    assert_eq!(will.will_delay_interval, Some(30));
    assert_eq!(will.properties.payload_format_indicator, Some(1));
    assert_eq!((will.topic, will.payload), (s("w"), b(b"x")));
    // A PUBLISH-only property is not allowed among will properties.
    let mut bad = b"\x00\x04MQTT\x05\x06\x00\x3C\x00\x00\x01c".to_vec();
    bad.extend_from_slice(&[3, 0x23, 0, 1, 0, 1, b'w', 0, 0]);
    protocol(decode_all(&frame(0x10, &bad), None));
}

#[test]
fn v5_connect_property_rules() {
    let with_props = |props: &[u8]| {
        let mut body = b"\x00\x04MQTT\x05\x02\x00\x3C".to_vec();
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b'c']);
        decode_all(&frame(0x10, &body), None)
    };
    assert!(matches!(with_props(&[0x21, 0, 1]), Ok(Some(_))));
    protocol(with_props(&[0x21, 0, 0])); // receive maximum 0
    protocol(with_props(&[0x27, 0, 0, 0, 0])); // maximum packet size 0
    protocol(with_props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1])); // duplicate
    protocol(with_props(&[0x24, 1])); // maximum QoS is a CONNACK property
    protocol(with_props(&[0x16, 0, 1, 9])); // authentication data without method
    protocol(with_props(&[0x17, 2])); // request problem information must be 0/1
    malformed(with_props(&[0x05, 0])); // unknown identifier
    malformed(with_props(&[0x11, 0, 0])); // truncated value
}

#[test]
fn only_connect_before_the_version_is_known() {
    protocol(decode_all(&[0xC0, 0x00], None));
    protocol(decode_all(&frame(0x30, &[0, 1, b't']), None));
    protocol(decode_all(&[0x20, 0x02, 0, 0], None));
    // A second CONNECT is for the session machine to refuse.
    let connect = frame(0x10, &v311_connect_body(0x02, &[0, 1, b'c']));
    assert!(matches!(
        decode_all(&connect, V3),
        Ok(Some(Packet::Connect(_)))
    ));
}

// ---- Fixed header ----

#[test]
fn fixed_header_flag_errors() {
    malformed(decode_all(&[0x60, 0x02, 0, 1], V3)); // PUBREL needs 0b0010
    malformed(decode_all(&frame(0x80, &[0, 1, 0, 1, b'a', 0]), V3));
    malformed(decode_all(&frame(0xA0, &[0, 1, 0, 1, b'a']), V3));
    malformed(decode_all(&[0x41, 0x02, 0, 1], V3));
    malformed(decode_all(&[0xC8, 0x00], V5));
    malformed(decode_all(&[0xE2, 0x00], V5));
    malformed(decode_all(&[0x00, 0x00], V5)); // reserved type 0
    malformed(decode_all(&frame(0x36, &[0, 1, b't', 0, 1]), V3)); // QoS 3
}

// ---- PUBLISH ----

#[test]
fn publish_errors() {
    malformed(decode_all(&frame(0x32, &[0, 1, b't', 0, 0]), V3)); // packet id 0
    malformed(decode_all(&frame(0x34, &[0, 1, b't', 0, 0, 0]), V5)); // packet id 0
    malformed(decode_all(&frame(0x38, &[0, 1, b't']), V3)); // DUP on QoS 0
    malformed(decode_all(&frame(0x30, &[0, 0, b'x']), V3)); // empty topic in 3.1.1
    malformed(decode_all(&frame(0x30, &[0, 2, b't', 0, b'x']), V3)); // NUL in topic
    malformed(decode_all(&frame(0x32, &[0, 1, b't', 0]), V3)); // truncated packet id
    malformed(decode_all(&frame(0x30, &[0, 5, b't']), V3)); // topic beyond packet
    malformed(decode_all(&frame(0x30, &[0, 1, b't', 9, 0x01, 0]), V5)); // props beyond packet
    protocol(decode_all(
        &frame(0x30, &[0, 1, b't', 5, 0x11, 0, 0, 0, 0]),
        V5,
    )); // not a PUBLISH prop
    protocol(decode_all(&frame(0x30, &[0, 1, b't', 3, 0x23, 0, 0]), V5)); // topic alias 0
    protocol(decode_all(&frame(0x30, &[0, 1, b't', 2, 0x0B, 0]), V5)); // subscription id 0
    protocol(decode_all(&frame(0x30, &[0, 1, b't', 2, 0x01, 2]), V5)); // payload format 2
                                                                       // Empty topic needs an alias in 5.0.
    protocol(decode_all(&frame(0x30, &[0, 0, 0, b'x']), V5));
    let aliased = decode_all(&frame(0x30, &[0, 0, 3, 0x23, 0, 5, b'x']), V5);
    let Ok(Some(Packet::Publish(p))) = aliased else {
        panic!("{aliased:?}")
    };
    assert_eq!((p.topic.len(), p.properties.topic_alias), (0, Some(5)));
    assert_eq!(p.payload, b(b"x"));
}

#[test]
fn publish_payload_and_topic_share_the_receive_buffer() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("sensors/1"),
        packet_id: Some(5),
        properties: Default::default(),
        payload: Bytes::from(vec![7u8; 100]),
    });
    let mut buf = encode_to_vec(&packet, ProtocolVersion::V311);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let decoded = decode(&mut buf, V3, MAX);
    let Ok(Some(Packet::Publish(p))) = decoded else {
        panic!("{decoded:?}")
    };
    assert!(range.contains(&(p.payload.as_ptr() as usize)));
    assert!(range.contains(&(p.topic.as_bytes().as_ptr() as usize)));
}

// ---- SUBSCRIBE / UNSUBSCRIBE / acks ----

#[test]
fn subscribe_errors() {
    protocol(decode_all(&frame(0x82, &[0, 1]), V3)); // no filters
    protocol(decode_all(&frame(0x82, &[0, 1, 0]), V5)); // no filters
    malformed(decode_all(&frame(0x82, &[0, 0, 0, 1, b'a', 0]), V3)); // packet id 0
    malformed(decode_all(&frame(0x82, &[0, 1, 0, 1, b'a', 0x04]), V3)); // v3 upper bits
    malformed(decode_all(&frame(0x82, &[0, 1, 0, 1, b'a', 0x03]), V3)); // QoS 3
    malformed(decode_all(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x03]), V5)); // QoS 3
    malformed(decode_all(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x40]), V5)); // reserved bits
    protocol(decode_all(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]), V5)); // retain handling 3
    malformed(decode_all(&frame(0x82, &[0, 1, 0, 1, b'a']), V3)); // missing options byte
    protocol(decode_all(
        &frame(0x82, &[0, 1, 2, 0x01, 1, 0, 1, b'a', 0]),
        V5,
    )); // bad prop
    let v5_options = decode_all(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x2E]), V5);
    let Ok(Some(Packet::Subscribe(sub))) = v5_options else {
        panic!("{v5_options:?}")
    };
    let expected = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    assert_eq!(sub.filters, vec![(s("a"), expected)]);
}

#[test]
fn unsubscribe_errors() {
    protocol(decode_all(&frame(0xA2, &[0, 1]), V3));
    protocol(decode_all(&frame(0xA2, &[0, 1, 0]), V5));
    malformed(decode_all(&frame(0xA2, &[0, 1, 0, 2, b'a']), V3));
    protocol(decode_all(
        &frame(0xA2, &[0, 1, 3, 0x1F, 0, 0, 0, 1, b'a']),
        V5,
    )); // reason string
}

#[test]
fn v3_ack_codes() {
    // SUBACK: every failure becomes 0x80; unknown 3.1.1 codes are refused on input.
    let ack = Packet::SubAck(SubAck {
        packet_id: 3,
        reason_string: None,
        reason_codes: vec![0, 2, reason::NOT_AUTHORIZED, reason::QUOTA_EXCEEDED],
    });
    let bytes = encode_to_vec(&ack, ProtocolVersion::V311);
    assert_eq!(&bytes[..], &[0x90, 6, 0, 3, 0, 2, 0x80, 0x80]);
    malformed(decode_all(&[0x90, 3, 0, 3, 0x87], V3));
    protocol(decode_all(&[0x90, 2, 0, 3], V3));
    // UNSUBACK: no reason codes in 3.1.1.
    let ack = Packet::UnsubAck(UnsubAck {
        packet_id: 3,
        reason_string: None,
        reason_codes: vec![0x11],
    });
    assert_eq!(
        &encode_to_vec(&ack, ProtocolVersion::V311)[..],
        &[0xB0, 2, 0, 3]
    );
    malformed(decode_all(&[0xB0, 3, 0, 3, 0], V3));
    // PUBACK: exactly a packet identifier.
    malformed(decode_all(&[0x40, 3, 0, 3, 0], V3));
    malformed(decode_all(&[0x40, 1, 0], V3));
    malformed(decode_all(&[0x40, 2, 0, 0], V3));
}

#[test]
fn v3_connack_return_codes() {
    let cases = [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x86, 4),
        (0x87, 5),
        (0x80, 5),
        (0x9F, 5),
    ];
    for (v5_code, v3_code) in cases {
        let ack = Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: v5_code,
            ..Default::default()
        });
        let bytes = encode_to_vec(&ack, ProtocolVersion::V311);
        let session_present = u8::from(v5_code == 0);
        assert_eq!(
            &bytes[..],
            &[0x20, 2, session_present, v3_code],
            "code {v5_code:#x}"
        );
    }
    let decoded = decode_all(&[0x20, 2, 0, 4], V3);
    let expected = ConnAck {
        reason_code: reason::BAD_USERNAME_OR_PASSWORD,
        ..Default::default()
    };
    assert_eq!(decoded, Ok(Some(Packet::ConnAck(expected))));
    malformed(decode_all(&[0x20, 2, 0, 6], V3)); // unknown return code
    malformed(decode_all(&[0x20, 2, 2, 0], V3)); // reserved flag
    malformed(decode_all(&[0x20, 3, 0, 0, 0], V3)); // too long
    protocol(decode_all(&[0x20, 2, 1, 5], V3)); // session present with a refusal
                                                // 5.0 CONNACK without a property block is accepted.
    assert_eq!(
        decode_all(&[0x20, 2, 1, 0], V5),
        Ok(Some(Packet::ConnAck(ConnAck {
            session_present: true,
            ..Default::default()
        })))
    );
}

#[test]
fn v5_disconnect_and_auth_errors() {
    malformed(decode_all(&[0xE0, 0x01, 0x00], V3)); // 3.1.1 DISCONNECT is empty
    malformed(decode_all(&[0xE0, 0x03, 0x00, 0x05, 0x11], V5)); // props beyond packet
    protocol(decode_all(&[0xE0, 0x04, 0x00, 0x02, 0x24, 0x01], V5)); // not allowed
    malformed(decode_all(&[0xE0, 0x03, 0x00, 0x00, 0x00], V5)); // trailing byte
    protocol(decode_all(&[0xF0, 0x05, 0x18, 0x03, 0x16, 0x00, 0x00], V5)); // data, no method
    malformed(decode_all(&[0xC0, 0x01, 0x00], V5)); // PINGREQ with a body
}

// ---- Encoding limits ----

#[test]
fn unencodable_packets_write_nothing() {
    let long = ByteString::from(String::from_utf8(vec![b'a'; 65_536]).expect("ASCII"));
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long,
        packet_id: None,
        properties: Default::default(),
        payload: Bytes::new(),
    });
    assert_eq!(encoded_len(&packet, ProtocolVersion::V5), usize::MAX);
    assert!(encode_to_vec(&packet, ProtocolVersion::V5).is_empty());

    let huge = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        properties: Default::default(),
        payload: Bytes::from(vec![0u8; 268_435_455]),
    });
    assert_eq!(encoded_len(&huge, ProtocolVersion::V311), usize::MAX);
    assert!(encode_to_vec(&huge, ProtocolVersion::V311).is_empty());
}

#[test]
fn encoded_len_matches_at_varint_boundaries() {
    for size in [
        0usize, 120, 121, 122, 16_370, 16_377, 16_378, 16_400, 2_097_140, 2_097_150,
    ] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("t"),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::from(vec![1u8; size]),
        });
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let bytes = encode_to_vec(&packet, version);
            assert_eq!(bytes.len(), encoded_len(&packet, version), "payload {size}");
            let mut buf = bytes;
            assert_eq!(
                decode(&mut buf, Some(version), usize::MAX),
                Ok(Some(packet.clone()))
            );
        }
    }
}

// ---- Hot path allocations ----

/// Counts allocations made by the current thread, so parallel tests do not interfere.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

#[test]
fn publish_hot_path_does_not_allocate() {
    for (version, qos) in [
        (ProtocolVersion::V311, QoS::AtMostOnce),
        (ProtocolVersion::V311, QoS::AtLeastOnce),
        (ProtocolVersion::V5, QoS::AtMostOnce),
        (ProtocolVersion::V5, QoS::AtLeastOnce),
    ] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: s("sensors/room-1/temperature"),
            packet_id: (qos != QoS::AtMostOnce).then_some(17),
            properties: PublishProperties {
                message_expiry_interval: version.is_v5().then_some(60),
                ..Default::default()
            },
            payload: Bytes::from(vec![42u8; 100]),
        });
        // Receive buffer holding three packets. The first decode turns the buffer into a
        // shared one (the `Bytes` refcount block); later decodes must not allocate.
        let mut rx = BytesMut::with_capacity(1024);
        for _ in 0..3 {
            encode(&packet, version, &mut rx);
        }
        assert!(matches!(decode(&mut rx, Some(version), MAX), Ok(Some(_))));
        let (count, decoded) = allocations_during(|| decode(&mut rx, Some(version), MAX));
        assert_eq!(decoded, Ok(Some(packet.clone())));
        assert_eq!(count, 0, "decode allocated for {version:?} {qos:?}");

        let mut tx = BytesMut::with_capacity(1024);
        let (count, ()) = allocations_during(|| encode(&packet, version, &mut tx));
        assert_eq!(count, 0, "encode allocated for {version:?} {qos:?}");
        let (count, len) = allocations_during(|| encoded_len(&packet, version));
        assert_eq!((count, len), (0, tx.len()));
    }
}

#[test]
fn publish_len_matches_encoded_len() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: Some(3),
        properties: PublishProperties::default(),
        payload: bytes::Bytes::from(vec![7u8; 300]),
    };
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        assert_eq!(
            super::publish_len(&p, v),
            encoded_len(&Packet::Publish(p.clone()), v)
        );
    }
}
