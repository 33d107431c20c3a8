//! [`MemoryStore`]: the [`Store`] contract kept in `BTreeMap`s, for tests, for the
//! conformance suite's reference runs and for brokers configured without persistence.
//!
//! Atomicity without copying: ops are applied in place while an undo log records the
//! previous value of every key they touch; if an op is refused or the budget is
//! exceeded, the log is replayed backwards. A batch therefore costs what its ops cost,
//! not the size of the store (cloning the maps would make a batch O(backlog)).

use std::collections::{BTreeMap, BTreeSet};

use bytestring::ByteString;

use super::{
    EntryRecord, InvalidOp, MessageId, SessionRecord, SessionSnapshot, Snapshot, Store, StoreError,
    StoreLimits, StoreOp, StoreStats, StoredMessage, FORMAT_VERSION,
};

/// Fixed per-record overhead of the byte estimate: keys, lengths, flags.
const RECORD_OVERHEAD: u64 = 16;

/// A session with everything that hangs off it.
#[derive(Debug, Clone)]
struct SessionState {
    record: SessionRecord,
    entries: BTreeMap<u64, EntryRecord>,
    incoming_qos2: BTreeSet<u16>,
}

/// A stored message and how many entries reference it.
#[derive(Debug, Clone)]
struct MessageState {
    message: StoredMessage,
    refs: u64,
}

/// The previous value of one key, restored when a batch is rolled back.
#[derive(Debug)]
enum Undo {
    /// The session did not exist: remove it.
    SessionCreated(ByteString),
    /// The session's record was replaced: put this one back.
    SessionRecord(SessionRecord),
    /// The session was deleted: reinsert it whole.
    SessionDeleted(SessionState),
    /// An entry changed: restore `Option` (None: it did not exist).
    Entry(ByteString, u64, Option<EntryRecord>),
    /// An incoming QoS 2 id was added (true) or removed (false): invert it.
    Qos2(ByteString, u16, bool),
    /// A message changed (put, reference count, collection): restore it.
    Message(MessageId, Option<MessageState>),
    /// A retained message changed: restore it.
    Retained(ByteString, Option<StoredMessage>),
    /// A cursor changed: restore its value (None: it did not exist).
    Cursor(ByteString, Option<u64>),
}

/// The in-memory [`Store`]: durable for the life of the value, nothing more.
#[derive(Debug, Default)]
pub struct MemoryStore {
    limits: StoreLimits,
    sessions: BTreeMap<ByteString, SessionState>,
    messages: BTreeMap<MessageId, MessageState>,
    retained: BTreeMap<ByteString, StoredMessage>,
    cursors: BTreeMap<ByteString, u64>,
    /// Running totals, kept in step with the maps so `stats` is O(1).
    stats: StoreStats,
}

