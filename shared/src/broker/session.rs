//! One client's session: what outlives a connection (subscriptions, in-flight QoS 1/2
//! deliveries, queued messages, QoS 2 packet ids awaiting PUBREL).
//!
//! The session only keeps state; `Broker` decides what to send. Packet ids, the
//! in-flight window and the bounded queue live here so their invariants sit in one place.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::connection::ConnId;
use crate::auth::Identity;
use crate::message::{Message, QoS};
use crate::mqtt::packet::ProtocolVersion;
use crate::router::Subscription;
use crate::store::EntryState;

/// Identifies a session in the router; never reused within one broker's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionId(pub(crate) u64);

/// A message on its way to one subscriber, with the per-subscriber decisions taken.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Position in the session's queue, for the store (increasing per session).
    pub(crate) seq: u64,
    /// The shared message.
    pub(crate) msg: Arc<Message>,
    /// QoS granted for this subscriber (≤ publish QoS and ≤ subscription QoS).
    pub(crate) qos: QoS,
    /// RETAIN flag to send.
    pub(crate) retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub(crate) subscription_ids: Vec<u32>,
}

/// Which acknowledgement an outgoing QoS 1/2 delivery waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    /// QoS 1 sent, waiting for PUBACK.
    Ack,
    /// QoS 2 sent, waiting for PUBREC.
    Rec,
    /// PUBREL sent, waiting for PUBCOMP (the message itself is no longer needed).
    Comp,
}

impl Awaiting {
    /// What a fresh delivery at `qos` (1 or 2) waits for first.
    pub(crate) fn first(qos: QoS) -> Awaiting {
        if qos == QoS::ExactlyOnce {
            Awaiting::Rec
        } else {
            Awaiting::Ack
        }
    }

    /// The stored form of this state with its packet id.
    pub(crate) fn entry_state(self, packet_id: u16) -> EntryState {
        match self {
            Awaiting::Ack => EntryState::AwaitPubAck { packet_id },
            Awaiting::Rec => EntryState::AwaitPubRec { packet_id },
            Awaiting::Comp => EntryState::AwaitPubComp { packet_id },
        }
    }
}

/// An outgoing QoS 1/2 delivery that the client has not completed yet.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub(crate) packet_id: u16,
    pub(crate) state: Awaiting,
    pub(crate) delivery: Delivery,
}

/// A client's session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: ByteString,
    /// Who the client was at its last CONNECT, for read checks on delivery.
    pub(crate) identity: Identity,
    /// The live connection, if any.
    pub(crate) conn: Option<ConnId>,
    /// Protocol of the last connection (decides what a resumed session may send).
    pub(crate) version: ProtocolVersion,
    /// Session expiry interval in seconds granted at CONNECT (0: ends with the connection).
    pub(crate) expiry_interval: u32,
    /// When an offline session ends.
    pub(crate) expires_at: Option<Instant>,
    /// Subscriptions by filter as the client wrote it (`$share/...` included).
    pub(crate) subscriptions: HashMap<ByteString, Subscription>,
    /// Outgoing QoS 1/2 deliveries in send order (acks usually arrive in order, so
    /// lookups by id hit the front).
    pub(crate) inflight: VecDeque<Inflight>,
    /// Deliveries waiting for the in-flight window or for the client to come back.
    pub(crate) queue: VecDeque<Delivery>,
    /// Incoming QoS 2 packet ids that got PUBREC and wait for PUBREL.
    pub(crate) incoming_qos2: HashSet<u16>,
    /// The store holds a record of this session, so its changes are persisted.
    pub(crate) persisted: bool,
    /// Sequence for the next delivery.
    pub(crate) next_seq: u64,
    /// When the client last acknowledged a delivery (or connected).
    pub(crate) last_progress: Option<Instant>,
    pub(crate) next_packet_id: u16,
    /// Set when the session is a bridge queue (boxed: few sessions are).
    pub(crate) bridge: Option<Box<super::bridge::BridgeState>>,
}

impl Session {
    pub(crate) fn new(client_id: ByteString, version: ProtocolVersion) -> Self {
        Session {
            identity: Identity {
                client_id: client_id.clone(),
                ..Identity::default()
            },
            client_id,
            conn: None,
            version,
            expiry_interval: 0,
            expires_at: None,
            subscriptions: HashMap::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            persisted: false,
            next_seq: 0,
            last_progress: None,
            next_packet_id: 0,
            bridge: None,
        }
    }

    /// A packet id not used by any in-flight delivery. The caller guarantees the window
    /// is smaller than 65535, so the loop always finds one.
    pub(crate) fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            let id = self.next_packet_id;
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// The sequence number for a new delivery.
    pub(crate) fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Position of the in-flight delivery with `packet_id` in `state`.
    pub(crate) fn find_inflight(&self, packet_id: u16, state: Awaiting) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)
    }
}
