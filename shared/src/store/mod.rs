//! The storage seam: what the broker persists, as a narrow, batch-oriented trait whose
//! contract is written down here, so the in-memory store and the redb store (issue 5)
//! are interchangeable and checked by the same `conformance` suite (feature `conformance`).
//!
//! # Shape
//!
//! The broker keeps its working state in memory and uses the store as a write-only log
//! of mutations while it runs: every change that must survive a restart becomes a
//! [`StoreOp`], ops are grouped into batches, and one batch is one [`Store::apply`]
//! (one transaction). Group commit is the decided write path (DESIGN.md, "Edge store"):
//! the broker collects the ops of many PUBLISHes, applies them in one batch, and sends
//! the PUBACK/PUBREC of those messages only after `apply` returned `Ok`. The store is
//! read once, at startup, with [`Store::load`]. A durable store's file does not
//! shrink by itself; [`Store::reclaim_space`] compacts it when a [`CompactionPolicy`]
//! says it is worth it (at startup, or while the broker is idle).
//!
//! The store owns no clock and interprets nothing MQTT-specific: it does not expire
//! sessions or messages, does not allocate packet ids and does not decide what a
//! retained message with an empty payload means. Expiry times are stored as absolute
//! unix milliseconds (an `Instant` does not survive a restart); the broker compares
//! them with its wall clock and issues the deletes.
//!
//! # Records
//!
//! - a **session** ([`SessionRecord`]) per client id, with its subscriptions;
//! - **messages** ([`StoredMessage`]) by [`MessageId`], stored once however many
//!   sessions they were routed to (fan-out must not multiply bytes on flash);
//! - per session, **entries** ([`EntryRecord`]) keyed by `(client_id, seq)`: a
//!   delivery waiting in the queue or in flight, pointing at a message;
//! - per session, the **incoming QoS 2 packet ids** that got PUBREC and await PUBREL;
//! - **retained messages** by topic;
//! - named **cursors**: a `u64` per name, set and deleted by the broker (the bridge's
//!   outbox and inbox positions, DESIGN.md "Edge store"); the store keeps them and
//!   gives them back, it does not interpret them;
//! - the **format version** ([`FORMAT_VERSION`]) for migrations.
//!
//! # The contract
//!
//! Every implementation of [`Store`] guarantees the following; the `conformance`
//! suite checks each point.
//!
//! 1. **Atomicity.** `apply(batch)` applies all ops of the batch or none. A failed
//!    `apply` changes nothing: `load` and `stats` return what they returned before,
//!    and the store stays usable. The one exception is a durable store's
//!    [`StoreError::Io`] from the commit itself: the batch may or may not have become
//!    durable, and the store refuses further batches until it is reopened.
//! 2. **Durability.** When `apply` returns `Ok`, the batch is durable to the level the
//!    implementation was configured for (redb with `fsync = "always" | "batch"`: on
//!    stable storage; memory: for the life of the value). A batch is never partly
//!    durable.
//! 3. **Sequential semantics.** Ops in a batch take effect in order, as if each were
//!    applied alone, except that unreferenced messages are only collected at the end
//!    of the batch (rule 7) and the budget is only checked at the end (rule 8).
//! 4. **Validation.** An op that refers to something that must exist and does not, or
//!    creates something that already exists, fails the batch with
//!    [`StoreError::Invalid`] naming the index of the *first* failing op and why
//!    ([`InvalidOp`]). Which ops can fail is documented on each [`StoreOp`] variant.
//! 5. **Idempotent deletes.** Deleting something absent (session, entry or range of
//!    entries, incoming QoS 2 id, retained topic, cursor) succeeds and changes nothing,
//!    so replaying a delete after a crash is harmless.
//! 6. **Cascade.** [`StoreOp::DeleteSession`] also deletes the session's entries and
//!    incoming QoS 2 ids (and so releases its message references).
//! 7. **Message lifetime.** A message is kept exactly as long as at least one entry
//!    references it. After every successful batch, every entry's message exists and
//!    every stored message is referenced by an entry; a message put in a batch and
//!    referenced by no entry at the end of it is not stored.
//! 8. **Budget.** With [`StoreLimits::max_bytes`] set, a batch that would leave
//!    [`StoreStats::bytes`] above the limit *and* larger than before the batch fails
//!    with [`StoreError::Full`]. A batch that does not grow the store is never refused
//!    for space, so draining a full store always works. Cursors count toward the
//!    budget like other records, but their size does not depend on their value: a
//!    [`StoreOp::PutCursor`] that replaces an existing cursor leaves `bytes` as it was,
//!    so moving a cursor (to record what was drained) is never refused for space.
//! 9. **Load.** `load` returns the state obtained by applying, in order, every batch
//!    that returned `Ok` since the store was created (across reopenings of a durable
//!    store), in a canonical order: sessions by client id, entries by ascending
//!    sequence, incoming QoS 2 ids ascending, messages by id, retained messages by
//!    topic, cursors by name. Subscriptions come back exactly as last put. Records come
//!    back equal (`==`) to what was put.
//! 10. **Ordering.** Entries of one session are ordered by their sequence number, not
//!     by insertion order; the broker assigns increasing sequences so that the queue
//!     order survives a restart.
//! 11. **Cursors.** `load` returns every cursor with the value of its last
//!     [`StoreOp::PutCursor`], none that was deleted since, whatever the value (no
//!     ordering between successive values is checked or assumed). Cursors are
//!     independent of every other record: no op validates against them and deleting a
//!     session leaves them. A cursor op takes effect with the rest of its batch or not
//!     at all (rule 1), so a cursor moved in the same batch as the ops it accounts for
//!     (removing what was acknowledged, storing what was received) is never ahead of
//!     them or behind them, after a failed batch or a crash.
//!
//! 12. **Compaction.** [`Store::reclaim_space`] changes nothing `load` and `stats`
//!     return, whether it compacts or not; only the size of the store's files changes.
//!
//! The store does not check MQTT invariants (distinct packet ids among in-flight
//! entries, QoS ranges, topic syntax): the broker owns those, and checking them here
//! would need scans that a million-entry backlog cannot afford.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use crate::message::{Message, QoS};
use crate::mqtt::packet::{ProtocolVersion, PublishProperties, RetainHandling, UserProperty};

