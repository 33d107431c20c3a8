//! Fuzzes the bridge frame decoder: any bytes from a peer must decode to a frame or an
//! error, never a panic or an unbounded allocation; a frame that decodes must survive
//! encode → decode unchanged (with and without compression).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern_bridge::frame::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    for compress in [false, true] {
        let again = decode(encode(&frame, compress)).expect("an encoded frame decodes");
        assert_eq!(again, frame, "round trip changed the frame (compress {compress})");
    }
});
