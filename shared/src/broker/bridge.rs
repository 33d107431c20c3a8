//! Bridge queues and injection: the broker's side of the store-and-forward bridge.
//!
//! A **bridge queue** is a session with a reserved client id (`$bridge/...`) that no
//! socket ever connects to. Its subscriptions are forwarding rules; what they match is
//! queued and stored like any offline session's queue (QoS 0 included: everything the
//! bridge forwards goes through the durable outbox), in the same store batch that
//! acknowledges the publisher. The bridge reads the queue with `bridge_peek`, which
//! shows only entries whose batch is durable, so nothing reaches the peer that a crash
//! could still take back, and deletes what the peer acknowledged with `bridge_ack`.
//!
//! Entries are numbered by the session's sequence, which is strictly increasing and
//! never reused: the highest sequence handed out is kept in a store cursor whenever
//! entries are removed, and a restore starts above both that cursor and every stored
//! entry. The peer deduplicates by that number.
//!
//! **Injection** is the inbound half: messages that arrived over the bridge are
//! published into the router, and a named cursor records how far the sender's
//! sequence has been delivered, in one store batch; `Output::Injected` reports when
//! that batch is durable, which is when the bridge may acknowledge the peer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::session::{Delivery, Session, SessionId};
use super::{Broker, Output};
use crate::message::QoS;
use crate::mqtt::packet::{ProtocolVersion, RetainHandling, SubscriptionOptions};
use crate::router::Subscription;
use crate::store::{EntryState, StoreOp, StoredMessage};

/// Client ids starting with this belong to bridge queues; MQTT clients may not use them.
pub const BRIDGE_CLIENT_PREFIX: &str = "$bridge/";

/// Handle on a bridge queue, from `Broker::open_bridge_queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BridgeQueue(SessionId);

/// How much a peek may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekLimits {
    /// Most messages.
    pub messages: usize,
    /// About this many payload bytes (at least one message is returned if any waits).
    pub bytes: usize,
}

/// What waits in a bridge queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Messages queued (sent but unacknowledged included).
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Age of the oldest, if any.
    pub oldest: Option<Duration>,
    /// Highest sequence handed out so far.
    pub last_seq: u64,
}

/// Bridge-specific state of a session.
#[derive(Debug, Default)]
pub(crate) struct BridgeState {
    /// Most messages queued; beyond it new ones are dropped (and publishers told).
    max_messages: usize,
    /// Messages whose origin is this are not forwarded (they came from the peer).
    skip_origin: ByteString,
    /// Highest sequence whose store batch is durable: what `bridge_peek` may show.
    durable_seq: u64,
    /// `(batch, highest sequence enqueued in it)` for batches not yet durable.
    pending: VecDeque<(u64, u64)>,
    /// Payload bytes queued.
    bytes: u64,
}

/// Cursor name under which a bridge queue's highest sequence survives restarts.
fn seq_cursor(client_id: &str) -> ByteString {
    ByteString::from(format!("seq/{client_id}"))
}

