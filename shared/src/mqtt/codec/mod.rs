//! MQTT 3.1.1 / 5.0 codec in the mqttbytes style: read and write on `BytesMut`,
//! payloads as zero-copy `Bytes`, size checked from the fixed header before the body
//! is buffered.
//!
//! One submodule per packet or packet family (`connect`, `connack`, `publish`,
//! `pubresp`, `subscribe`, `unsubscribe`, `disconnect`, `auth`) on top of `wire`
//! (integers, strings, varints), `properties` (5.0 properties) and `fixed_header`.
//! Decoding freezes exactly one packet's bytes and hands out slices of them, so topics,
//! payloads and binary properties share the receive buffer's allocation.
//!
//! Choices where the specs leave room, so that callers can rely on them:
//! - an unknown protocol name in CONNECT is `Malformed` (both specs allow closing); a
//!   known name with an unknown level is `UnsupportedProtocol(level)`;
//! - packet identifier 0 is `Malformed` in every packet that carries one, and so is DUP
//!   on a QoS 0 PUBLISH;
//! - 5.0 reason codes are passed through unchecked, except that 3.1.1 CONNACK and
//!   SUBACK codes must be ones 3.1.1 defines, so every decoded packet re-encodes to a
//!   packet that decodes equal (the fuzz target checks this);
//! - topic-name and topic-filter syntax (wildcards, `$share`) is left to the broker,
//!   except that 3.1.1 PUBLISH needs a non-empty topic and 5.0 an empty one needs an
//!   alias;
//! - a packet the wire cannot carry for the target version (AUTH in 3.1.1, a string
//!   over 65,535 bytes, a body over 268,435,455 bytes) is not encoded at all:
//!   `encoded_len` returns `usize::MAX`, which any maximum-packet-size check rejects,
//!   and `encode` writes nothing. For every other packet `encoded_len` is exactly what
//!   `encode` appends;
//! - CONNECT is encoded for the `version` argument (name, level, properties) like
//!   every other packet; `Connect::protocol` only reports what was decoded;
//! - after an error the connection is unusable: a complete but invalid packet may
//!   already have been taken out of `buf`.

use bytes::{Buf, BytesMut};

use super::packet::{Packet, ProtocolVersion, Publish};
use fixed_header::{
    AUTH, CONNACK, CONNECT, DISCONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC,
    PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
};
use wire::{varint_len, MAX_VARINT};

mod auth;
mod connack;
mod connect;
mod disconnect;
mod fixed_header;
mod properties;
mod publish;
mod pubresp;
mod subscribe;
mod unsubscribe;
mod wire;

#[cfg(test)]
mod tests;

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
    let Some(header) = fixed_header::peek(buf)? else {
        return Ok(None);
    };
    let packet_type = header.packet_type();
    if version.is_none() && packet_type != CONNECT {
        return Err(DecodeError::Protocol("first packet must be CONNECT"));
    }
    let v5 = version.is_some_and(ProtocolVersion::is_v5);
    header.validate(v5)?;
    // Checked before waiting for the body, so a peer cannot make us buffer it.
    let size = header.total_len();
    if size > max_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(header.header_len);

    let packet = match packet_type {
        CONNECT => Packet::Connect(Box::new(connect::decode(body)?)),
        CONNACK => Packet::ConnAck(connack::decode(body, v5)?),
        PUBLISH => Packet::Publish(publish::decode(header.flags(), body, v5)?),
        PUBACK => Packet::PubAck(pubresp::decode(body, v5)?),
        PUBREC => Packet::PubRec(pubresp::decode(body, v5)?),
        PUBREL => Packet::PubRel(pubresp::decode(body, v5)?),
        PUBCOMP => Packet::PubComp(pubresp::decode(body, v5)?),
        SUBSCRIBE => Packet::Subscribe(subscribe::decode(body, v5)?),
        SUBACK => Packet::SubAck(subscribe::decode_ack(body, v5)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe::decode(body, v5)?),
        UNSUBACK => Packet::UnsubAck(unsubscribe::decode_ack(body, v5)?),
        PINGREQ | PINGRESP if !body.is_empty() => {
            return Err(DecodeError::Malformed("PINGREQ/PINGRESP with a body"));
        }
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect(disconnect::decode(body, v5)?),
        AUTH => Packet::Auth(auth::decode(body)?),
        // `validate` rejected type 0, the only other value a nibble can hold.
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    Ok(Some(packet))
}

