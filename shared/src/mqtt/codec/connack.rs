//! CONNACK (spec 3.1.1 §3.2, 5.0 §3.2).
//!
//! The model always holds a 5.0 reason code. 3.1.1 return codes are mapped on the way
//! in (1 → 0x84, 2 → 0x85, 3 → 0x88, 4 → 0x86, 5 → 0x87) and back on the way out (0x84
//! → 1, 0x85 → 2, 0x88/0x89 → 3, 0x86 → 4, any other non-zero code → 5), so every
//! decoded CONNACK re-encodes to the same bytes. Session present is only ever sent
//! with success, as both specs require.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    byte_len, field_prop_len, not_allowed, put_bool_prop, put_field_prop, put_u16_prop,
    put_u32_prop, put_u8_prop, put_user_properties, u16_len, u32_len, user_properties_len,
    Property, PropertyReader, ASSIGNED_CLIENT_IDENTIFIER, AUTHENTICATION_DATA,
    AUTHENTICATION_METHOD, MAXIMUM_PACKET_SIZE, MAXIMUM_QOS, REASON_STRING, RECEIVE_MAXIMUM,
    RESPONSE_INFORMATION, RETAIN_AVAILABLE, SERVER_KEEP_ALIVE, SERVER_REFERENCE,
    SESSION_EXPIRY_INTERVAL, SHARED_SUBSCRIPTION_AVAILABLE, SUBSCRIPTION_IDENTIFIERS_AVAILABLE,
    TOPIC_ALIAS_MAXIMUM, WILDCARD_SUBSCRIPTION_AVAILABLE,
};
use super::wire::{prefixed_len, read_u8, sum, write_varint};
use super::DecodeError;
use crate::mqtt::packet::{ConnAck, ConnAckProperties, ProtocolVersion};
use crate::mqtt::reason;

/// 3.1.1 return code for a 5.0 reason code.
fn v3_return_code(reason_code: u8) -> u8 {
    match reason_code {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::SERVER_UNAVAILABLE | reason::SERVER_BUSY => 3,
        reason::BAD_USERNAME_OR_PASSWORD => 4,
        _ => 5,
    }
}

/// 5.0 reason code for a 3.1.1 return code.
fn v5_reason_code(return_code: u8) -> Result<u8, DecodeError> {
    Ok(match return_code {
        0 => reason::SUCCESS,
        1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
        2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
        3 => reason::SERVER_UNAVAILABLE,
        4 => reason::BAD_USERNAME_OR_PASSWORD,
        5 => reason::NOT_AUTHORIZED,
        _ => return Err(DecodeError::Malformed("unknown CONNACK return code")),
    })
}

/// Decodes a CONNACK body.
pub(crate) fn decode(mut body: Bytes, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = read_u8(&mut body)?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("reserved CONNACK flag set"));
    }
    let code = read_u8(&mut body)?;
    let (reason_code, properties) = if v5 {
        // Some 5.0 servers omit an empty property block; treat it as empty.
        let props = if body.is_empty() {
            ConnAckProperties::default()
        } else {
            decode_properties(&mut body)?
        };
        (code, props)
    } else {
        (v5_reason_code(code)?, ConnAckProperties::default())
    };
    if !body.is_empty() {
        return Err(DecodeError::Malformed("bytes after the CONNACK properties"));
    }
    let session_present = flags & 0x01 != 0;
    if session_present && reason_code != reason::SUCCESS {
        return Err(DecodeError::Protocol("session present with a refusal"));
    }
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn decode_properties(body: &mut Bytes) -> Result<ConnAckProperties, DecodeError> {
    let mut p = ConnAckProperties::default();
    let mut reader = PropertyReader::new(body)?;
    while let Some(property) = reader.next_property()? {
        match property {
            Property::SessionExpiryInterval(v) => p.session_expiry_interval = Some(v),
            Property::ReceiveMaximum(v) => p.receive_maximum = Some(v),
            Property::MaximumQos(v) => p.maximum_qos = Some(v),
            Property::RetainAvailable(v) => p.retain_available = Some(v),
            Property::MaximumPacketSize(v) => p.maximum_packet_size = Some(v),
            Property::AssignedClientIdentifier(v) => p.assigned_client_identifier = Some(v),
            Property::TopicAliasMaximum(v) => p.topic_alias_maximum = Some(v),
            Property::ReasonString(v) => p.reason_string = Some(v),
            Property::UserProperty(k, v) => p.user_properties.push((k, v)),
            Property::WildcardSubscriptionAvailable(v) => {
                p.wildcard_subscription_available = Some(v)
            }
            Property::SubscriptionIdentifiersAvailable(v) => {
                p.subscription_identifiers_available = Some(v)
            }
            Property::SharedSubscriptionAvailable(v) => p.shared_subscription_available = Some(v),
            Property::ServerKeepAlive(v) => p.server_keep_alive = Some(v),
            Property::ResponseInformation(v) => p.response_information = Some(v),
            Property::ServerReference(v) => p.server_reference = Some(v),
            Property::AuthenticationMethod(v) => p.authentication_method = Some(v),
            Property::AuthenticationData(v) => p.authentication_data = Some(v),
            _ => return Err(not_allowed()),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without a method",
        ));
    }
    Ok(p)
}