mod coalesce;
mod compaction;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod memory;
#[cfg(feature = "redb")]
mod redb;

#[cfg(feature = "redb")]
pub use self::redb::{RedbOptions, RedbStore};
pub use coalesce::coalesce;
pub use compaction::{Compaction, CompactionPolicy, COMPACT_RATIO};
pub use memory::MemoryStore;

/// Version of the record layout; a durable store refuses to open a newer one.
///
/// - 1: sessions, entries, incoming QoS 2 ids, messages, retained messages.
/// - 2: adds named cursors ([`StoreOp::PutCursor`]). A version 1 store opens as a
///   store without cursors and is marked version 2 when opened, after which a build
///   that reads only version 1 refuses it.
pub const FORMAT_VERSION: u32 = 2;

/// Identifies a stored message; assigned by the broker, unique among live messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

/// A session that outlives its connection (v3 clean-session=0, v5 expiry > 0).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// Client identifier; the key of the session.
    pub client_id: ByteString,
    /// Protocol of the last connection (decides what a resumed session may send).
    pub protocol: ProtocolVersion,
    /// Session expiry interval in seconds granted at CONNECT.
    pub expiry_interval: u32,
    /// When the offline session ends, unix milliseconds; `None` while connected or
    /// when it never expires.
    pub expires_at: Option<u64>,
    /// Subscriptions by filter as the client wrote it (`$share/...` included).
    pub subscriptions: Vec<(ByteString, SubscriptionRecord)>,
}

/// Options of one stored subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// v5 No Local.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
    /// v5 subscription identifier, if given.
    pub identifier: Option<u32>,
}