impl MemoryStore {
    /// An empty store enforcing `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        MemoryStore {
            limits,
            ..MemoryStore::default()
        }
    }

    /// Applies one op, logging what it changed; `Err` leaves the log complete so the
    /// caller can roll back.
    fn apply_op(
        &mut self,
        op: &StoreOp,
        undo: &mut Vec<Undo>,
        touched: &mut Vec<MessageId>,
    ) -> Result<(), InvalidOp> {
        match op {
            StoreOp::PutSession(record) => {
                let added = session_bytes(record);
                match self.sessions.get_mut(&record.client_id) {
                    Some(state) => {
                        let old = std::mem::replace(&mut state.record, record.clone());
                        self.stats.bytes = self.stats.bytes - session_bytes(&old) + added;
                        undo.push(Undo::SessionRecord(old));
                    }
                    None => {
                        self.sessions.insert(
                            record.client_id.clone(),
                            SessionState {
                                record: record.clone(),
                                entries: BTreeMap::new(),
                                incoming_qos2: BTreeSet::new(),
                            },
                        );
                        self.stats.sessions += 1;
                        self.stats.bytes += added;
                        undo.push(Undo::SessionCreated(record.client_id.clone()));
                    }
                }
            }
            StoreOp::DeleteSession { client_id } => {
                if let Some(state) = self.sessions.remove(client_id) {
                    self.stats.sessions -= 1;
                    self.stats.bytes -= session_bytes(&state.record);
                    for (seq, entry) in &state.entries {
                        self.stats.entries -= 1;
                        self.stats.bytes -= entry_bytes(client_id, *seq, entry);
                        self.release(entry.message, undo, touched);
                    }
                    self.stats.incoming_qos2 -= state.incoming_qos2.len() as u64;
                    self.stats.bytes -= state.incoming_qos2.len() as u64 * qos2_bytes(client_id);
                    undo.push(Undo::SessionDeleted(state));
                }
            }
            StoreOp::PutMessage { id, message } => {
                if self.messages.contains_key(id) {
                    return Err(InvalidOp::DuplicateMessage { id: *id });
                }
                self.messages.insert(
                    *id,
                    MessageState {
                        message: message.clone(),
                        refs: 0,
                    },
                );
                self.stats.messages += 1;
                self.stats.bytes += message_bytes(message);
                undo.push(Undo::Message(*id, None));
                // Collected at the end of the batch unless an entry references it.
                touched.push(*id);
            }
            StoreOp::Enqueue {
                client_id,
                seq,
                entry,
            } => {
                let Some(state) = self.sessions.get_mut(client_id) else {
                    return Err(InvalidOp::UnknownSession {
                        client_id: client_id.clone(),
                    });
                };
                if state.entries.contains_key(seq) {
                    return Err(InvalidOp::DuplicateEntry {
                        client_id: client_id.clone(),
                        seq: *seq,
                    });
                }
                let Some(msg) = self.messages.get_mut(&entry.message) else {
                    return Err(InvalidOp::UnknownMessage { id: entry.message });
                };
                undo.push(Undo::Message(entry.message, Some(msg.clone())));
                msg.refs += 1;
                state.entries.insert(*seq, entry.clone());
                undo.push(Undo::Entry(client_id.clone(), *seq, None));
                self.stats.entries += 1;
                self.stats.bytes += entry_bytes(client_id, *seq, entry);
            }
            StoreOp::UpdateEntry {
                client_id,
                seq,
                state: new_state,
            } => {
                let entry = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.entries.get_mut(seq))
                    .ok_or_else(|| InvalidOp::UnknownEntry {
                        client_id: client_id.clone(),
                        seq: *seq,
                    })?;
                undo.push(Undo::Entry(client_id.clone(), *seq, Some(entry.clone())));
                // The state's size is fixed, so the byte estimate does not change.
                entry.state = *new_state;
            }
            StoreOp::RemoveEntriesUpTo { client_id, up_to } => {
                let seqs: Vec<u64> = self
                    .sessions
                    .get(client_id)
                    .map(|s| s.entries.range(..=*up_to).map(|(seq, _)| *seq).collect())
                    .unwrap_or_default();
                for seq in seqs {
                    let one = StoreOp::RemoveEntry {
                        client_id: client_id.clone(),
                        seq,
                    };
                    self.apply_op(&one, undo, touched)?;
                }
            }
            StoreOp::RemoveEntry { client_id, seq } => {
                let removed = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|s| s.entries.remove(seq));
                if let Some(entry) = removed {
                    self.stats.entries -= 1;
                    self.stats.bytes -= entry_bytes(client_id, *seq, &entry);
                    self.release(entry.message, undo, touched);
                    undo.push(Undo::Entry(client_id.clone(), *seq, Some(entry)));
                }
            }
            StoreOp::AddIncomingQos2 {
                client_id,
                packet_id,
            } => {
                let Some(state) = self.sessions.get_mut(client_id) else {
                    return Err(InvalidOp::UnknownSession {
                        client_id: client_id.clone(),
                    });
                };
                if state.incoming_qos2.insert(*packet_id) {
                    self.stats.incoming_qos2 += 1;
                    self.stats.bytes += qos2_bytes(client_id);
                    undo.push(Undo::Qos2(client_id.clone(), *packet_id, true));
                }
            }
            StoreOp::RemoveIncomingQos2 {
                client_id,
                packet_id,
            } => {
                let removed = self
                    .sessions
                    .get_mut(client_id)
                    .is_some_and(|s| s.incoming_qos2.remove(packet_id));
                if removed {
                    self.stats.incoming_qos2 -= 1;
                    self.stats.bytes -= qos2_bytes(client_id);
                    undo.push(Undo::Qos2(client_id.clone(), *packet_id, false));
                }
            }
            StoreOp::PutRetained(message) => {
                let old = self.retained.insert(message.topic.clone(), message.clone());
                match &old {
                    Some(old) => self.stats.bytes -= message_bytes(old),
                    None => self.stats.retained += 1,
                }
                self.stats.bytes += message_bytes(message);
                undo.push(Undo::Retained(message.topic.clone(), old));
            }
            StoreOp::DeleteRetained { topic } => {
                if let Some(old) = self.retained.remove(topic) {
                    self.stats.retained -= 1;
                    self.stats.bytes -= message_bytes(&old);
                    undo.push(Undo::Retained(topic.clone(), Some(old)));
                }
            }
            StoreOp::PutCursor { name, value } => {
                let old = self.cursors.insert(name.clone(), *value);
                if old.is_none() {
                    // The size does not depend on the value: a replacement adds nothing.
                    self.stats.cursors += 1;
                    self.stats.bytes += cursor_bytes(name);
                }
                undo.push(Undo::Cursor(name.clone(), old));
            }
            StoreOp::DeleteCursor { name } => {
                if let Some(old) = self.cursors.remove(name) {
                    self.stats.cursors -= 1;
                    self.stats.bytes -= cursor_bytes(name);
                    undo.push(Undo::Cursor(name.clone(), Some(old)));
                }
            }
        }
        Ok(())
    }

    /// Drops one reference to `id`; collection waits for the end of the batch, so a
    /// message can move between entries within one batch.
    fn release(&mut self, id: MessageId, undo: &mut Vec<Undo>, touched: &mut Vec<MessageId>) {
        // Invariant: every entry's message is stored (contract rule 7, kept by `apply`).
        let msg = self
            .messages
            .get_mut(&id)
            .expect("entry references a stored message");
        undo.push(Undo::Message(id, Some(msg.clone())));
        msg.refs -= 1;
        if msg.refs == 0 {
            touched.push(id);
        }
    }

    /// Removes the messages of `touched` that no entry references any more.
    fn collect(&mut self, touched: &[MessageId], undo: &mut Vec<Undo>) {
        for id in touched {
            if self.messages.get(id).is_some_and(|m| m.refs == 0) {
                if let Some(old) = self.messages.remove(id) {
                    self.stats.messages -= 1;
                    self.stats.bytes -= message_bytes(&old.message);
                    undo.push(Undo::Message(*id, Some(old)));
                }
            }
        }
    }

    /// Restores every key in `undo`, newest first, so each sees the state it was
    /// logged in.
    fn roll_back(&mut self, undo: Vec<Undo>, stats: StoreStats) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::SessionCreated(client_id) => {
                    self.sessions.remove(&client_id);
                }
                Undo::SessionRecord(record) => {
                    if let Some(state) = self.sessions.get_mut(&record.client_id) {
                        state.record = record;
                    }
                }
                Undo::SessionDeleted(state) => {
                    self.sessions.insert(state.record.client_id.clone(), state);
                }
                Undo::Entry(client_id, seq, old) => {
                    if let Some(state) = self.sessions.get_mut(&client_id) {
                        match old {
                            Some(entry) => state.entries.insert(seq, entry),
                            None => state.entries.remove(&seq),
                        };
                    }
                }
                Undo::Qos2(client_id, packet_id, added) => {
                    if let Some(state) = self.sessions.get_mut(&client_id) {
                        if added {
                            state.incoming_qos2.remove(&packet_id);
                        } else {
                            state.incoming_qos2.insert(packet_id);
                        }
                    }
                }
                Undo::Message(id, old) => match old {
                    Some(msg) => {
                        self.messages.insert(id, msg);
                    }
                    None => {
                        self.messages.remove(&id);
                    }
                },
                Undo::Retained(topic, old) => match old {
                    Some(msg) => {
                        self.retained.insert(topic, msg);
                    }
                    None => {
                        self.retained.remove(&topic);
                    }
                },
                Undo::Cursor(name, old) => match old {
                    Some(value) => {
                        self.cursors.insert(name, value);
                    }
                    None => {
                        self.cursors.remove(&name);
                    }
                },
            }
        }
        self.stats = stats;
    }
}

