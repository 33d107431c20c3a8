//! MQTT 3.1.1 / 5.0 codec in the mqttbytes style: read and write on `BytesMut`,
//! payloads as zero-copy `Bytes`, size checked from the fixed header before the body
//! is buffered. (CONTRACT — implementation in progress.)

use bytes::BytesMut;

use super::packet::{Packet, ProtocolVersion};

/// Why bytes could not be decoded into a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The fixed header announces a packet larger than allowed.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Announced total size.
        size: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet is well formed but violates the protocol (e.g. a second CONNECT is
    /// not detected here, but AUTH in 3.1.1 or a duplicated property is).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// CONNECT names a protocol level the broker does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
}

impl DecodeError {
    /// The v5 reason code to put in the DISCONNECT (or CONNACK) that answers this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => super::reason::PACKET_TOO_LARGE,
            DecodeError::Malformed(_) => super::reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => super::reason::PROTOCOL_ERROR,
            DecodeError::UnsupportedProtocol(_) => super::reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Decodes one packet from the front of `buf`, consuming its bytes.
///
/// `version` is `None` until CONNECT has been read: then only CONNECT is accepted.
/// Returns `Ok(None)` when `buf` holds only part of a packet (nothing is consumed).
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_size);
    todo!("codec")
}

/// Appends the encoding of `packet` for `version` to `buf`.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let _ = (packet, version, buf);
    todo!("codec")
}

/// Total encoded size of `packet` (fixed header included), for maximum-packet-size checks.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    todo!("codec")
}
