//! Fuzz target for the MQTT codec: arbitrary bytes are decoded as a stream (before
//! CONNECT, as 3.1.1 and as 5.0) until the decoder wants more input or errors, and
//! every packet it accepts must survive encode → decode unchanged, with `encoded_len`
//! matching what `encode` wrote.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_core::mqtt::codec::{decode, encode, encoded_len};
use tern_core::mqtt::packet::{Packet, ProtocolVersion};

/// Large enough for any input libFuzzer produces; size limits have their own tests.
const MAX_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for start in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        decode_stream(data, start);
    }
});

fn decode_stream(data: &[u8], start: Option<ProtocolVersion>) {
    let mut buf = BytesMut::from(data);
    let mut version = start;
    loop {
        let before = buf.len();
        match decode(&mut buf, version, MAX_SIZE) {
            Ok(Some(packet)) => {
                // CONNECT carries its own version; a session adopts it for what follows.
                let packet_version = match (&packet, version) {
                    (Packet::Connect(c), _) => c.protocol,
                    (_, Some(v)) => v,
                    (_, None) => panic!("decoded {packet:?} before CONNECT"),
                };
                version.get_or_insert(packet_version);
                check_round_trip(&packet, packet_version);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete packet consumed bytes");
                break;
            }
            Err(_) => break,
        }
    }
}

fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(packet, version),
        "encoded_len of {packet:?}"
    );
    let decode_as = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    let again = decode(&mut out, decode_as, usize::MAX);
    assert_eq!(
        again.as_ref().ok().and_then(Option::as_ref),
        Some(packet),
        "re-decode: {again:?}"
    );
    assert!(out.is_empty(), "re-decode left {} bytes", out.len());
}
