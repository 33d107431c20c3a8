//! The broker's side of the store: which state changes become [`StoreOp`]s, the
//! restore of a [`Snapshot`] at startup, and the batch handshake with the I/O layer.
//!
//! Only sessions that outlive their connection (session expiry > 0, v3 clean session
//! off) are persisted, with their subscriptions, QoS 1/2 deliveries and incoming QoS 2
//! packet ids; so are retained messages (but not `$SYS/`, rewritten every few seconds).
//! QoS 0 is never stored. Wills are not stored: a broker crash is not the client's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::outbox::{Outbox, StoreBatch};
use super::session::{Awaiting, Delivery, Inflight, Session, SessionId};
use super::{Broker, ConnId, Output};
use crate::message::Message;
use crate::mqtt::packet::{Packet, SubscriptionOptions};
use crate::mqtt::reason;
use crate::router::Subscription;
use crate::store::{
    EntryRecord, EntryState, MessageId, SessionRecord, Snapshot, StoreOp, StoredMessage,
    SubscriptionRecord,
};

/// Clocks and ids the persisted records need.
#[derive(Debug, Default)]
pub(super) struct Persistence {
    /// One moment on both clocks: records hold wall-clock times, the broker instants.
    anchor: Option<(Instant, u64)>,
    next_message_id: u64,
    /// Store id of the message being routed, once a persisted session took it: a
    /// message is stored once however many sessions it goes to.
    current_message: Option<MessageId>,
}

impl Persistence {
    fn unix_ms(&self, now: Instant) -> u64 {
        match self.anchor {
            Some((at, ms)) => {
                let elapsed = now.saturating_duration_since(at).as_millis();
                ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
            }
            None => 0,
        }
    }

    fn instant_at(&self, unix_ms: u64, now: Instant) -> Instant {
        let left = unix_ms.saturating_sub(self.unix_ms(now));
        now.checked_add(Duration::from_millis(left)).unwrap_or(now)
    }

    /// Forgets the stored id of the previous message: the next one routes now.
    pub(super) fn start_message(&mut self) {
        self.current_message = None;
    }

    /// The `Enqueue` op for `d` in `session`, storing the message first if this is its
    /// first persisted delivery.
    pub(super) fn enqueue(
        &mut self,
        outbox: &mut Outbox,
        session: &Session,
        d: &Delivery,
        state: EntryState,
        now: Instant,
    ) -> StoreOp {
        let message = match self.current_message {
            Some(id) => id,
            None => {
                let id = MessageId(self.next_message_id);
                self.next_message_id += 1;
                let stored = StoredMessage::from_message(&d.msg, now, self.unix_ms(now));
                outbox.op(StoreOp::PutMessage {
                    id,
                    message: stored,
                });
                self.current_message = Some(id);
                id
            }
        };
        StoreOp::Enqueue {
            client_id: session.client_id.clone(),
            seq: d.seq,
            entry: EntryRecord {
                message,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
                state,
            },
        }
    }
}

/// Stored messages converted between two shrinks of the snapshot's vector.
const RESTORE_CHUNK: usize = 4096;

/// The snapshot's messages (by ascending id) as the broker's, by ascending id: a
/// sorted vector looked up by binary search costs 16 bytes a message, a hash map about
/// twice that. They are converted from the end of the snapshot's vector, which is
/// shrunk every [`RESTORE_CHUNK`] messages, so its memory goes back to the allocator
/// while the broker's messages are built and the two forms of a large backlog are
/// never held whole at once.
fn restore_messages(
    mut stored: Vec<(MessageId, StoredMessage)>,
    now: Instant,
    now_unix_ms: u64,
) -> Vec<(MessageId, Arc<Message>)> {
    let mut messages = Vec::with_capacity(stored.len());
    while !stored.is_empty() {
        let keep = stored.len().saturating_sub(RESTORE_CHUNK);
        let converted = stored
            .drain(keep..)
            .rev()
            .map(|(id, m)| (id, Arc::new(m.into_message(now, now_unix_ms))));
        messages.extend(converted);
        stored.shrink_to_fit();
    }
    messages.reverse();
    messages
}

