//! The fixed header (spec §2.1): packet type, flags and remaining length.
//!
//! It is parsed by peeking at the receive buffer, before anything is consumed, so the
//! decoder can reject a bad type, bad flags or an oversized announced length while
//! only these two to five bytes are buffered.

use bytes::{BufMut, BytesMut};

use super::wire::{peek_varint, write_varint};
use super::DecodeError;
use crate::message::QoS;

pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
pub(crate) const AUTH: u8 = 15;

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedHeader {
    /// First byte: type in the high nibble, flags in the low one.
    pub(crate) byte1: u8,
    /// Bytes taken by the fixed header itself (2 to 5).
    pub(crate) header_len: usize,
    /// Announced length of the variable header plus payload.
    pub(crate) remaining: usize,
}

impl FixedHeader {
    /// Control packet type (1 to 15; 0 is reserved).
    pub(crate) fn packet_type(self) -> u8 {
        self.byte1 >> 4
    }

    /// The four flag bits.
    pub(crate) fn flags(self) -> u8 {
        self.byte1 & 0x0F
    }

    /// Size of the whole packet on the wire.
    pub(crate) fn total_len(self) -> usize {
        self.header_len + self.remaining
    }

    /// Checks the type and flags (spec §2.1.3): PUBREL, SUBSCRIBE and UNSUBSCRIBE carry
    /// 0b0010, PUBLISH its own flags (QoS 3 is malformed), every other packet 0.
    pub(crate) fn validate(self, v5: bool) -> Result<(), DecodeError> {
        let flags = self.flags();
        match self.packet_type() {
            0 => Err(DecodeError::Malformed("reserved packet type 0")),
            AUTH if !v5 => Err(DecodeError::Protocol("AUTH exists only in MQTT 5")),
            PUBLISH => match QoS::from_u8((flags >> 1) & 0x03) {
                Some(_) => Ok(()),
                None => Err(DecodeError::Malformed("PUBLISH with QoS 3")),
            },
            PUBREL | SUBSCRIBE | UNSUBSCRIBE if flags != 0b0010 => {
                Err(DecodeError::Malformed("fixed header flags must be 0b0010"))
            }
            PUBREL | SUBSCRIBE | UNSUBSCRIBE => Ok(()),
            _ if flags != 0 => Err(DecodeError::Malformed("fixed header flags must be 0")),
            _ => Ok(()),
        }
    }
}

/// Parses the fixed header at the front of `buf` without consuming it; `Ok(None)`
/// while the remaining-length integer is incomplete.
pub(crate) fn peek(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&byte1, rest)) = buf.split_first() else {
        return Ok(None);
    };
    Ok(peek_varint(rest)?.map(|(remaining, used)| FixedHeader {
        byte1,
        header_len: 1 + used,
        remaining,
    }))
}

/// Writes a fixed header; `remaining` must be at most the varint maximum.
pub(crate) fn write(buf: &mut BytesMut, byte1: u8, remaining: usize) {
    buf.put_u8(byte1);
    write_varint(buf, remaining);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_waits_for_the_whole_length() {
        assert_eq!(peek(&[]), Ok(None));
        assert_eq!(peek(&[0x30]), Ok(None));
        assert_eq!(peek(&[0x30, 0x80]), Ok(None));
        let header = peek(&[0x30, 0x80, 0x01, 0xAA]).ok().flatten();
        assert_eq!(
            header,
            Some(FixedHeader {
                byte1: 0x30,
                header_len: 3,
                remaining: 128
            })
        );
    }

    #[test]
    fn five_byte_remaining_length_is_malformed() {
        let r = peek(&[0x30, 0x80, 0x80, 0x80, 0x80]);
        assert!(matches!(r, Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn flags_are_checked_per_type() {
        let header = |byte1| FixedHeader {
            byte1,
            header_len: 2,
            remaining: 0,
        };
        assert!(header(0x62).validate(false).is_ok());
        assert!(header(0x60).validate(false).is_err());
        assert!(header(0x82).validate(true).is_ok());
        assert!(header(0x80).validate(true).is_err());
        assert!(header(0xA3).validate(true).is_err());
        assert!(header(0xC1).validate(false).is_err());
        assert!(header(0x3D).validate(false).is_ok());
        assert!(matches!(
            header(0x36).validate(false),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            header(0xF0).validate(false),
            Err(DecodeError::Protocol(_))
        ));
        assert!(header(0xF0).validate(true).is_ok());
        assert!(matches!(
            header(0x00).validate(true),
            Err(DecodeError::Malformed(_))
        ));
    }
}
