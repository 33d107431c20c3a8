//! Wire primitives shared by every packet module: integers, variable byte integers,
//! UTF-8 strings and binary data (spec §1.5), read from a `Bytes` cursor and written to
//! a `BytesMut`, plus the length arithmetic the encoder uses to size a packet up front.
//!
//! Readers take `&mut Bytes` and advance it; strings and binary data are returned as
//! slices of the same allocation, so decoding never copies content. A reader that runs
//! out of bytes reports `Malformed`: by the time a body is parsed the whole packet is
//! buffered, so a short field means the packet lied about its length.
//!
//! Length helpers return `usize::MAX` (and sums saturate) for anything the wire format
//! cannot represent, e.g. a string longer than 65,535 bytes; the encoder then sees a
//! body above the 268,435,455-byte limit and refuses the whole packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::DecodeError;

/// Largest value a variable byte integer (and so a remaining length) can hold.
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// Saturating sum of packet part lengths; `usize::MAX` marks "cannot be encoded".
pub(crate) fn sum<const N: usize>(parts: [usize; N]) -> usize {
    parts.into_iter().fold(0, usize::saturating_add)
}

/// Number of bytes the variable byte integer `n` takes, `usize::MAX` if too large.
pub(crate) fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        2_097_152..=MAX_VARINT => 4,
        _ => usize::MAX,
    }
}

/// Length of a block preceded by its own varint length (properties).
pub(crate) fn prefixed_len(n: usize) -> usize {
    sum([varint_len(n), n])
}

/// Encoded length of a UTF-8 string or binary field (2-byte length prefix).
pub(crate) fn field_len(bytes: &[u8]) -> usize {
    if bytes.len() > usize::from(u16::MAX) {
        usize::MAX
    } else {
        2 + bytes.len()
    }
}

/// Parses a variable byte integer at the front of `buf` without consuming it.
///
/// `Ok(None)` when `buf` ends inside the integer; `Ok(Some((value, bytes_used)))`
/// otherwise. More than four bytes is malformed (spec §1.5.5).
pub(crate) fn peek_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

/// Reads a variable byte integer.
pub(crate) fn read_varint(buf: &mut Bytes) -> Result<usize, DecodeError> {
    match peek_varint(buf)? {
        Some((value, used)) => {
            buf.advance(used);
            Ok(value)
        }
        None => Err(DecodeError::Malformed("truncated variable byte integer")),
    }
}

/// Reads one byte.
pub(crate) fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Malformed("packet shorter than its fields"));
    }
    Ok(buf.get_u8())
}

/// Reads a big-endian two-byte integer.
pub(crate) fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Malformed("packet shorter than its fields"));
    }
    Ok(buf.get_u16())
}

/// Reads a big-endian four-byte integer.
pub(crate) fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Malformed("packet shorter than its fields"));
    }
    Ok(buf.get_u32())
}

/// Reads a non-zero packet identifier (spec §2.2.1: zero is never a valid identifier).
pub(crate) fn read_packet_id(buf: &mut Bytes) -> Result<u16, DecodeError> {
    match read_u16(buf)? {
        0 => Err(DecodeError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

/// Reads length-prefixed binary data as a slice of the packet.
pub(crate) fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(read_u16(buf)?);
    if buf.len() < len {
        return Err(DecodeError::Malformed("field longer than the packet"));
    }
    Ok(buf.split_to(len))
}

/// Reads a length-prefixed UTF-8 string; invalid UTF-8 or U+0000 is malformed
/// (spec §1.5.4).
pub(crate) fn read_string(buf: &mut Bytes) -> Result<ByteString, DecodeError> {
    let raw = read_binary(buf)?;
    // U+0000 encodes as the single byte 0x00 and no multi-byte sequence contains 0x00,
    // so a byte search is exact.
    if raw.contains(&0) {
        return Err(DecodeError::Malformed("string contains U+0000"));
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))
}

/// Writes a variable byte integer; `n` must be at most `MAX_VARINT`.
pub(crate) fn write_varint(buf: &mut BytesMut, mut n: usize) {
    debug_assert!(n <= MAX_VARINT);
    loop {
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

/// Writes a length-prefixed string or binary field.
///
/// Callers only reach this after `field_len` accepted the length (an over-long field
/// makes the whole packet unencodable before anything is written), so the cast is exact.
pub(crate) fn write_field(buf: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX));
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for n in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut buf = BytesMut::new();
            write_varint(&mut buf, n);
            assert_eq!(buf.len(), varint_len(n), "length of {n}");
            let mut bytes = buf.freeze();
            assert_eq!(read_varint(&mut bytes), Ok(n));
            assert!(bytes.is_empty());
        }
        assert_eq!(varint_len(MAX_VARINT + 1), usize::MAX);
    }

    #[test]
    fn varint_of_five_bytes_is_malformed() {
        let err = peek_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert!(matches!(err, Err(DecodeError::Malformed(_))));
        assert_eq!(peek_varint(&[0xFF, 0xFF]), Ok(None));
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        let mut nul = Bytes::from_static(&[0, 3, b'a', 0, b'b']);
        assert!(matches!(
            read_string(&mut nul),
            Err(DecodeError::Malformed(_))
        ));
        let mut bad = Bytes::from_static(&[0, 2, 0xC3, 0x28]);
        assert!(matches!(
            read_string(&mut bad),
            Err(DecodeError::Malformed(_))
        ));
        let mut ok = Bytes::from_static(&[0, 2, 0xC3, 0xA9, 9]);
        assert_eq!(read_string(&mut ok).as_deref(), Ok("é"));
        assert_eq!(&ok[..], &[9]);
    }

    #[test]
    fn short_fields_are_malformed() {
        let mut short = Bytes::from_static(&[0, 5, b'a']);
        assert!(matches!(
            read_binary(&mut short),
            Err(DecodeError::Malformed(_))
        ));
        let mut one = Bytes::from_static(&[1]);
        assert!(matches!(read_u16(&mut one), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn oversized_field_is_unencodable() {
        let long = vec![b'a'; 65_536];
        assert_eq!(field_len(&long), usize::MAX);
        assert_eq!(sum([1, field_len(&long)]), usize::MAX);
    }
}