impl Broker {
    /// Opens (or, after a restart, resumes) the bridge queue `name`: a persisted session
    /// `$bridge/<name>` subscribed to `filters` (replacing any earlier rules), holding at
    /// most `max_messages`, that never forwards messages whose origin is `skip_origin`.
    pub fn open_bridge_queue(
        &mut self,
        name: &str,
        filters: &[(ByteString, QoS)],
        max_messages: usize,
        skip_origin: ByteString,
        now: Instant,
    ) -> BridgeQueue {
        let client_id = ByteString::from(format!("{BRIDGE_CLIENT_PREFIX}{name}"));
        let sid = match self.by_client_id.get(&client_id) {
            Some(sid) => *sid,
            None => {
                self.next_session += 1;
                let sid = SessionId(self.next_session);
                let session = Session::new(client_id.clone(), ProtocolVersion::V5);
                self.by_client_id.insert(client_id.clone(), sid);
                self.sessions.insert(sid, session);
                sid
            }
        };
        let floor = self.cursor(&seq_cursor(&client_id)).unwrap_or(0);
        let persistent = self.outbox.is_persistent();
        let Some(session) = self.sessions.get_mut(&sid) else {
            unreachable!("the session was found or inserted above");
        };
        for filter in session.subscriptions.keys() {
            self.router.unsubscribe(filter, sid);
        }
        session.subscriptions.clear();
        for (filter, qos) in filters {
            let subscription = Subscription {
                options: SubscriptionOptions {
                    qos: *qos,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                identifier: None,
            };
            self.router.subscribe(filter, sid, subscription);
            session.subscriptions.insert(filter.clone(), subscription);
        }
        session.expiry_interval = u32::MAX;
        session.expires_at = None;
        session.next_seq = session.next_seq.max(floor);
        // Whatever was restored is durable; without a store everything is visible.
        let durable_seq = if persistent {
            session.queue.back().map_or(0, |d| d.seq)
        } else {
            session.next_seq
        };
        let bytes = session
            .queue
            .iter()
            .map(|d| d.msg.payload.len() as u64)
            .sum();
        session.bridge = Some(Box::new(BridgeState {
            max_messages,
            skip_origin,
            durable_seq,
            pending: VecDeque::new(),
            bytes,
        }));
        self.persist_session(sid, false, now);
        if !self.bridge_queues.contains(&sid) {
            self.bridge_queues.push(sid);
        }
        self.bridge_ready = true;
        BridgeQueue(sid)
    }

    /// Queues `d` for a bridge session (called by `deliver`): stored whatever its QoS,
    /// visible to `bridge_peek` once its batch is durable.
    pub(super) fn enqueue_bridge(&mut self, sid: SessionId, mut d: Delivery, now: Instant) {
        let persistent = self.outbox.is_persistent();
        let batch = self.outbox.open_batch();
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(bridge) = session.bridge.as_deref() else {
            return;
        };
        if d.msg.origin == bridge.skip_origin {
            return;
        }
        if session.queue.len() >= bridge.max_messages {
            self.stats.messages_dropped += 1;
            if self.stats.messages_dropped.is_power_of_two() {
                tracing::warn!(queue = %session.client_id, dropped = self.stats.messages_dropped, "bridge queue full; dropping messages");
            }
            return;
        }
        d.seq = session.take_seq();
        if persistent {
            let op =
                self.persistence
                    .enqueue(&mut self.outbox, session, &d, EntryState::Queued, now);
            self.outbox.op(op);
        }
        let seq = d.seq;
        let len = d.msg.payload.len() as u64;
        session.queue.push_back(d);
        let Some(bridge) = session.bridge.as_deref_mut() else {
            return;
        };
        bridge.bytes += len;
        if persistent {
            match bridge.pending.back_mut() {
                Some((b, last)) if *b == batch => *last = seq,
                _ => bridge.pending.push_back((batch, seq)),
            }
        } else {
            bridge.durable_seq = seq;
            self.bridge_ready = true;
        }
    }

    /// Store batches up to `committed` are durable: bridge entries in them become visible.
    pub(super) fn bridge_committed(&mut self, committed: u64) {
        for sid in &self.bridge_queues {
            let Some(bridge) = self
                .sessions
                .get_mut(sid)
                .and_then(|s| s.bridge.as_deref_mut())
            else {
                continue;
            };
            while let Some(&(batch, last)) = bridge.pending.front() {
                if batch > committed {
                    break;
                }
                bridge.pending.pop_front();
                bridge.durable_seq = bridge.durable_seq.max(last);
                self.bridge_ready = true;
            }
        }
    }

    /// Durable messages of `queue` with sequence above `after`, in order, as stored
    /// messages (`now_unix_ms` is `now` on the wall clock, for expiry times).
    pub fn bridge_peek(
        &self,
        queue: BridgeQueue,
        after: u64,
        limits: PeekLimits,
        now: Instant,
        now_unix_ms: u64,
        out: &mut Vec<(u64, StoredMessage)>,
    ) {
        let Some(session) = self.sessions.get(&queue.0) else {
            return;
        };
        let Some(bridge) = session.bridge.as_deref() else {
            return;
        };
        let start = session.queue.partition_point(|d| d.seq <= after);
        let mut bytes = 0;
        for d in session.queue.range(start..) {
            if d.seq > bridge.durable_seq || out.len() >= limits.messages {
                break;
            }
            if bytes >= limits.bytes && !out.is_empty() {
                break;
            }
            bytes += d.msg.payload.len();
            let mut stored = StoredMessage::from_message(&d.msg, now, now_unix_ms);
            stored.qos = d.qos;
            stored.retain = d.retain;
            out.push((d.seq, stored));
        }
    }

    /// The peer durably holds everything of `queue` up to `up_to`: delete it, and keep
    /// the sequence high-water mark so that numbers are never reused.
    pub fn bridge_ack(&mut self, queue: BridgeQueue, up_to: u64) {
        let persistent = self.outbox.is_persistent();
        let Some(session) = self.sessions.get_mut(&queue.0) else {
            return;
        };
        let mut removed = 0;
        let mut count = 0;
        while session.queue.front().is_some_and(|d| d.seq <= up_to) {
            if let Some(d) = session.queue.pop_front() {
                removed += d.msg.payload.len() as u64;
                count += 1;
            }
        }
        if let Some(bridge) = session.bridge.as_deref_mut() {
            bridge.bytes = bridge.bytes.saturating_sub(removed);
        }
        if count == 0 || !persistent {
            return;
        }
        // One range removal per acknowledgement, not one op per message.
        let client_id = session.client_id.clone();
        let name = seq_cursor(&session.client_id);
        let value = session.next_seq;
        self.outbox
            .op(StoreOp::RemoveEntriesUpTo { client_id, up_to });
        self.put_cursor(name, value);
    }

    /// What waits in `queue`.
    pub fn bridge_backlog(&self, queue: BridgeQueue, now: Instant) -> Backlog {
        let Some(session) = self.sessions.get(&queue.0) else {
            return Backlog::default();
        };
        Backlog {
            messages: session.queue.len() as u64,
            bytes: session.bridge.as_deref().map_or(0, |b| b.bytes),
            oldest: session
                .queue
                .front()
                .map(|d| now.saturating_duration_since(d.msg.received_at)),
            last_seq: session.next_seq,
        }
    }

    /// True (once) when some bridge queue gained visible messages since the last call.
    pub fn take_bridge_ready(&mut self) -> bool {
        std::mem::take(&mut self.bridge_ready)
    }

    /// Publishes messages that arrived over the bridge, with `origin` as their origin,
    /// and sets cursor `name` to `value` in the same store batch; `Output::Injected`
    /// with `token` follows once that batch is durable (or failed: `durable: false`).
    pub fn inject(
        &mut self,
        messages: Vec<StoredMessage>,
        origin: &ByteString,
        cursor: (ByteString, u64),
        token: u64,
        now: Instant,
        now_unix_ms: u64,
    ) {
        for stored in messages {
            if stored.is_expired(now_unix_ms) {
                continue;
            }
            let mut msg = stored.to_message(now, now_unix_ms);
            msg.origin = origin.clone();
            self.stats.messages_received += 1;
            self.publish_message(msg, now);
        }
        let (name, value) = cursor;
        self.outbox.op(StoreOp::PutCursor {
            name: name.clone(),
            value,
        });
        self.outbox.push(Output::Injected {
            token,
            cursor: (name, value),
            durable: true,
        });
    }

    /// An `Injected` output is leaving: from now on its cursor is the durable value.
    pub(super) fn injected(&mut self, output: &Output) {
        if let Output::Injected {
            cursor: (name, value),
            durable: true,
            ..
        } = output
        {
            self.cursors.insert(name.clone(), *value);
        }
    }

    /// The value of cursor `name` as last made durable (restored at startup).
    pub fn cursor(&self, name: &str) -> Option<u64> {
        self.cursors.get(name).copied()
    }

    fn put_cursor(&mut self, name: ByteString, value: u64) {
        self.cursors.insert(name.clone(), value);
        self.outbox.op(StoreOp::PutCursor { name, value });
    }
}

/// True for client ids reserved for bridge queues.
pub(super) fn is_bridge_client_id(client_id: &str) -> bool {
    client_id.starts_with(BRIDGE_CLIENT_PREFIX)
}