/// The op that changes the state of delivery `seq` of `session`.
pub(super) fn update_entry(session: &Session, seq: u64, state: EntryState) -> StoreOp {
    StoreOp::UpdateEntry {
        client_id: session.client_id.clone(),
        seq,
        state,
    }
}

/// The op that forgets delivery `seq` of `session`.
pub(super) fn remove_entry(session: &Session, seq: u64) -> StoreOp {
    StoreOp::RemoveEntry {
        client_id: session.client_id.clone(),
        seq,
    }
}

impl Broker {
    /// Turns persistence on and rebuilds sessions, queues, in-flight state and
    /// retained messages from `snapshot`. Call once, before any connection, with
    /// `now` and `now_unix_ms` naming the same moment.
    ///
    /// The snapshot is consumed as it is converted: each stored message moves its
    /// topic, payload and properties into the broker's message, and what the snapshot
    /// held goes back to the allocator as it is converted (see `restore_messages`),
    /// so a restore of a large backlog peaks near the memory the backlog takes in the
    /// running broker, not at twice it.
    pub fn restore(&mut self, snapshot: Snapshot, now: Instant, now_unix_ms: u64) {
        self.outbox.enable_persistence();
        self.persistence.anchor = Some((now, now_unix_ms));
        self.persistence.next_message_id = snapshot.next_message_id().0;
        let Snapshot {
            version: _,
            sessions,
            messages,
            retained,
            cursors,
        } = snapshot;
        self.cursors = cursors.into_iter().collect();
        let messages = restore_messages(messages, now, now_unix_ms);
        for retained in retained {
            if !retained.is_expired(now_unix_ms) {
                self.retained
                    .set(Arc::new(retained.into_message(now, now_unix_ms)));
            }
        }
        for stored in sessions {
            let record = stored.record;
            self.next_session += 1;
            let sid = SessionId(self.next_session);
            let mut session = Session::new(record.client_id.clone(), record.protocol);
            session.expiry_interval = record.expiry_interval;
            // A session that was connected at the crash starts its expiry now.
            let expires_at = record
                .expires_at
                .map(|ms| self.persistence.instant_at(ms, now));
            session.expires_at = expires_at.or_else(|| {
                now.checked_add(Duration::from_secs(u64::from(record.expiry_interval)))
            });
            session.persisted = true;
            for (filter, sub) in record.subscriptions {
                let subscription = Subscription {
                    options: SubscriptionOptions {
                        qos: sub.qos,
                        no_local: sub.no_local,
                        retain_as_published: sub.retain_as_published,
                        retain_handling: sub.retain_handling,
                    },
                    identifier: sub.identifier,
                };
                self.router.subscribe(&filter, sid, subscription);
                session.subscriptions.insert(filter, subscription);
            }
            for (seq, entry) in stored.entries {
                let found = messages.binary_search_by_key(&entry.message, |(id, _)| *id);
                let Ok(at) = found else {
                    continue; // Contract rule 7 makes this impossible for a sound store.
                };
                let msg = &messages[at].1;
                session.next_seq = session.next_seq.max(seq);
                let delivery = Delivery {
                    seq,
                    msg: Arc::clone(msg),
                    qos: entry.qos,
                    retain: entry.retain,
                    subscription_ids: entry.subscription_ids,
                };
                let awaiting = match entry.state {
                    EntryState::Queued => None,
                    EntryState::AwaitPubAck { packet_id } => Some((packet_id, Awaiting::Ack)),
                    EntryState::AwaitPubRec { packet_id } => Some((packet_id, Awaiting::Rec)),
                    EntryState::AwaitPubComp { packet_id } => Some((packet_id, Awaiting::Comp)),
                };
                match awaiting {
                    None => session.queue.push_back(delivery),
                    Some((packet_id, state)) => {
                        session.next_packet_id = session.next_packet_id.max(packet_id);
                        session.inflight.push_back(Inflight {
                            packet_id,
                            state,
                            delivery,
                        });
                    }
                }
            }
            session.incoming_qos2.extend(stored.incoming_qos2);
            self.by_client_id.insert(record.client_id, sid);
            self.sessions.insert(sid, session);
        }
        tracing::info!(
            sessions = self.sessions.len(),
            retained = self.retained.len(),
            "state restored from the store"
        );
    }

