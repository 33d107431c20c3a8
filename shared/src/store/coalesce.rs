//! Cancelling work within one merged commit group.
//!
//! A QoS 1 delivery leaves before its `Enqueue` is durable (broker/outbox.rs), so a
//! subscriber that keeps up often acknowledges it while its `Enqueue` still waits for
//! the commit thread. When the `Enqueue` and the removal of the same entry meet in one
//! group, writing both would store the entry only to delete it in the same transaction:
//! the group is applied atomically, so dropping the pair (and a message no surviving
//! entry references) leaves exactly the state the whole group would have left. This
//! saves the commit thread's B-tree work and, on a gateway, flash writes.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::StoreOp;

/// The ops of `group` without the work that cancels out within it, or `None` when
/// nothing does. Applying the result leaves the same store as applying `group`.
pub fn coalesce(group: &[StoreOp]) -> Option<Vec<StoreOp>> {
    let mut skip = vec![false; group.len()];
    // Entries enqueued in this group and not (yet) removed: client → seq → op index.
    let mut pending: HashMap<&str, BTreeMap<u64, usize>> = HashMap::new();
    let mut cancelled: HashSet<(&str, u64)> = HashSet::new();
    for (i, op) in group.iter().enumerate() {
        match op {
            StoreOp::Enqueue { client_id, seq, .. } => {
                pending.entry(client_id).or_default().insert(*seq, i);
            }
            StoreOp::RemoveEntry { client_id, seq } => {
                let enqueued = pending.get_mut(&**client_id).and_then(|p| p.remove(seq));
                if let Some(at) = enqueued {
                    skip[at] = true;
                    skip[i] = true;
                    cancelled.insert((client_id, *seq));
                }
            }
            StoreOp::RemoveEntriesUpTo { client_id, up_to } => {
                // The op stays: it also removes entries committed before this group.
                if let Some(p) = pending.get_mut(&**client_id) {
                    let later = p.split_off(&up_to.saturating_add(1));
                    for (seq, at) in std::mem::replace(p, later) {
                        skip[at] = true;
                        cancelled.insert((client_id, seq));
                    }
                }
            }
            StoreOp::DeleteSession { client_id } => {
                // It removes the session's entries itself; keep what came before as is.
                pending.remove(&**client_id);
            }
            _ => {}
        }
    }
    if cancelled.is_empty() {
        return None;
    }
    // Messages put in this group that no kept entry references are dropped with them.
    let mut referenced = HashSet::new();
    let mut orphaned = HashSet::new();
    for (i, op) in group.iter().enumerate() {
        match op {
            StoreOp::UpdateEntry { client_id, seq, .. }
                if cancelled.contains(&(&**client_id, *seq)) =>
            {
                skip[i] = true;
            }
            StoreOp::Enqueue { entry, .. } if skip[i] => {
                orphaned.insert(entry.message);
            }
            StoreOp::Enqueue { entry, .. } => {
                referenced.insert(entry.message);
            }
            _ => {}
        }
    }
    let kept = group.iter().zip(&skip).filter(|&(op, &skipped)| {
        let unreferenced = matches!(op, StoreOp::PutMessage { id, .. }
            if orphaned.contains(id) && !referenced.contains(id));
        !skipped && !unreferenced
    });
    Some(kept.map(|(op, _)| op.clone()).collect())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use bytestring::ByteString;

    use super::*;
    use crate::message::QoS;
    use crate::mqtt::packet::ProtocolVersion;
    use crate::store::{
        EntryRecord, EntryState, MemoryStore, MessageId, SessionRecord, Store, StoredMessage,
        StoredProperties,
    };

    fn message(id: u64) -> StoreOp {
        StoreOp::PutMessage {
            id: MessageId(id),
            message: StoredMessage {
                topic: ByteString::from("t"),
                payload: Bytes::from(format!("m{id}")),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: StoredProperties::default(),
                expires_at: None,
                origin: ByteString::from("p"),
            },
        }
    }

    fn enqueue(client: &str, seq: u64, message: u64) -> StoreOp {
        StoreOp::Enqueue {
            client_id: ByteString::from(client),
            seq,
            entry: EntryRecord {
                message: MessageId(message),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                state: EntryState::Queued,
            },
        }
    }

    fn remove(client: &str, seq: u64) -> StoreOp {
        StoreOp::RemoveEntry {
            client_id: ByteString::from(client),
            seq,
        }
    }

    fn update(client: &str, seq: u64) -> StoreOp {
        StoreOp::UpdateEntry {
            client_id: ByteString::from(client),
            seq,
            state: EntryState::AwaitPubAck { packet_id: 1 },
        }
    }

    fn up_to(client: &str, up_to: u64) -> StoreOp {
        StoreOp::RemoveEntriesUpTo {
            client_id: ByteString::from(client),
            up_to,
        }
    }

    fn store_with_sessions() -> MemoryStore {
        let mut store = MemoryStore::default();
        let sessions: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|c| {
                StoreOp::PutSession(SessionRecord {
                    client_id: ByteString::from(c),
                    protocol: ProtocolVersion::V311,
                    expiry_interval: 60,
                    expires_at: None,
                    subscriptions: Vec::new(),
                })
            })
            .collect();
        store.apply(&sessions).expect("sessions");
        store
    }

    /// Applies `before` and then `group` once as is and once coalesced: same store.
    fn same_outcome(before: &[StoreOp], group: &[StoreOp]) -> Option<Vec<StoreOp>> {
        let mut plain = store_with_sessions();
        let mut merged = store_with_sessions();
        plain.apply(before).expect("before");
        merged.apply(before).expect("before");
        plain.apply(group).expect("group");
        let coalesced = coalesce(group);
        merged
            .apply(coalesced.as_deref().unwrap_or(group))
            .expect("coalesced group");
        assert_eq!(plain.load().ok(), merged.load().ok());
        assert_eq!(plain.stats(), merged.stats());
        coalesced
    }

    #[test]
    fn an_entry_enqueued_and_removed_in_one_group_is_never_written() {
        let group = [
            message(1),
            enqueue("a", 1, 1),
            message(2),
            enqueue("a", 2, 2),
            update("a", 1),
            remove("a", 1),
        ];
        let kept = same_outcome(&[], &group).expect("something cancels");
        assert_eq!(kept, [message(2), enqueue("a", 2, 2)]);
    }

    #[test]
    fn a_message_stays_while_another_session_still_holds_it() {
        let group = [
            message(1),
            enqueue("a", 1, 1),
            enqueue("b", 1, 1),
            remove("a", 1),
        ];
        let kept = same_outcome(&[], &group).expect("a's entry cancels");
        assert_eq!(kept, [message(1), enqueue("b", 1, 1)]);
    }

    #[test]
    fn a_range_removal_cancels_what_it_covers_and_stays_for_older_entries() {
        let before = [message(1), enqueue("a", 1, 1)];
        let group = [
            message(2),
            enqueue("a", 2, 2),
            message(3),
            enqueue("a", 3, 3),
            up_to("a", 2),
        ];
        let kept = same_outcome(&before, &group).expect("seq 2 cancels");
        assert_eq!(kept, [message(3), enqueue("a", 3, 3), up_to("a", 2)]);
    }

    #[test]
    fn removals_of_entries_from_earlier_groups_and_deleted_sessions_stay() {
        let before = [message(1), enqueue("a", 1, 1)];
        assert_eq!(same_outcome(&before, &[remove("a", 1)]), None);
        let group = [
            message(2),
            enqueue("b", 1, 2),
            StoreOp::DeleteSession {
                client_id: ByteString::from("b"),
            },
            remove("b", 1),
        ];
        assert_eq!(same_outcome(&before, &group), None);
    }

    /// Broker-like traffic for two sessions (fan-out, deliveries, in-order and
    /// out-of-order acks, range acks), cut into two groups at every message: coalescing
    /// never changes what the store holds.
    #[test]
    fn random_traffic_cut_anywhere_ends_in_the_same_store() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut ops = Vec::new();
        let mut live: Vec<(&str, u64)> = Vec::new();
        let mut seq = [0u64; 2];
        // A message and its entries share a broker batch: groups start at a message.
        let mut cuts = Vec::new();
        for id in 1..=60u64 {
            cuts.push(ops.len());
            ops.push(message(id));
            for (s, client) in ["a", "b"].into_iter().enumerate() {
                if s == 0 || next(2) == 0 {
                    seq[s] += 1;
                    ops.push(enqueue(client, seq[s], id));
                    live.push((client, seq[s]));
                }
            }
            match next(4) {
                0 if !live.is_empty() => {
                    let (client, seq) = live.remove(next(live.len() as u64) as usize);
                    ops.push(update(client, seq));
                    ops.push(remove(client, seq));
                }
                1 => {
                    let cut = seq[1].saturating_sub(next(3));
                    ops.push(up_to("b", cut));
                    live.retain(|&(c, s)| c != "b" || s > cut);
                }
                _ => {}
            }
        }
        let cancelling = cuts
            .iter()
            .filter(|&&cut| same_outcome(&ops[..cut], &ops[cut..]).is_some())
            .count();
        assert!(cancelling > 0, "the traffic exercises cancellation");
    }
}