#[cfg(test)]
impl MemoryStore {
    /// Recounts everything from the maps and compares with the running totals and
    /// reference counts, after every batch of every test (rollbacks included).
    fn check_totals(&self) {
        let mut totals = StoreStats {
            sessions: self.sessions.len() as u64,
            messages: self.messages.len() as u64,
            retained: self.retained.len() as u64,
            cursors: self.cursors.len() as u64,
            ..StoreStats::default()
        };
        let mut refs: BTreeMap<MessageId, u64> = BTreeMap::new();
        for (client_id, s) in &self.sessions {
            totals.bytes += session_bytes(&s.record);
            totals.entries += s.entries.len() as u64;
            totals.incoming_qos2 += s.incoming_qos2.len() as u64;
            totals.bytes += s.incoming_qos2.len() as u64 * qos2_bytes(client_id);
            for (seq, e) in &s.entries {
                totals.bytes += entry_bytes(client_id, *seq, e);
                *refs.entry(e.message).or_default() += 1;
            }
        }
        for (id, m) in &self.messages {
            totals.bytes += message_bytes(&m.message);
            assert_eq!(
                m.refs,
                refs.get(id).copied().unwrap_or(0),
                "refcount of {id:?}"
            );
        }
        totals.bytes += self.retained.values().map(message_bytes).sum::<u64>();
        totals.bytes += self.cursors.keys().map(cursor_bytes).sum::<u64>();
        assert_eq!(self.stats, totals, "running totals drifted from the maps");
    }
}

