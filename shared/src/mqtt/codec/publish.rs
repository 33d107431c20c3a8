//! PUBLISH (spec 3.1.1 §3.3, 5.0 §3.3), the hot path, and the message properties that
//! PUBLISH shares with the will message in CONNECT.
//!
//! Decoding a PUBLISH only slices the frozen packet: topic and payload are `Bytes`
//! views of the receive buffer, and without user properties or subscription
//! identifiers the property vectors stay empty, so nothing is allocated.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    byte_len, field_prop_len, not_allowed, put_field_prop, put_u16_prop, put_u32_prop, put_u8_prop,
    put_user_properties, put_varint_prop, u16_len, u32_len, user_properties_len, varint_prop_len,
    Property, PropertyReader, CONTENT_TYPE, CORRELATION_DATA, MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR, RESPONSE_TOPIC, SUBSCRIPTION_IDENTIFIER, TOPIC_ALIAS,
};
use super::wire::{
    field_len, prefixed_len, read_packet_id, read_string, sum, write_field, write_varint,
};
use super::DecodeError;
use crate::message::QoS;
use crate::mqtt::packet::{ProtocolVersion, Publish, PublishProperties};

const FLAG_RETAIN: u8 = 0x01;
const FLAG_DUP: u8 = 0x08;
const QOS_SHIFT: u8 = 1;

/// Decodes a PUBLISH from its fixed-header flags and body.
pub(crate) fn decode(flags: u8, mut body: Bytes, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> QOS_SHIFT) & 0x03)
        .ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let dup = flags & FLAG_DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = read_string(&mut body)?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(read_packet_id(&mut body)?)
    };
    let properties = if v5 {
        decode_properties(&mut body)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        if !v5 {
            return Err(DecodeError::Malformed("empty topic name"));
        }
        // An empty topic is how 5.0 says "use the alias"; resolving it is the broker's job.
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "empty topic name without a topic alias",
            ));
        }
    }
    Ok(Publish {
        dup,
        qos,
        retain: flags & FLAG_RETAIN != 0,
        topic,
        packet_id,
        properties,
        payload: body,
    })
}

fn decode_properties(body: &mut Bytes) -> Result<PublishProperties, DecodeError> {
    let mut props = PublishProperties::default();
    let mut reader = PropertyReader::new(body)?;
    while let Some(property) = reader.next_property()? {
        match property {
            Property::TopicAlias(v) => props.topic_alias = Some(v),
            Property::SubscriptionIdentifier(v) => props.subscription_identifiers.push(v),
            other => apply_message_property(&mut props, other)?,
        }
    }
    Ok(props)
}

/// Stores a property that PUBLISH and will messages share; any other is not allowed.
pub(crate) fn apply_message_property(
    props: &mut PublishProperties,
    property: Property,
) -> Result<(), DecodeError> {
    match property {
        Property::PayloadFormatIndicator(v) => props.payload_format_indicator = Some(v),
        Property::MessageExpiryInterval(v) => props.message_expiry_interval = Some(v),
        Property::ContentType(v) => props.content_type = Some(v),
        Property::ResponseTopic(v) => props.response_topic = Some(v),
        Property::CorrelationData(v) => props.correlation_data = Some(v),
        Property::UserProperty(k, v) => props.user_properties.push((k, v)),
        _ => return Err(not_allowed()),
    }
    Ok(())
}

/// Length of the properties shared with will messages (all but alias and identifiers).
pub(crate) fn message_properties_len(p: &PublishProperties) -> usize {
    sum([
        byte_len(p.payload_format_indicator),
        u32_len(p.message_expiry_interval),
        field_prop_len(p.content_type.as_ref()),
        field_prop_len(p.response_topic.as_ref()),
        field_prop_len(p.correlation_data.as_ref()),
        user_properties_len(&p.user_properties),
    ])
}

/// Writes the properties shared with will messages.
pub(crate) fn put_message_properties(buf: &mut BytesMut, p: &PublishProperties) {
    put_u8_prop(buf, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    put_u32_prop(buf, MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    put_field_prop(buf, CONTENT_TYPE, p.content_type.as_ref());
    put_field_prop(buf, RESPONSE_TOPIC, p.response_topic.as_ref());
    put_field_prop(buf, CORRELATION_DATA, p.correlation_data.as_ref());
    put_user_properties(buf, &p.user_properties);
}

fn properties_len(p: &PublishProperties) -> usize {
    let ids = p
        .subscription_identifiers
        .iter()
        .fold(0, |acc, id| sum([acc, varint_prop_len(*id)]));
    sum([message_properties_len(p), u16_len(p.topic_alias), ids])
}

/// First byte of the fixed header: type plus DUP, QoS and RETAIN.
pub(crate) fn byte1(p: &Publish) -> u8 {
    let mut byte1 = 0x30 | ((p.qos as u8) << QOS_SHIFT);
    if p.dup {
        byte1 |= FLAG_DUP;
    }
    if p.retain {
        byte1 |= FLAG_RETAIN;
    }
    byte1
}

/// Length of the PUBLISH body for `version`.
pub(crate) fn body_len(p: &Publish, version: ProtocolVersion) -> usize {
    sum([
        field_len(p.topic.as_bytes()),
        if p.qos == QoS::AtMostOnce { 0 } else { 2 },
        if version.is_v5() {
            prefixed_len(properties_len(&p.properties))
        } else {
            0
        },
        p.payload.len(),
    ])
}

/// Writes the PUBLISH body. The packet identifier is written only for QoS > 0; a
/// missing one there is written as 0, which the peer will reject, because the model
/// promises it is present.
pub(crate) fn write(p: &Publish, version: ProtocolVersion, buf: &mut BytesMut) {
    write_field(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id.unwrap_or(0));
    }
    if version.is_v5() {
        let props = &p.properties;
        write_varint(buf, properties_len(props));
        put_message_properties(buf, props);
        put_u16_prop(buf, TOPIC_ALIAS, props.topic_alias);
        for id in &props.subscription_identifiers {
            put_varint_prop(buf, SUBSCRIPTION_IDENTIFIER, *id);
        }
    }
    buf.put_slice(&p.payload);
}