/// A message as stored: what is needed to deliver it after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: ByteString,
    /// Application payload.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// v5 properties passed through to subscribers.
    pub properties: StoredProperties,
    /// When the message expires, unix milliseconds; `None`: never.
    pub expires_at: Option<u64>,
    /// Client id of the publisher, for v5 no-local.
    pub origin: ByteString,
}

/// The v5 PUBLISH properties that travel with a message; the per-hop ones (topic
/// alias, subscription identifiers, expiry interval) are not stored as properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredProperties {
    /// 0x01 Payload Format Indicator.
    pub payload_format_indicator: Option<u8>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteString>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteString>,
}

/// One delivery to one session, queued or in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryRecord {
    /// The message delivered.
    pub message: MessageId,
    /// QoS granted for this subscriber.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Where the delivery stands.
    pub state: EntryState,
}

/// Where a stored delivery stands; in-flight states carry their packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Waiting for the in-flight window or for the client to come back.
    Queued,
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck {
        /// Packet id used.
        packet_id: u16,
    },
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec {
        /// Packet id used.
        packet_id: u16,
    },
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp {
        /// Packet id used.
        packet_id: u16,
    },
}

impl EntryState {
    /// The packet id of an in-flight delivery, `None` while queued.
    pub fn packet_id(self) -> Option<u16> {
        match self {
            EntryState::Queued => None,
            EntryState::AwaitPubAck { packet_id }
            | EntryState::AwaitPubRec { packet_id }
            | EntryState::AwaitPubComp { packet_id } => Some(packet_id),
        }
    }
}

/// One mutation; a batch of them is one transaction (see the module contract).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Creates the session or replaces its record (subscriptions included); its
    /// entries and incoming QoS 2 ids are kept. Never fails validation.
    PutSession(SessionRecord),
    /// Deletes the session with its entries and incoming QoS 2 ids; absent is a no-op.
    DeleteSession {
        /// Session to delete.
        client_id: ByteString,
    },
    /// Stores a message for entries to reference. Fails with
    /// [`InvalidOp::DuplicateMessage`] if `id` is live.
    PutMessage {
        /// Id the entries will use.
        id: MessageId,
        /// The message.
        message: StoredMessage,
    },
    /// Adds an entry to a session. Fails with [`InvalidOp::UnknownSession`],
    /// [`InvalidOp::UnknownMessage`] or [`InvalidOp::DuplicateEntry`].
    Enqueue {
        /// Session the delivery belongs to.
        client_id: ByteString,
        /// Position in the session's queue; entries load in ascending order.
        seq: u64,
        /// The delivery.
        entry: EntryRecord,
    },
    /// Changes the state of an entry (send, PUBREC received, back to queued on
    /// reconnect). Fails with [`InvalidOp::UnknownEntry`].
    UpdateEntry {
        /// Session of the entry.
        client_id: ByteString,
        /// Sequence of the entry.
        seq: u64,
        /// New state.
        state: EntryState,
    },
    /// Removes an entry (acknowledged, expired or dropped); absent is a no-op.
    RemoveEntry {
        /// Session of the entry.
        client_id: ByteString,
        /// Sequence of the entry.
        seq: u64,
    },
    /// Removes every entry of a session with a sequence up to `up_to` (a cumulative
    /// acknowledgement, as the bridge gets); none, or no session, is a no-op.
    RemoveEntriesUpTo {
        /// Session of the entries.
        client_id: ByteString,
        /// Highest sequence removed.
        up_to: u64,
    },
    /// Records an incoming QoS 2 packet id that got PUBREC; present is a no-op.
    /// Fails with [`InvalidOp::UnknownSession`].
    AddIncomingQos2 {
        /// Session receiving.
        client_id: ByteString,
        /// Packet id of the publisher.
        packet_id: u16,
    },
    /// Forgets an incoming QoS 2 packet id (PUBREL received); absent is a no-op.
    RemoveIncomingQos2 {
        /// Session receiving.
        client_id: ByteString,
        /// Packet id of the publisher.
        packet_id: u16,
    },
    /// Sets the retained message of `message.topic`, replacing any. Never fails
    /// validation.
    PutRetained(StoredMessage),
    /// Clears the retained message of a topic; absent is a no-op.
    DeleteRetained {
        /// Topic name.
        topic: ByteString,
    },
    /// Sets the named cursor to `value`, replacing any. Never fails validation.
    PutCursor {
        /// Name of the cursor (any string, the empty one included).
        name: ByteString,
        /// New value.
        value: u64,
    },
    /// Deletes the named cursor; absent is a no-op.
    DeleteCursor {
        /// Name of the cursor.
        name: ByteString,
    },
}

