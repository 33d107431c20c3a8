//! Per-connection state: what dies with the socket (protocol version, keep-alive,
//! the client's own limits, topic aliases in both directions, the will).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::session::SessionId;
use crate::auth::Identity;
use crate::mqtt::packet::{Connect, LastWill, Packet, ProtocolVersion};

/// Identifies one network connection for its whole life (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnPhase {
    /// Accepted, CONNECT not yet received.
    AwaitingConnect,
    /// CONNECT received and parked until the I/O layer has checked the credentials.
    Authenticating,
    /// CONNECT accepted; bound to a session.
    Connected(SessionId),
    /// We asked the I/O layer to close it; input is ignored until `handle_closed`.
    Closing,
}

/// One network connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) phase: ConnPhase,
    pub(crate) version: ProtocolVersion,
    pub(crate) opened_at: Instant,
    pub(crate) last_activity: Instant,
    /// 1.5 × the negotiated keep-alive; `None` when keep-alive is off.
    pub(crate) keep_alive_timeout: Option<Duration>,
    /// The will, cleared by a normal DISCONNECT. Boxed: most clients have none, and
    /// every connection's entry in the broker's table would carry its full size.
    pub(crate) will: Option<Box<LastWill>>,
    /// Largest packet the client accepts (v5 CONNECT property).
    pub(crate) client_max_packet_size: u32,
    /// How many QoS 1/2 deliveries may be unacknowledged at the client.
    pub(crate) send_window: u16,
    /// Topic aliases the client lets us use towards it.
    pub(crate) client_topic_alias_max: u16,
    /// Aliases the client set up towards us.
    pub(crate) inbound_aliases: HashMap<u16, ByteString>,
    /// Aliases we set up towards the client.
    pub(crate) outbound_aliases: HashMap<ByteString, u16>,
    /// Who the client is, for access control.
    pub(crate) identity: Identity,
    /// The CONNECT waiting for authentication, and packets pipelined behind it.
    pub(crate) parked: Option<(Box<Connect>, Vec<Packet>)>,
}

impl Connection {
    pub(crate) fn new(now: Instant) -> Self {
        Connection {
            phase: ConnPhase::AwaitingConnect,
            version: ProtocolVersion::V311,
            opened_at: now,
            last_activity: now,
            keep_alive_timeout: None,
            will: None,
            client_max_packet_size: u32::MAX,
            send_window: u16::MAX,
            client_topic_alias_max: 0,
            inbound_aliases: HashMap::new(),
            outbound_aliases: HashMap::new(),
            identity: Identity::default(),
            parked: None,
        }
    }

    /// The session this connection serves, once connected.
    pub(crate) fn session(&self) -> Option<SessionId> {
        match self.phase {
            ConnPhase::Connected(sid) => Some(sid),
            _ => None,
        }
    }
}