impl Store for MemoryStore {
    fn apply(&mut self, batch: &[StoreOp]) -> Result<(), StoreError> {
        let before = self.stats;
        let mut undo = Vec::with_capacity(batch.len() * 2);
        let mut touched = Vec::new();
        for (index, op) in batch.iter().enumerate() {
            if let Err(reason) = self.apply_op(op, &mut undo, &mut touched) {
                self.roll_back(undo, before);
                return Err(StoreError::Invalid { index, reason });
            }
        }
        self.collect(&touched, &mut undo);
        if let Some(limit) = self.limits.max_bytes {
            let needed = self.stats.bytes;
            // Only growth is refused, so a full store can always be drained.
            if needed > limit && needed > before.bytes {
                self.roll_back(undo, before);
                #[cfg(test)]
                self.check_totals();
                return Err(StoreError::Full { needed, limit });
            }
        }
        #[cfg(test)]
        self.check_totals();
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            version: FORMAT_VERSION,
            sessions: self
                .sessions
                .values()
                .map(|s| SessionSnapshot {
                    record: s.record.clone(),
                    entries: s.entries.iter().map(|(seq, e)| (*seq, e.clone())).collect(),
                    incoming_qos2: s.incoming_qos2.iter().copied().collect(),
                })
                .collect(),
            messages: self
                .messages
                .iter()
                .map(|(id, m)| (*id, m.message.clone()))
                .collect(),
            retained: self.retained.values().cloned().collect(),
            cursors: self.cursors.clone(),
        })
    }

    fn stats(&self) -> StoreStats {
        self.stats
    }
}

/// Estimated encoded size of a session record.
fn session_bytes(record: &SessionRecord) -> u64 {
    let subs: u64 = record
        .subscriptions
        .iter()
        .map(|(filter, _)| filter.len() as u64 + 8)
        .sum();
    RECORD_OVERHEAD + record.client_id.len() as u64 + 16 + subs
}

/// Estimated encoded size of a message (topic, payload, properties, origin).
fn message_bytes(m: &StoredMessage) -> u64 {
    let p = &m.properties;
    let props = p.response_topic.as_ref().map_or(0, |t| t.len() as u64)
        + p.correlation_data.as_ref().map_or(0, |d| d.len() as u64)
        + p.content_type.as_ref().map_or(0, |c| c.len() as u64)
        + p.user_properties
            .iter()
            .map(|(k, v)| k.len() as u64 + v.len() as u64 + 4)
            .sum::<u64>();
    RECORD_OVERHEAD
        + 16
        + m.topic.len() as u64
        + m.payload.len() as u64
        + m.origin.len() as u64
        + props
}

/// Estimated encoded size of an entry, key included.
fn entry_bytes(client_id: &ByteString, _seq: u64, e: &EntryRecord) -> u64 {
    RECORD_OVERHEAD + client_id.len() as u64 + 8 + 16 + 4 * e.subscription_ids.len() as u64
}

/// Estimated encoded size of a cursor, name included; independent of the value.
fn cursor_bytes(name: &ByteString) -> u64 {
    RECORD_OVERHEAD + name.len() as u64 + 8
}

/// Estimated encoded size of an incoming QoS 2 id, key included.
fn qos2_bytes(client_id: &ByteString) -> u64 {
    RECORD_OVERHEAD + client_id.len() as u64 + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_conformance_tests!(MemoryStore::new);

    #[test]
    fn store_memory_runs_the_whole_suite_in_one_call() {
        super::super::conformance::run_conformance(MemoryStore::new);
    }
}
