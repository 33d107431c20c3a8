//! SUBSCRIBE and SUBACK (spec 3.1.1 §3.8–3.9, 5.0 §3.8–3.9).
//!
//! Topic filter syntax (wildcards, `$share`) is not checked here: in 5.0 a bad filter
//! is answered per filter in SUBACK rather than by closing the connection, so that is
//! the broker's call (`mqtt::topic`). What is checked is the framing: at least one
//! filter, and the reserved bits of each options byte.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    field_prop_len, not_allowed, put_field_prop, put_user_properties, put_varint_prop,
    user_properties_len, varint_prop_len, Property, PropertyReader, REASON_STRING,
    SUBSCRIPTION_IDENTIFIER,
};
use super::wire::{
    field_len, prefixed_len, read_packet_id, read_string, read_u8, sum, write_field, write_varint,
};
use super::DecodeError;
use crate::message::QoS;
use crate::mqtt::packet::{
    ProtocolVersion, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
};

const OPT_QOS: u8 = 0x03;
const OPT_NO_LOCAL: u8 = 0x04;
const OPT_RETAIN_AS_PUBLISHED: u8 = 0x08;
const OPT_RETAIN_HANDLING_SHIFT: u8 = 4;
const OPT_V5_RESERVED: u8 = 0xC0;
const OPT_V3_RESERVED: u8 = 0xFC;

/// Decodes a SUBSCRIBE body.
pub(crate) fn decode(mut body: Bytes, v5: bool) -> Result<Subscribe, DecodeError> {
    let mut subscribe = Subscribe {
        packet_id: read_packet_id(&mut body)?,
        subscription_identifier: None,
        user_properties: Vec::new(),
        filters: Vec::new(),
    };
    if v5 {
        let mut reader = PropertyReader::new(&mut body)?;
        while let Some(property) = reader.next_property()? {
            match property {
                // The reader lets identifiers repeat for PUBLISH; SUBSCRIBE allows one.
                Property::SubscriptionIdentifier(_)
                    if subscribe.subscription_identifier.is_some() =>
                {
                    return Err(DecodeError::Protocol("property appears more than once"));
                }
                Property::SubscriptionIdentifier(v) => subscribe.subscription_identifier = Some(v),
                Property::UserProperty(k, v) => subscribe.user_properties.push((k, v)),
                _ => return Err(not_allowed()),
            }
        }
    }
    while !body.is_empty() {
        let filter = read_string(&mut body)?;
        let options = decode_options(read_u8(&mut body)?, v5)?;
        subscribe.filters.push((filter, options));
    }
    if subscribe.filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(subscribe)
}

fn decode_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { OPT_V5_RESERVED } else { OPT_V3_RESERVED };
    if byte & reserved != 0 {
        return Err(DecodeError::Malformed(
            "reserved subscription option bits set",
        ));
    }
    let qos = QoS::from_u8(byte & OPT_QOS).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
    let retain_handling = match (byte >> OPT_RETAIN_HANDLING_SHIFT) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::Protocol("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & OPT_NO_LOCAL != 0,
        retain_as_published: byte & OPT_RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn encode_options(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut byte = o.qos as u8;
    if v5 {
        if o.no_local {
            byte |= OPT_NO_LOCAL;
        }
        if o.retain_as_published {
            byte |= OPT_RETAIN_AS_PUBLISHED;
        }
        let handling = match o.retain_handling {
            RetainHandling::SendAtSubscribe => 0,
            RetainHandling::SendIfNew => 1,
            RetainHandling::DoNotSend => 2,
        };
        byte |= handling << OPT_RETAIN_HANDLING_SHIFT;
    }
    byte
}

fn subscribe_properties_len(s: &Subscribe) -> usize {
    sum([
        s.subscription_identifier.map_or(0, varint_prop_len),
        user_properties_len(&s.user_properties),
    ])
}

/// Length of the SUBSCRIBE body for `version`.
pub(crate) fn body_len(s: &Subscribe, version: ProtocolVersion) -> usize {
    let filters = s
        .filters
        .iter()
        .fold(0, |acc, (f, _)| sum([acc, field_len(f.as_bytes()), 1]));
    let props = if version.is_v5() {
        prefixed_len(subscribe_properties_len(s))
    } else {
        0
    };
    sum([2, props, filters])
}

/// Writes the SUBSCRIBE body for `version` (3.1.1 keeps only each filter's QoS).
pub(crate) fn write(s: &Subscribe, version: ProtocolVersion, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    buf.put_u16(s.packet_id);
    if v5 {
        write_varint(buf, subscribe_properties_len(s));
        if let Some(id) = s.subscription_identifier {
            put_varint_prop(buf, SUBSCRIPTION_IDENTIFIER, id);
        }
        put_user_properties(buf, &s.user_properties);
    }
    for (filter, options) in &s.filters {
        write_field(buf, filter.as_bytes());
        buf.put_u8(encode_options(options, v5));
    }
}

/// Decodes a SUBACK body. 3.1.1 allows only 0, 1, 2 and 0x80; 5.0 codes pass as sent.
/// User properties are dropped: the model has no field for them.
pub(crate) fn decode_ack(mut body: Bytes, v5: bool) -> Result<SubAck, DecodeError> {
    let mut ack = SubAck {
        packet_id: read_packet_id(&mut body)?,
        reason_string: None,
        reason_codes: Vec::new(),
    };
    if v5 {
        let mut reader = PropertyReader::new(&mut body)?;
        while let Some(property) = reader.next_property()? {
            match property {
                Property::ReasonString(v) => ack.reason_string = Some(v),
                Property::UserProperty(..) => {}
                _ => return Err(not_allowed()),
            }
        }
    } else if body.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
        return Err(DecodeError::Malformed("invalid SUBACK return code"));
    }
    if body.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without reason codes"));
    }
    ack.reason_codes = body.to_vec();
    Ok(ack)
}

fn suback_properties_len(a: &SubAck) -> usize {
    field_prop_len(a.reason_string.as_ref())
}

/// Length of the SUBACK body for `version`.
pub(crate) fn ack_body_len(a: &SubAck, version: ProtocolVersion) -> usize {
    let props = if version.is_v5() {
        prefixed_len(suback_properties_len(a))
    } else {
        0
    };
    sum([2, props, a.reason_codes.len()])
}

/// Writes the SUBACK body; 3.1.1 collapses every failure code to 0x80.
pub(crate) fn write_ack(a: &SubAck, version: ProtocolVersion, buf: &mut BytesMut) {
    buf.put_u16(a.packet_id);
    if version.is_v5() {
        write_varint(buf, suback_properties_len(a));
        put_field_prop(buf, REASON_STRING, a.reason_string.as_ref());
        buf.put_slice(&a.reason_codes);
    } else {
        for &code in &a.reason_codes {
            buf.put_u8(if code >= 0x80 { 0x80 } else { code });
        }
    }
}
