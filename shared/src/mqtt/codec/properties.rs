//! MQTT 5 properties (spec §2.2.2): a reader that yields typed properties from a
//! property block, and the length/write helpers each packet's encoder composes.
//!
//! The reader knows every identifier's type, so an unknown identifier is `Malformed`,
//! and it rejects a second occurrence of any property except User Property and
//! Subscription Identifier (`Protocol`). Whether a property is *allowed* in a packet is
//! decided by that packet's module: its `match` over `Property` is the allow-list, and
//! its fallback arm returns `Protocol`. Value rules that do not depend on the packet
//! (booleans are 0 or 1, receive maximum and maximum packet size are non-zero, …) are
//! checked here so every packet gets them.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wire::{
    field_len, read_binary, read_string, read_u16, read_u32, read_u8, read_varint, sum, varint_len,
    write_field, write_varint,
};
use super::DecodeError;
use crate::mqtt::packet::UserProperty;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIERS_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// One decoded property, already checked against the packet-independent value rules.
#[derive(Debug)]
#[expect(
    clippy::enum_variant_names,
    reason = "variants carry the spec's property names"
)]
pub(crate) enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(ByteString),
    ResponseTopic(ByteString),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(ByteString),
    ServerKeepAlive(u16),
    AuthenticationMethod(ByteString),
    AuthenticationData(Bytes),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(ByteString),
    ServerReference(ByteString),
    ReasonString(ByteString),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQos(u8),
    RetainAvailable(bool),
    UserProperty(ByteString, ByteString),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifiersAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// The error for a property the packet being decoded does not allow.
pub(crate) fn not_allowed() -> DecodeError {
    DecodeError::Protocol("property not allowed in this packet")
}

/// Cursor over one property block.
pub(crate) struct PropertyReader {
    data: Bytes,
    /// Bit `id` is set once property `id` was seen; every identifier is below 64.
    seen: u64,
}

impl PropertyReader {
    /// Splits the property block (its varint length and content) off the front of `body`.
    pub(crate) fn new(body: &mut Bytes) -> Result<Self, DecodeError> {
        let len = read_varint(body)?;
        if len > body.len() {
            return Err(DecodeError::Malformed("property length exceeds the packet"));
        }
        Ok(PropertyReader {
            data: body.split_to(len),
            seen: 0,
        })
    }

    /// The next property, `None` at the end of the block.
    pub(crate) fn next_property(&mut self) -> Result<Option<Property>, DecodeError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        // Identifiers are varints, but all defined ones are below 0x80, so a byte with
        // the continuation bit can only start an unknown identifier.
        let id = read_u8(&mut self.data)?;
        let property = self.read_value(id)?;
        if !matches!(id, USER_PROPERTY | SUBSCRIPTION_IDENTIFIER) {
            let bit = 1u64 << id;
            if self.seen & bit != 0 {
                return Err(DecodeError::Protocol("property appears more than once"));
            }
            self.seen |= bit;
        }
        Ok(Some(property))
    }

    fn read_value(&mut self, id: u8) -> Result<Property, DecodeError> {
        let d = &mut self.data;
        Ok(match id {
            PAYLOAD_FORMAT_INDICATOR => Property::PayloadFormatIndicator(zero_or_one(d)?),
            MESSAGE_EXPIRY_INTERVAL => Property::MessageExpiryInterval(read_u32(d)?),
            CONTENT_TYPE => Property::ContentType(read_string(d)?),
            RESPONSE_TOPIC => Property::ResponseTopic(read_string(d)?),
            CORRELATION_DATA => Property::CorrelationData(read_binary(d)?),
            SUBSCRIPTION_IDENTIFIER => match read_varint(d)? {
                0 => return Err(DecodeError::Protocol("subscription identifier 0")),
                // A varint is at most 268,435,455, which fits a u32.
                n => Property::SubscriptionIdentifier(n as u32),
            },
            SESSION_EXPIRY_INTERVAL => Property::SessionExpiryInterval(read_u32(d)?),
            ASSIGNED_CLIENT_IDENTIFIER => Property::AssignedClientIdentifier(read_string(d)?),
            SERVER_KEEP_ALIVE => Property::ServerKeepAlive(read_u16(d)?),
            AUTHENTICATION_METHOD => Property::AuthenticationMethod(read_string(d)?),
            AUTHENTICATION_DATA => Property::AuthenticationData(read_binary(d)?),
            REQUEST_PROBLEM_INFORMATION => Property::RequestProblemInformation(zero_or_one(d)?),
            WILL_DELAY_INTERVAL => Property::WillDelayInterval(read_u32(d)?),
            REQUEST_RESPONSE_INFORMATION => Property::RequestResponseInformation(zero_or_one(d)?),
            RESPONSE_INFORMATION => Property::ResponseInformation(read_string(d)?),
            SERVER_REFERENCE => Property::ServerReference(read_string(d)?),
            REASON_STRING => Property::ReasonString(read_string(d)?),
            RECEIVE_MAXIMUM => match read_u16(d)? {
                0 => return Err(DecodeError::Protocol("receive maximum 0")),
                n => Property::ReceiveMaximum(n),
            },
            TOPIC_ALIAS_MAXIMUM => Property::TopicAliasMaximum(read_u16(d)?),
            TOPIC_ALIAS => match read_u16(d)? {
                0 => return Err(DecodeError::Protocol("topic alias 0")),
                n => Property::TopicAlias(n),
            },
            MAXIMUM_QOS => Property::MaximumQos(zero_or_one(d)?),
            RETAIN_AVAILABLE => Property::RetainAvailable(zero_or_one(d)? == 1),
            USER_PROPERTY => {
                let name = read_string(d)?;
                Property::UserProperty(name, read_string(d)?)
            }
            MAXIMUM_PACKET_SIZE => match read_u32(d)? {
                0 => return Err(DecodeError::Protocol("maximum packet size 0")),
                n => Property::MaximumPacketSize(n),
            },
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                Property::WildcardSubscriptionAvailable(zero_or_one(d)? == 1)
            }
            SUBSCRIPTION_IDENTIFIERS_AVAILABLE => {
                Property::SubscriptionIdentifiersAvailable(zero_or_one(d)? == 1)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                Property::SharedSubscriptionAvailable(zero_or_one(d)? == 1)
            }
            _ => return Err(DecodeError::Malformed("unknown property identifier")),
        })
    }
}