/// First byte of the fixed header.
fn byte1(packet: &Packet) -> u8 {
    let packet_type = match packet {
        Packet::Publish(p) => return publish::byte1(p),
        // The three packets whose reserved flags are 0b0010 (spec §2.1.3).
        Packet::PubRel(_) => return (PUBREL << 4) | 0b0010,
        Packet::Subscribe(_) => return (SUBSCRIBE << 4) | 0b0010,
        Packet::Unsubscribe(_) => return (UNSUBSCRIBE << 4) | 0b0010,
        Packet::Connect(_) => CONNECT,
        Packet::ConnAck(_) => CONNACK,
        Packet::PubAck(_) => PUBACK,
        Packet::PubRec(_) => PUBREC,
        Packet::PubComp(_) => PUBCOMP,
        Packet::SubAck(_) => SUBACK,
        Packet::UnsubAck(_) => UNSUBACK,
        Packet::PingReq => PINGREQ,
        Packet::PingResp => PINGRESP,
        Packet::Disconnect(_) => DISCONNECT,
        Packet::Auth(_) => AUTH,
    };
    packet_type << 4
}

/// Remaining length of `packet` for `version`; above `MAX_VARINT` when unencodable.
fn body_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match packet {
        Packet::Connect(c) => connect::body_len(c, version),
        Packet::ConnAck(c) => connack::body_len(c, version),
        Packet::Publish(p) => publish::body_len(p, version),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pubresp::body_len(r, version)
        }
        Packet::Subscribe(s) => subscribe::body_len(s, version),
        Packet::SubAck(a) => subscribe::ack_body_len(a, version),
        Packet::Unsubscribe(u) => unsubscribe::body_len(u, version),
        Packet::UnsubAck(a) => unsubscribe::ack_body_len(a, version),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => disconnect::body_len(d, version),
        Packet::Auth(a) if version.is_v5() => auth::body_len(a),
        Packet::Auth(_) => usize::MAX,
    }
}

/// Appends the encoding of `packet` for `version` to `buf`.
///
/// A packet that `version` cannot carry (see the module docs) is not written at all;
/// `encoded_len` reports it as `usize::MAX`.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let remaining = body_len(packet, version);
    if remaining > MAX_VARINT {
        tracing::warn!(
            ?version,
            "MQTT packet cannot be encoded for this version; not sent"
        );
        return;
    }
    let total = 1 + varint_len(remaining) + remaining;
    buf.reserve(total);
    let start = buf.len();
    fixed_header::write(buf, byte1(packet), remaining);
    match packet {
        Packet::Connect(c) => connect::write(c, version, buf),
        Packet::ConnAck(c) => connack::write(c, version, buf),
        Packet::Publish(p) => publish::write(p, version, buf),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pubresp::write(r, version, buf)
        }
        Packet::Subscribe(s) => subscribe::write(s, version, buf),
        Packet::SubAck(a) => subscribe::write_ack(a, version, buf),
        Packet::Unsubscribe(u) => unsubscribe::write(u, version, buf),
        Packet::UnsubAck(a) => unsubscribe::write_ack(a, version, buf),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => disconnect::write(d, version, buf),
        Packet::Auth(a) => auth::write(a, buf),
    }
    debug_assert_eq!(
        buf.len() - start,
        total,
        "encoded_len disagrees with encode"
    );
}

/// Total encoded size of `packet` (fixed header included), for maximum-packet-size checks.
///
/// `usize::MAX` when `version` cannot carry the packet (see the module docs).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    total_len(body_len(packet, version))
}

/// [`encoded_len`] of a PUBLISH, without wrapping it in a [`Packet`] (the broker checks
/// every delivery against the client's maximum packet size).
pub fn publish_len(publish: &Publish, version: ProtocolVersion) -> usize {
    total_len(publish::body_len(publish, version))
}

/// Fixed header plus `remaining`; `usize::MAX` when no packet can be that long.
fn total_len(remaining: usize) -> usize {
    if remaining > MAX_VARINT {
        return usize::MAX;
    }
    1 + varint_len(remaining) + remaining
}