/// Why an op of a batch was refused; always a bug in the caller, never an I/O problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOp {
    /// The op needs a session that does not exist.
    #[error("no session {client_id:?}")]
    UnknownSession {
        /// Client id named by the op.
        client_id: ByteString,
    },
    /// An entry references a message that is not stored.
    #[error("no message {id:?}")]
    UnknownMessage {
        /// Message id named by the op.
        id: MessageId,
    },
    /// A message with this id is already stored.
    #[error("message {id:?} already stored")]
    DuplicateMessage {
        /// Message id named by the op.
        id: MessageId,
    },
    /// The session already has an entry with this sequence.
    #[error("session {client_id:?} already has entry {seq}")]
    DuplicateEntry {
        /// Session named by the op.
        client_id: ByteString,
        /// Sequence named by the op.
        seq: u64,
    },
    /// The entry to update does not exist.
    #[error("session {client_id:?} has no entry {seq}")]
    UnknownEntry {
        /// Session named by the op.
        client_id: ByteString,
        /// Sequence named by the op.
        seq: u64,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the store's files failed.
    #[error("store I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store's content cannot be decoded; the operator must restore or remove it.
    #[error("store {path} is corrupt: {detail}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The store was written by a newer format than this build reads.
    #[error("store format version {found} is not supported (this build reads up to {supported})")]
    UnsupportedVersion {
        /// Version found in the store.
        found: u32,
        /// [`FORMAT_VERSION`] of this build.
        supported: u32,
    },
    /// The batch would grow the store past its byte budget; nothing was applied.
    #[error("store budget exceeded: {needed} bytes needed, limit {limit}")]
    Full {
        /// [`StoreStats::bytes`] the batch would have left.
        needed: u64,
        /// The configured [`StoreLimits::max_bytes`].
        limit: u64,
    },
    /// Op number `index` of the batch was refused; nothing was applied.
    #[error("store op {index} refused: {reason}")]
    Invalid {
        /// Index of the first failing op in the batch.
        index: usize,
        /// Why it was refused.
        reason: InvalidOp,
    },
}

/// When a durable store's `apply` reaches stable storage (profile key `fsync`).
///
/// `Always` and `Batch` are the same to the store (every batch is synced before `apply`
/// returns); they differ in how the broker groups ops into batches: `Always` applies
/// each PUBLISH's ops alone, `Batch` groups them by a time window and a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every batch is on stable storage when `apply` returns; one batch per PUBLISH.
    Always,
    /// Every batch is on stable storage when `apply` returns; many PUBLISHes per batch.
    #[default]
    Batch,
    /// Batches are not synced when `apply` returns: a process crash or power loss may
    /// lose the most recent ones (whole batches, never part of one).
    Never,
}

/// Bounds the store enforces itself (per-session queue limits are the broker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreLimits {
    /// Budget for [`StoreStats::bytes`]; `None`: unlimited.
    pub max_bytes: Option<u64>,
}

