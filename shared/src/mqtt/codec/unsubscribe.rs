//! UNSUBSCRIBE and UNSUBACK (spec 3.1.1 §3.10–3.11, 5.0 §3.10–3.11).
//!
//! 3.1.1 UNSUBACK is only a packet identifier; the reason codes of the model exist for
//! 5.0 and are neither read nor written in 3.1.1.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    field_prop_len, not_allowed, put_field_prop, put_user_properties, user_properties_len,
    Property, PropertyReader, REASON_STRING,
};
use super::wire::{
    field_len, prefixed_len, read_packet_id, read_string, sum, write_field, write_varint,
};
use super::DecodeError;
use crate::mqtt::packet::{ProtocolVersion, UnsubAck, Unsubscribe};

/// Decodes an UNSUBSCRIBE body.
pub(crate) fn decode(mut body: Bytes, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let mut unsubscribe = Unsubscribe {
        packet_id: read_packet_id(&mut body)?,
        user_properties: Vec::new(),
        filters: Vec::new(),
    };
    if v5 {
        let mut reader = PropertyReader::new(&mut body)?;
        while let Some(property) = reader.next_property()? {
            match property {
                Property::UserProperty(k, v) => unsubscribe.user_properties.push((k, v)),
                _ => return Err(not_allowed()),
            }
        }
    }
    while !body.is_empty() {
        unsubscribe.filters.push(read_string(&mut body)?);
    }
    if unsubscribe.filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(unsubscribe)
}

/// Length of the UNSUBSCRIBE body for `version`.
pub(crate) fn body_len(u: &Unsubscribe, version: ProtocolVersion) -> usize {
    let filters = u
        .filters
        .iter()
        .fold(0, |acc, f| sum([acc, field_len(f.as_bytes())]));
    let props = if version.is_v5() {
        prefixed_len(user_properties_len(&u.user_properties))
    } else {
        0
    };
    sum([2, props, filters])
}

/// Writes the UNSUBSCRIBE body for `version`.
pub(crate) fn write(u: &Unsubscribe, version: ProtocolVersion, buf: &mut BytesMut) {
    buf.put_u16(u.packet_id);
    if version.is_v5() {
        write_varint(buf, user_properties_len(&u.user_properties));
        put_user_properties(buf, &u.user_properties);
    }
    for filter in &u.filters {
        write_field(buf, filter.as_bytes());
    }
}

/// Decodes an UNSUBACK body. User properties are dropped: the model has no field for
/// them.
pub(crate) fn decode_ack(mut body: Bytes, v5: bool) -> Result<UnsubAck, DecodeError> {
    let mut ack = UnsubAck {
        packet_id: read_packet_id(&mut body)?,
        reason_string: None,
        reason_codes: Vec::new(),
    };
    if !v5 {
        if !body.is_empty() {
            return Err(DecodeError::Malformed(
                "bytes after the UNSUBACK packet identifier",
            ));
        }
        return Ok(ack);
    }
    let mut reader = PropertyReader::new(&mut body)?;
    while let Some(property) = reader.next_property()? {
        match property {
            Property::ReasonString(v) => ack.reason_string = Some(v),
            Property::UserProperty(..) => {}
            _ => return Err(not_allowed()),
        }
    }
    if body.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
    }
    ack.reason_codes = body.to_vec();
    Ok(ack)
}

fn ack_properties_len(a: &UnsubAck) -> usize {
    field_prop_len(a.reason_string.as_ref())
}

/// Length of the UNSUBACK body for `version`.
pub(crate) fn ack_body_len(a: &UnsubAck, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        sum([2, prefixed_len(ack_properties_len(a)), a.reason_codes.len()])
    } else {
        2
    }
}

/// Writes the UNSUBACK body for `version`.
pub(crate) fn write_ack(a: &UnsubAck, version: ProtocolVersion, buf: &mut BytesMut) {
    buf.put_u16(a.packet_id);
    if version.is_v5() {
        write_varint(buf, ack_properties_len(a));
        put_field_prop(buf, REASON_STRING, a.reason_string.as_ref());
        buf.put_slice(&a.reason_codes);
    }
}
