//! AUTH (spec 5.0 §3.15): the enhanced-authentication exchange, 5.0 only.
//!
//! Remaining length 0 means "success, no properties" (spec §3.15.2.1), and a lone
//! reason code is accepted the same way as in DISCONNECT. A 3.1.1 peer never sees AUTH:
//! the decoder rejects type 15 there and the encoder refuses to write it.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    field_prop_len, not_allowed, put_field_prop, put_user_properties, user_properties_len,
    Property, PropertyReader, AUTHENTICATION_DATA, AUTHENTICATION_METHOD, REASON_STRING,
};
use super::wire::{prefixed_len, read_u8, sum, write_varint};
use super::DecodeError;
use crate::mqtt::packet::Auth;

/// Decodes an AUTH body (the caller has already rejected AUTH outside 5.0).
pub(crate) fn decode(mut body: Bytes) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if !body.is_empty() {
        auth.reason_code = read_u8(&mut body)?;
        if !body.is_empty() {
            let mut reader = PropertyReader::new(&mut body)?;
            while let Some(property) = reader.next_property()? {
                match property {
                    Property::AuthenticationMethod(v) => auth.authentication_method = Some(v),
                    Property::AuthenticationData(v) => auth.authentication_data = Some(v),
                    Property::ReasonString(v) => auth.reason_string = Some(v),
                    Property::UserProperty(k, v) => auth.user_properties.push((k, v)),
                    _ => return Err(not_allowed()),
                }
            }
        }
    }
    if !body.is_empty() {
        return Err(DecodeError::Malformed("bytes after the AUTH properties"));
    }
    if auth.authentication_data.is_some() && auth.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without a method",
        ));
    }
    Ok(auth)
}

fn properties_len(a: &Auth) -> usize {
    sum([
        field_prop_len(a.authentication_method.as_ref()),
        field_prop_len(a.authentication_data.as_ref()),
        field_prop_len(a.reason_string.as_ref()),
        user_properties_len(&a.user_properties),
    ])
}

/// Length of the AUTH body: empty for success without properties, else the full form.
pub(crate) fn body_len(a: &Auth) -> usize {
    match properties_len(a) {
        0 if a.reason_code == 0 => 0,
        n => sum([1, prefixed_len(n)]),
    }
}

/// Writes the AUTH body.
pub(crate) fn write(a: &Auth, buf: &mut BytesMut) {
    let props_len = properties_len(a);
    if props_len == 0 && a.reason_code == 0 {
        return;
    }
    buf.put_u8(a.reason_code);
    write_varint(buf, props_len);
    put_field_prop(buf, AUTHENTICATION_METHOD, a.authentication_method.as_ref());
    put_field_prop(buf, AUTHENTICATION_DATA, a.authentication_data.as_ref());
    put_field_prop(buf, REASON_STRING, a.reason_string.as_ref());
    put_user_properties(buf, &a.user_properties);
}
