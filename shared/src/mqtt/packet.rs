//! MQTT control packets as plain values, one model for 3.1.1 and 5.0.
//!
//! The codec (`mqtt::codec`) turns bytes into these and back; the session machine
//! (`broker`) only ever sees these. Fields that exist only in MQTT 5 are carried as
//! properties or reason codes and are ignored by the 3.1.1 encoder. Payloads, topics
//! (`ByteString`) and binary properties are `Bytes` slices of the receive buffer, so nothing is copied.

use bytes::Bytes;
use bytestring::ByteString;

use crate::message::QoS;

/// Protocol level announced in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3), accepted and treated like 3.1.1.
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// True for MQTT 5.0, the only version with properties and reason codes everywhere.
    pub fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }
}

/// One decoded MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// CONNECT (client → server).
    Connect(Box<Connect>),
    /// CONNACK (server → client).
    ConnAck(ConnAck),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK: QoS 1 acknowledgement.
    PubAck(PubResponse),
    /// PUBREC: QoS 2, first acknowledgement.
    PubRec(PubResponse),
    /// PUBREL: QoS 2, release.
    PubRel(PubResponse),
    /// PUBCOMP: QoS 2, completion.
    PubComp(PubResponse),
    /// SUBSCRIBE (client → server).
    Subscribe(Subscribe),
    /// SUBACK (server → client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client → server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server → client).
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (v3: client → server only; v5: both directions).
    Disconnect(Disconnect),
    /// AUTH (v5 only): enhanced authentication exchange.
    Auth(Auth),
}

impl Packet {
    /// The packet type's name, for log lines and errors (a `Debug` dump would print
    /// payloads).
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// A (name, value) pair of MQTT 5 user properties.
pub type UserProperty = (ByteString, ByteString);

/// CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    /// Protocol level from the variable header.
    pub protocol: ProtocolVersion,
    /// Clean session (v3) / clean start (v5).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables.
    pub keep_alive: u16,
    /// Client identifier, possibly empty.
    pub client_id: ByteString,
    /// Will message, if the will flag is set.
    pub last_will: Option<LastWill>,
    /// User name, if present.
    pub username: Option<ByteString>,
    /// Password, if present.
    pub password: Option<Bytes>,
    /// v5 CONNECT properties.
    pub properties: ConnectProperties,
}

/// v5 CONNECT properties (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectProperties {
    /// 0x11 Session Expiry Interval (seconds).
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x27 Maximum Packet Size the client accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x22 Topic Alias Maximum the client accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19 Request Response Information.
    pub request_response_information: Option<u8>,
    /// 0x17 Request Problem Information.
    pub request_problem_information: Option<u8>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteString>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// The will message in CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct LastWill {
    /// Will topic.
    pub topic: ByteString,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// v5 will properties: the publish properties plus the will delay.
    pub properties: PublishProperties,
    /// 0x18 Will Delay Interval (seconds), v5 only.
    pub will_delay_interval: Option<u32>,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// v5 reason code; v3 return codes are mapped by the codec (see `codec`).
    pub reason_code: u8,
    /// v5 CONNACK properties.
    pub properties: ConnAckProperties,
}

/// v5 CONNACK properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnAckProperties {
    /// 0x11 Session Expiry Interval.
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x24 Maximum QoS.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available.
    pub retain_available: Option<bool>,
    /// 0x27 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteString>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
    /// 0x13 Server Keep Alive.
    pub server_keep_alive: Option<u16>,
    /// 0x1A Response Information.
    pub response_information: Option<ByteString>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteString>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteString>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (may be empty in v5 when a topic alias is used).
    pub topic: ByteString,
    /// Packet identifier; present iff qos > 0.
    pub packet_id: Option<u16>,
    /// v5 PUBLISH properties.
    pub properties: PublishProperties,
    /// Application payload.
    pub payload: Bytes,
}

/// v5 PUBLISH properties (also used for will properties).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishProperties {
    /// 0x01 Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval (seconds).
    pub message_expiry_interval: Option<u32>,
    /// 0x23 Topic Alias.
    pub topic_alias: Option<u16>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteString>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x0B Subscription Identifier (may repeat server → client).
    pub subscription_identifiers: Vec<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteString>,
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP.
#[derive(Debug, Clone, PartialEq)]
pub struct PubResponse {
    /// Packet identifier being acknowledged.
    pub packet_id: u16,
    /// v5 reason code (0 = success).
    pub reason_code: u8,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
}

impl PubResponse {
    /// A successful response for `packet_id`.
    pub fn new(packet_id: u16) -> Self {
        PubResponse {
            packet_id,
            reason_code: 0,
            reason_string: None,
            user_properties: Vec::new(),
        }
    }

    /// A response with a reason code.
    pub fn with_reason(packet_id: u16, reason_code: u8) -> Self {
        PubResponse {
            reason_code,
            ..PubResponse::new(packet_id)
        }
    }
}

/// Retain handling option of a v5 subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at subscribe time.
    #[default]
    SendAtSubscribe,
    /// 1: send retained messages only if the subscription did not exist.
    SendIfNew,
    /// 2: never send retained messages at subscribe time.
    DoNotSend,
}

/// Options of one subscription (v3 uses only `qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Default options at the given QoS.
    pub fn new(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// 0x0B Subscription Identifier (v5).
    pub subscription_identifier: Option<u32>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// Requested filters with their options, in order.
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// One reason code per filter: granted QoS 0..2 or an error ≥ 0x80.
    /// The v3 encoder maps every error to 0x80.
    pub reason_codes: Vec<u8>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// Filters to remove.
    pub filters: Vec<ByteString>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// One reason code per filter (v5 only; the v3 encoder omits them).
    pub reason_codes: Vec<u8>,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    /// v5 reason code (0 = normal disconnection).
    pub reason_code: u8,
    /// 0x11 Session Expiry Interval (client → server only).
    pub session_expiry_interval: Option<u32>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteString>,
}

impl Disconnect {
    /// A DISCONNECT carrying only a reason code.
    pub fn with_reason(reason_code: u8) -> Self {
        Disconnect {
            reason_code,
            ..Disconnect::default()
        }
    }
}

/// AUTH (v5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    /// Reason code: 0x00 success, 0x18 continue, 0x19 re-authenticate.
    pub reason_code: u8,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteString>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteString>,
    /// 0x26 User Property.
    pub user_properties: Vec<UserProperty>,
}