/// Byte properties that are flags or QoS 0/1 allow no other value (spec §3.1.2.11,
/// §3.2.2.3); anything else is a protocol error.
fn zero_or_one(d: &mut Bytes) -> Result<u8, DecodeError> {
    match read_u8(d)? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol("property value must be 0 or 1")),
    }
}

/// Length of an optional one-byte property.
pub(crate) fn byte_len<T>(v: Option<T>) -> usize {
    if v.is_some() {
        2
    } else {
        0
    }
}

/// Length of an optional two-byte property.
pub(crate) fn u16_len(v: Option<u16>) -> usize {
    if v.is_some() {
        3
    } else {
        0
    }
}

/// Length of an optional four-byte property.
pub(crate) fn u32_len(v: Option<u32>) -> usize {
    if v.is_some() {
        5
    } else {
        0
    }
}

/// Length of an optional string or binary property.
pub(crate) fn field_prop_len<T: AsRef<[u8]>>(v: Option<&T>) -> usize {
    match v {
        Some(v) => sum([1, field_len(v.as_ref())]),
        None => 0,
    }
}

/// Length of one subscription identifier property.
pub(crate) fn varint_prop_len(v: u32) -> usize {
    sum([1, varint_len(v as usize)])
}

/// Length of all user properties.
pub(crate) fn user_properties_len(props: &[UserProperty]) -> usize {
    props.iter().fold(0, |acc, (name, value)| {
        sum([
            acc,
            1,
            field_len(name.as_bytes()),
            field_len(value.as_bytes()),
        ])
    })
}

/// Writes an optional one-byte property.
pub(crate) fn put_u8_prop(buf: &mut BytesMut, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        buf.put_u8(id);
        buf.put_u8(v);
    }
}

/// Writes an optional boolean property as 0/1.
pub(crate) fn put_bool_prop(buf: &mut BytesMut, id: u8, v: Option<bool>) {
    put_u8_prop(buf, id, v.map(u8::from));
}

/// Writes an optional two-byte property.
pub(crate) fn put_u16_prop(buf: &mut BytesMut, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        buf.put_u8(id);
        buf.put_u16(v);
    }
}

/// Writes an optional four-byte property.
pub(crate) fn put_u32_prop(buf: &mut BytesMut, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        buf.put_u8(id);
        buf.put_u32(v);
    }
}

/// Writes an optional string or binary property.
pub(crate) fn put_field_prop<T: AsRef<[u8]>>(buf: &mut BytesMut, id: u8, v: Option<&T>) {
    if let Some(v) = v {
        buf.put_u8(id);
        write_field(buf, v.as_ref());
    }
}

/// Writes one varint property (subscription identifier).
pub(crate) fn put_varint_prop(buf: &mut BytesMut, id: u8, v: u32) {
    buf.put_u8(id);
    write_varint(buf, v as usize);
}

/// Writes all user properties in order.
pub(crate) fn put_user_properties(buf: &mut BytesMut, props: &[UserProperty]) {
    for (name, value) in props {
        buf.put_u8(USER_PROPERTY);
        write_field(buf, name.as_bytes());
        write_field(buf, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(block: &[u8]) -> PropertyReader {
        let mut body = Bytes::copy_from_slice(block);
        let reader = PropertyReader::new(&mut body).expect("test block has a valid length");
        assert!(body.is_empty());
        reader
    }

    fn drain(mut r: PropertyReader) -> Result<Vec<Property>, DecodeError> {
        let mut out = Vec::new();
        while let Some(p) = r.next_property()? {
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn duplicated_property_is_a_protocol_error() {
        let r = reader(&[6, 0x24, 1, 0x24, 0, 0x25, 1]);
        assert!(matches!(drain(r), Err(DecodeError::Protocol(_))));
    }

    #[test]
    fn user_property_and_subscription_identifier_may_repeat() {
        let r = reader(&[
            16, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0, 0x0B, 5, 0x0B, 6,
        ]);
        assert_eq!(drain(r).map(|v| v.len()), Ok(4));
    }

    #[test]
    fn unknown_identifier_is_malformed() {
        assert!(matches!(
            drain(reader(&[2, 0x04, 0])),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            drain(reader(&[2, 0x80, 1])),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn zero_values_that_the_spec_forbids() {
        for block in [
            &[2u8, 0x0B, 0][..],
            &[3, 0x21, 0, 0][..],
            &[5, 0x27, 0, 0, 0, 0][..],
            &[3, 0x23, 0, 0][..],
            &[2, 0x25, 2][..],
        ] {
            assert!(
                matches!(drain(reader(block)), Err(DecodeError::Protocol(_))),
                "{block:?}"
            );
        }
    }

    #[test]
    fn block_longer_than_packet_is_malformed() {
        let mut body = Bytes::from_static(&[5, 0x01, 0]);
        assert!(matches!(
            PropertyReader::new(&mut body),
            Err(DecodeError::Malformed(_))
        ));
    }
}