/// What the store holds, for budgets and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Sessions stored.
    pub sessions: u64,
    /// Entries (queued and in flight) over all sessions.
    pub entries: u64,
    /// Messages stored (each counted once however many entries reference it).
    pub messages: u64,
    /// Retained messages stored.
    pub retained: u64,
    /// Incoming QoS 2 packet ids over all sessions.
    pub incoming_qos2: u64,
    /// Named cursors stored.
    pub cursors: u64,
    /// Bytes used, as the implementation measures them (memory: an estimate of the
    /// encoded records; redb: bytes of the database in use). The budget compares this.
    pub bytes: u64,
}

/// A stored session with everything that hangs off it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    /// The session record as last put.
    pub record: SessionRecord,
    /// Entries in ascending sequence order.
    pub entries: Vec<(u64, EntryRecord)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL, ascending.
    pub incoming_qos2: Vec<u16>,
}

/// Everything the store holds, in canonical order; what the broker rebuilds from.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Format version of the store.
    pub version: u32,
    /// Sessions by client id.
    pub sessions: Vec<SessionSnapshot>,
    /// Messages referenced by entries, by ascending id, each once. A sorted vector
    /// rather than a map: a restore of a million-message backlog holds them all at
    /// once, and a B-tree filled in key order leaves its nodes half empty.
    pub messages: Vec<(MessageId, StoredMessage)>,
    /// Retained messages by topic.
    pub retained: Vec<StoredMessage>,
    /// Named cursors by name, as last put.
    pub cursors: BTreeMap<ByteString, u64>,
}

impl Snapshot {
    /// The snapshot of an empty store.
    pub fn empty() -> Self {
        Snapshot {
            version: FORMAT_VERSION,
            sessions: Vec::new(),
            messages: Vec::new(),
            retained: Vec::new(),
            cursors: BTreeMap::new(),
        }
    }

    /// The next message id that cannot collide with a stored one.
    pub fn next_message_id(&self) -> MessageId {
        MessageId(
            self.messages
                .last()
                .map_or(0, |(id, _)| id.0.saturating_add(1)),
        )
    }

    /// The stored message `id`, if any.
    pub fn message(&self, id: MessageId) -> Option<&StoredMessage> {
        let at = self
            .messages
            .binary_search_by_key(&id, |(id, _)| *id)
            .ok()?;
        Some(&self.messages[at].1)
    }
}

/// Durable storage of sessions, queues, in-flight state, retained messages and
/// named cursors.
///
/// See the module documentation for the contract every implementation keeps.
pub trait Store {
    /// Applies `batch` atomically; on `Ok` it is durable, on `Err` nothing changed.
    fn apply(&mut self, batch: &[StoreOp]) -> Result<(), StoreError>;

    /// Everything stored, in canonical order (read once at startup).
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Counts and bytes of what is stored now.
    fn stats(&self) -> StoreStats;

    /// Compacts the store's file if `policy` says it is worth it; what was done, `None`
    /// if nothing was (always for a store without a file). Slow when much is stored:
    /// call it at startup or when idle. Changes nothing [`Store::load`] returns; an
    /// [`StoreError::Io`] leaves the store refusing batches until reopened.
    fn reclaim_space(
        &mut self,
        policy: &CompactionPolicy,
    ) -> Result<Option<Compaction>, StoreError> {
        let _ = policy;
        Ok(None)
    }
}

impl StoredProperties {
    /// The pass-through part of a PUBLISH's properties.
    pub fn from_publish(props: &PublishProperties) -> Self {
        StoredProperties {
            payload_format_indicator: props.payload_format_indicator,
            response_topic: props.response_topic.clone(),
            correlation_data: props.correlation_data.clone(),
            user_properties: props.user_properties.clone(),
            content_type: props.content_type.clone(),
        }
    }

    /// PUBLISH properties with the per-hop ones left empty.
    pub fn to_publish(&self) -> PublishProperties {
        self.clone().into_publish()
    }

    /// [`StoredProperties::to_publish`], moving the values instead of cloning them.
    pub fn into_publish(self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user_properties,
            content_type: self.content_type,
            ..PublishProperties::default()
        }
    }
}

