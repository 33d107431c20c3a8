//! Codec throughput: decode and encode of a 3.1.1 and a 5.0 PUBLISH with a 100-byte
//! payload, and of a CONNECT — the packets that dominate a broker's receive path.
//!
//! Decoding is measured from a buffer that already holds many copies of the packet, so
//! each iteration is one `decode` call, as in a connection's read loop, and not a copy
//! of the input.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tern_core::message::QoS;
use tern_core::mqtt::codec::{decode, encode, encoded_len};
use tern_core::mqtt::packet::{
    Connect, ConnectProperties, LastWill, Packet, ProtocolVersion, Publish, PublishProperties,
};

/// Packets per refill of the decode buffer.
const BATCH: usize = 1024;

fn publish(version: ProtocolVersion) -> Packet {
    let properties = if version.is_v5() {
        PublishProperties {
            message_expiry_interval: Some(300),
            content_type: Some(ByteString::from_static("application/json")),
            ..Default::default()
        }
    } else {
        PublishProperties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteString::from_static("site/7/line/3/sensor/temperature"),
        packet_id: Some(4242),
        properties,
        payload: Bytes::from(vec![0x5A; 100]),
    })
}

fn connect() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteString::from_static("gateway-0042-sensor-17"),
        last_will: Some(LastWill {
            topic: ByteString::from_static("status/gateway-0042"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
            will_delay_interval: Some(5),
        }),
        username: Some(ByteString::from_static("device")),
        password: Some(Bytes::from_static(b"s3cret-token")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            ..Default::default()
        },
    }))
}

fn bench_packet(c: &mut Criterion, name: &str, packet: &Packet, version: ProtocolVersion) {
    let decode_as = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    let size = encoded_len(packet, version);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(size as u64));

    let mut one = BytesMut::new();
    encode(packet, version, &mut one);
    let mut rx = BytesMut::new();
    group.bench_function("decode", |b| {
        b.iter(|| {
            if rx.is_empty() {
                for _ in 0..BATCH {
                    rx.extend_from_slice(&one);
                }
            }
            black_box(decode(&mut rx, decode_as, usize::MAX))
        })
    });

    let mut tx = BytesMut::with_capacity(size * BATCH);
    group.bench_function("encode", |b| {
        b.iter(|| {
            if tx.len() + size > tx.capacity() {
                tx.clear();
            }
            encode(black_box(packet), version, &mut tx);
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_packet(
        c,
        "publish_v311_100b",
        &publish(ProtocolVersion::V311),
        ProtocolVersion::V311,
    );
    bench_packet(
        c,
        "publish_v5_100b",
        &publish(ProtocolVersion::V5),
        ProtocolVersion::V5,
    );
    bench_packet(c, "connect_v5", &connect(), ProtocolVersion::V5);
    bench_packet(c, "connect_v311", &connect(), ProtocolVersion::V311);
}

criterion_group!(benches, codec);
criterion_main!(benches);
