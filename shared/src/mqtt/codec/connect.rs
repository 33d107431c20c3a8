//! CONNECT (spec 3.1.1 §3.1, 5.0 §3.1): the only packet decoded before the protocol
//! version is known, so it reads its version from its own variable header.
//!
//! Protocol name "MQTT" with level 4 or 5 and "MQIsdp" with level 3 are accepted; any
//! other level under one of these names is `UnsupportedProtocol(level)` so the broker
//! can answer with CONNACK "unacceptable protocol version". Any other protocol name is
//! `Malformed`: the bytes are not MQTT at all and both specs let the server just close.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{
    byte_len, field_prop_len, not_allowed, put_field_prop, put_u16_prop, put_u32_prop, put_u8_prop,
    put_user_properties, u16_len, u32_len, user_properties_len, Property, PropertyReader,
    AUTHENTICATION_DATA, AUTHENTICATION_METHOD, MAXIMUM_PACKET_SIZE, RECEIVE_MAXIMUM,
    REQUEST_PROBLEM_INFORMATION, REQUEST_RESPONSE_INFORMATION, SESSION_EXPIRY_INTERVAL,
    TOPIC_ALIAS_MAXIMUM, WILL_DELAY_INTERVAL,
};
use super::publish::{apply_message_property, message_properties_len, put_message_properties};
use super::wire::{
    field_len, prefixed_len, read_binary, read_string, read_u16, read_u8, sum, write_field,
    write_varint,
};
use super::DecodeError;
use crate::message::QoS;
use crate::mqtt::packet::{Connect, ConnectProperties, LastWill, ProtocolVersion};

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN_START: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;
const WILL_QOS_SHIFT: u8 = 3;

/// Name and level written for `version`.
fn protocol_name_level(version: ProtocolVersion) -> (&'static [u8], u8) {
    match version {
        ProtocolVersion::V31 => (b"MQIsdp", 3),
        ProtocolVersion::V311 => (b"MQTT", 4),
        ProtocolVersion::V5 => (b"MQTT", 5),
    }
}

/// Decodes a CONNECT body.
pub(crate) fn decode(mut body: Bytes) -> Result<Connect, DecodeError> {
    let name = read_binary(&mut body)?;
    let level = read_u8(&mut body)?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT" | b"MQIsdp", other) => return Err(DecodeError::UnsupportedProtocol(other)),
        _ => return Err(DecodeError::Malformed("unknown protocol name")),
    };
    let v5 = protocol.is_v5();

    let flags = read_u8(&mut body)?;
    if flags & FLAG_RESERVED != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let will = flags & FLAG_WILL != 0;
    let will_retain = flags & FLAG_WILL_RETAIN != 0;
    let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0x03;
    if !will && (will_retain || will_qos_bits != 0) {
        return Err(DecodeError::Malformed(
            "will QoS or retain set without a will",
        ));
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::Malformed("will QoS 3"))?;
    let has_username = flags & FLAG_USERNAME != 0;
    let has_password = flags & FLAG_PASSWORD != 0;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed("password without user name"));
    }

    let keep_alive = read_u16(&mut body)?;
    let properties = if v5 {
        decode_properties(&mut body)?
    } else {
        ConnectProperties::default()
    };
    let client_id = read_string(&mut body)?;
    let last_will = if will {
        let mut last_will = LastWill {
            topic: Default::default(),
            payload: Bytes::new(),
            qos: will_qos,
            retain: will_retain,
            properties: Default::default(),
            will_delay_interval: None,
        };
        if v5 {
            decode_will_properties(&mut body, &mut last_will)?;
        }
        last_will.topic = read_string(&mut body)?;
        last_will.payload = read_binary(&mut body)?;
        Some(last_will)
    } else {
        None
    };
    let username = if has_username {
        Some(read_string(&mut body)?)
    } else {
        None
    };
    let password = if has_password {
        Some(read_binary(&mut body)?)
    } else {
        None
    };
    if !body.is_empty() {
        return Err(DecodeError::Malformed("bytes after the CONNECT payload"));
    }
    Ok(Connect {
        protocol,
        clean_start: flags & FLAG_CLEAN_START != 0,
        keep_alive,
        client_id,
        last_will,
        username,
        password,
        properties,
    })
}