impl StoredMessage {
    /// Converts a routed message, turning its relative expiry into wall-clock time;
    /// `now` and `now_unix_ms` are the same moment on the two clocks.
    pub fn from_message(msg: &Message, now: Instant, now_unix_ms: u64) -> Self {
        let expires_at = msg
            .remaining_expiry(now)
            .map(|secs| now_unix_ms.saturating_add(u64::from(secs) * 1000));
        StoredMessage {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: msg.retain,
            properties: StoredProperties::from_publish(&msg.properties),
            expires_at,
            origin: msg.origin.clone(),
        }
    }

    /// Rebuilds a routed message received at `now` with the expiry left at
    /// `now_unix_ms` (rounded up, so a message is not expired early); the caller drops
    /// messages that [`StoredMessage::is_expired`] first.
    pub fn to_message(&self, now: Instant, now_unix_ms: u64) -> Message {
        self.clone().into_message(now, now_unix_ms)
    }

    /// [`StoredMessage::to_message`], moving topic, payload and properties into the
    /// message instead of cloning them (a restore converts a million of them).
    pub fn into_message(self, now: Instant, now_unix_ms: u64) -> Message {
        let expiry_interval = self.expires_at.map(|at| {
            let left_ms = at.saturating_sub(now_unix_ms);
            u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX)
        });
        Message {
            topic: self.topic,
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.into_publish(),
            expiry_interval,
            received_at: now,
            origin: self.origin,
        }
    }

    /// True once the expiry time has passed at `now_unix_ms`.
    pub fn is_expired(&self, now_unix_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_unix_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiry_interval: Option<u32>, received_at: Instant) -> Message {
        Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: expiry_interval,
                topic_alias: Some(3),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
                subscription_identifiers: vec![7],
                content_type: Some("text/plain".into()),
            },
            expiry_interval,
            received_at,
            origin: "pub".into(),
        }
    }

    #[test]
    fn store_message_round_trip_keeps_pass_through_properties_and_expiry() {
        let t0 = Instant::now();
        let msg = message(Some(10), t0);
        let now = t0 + std::time::Duration::from_secs(4);
        let stored = StoredMessage::from_message(&msg, now, 1_000_000);
        assert_eq!(stored.expires_at, Some(1_006_000));
        assert!(!stored.is_expired(1_005_999));
        assert!(stored.is_expired(1_006_000));

        let back = stored.to_message(now, 1_000_500);
        assert_eq!(back.expiry_interval, Some(6), "5.5 s left rounds up");
        assert_eq!(
            back.properties.topic_alias, None,
            "per-hop property not stored"
        );
        assert!(back.properties.subscription_identifiers.is_empty());
        assert_eq!(
            back.properties.user_properties,
            msg.properties.user_properties
        );
        assert_eq!(back.properties.content_type, msg.properties.content_type);
        assert_eq!(
            (back.topic, back.payload, back.origin),
            (msg.topic, msg.payload, msg.origin)
        );
    }

    #[test]
    fn store_message_without_expiry_never_expires() {
        let t0 = Instant::now();
        let stored = StoredMessage::from_message(&message(None, t0), t0, 5);
        assert_eq!(stored.expires_at, None);
        assert!(!stored.is_expired(u64::MAX));
        assert_eq!(stored.to_message(t0, 5).expiry_interval, None);
    }

    #[test]
    fn store_next_message_id_follows_the_largest() {
        let mut snap = Snapshot::empty();
        assert_eq!(snap.next_message_id(), MessageId(0));
        let t0 = Instant::now();
        let stored = StoredMessage::from_message(&message(None, t0), t0, 0);
        snap.messages.push((MessageId(3), stored.clone()));
        snap.messages.push((MessageId(41), stored.clone()));
        assert_eq!(snap.next_message_id(), MessageId(42));
        assert_eq!(snap.message(MessageId(41)), Some(&stored));
        assert_eq!(snap.message(MessageId(4)), None);
    }
}