fn properties_len(p: &ConnAckProperties) -> usize {
    sum([
        u32_len(p.session_expiry_interval),
        u16_len(p.receive_maximum),
        byte_len(p.maximum_qos),
        byte_len(p.retain_available),
        u32_len(p.maximum_packet_size),
        field_prop_len(p.assigned_client_identifier.as_ref()),
        u16_len(p.topic_alias_maximum),
        field_prop_len(p.reason_string.as_ref()),
        user_properties_len(&p.user_properties),
        byte_len(p.wildcard_subscription_available),
        byte_len(p.subscription_identifiers_available),
        byte_len(p.shared_subscription_available),
        u16_len(p.server_keep_alive),
        field_prop_len(p.response_information.as_ref()),
        field_prop_len(p.server_reference.as_ref()),
        field_prop_len(p.authentication_method.as_ref()),
        field_prop_len(p.authentication_data.as_ref()),
    ])
}

/// Length of the CONNACK body for `version`.
pub(crate) fn body_len(c: &ConnAck, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        sum([2, prefixed_len(properties_len(&c.properties))])
    } else {
        2
    }
}

/// Writes the CONNACK body for `version`.
pub(crate) fn write(c: &ConnAck, version: ProtocolVersion, buf: &mut BytesMut) {
    buf.put_u8(u8::from(
        c.session_present && c.reason_code == reason::SUCCESS,
    ));
    if !version.is_v5() {
        buf.put_u8(v3_return_code(c.reason_code));
        return;
    }
    buf.put_u8(c.reason_code);
    let p = &c.properties;
    write_varint(buf, properties_len(p));
    put_u32_prop(buf, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    put_u16_prop(buf, RECEIVE_MAXIMUM, p.receive_maximum);
    put_u8_prop(buf, MAXIMUM_QOS, p.maximum_qos);
    put_bool_prop(buf, RETAIN_AVAILABLE, p.retain_available);
    put_u32_prop(buf, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    put_field_prop(
        buf,
        ASSIGNED_CLIENT_IDENTIFIER,
        p.assigned_client_identifier.as_ref(),
    );
    put_u16_prop(buf, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    put_field_prop(buf, REASON_STRING, p.reason_string.as_ref());
    put_user_properties(buf, &p.user_properties);
    put_bool_prop(
        buf,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    put_bool_prop(
        buf,
        SUBSCRIPTION_IDENTIFIERS_AVAILABLE,
        p.subscription_identifiers_available,
    );
    put_bool_prop(
        buf,
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    put_u16_prop(buf, SERVER_KEEP_ALIVE, p.server_keep_alive);
    put_field_prop(buf, RESPONSE_INFORMATION, p.response_information.as_ref());
    put_field_prop(buf, SERVER_REFERENCE, p.server_reference.as_ref());
    put_field_prop(buf, AUTHENTICATION_METHOD, p.authentication_method.as_ref());
    put_field_prop(buf, AUTHENTICATION_DATA, p.authentication_data.as_ref());
}
