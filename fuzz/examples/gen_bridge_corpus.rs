//! Writes the seed corpus of the `bridge_frame` target: one frame of each kind (a batch
//! plain and lz4-compressed) encoded by the codec itself, so the fuzzer starts past the
//! frame header.
//!
//! Run from `fuzz/`: `cargo run --example gen_bridge_corpus`.

use std::path::Path;

use bytes::Bytes;
use tern_bridge::frame::{encode, Batch, Frame, Hello, Welcome, PROTOCOL_VERSION};
use tern_core::message::QoS;
use tern_core::store::{StoredMessage, StoredProperties};

fn message(topic: &str, payload: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: StoredProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..StoredProperties::default()
        },
        expires_at: Some(1_700_000_000_000),
        origin: "sensor-1".into(),
    }
}

fn main() {
    let dir = Path::new("corpus/bridge_frame");
    std::fs::create_dir_all(dir).expect("create corpus dir");
    let batch = Frame::Batch(Batch {
        class: 1,
        messages: (1..=8)
            .map(|n| (n * 3, message("site/gw1/sensors/temp", &"21.5 ".repeat(20))))
            .collect(),
    });
    let seeds = [
        (
            "hello",
            encode(
                &Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    gateway_id: "gw1".into(),
                    classes: vec!["alarm".into(), "telemetry".into()],
                    downstream: vec![("commands/gw1/#".into(), 0)],
                    delivered: vec![0, 42],
                }),
                false,
            ),
        ),
        (
            "welcome",
            encode(&Frame::Welcome(Welcome { delivered: vec![7, 0] }), false),
        ),
        (
            "refuse",
            encode(
                &Frame::Refuse {
                    reason: "unknown gateway".into(),
                },
                false,
            ),
        ),
        ("ack", encode(&Frame::Ack { class: 0, up_to: 99 }, false)),
        ("batch", encode(&batch, false)),
        ("batch-lz4", encode(&batch, true)),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), &bytes).expect("write seed");
    }
}
