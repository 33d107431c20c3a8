//! PUBACK, PUBREC, PUBREL and PUBCOMP (spec 3.1.1 §3.4–3.7, 5.0 §3.4–3.7): a packet
//! identifier and, in 5.0, an optional reason code and properties.
//!
//! In 5.0 the tail is optional: remaining length 2 means reason 0 without properties,
//! 3 means a reason code without properties (spec §3.4.2.1). The encoder uses the same
//! short forms, which is what other brokers send and expect.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    field_prop_len, not_allowed, put_field_prop, put_user_properties, user_properties_len,
    Property, PropertyReader, REASON_STRING,
};
use super::wire::{prefixed_len, read_packet_id, read_u8, sum, write_varint};
use super::DecodeError;
use crate::mqtt::packet::{ProtocolVersion, PubResponse};

/// Decodes the body of any of the four acknowledgements.
pub(crate) fn decode(mut body: Bytes, v5: bool) -> Result<PubResponse, DecodeError> {
    let mut response = PubResponse::new(read_packet_id(&mut body)?);
    if v5 && !body.is_empty() {
        response.reason_code = read_u8(&mut body)?;
        if !body.is_empty() {
            let mut reader = PropertyReader::new(&mut body)?;
            while let Some(property) = reader.next_property()? {
                match property {
                    Property::ReasonString(v) => response.reason_string = Some(v),
                    Property::UserProperty(k, v) => response.user_properties.push((k, v)),
                    _ => return Err(not_allowed()),
                }
            }
        }
    }
    if !body.is_empty() {
        return Err(DecodeError::Malformed("bytes after the acknowledgement"));
    }
    Ok(response)
}

fn properties_len(r: &PubResponse) -> usize {
    sum([
        field_prop_len(r.reason_string.as_ref()),
        user_properties_len(&r.user_properties),
    ])
}

/// Length of the body for `version`, choosing the shortest 5.0 form.
pub(crate) fn body_len(r: &PubResponse, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        return 2;
    }
    match properties_len(r) {
        0 if r.reason_code == 0 => 2,
        0 => 3,
        n => sum([3, prefixed_len(n)]),
    }
}

/// Writes the body for `version`.
pub(crate) fn write(r: &PubResponse, version: ProtocolVersion, buf: &mut BytesMut) {
    buf.put_u16(r.packet_id);
    if !version.is_v5() {
        return;
    }
    let props_len = properties_len(r);
    if props_len == 0 && r.reason_code == 0 {
        return;
    }
    buf.put_u8(r.reason_code);
    if props_len > 0 {
        write_varint(buf, props_len);
        put_field_prop(buf, REASON_STRING, r.reason_string.as_ref());
        put_user_properties(buf, &r.user_properties);
    }
}