    /// The next group of store operations to apply, if any. Apply batches in the
    /// order they are returned; several may be merged into one transaction.
    pub fn poll_store_batch(&mut self) -> Option<StoreBatch> {
        self.outbox.poll_batch()
    }

    /// Batch `id` and every batch before it are durable: the outputs that waited for
    /// them (acknowledgements first of all) become available from `poll_output`.
    pub fn handle_store_committed(&mut self, id: u64) {
        self.outbox.committed(id);
        self.bridge_committed(id);
    }

    /// Batch `id` could not be applied (nothing of it was stored). The
    /// acknowledgements that waited for it are withheld and their connections are
    /// closed, so publishers resend what they were never promised; everything else
    /// goes out. `quota` says the store was full (v5 reason 0x97).
    pub fn handle_store_failed(&mut self, id: u64, quota: bool, now: Instant) {
        let reason_code = if quota {
            reason::QUOTA_EXCEEDED
        } else {
            reason::IMPLEMENTATION_SPECIFIC_ERROR
        };
        let mut refused: Vec<ConnId> = Vec::new();
        for output in self.outbox.failed(id) {
            match output {
                Output::Send(conn, Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                    if !refused.contains(&conn) {
                        refused.push(conn);
                    }
                }
                Output::Injected { token, cursor, .. } => self.outbox.push(Output::Injected {
                    token,
                    cursor,
                    durable: false,
                }),
                other => self.outbox.push(other),
            }
        }
        for conn in refused {
            // The store's failure itself is logged once per interval by the I/O layer.
            tracing::debug!(
                ?conn,
                quota,
                "store write failed; closing without acknowledging"
            );
            self.close(conn, Some(reason_code), now);
        }
    }

    /// How full the store is, reported by the I/O layer after each commit. From 90 %
    /// of `limit` on, QoS 1/2 PUBLISHes are refused before they are routed (v5: 0x97
    /// on the PUBACK/PUBREC; v3.1.1: the connection is closed unacknowledged), so a
    /// full store refuses cleanly instead of failing a batch after the message went
    /// out to some subscribers.
    pub fn handle_store_usage(&mut self, bytes: u64, limit: Option<u64>) {
        self.store_nearly_full = limit.is_some_and(|l| u128::from(bytes) * 10 >= u128::from(l) * 9);
    }

    /// Stores `sid`'s record (or deletes it when the session no longer outlives its
    /// connection). With `offline`, the record carries the session's end time.
    pub(super) fn persist_session(&mut self, sid: SessionId, offline: bool, now: Instant) {
        if !self.outbox.is_persistent() {
            return;
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.expiry_interval == 0 {
            if session.persisted {
                session.persisted = false;
                let client_id = session.client_id.clone();
                self.outbox.op(StoreOp::DeleteSession { client_id });
            }
            return;
        }
        let expires_at = offline.then(|| {
            self.persistence
                .unix_ms(now)
                .saturating_add(u64::from(session.expiry_interval) * 1000)
        });
        let subscriptions = session
            .subscriptions
            .iter()
            .map(|(filter, s)| {
                let record = SubscriptionRecord {
                    qos: s.options.qos,
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    retain_handling: s.options.retain_handling,
                    identifier: s.identifier,
                };
                (filter.clone(), record)
            })
            .collect();
        let record = SessionRecord {
            client_id: session.client_id.clone(),
            protocol: session.version,
            expiry_interval: session.expiry_interval,
            expires_at,
            subscriptions,
        };
        session.persisted = true;
        self.outbox.op(StoreOp::PutSession(record));
    }

    /// Deletes the stored record of a session that ended.
    pub(super) fn forget_session(&mut self, client_id: &ByteString, persisted: bool) {
        if persisted {
            self.outbox.op(StoreOp::DeleteSession {
                client_id: client_id.clone(),
            });
        }
    }

    pub(super) fn persist_retained(&mut self, msg: &Message, now: Instant) {
        if !self.outbox.is_persistent() || msg.topic.starts_with("$SYS/") {
            return;
        }
        if msg.payload.is_empty() {
            self.outbox.op(StoreOp::DeleteRetained {
                topic: msg.topic.clone(),
            });
        } else {
            let stored = StoredMessage::from_message(msg, now, self.persistence.unix_ms(now));
            self.outbox.op(StoreOp::PutRetained(stored));
        }
    }
}
