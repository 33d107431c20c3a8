//! DISCONNECT (spec 3.1.1 §3.14, 5.0 §3.14).
//!
//! 3.1.1 DISCONNECT is empty. In 5.0 the tail is optional: remaining length 0 means
//! "normal disconnection", 1 means a reason code alone — the form mosquitto sends and
//! the one mqttbytes fails on, hence the regression tests in `codec::tests`.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    field_prop_len, not_allowed, put_field_prop, put_u32_prop, put_user_properties, u32_len,
    user_properties_len, Property, PropertyReader, REASON_STRING, SERVER_REFERENCE,
    SESSION_EXPIRY_INTERVAL,
};
use super::wire::{prefixed_len, read_u8, sum, write_varint};
use super::DecodeError;
use crate::mqtt::packet::{Disconnect, ProtocolVersion};

/// Decodes a DISCONNECT body.
pub(crate) fn decode(mut body: Bytes, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if v5 && !body.is_empty() {
        disconnect.reason_code = read_u8(&mut body)?;
        if !body.is_empty() {
            let mut reader = PropertyReader::new(&mut body)?;
            while let Some(property) = reader.next_property()? {
                match property {
                    Property::SessionExpiryInterval(v) => {
                        disconnect.session_expiry_interval = Some(v)
                    }
                    Property::ReasonString(v) => disconnect.reason_string = Some(v),
                    Property::UserProperty(k, v) => disconnect.user_properties.push((k, v)),
                    Property::ServerReference(v) => disconnect.server_reference = Some(v),
                    _ => return Err(not_allowed()),
                }
            }
        }
    }
    if !body.is_empty() {
        return Err(DecodeError::Malformed("bytes after the DISCONNECT"));
    }
    Ok(disconnect)
}

fn properties_len(d: &Disconnect) -> usize {
    sum([
        u32_len(d.session_expiry_interval),
        field_prop_len(d.reason_string.as_ref()),
        user_properties_len(&d.user_properties),
        field_prop_len(d.server_reference.as_ref()),
    ])
}

/// Length of the DISCONNECT body for `version`. A normal disconnection without
/// properties is empty; any other reason code is followed by a property length even
/// when it is 0. The reason-code-only form is valid too, but widely used clients built
/// on mqttbytes (rumqttc) fail to decode it, and one byte buys them the reason code.
pub(crate) fn body_len(d: &Disconnect, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        return 0;
    }
    match properties_len(d) {
        0 if d.reason_code == 0 => 0,
        n => sum([1, prefixed_len(n)]),
    }
}

/// Writes the DISCONNECT body for `version`.
pub(crate) fn write(d: &Disconnect, version: ProtocolVersion, buf: &mut BytesMut) {
    if !version.is_v5() {
        return;
    }
    let props_len = properties_len(d);
    if props_len == 0 && d.reason_code == 0 {
        return;
    }
    buf.put_u8(d.reason_code);
    write_varint(buf, props_len);
    put_u32_prop(buf, SESSION_EXPIRY_INTERVAL, d.session_expiry_interval);
    put_field_prop(buf, REASON_STRING, d.reason_string.as_ref());
    put_user_properties(buf, &d.user_properties);
    put_field_prop(buf, SERVER_REFERENCE, d.server_reference.as_ref());
}