fn decode_properties(body: &mut Bytes) -> Result<ConnectProperties, DecodeError> {
    let mut props = ConnectProperties::default();
    let mut reader = PropertyReader::new(body)?;
    while let Some(property) = reader.next_property()? {
        match property {
            Property::SessionExpiryInterval(v) => props.session_expiry_interval = Some(v),
            Property::ReceiveMaximum(v) => props.receive_maximum = Some(v),
            Property::MaximumPacketSize(v) => props.maximum_packet_size = Some(v),
            Property::TopicAliasMaximum(v) => props.topic_alias_maximum = Some(v),
            Property::RequestResponseInformation(v) => props.request_response_information = Some(v),
            Property::RequestProblemInformation(v) => props.request_problem_information = Some(v),
            Property::UserProperty(k, v) => props.user_properties.push((k, v)),
            Property::AuthenticationMethod(v) => props.authentication_method = Some(v),
            Property::AuthenticationData(v) => props.authentication_data = Some(v),
            _ => return Err(not_allowed()),
        }
    }
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without a method",
        ));
    }
    Ok(props)
}

fn decode_will_properties(body: &mut Bytes, will: &mut LastWill) -> Result<(), DecodeError> {
    let mut reader = PropertyReader::new(body)?;
    while let Some(property) = reader.next_property()? {
        match property {
            Property::WillDelayInterval(v) => will.will_delay_interval = Some(v),
            other => apply_message_property(&mut will.properties, other)?,
        }
    }
    Ok(())
}

fn properties_len(p: &ConnectProperties) -> usize {
    sum([
        u32_len(p.session_expiry_interval),
        u16_len(p.receive_maximum),
        u32_len(p.maximum_packet_size),
        u16_len(p.topic_alias_maximum),
        byte_len(p.request_response_information),
        byte_len(p.request_problem_information),
        user_properties_len(&p.user_properties),
        field_prop_len(p.authentication_method.as_ref()),
        field_prop_len(p.authentication_data.as_ref()),
    ])
}

fn will_properties_len(w: &LastWill) -> usize {
    sum([
        message_properties_len(&w.properties),
        u32_len(w.will_delay_interval),
    ])
}

/// Length of the CONNECT body written for `version`.
pub(crate) fn body_len(c: &Connect, version: ProtocolVersion) -> usize {
    let v5 = version.is_v5();
    let (name, _) = protocol_name_level(version);
    let mut len = sum([
        2 + name.len() + 1 + 1 + 2,
        if v5 {
            prefixed_len(properties_len(&c.properties))
        } else {
            0
        },
        field_len(c.client_id.as_bytes()),
        c.username.as_ref().map_or(0, |u| field_len(u.as_bytes())),
        c.password.as_ref().map_or(0, |p| field_len(p)),
    ]);
    if let Some(w) = &c.last_will {
        len = sum([
            len,
            if v5 {
                prefixed_len(will_properties_len(w))
            } else {
                0
            },
            field_len(w.topic.as_bytes()),
            field_len(&w.payload),
        ]);
    }
    len
}

/// Writes the CONNECT body for `version`: its protocol name and level, and properties
/// only in 5.0. `Connect::protocol` is not consulted, so one value can be sent as any
/// version.
pub(crate) fn write(c: &Connect, version: ProtocolVersion, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    let (name, level) = protocol_name_level(version);
    write_field(buf, name);
    buf.put_u8(level);

    let mut flags = 0;
    if c.clean_start {
        flags |= FLAG_CLEAN_START;
    }
    if let Some(w) = &c.last_will {
        flags |= FLAG_WILL | ((w.qos as u8) << WILL_QOS_SHIFT);
        if w.retain {
            flags |= FLAG_WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= FLAG_USERNAME;
    }
    if c.password.is_some() {
        flags |= FLAG_PASSWORD;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);

    if v5 {
        let p = &c.properties;
        write_varint(buf, properties_len(p));
        put_u32_prop(buf, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
        put_u16_prop(buf, RECEIVE_MAXIMUM, p.receive_maximum);
        put_u32_prop(buf, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
        put_u16_prop(buf, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
        put_u8_prop(
            buf,
            REQUEST_RESPONSE_INFORMATION,
            p.request_response_information,
        );
        put_u8_prop(
            buf,
            REQUEST_PROBLEM_INFORMATION,
            p.request_problem_information,
        );
        put_user_properties(buf, &p.user_properties);
        put_field_prop(buf, AUTHENTICATION_METHOD, p.authentication_method.as_ref());
        put_field_prop(buf, AUTHENTICATION_DATA, p.authentication_data.as_ref());
    }

    write_field(buf, c.client_id.as_bytes());
    if let Some(w) = &c.last_will {
        if v5 {
            write_varint(buf, will_properties_len(w));
            put_message_properties(buf, &w.properties);
            put_u32_prop(buf, WILL_DELAY_INTERVAL, w.will_delay_interval);
        }
        write_field(buf, w.topic.as_bytes());
        write_field(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        write_field(buf, u.as_bytes());
    }
    if let Some(p) = &c.password {
        write_field(buf, p);
    }
}
