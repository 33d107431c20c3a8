//! The conformance suite every [`Store`] must pass: one case per rule of the contract
//! in [`crate::store`], plus a seeded random run against a trivial model.
//!
//! It is compiled for this crate's own tests and, for implementations in other crates
//! (a crash-injecting wrapper in `tests/`, say), behind the `conformance` cargo
//! feature; normal builds do not carry it. Using it:
//!
//! - `store_conformance_tests!(factory)` inside a `#[cfg(test)]` module generates one
//!   `#[test]` per case (so a failure names its case), where `factory` is a
//!   [`StoreFactory`], e.g. `MemoryStore::new`;
//! - or [`run_conformance`] runs every case in one call.
//!
//! A durable implementation gives a factory whose [`StoreFactory::reopen`] closes the
//! store and opens the same files again: the cases then also check that what `load`
//! returns survives a reopen. Cases panic (they are tests) with the rule they check.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use bytestring::ByteString;

use super::{
    CompactionPolicy, EntryRecord, EntryState, InvalidOp, MessageId, SessionRecord,
    SessionSnapshot, Snapshot, Store, StoreError, StoreLimits, StoreOp, StoreStats, StoredMessage,
    StoredProperties, SubscriptionRecord,
};
use crate::message::QoS;
use crate::mqtt::packet::{ProtocolVersion, RetainHandling};

/// Makes the stores the cases run against.
pub trait StoreFactory {
    /// The implementation under test.
    type Store: Store;

    /// A new, empty store enforcing `limits`.
    fn create(&mut self, limits: StoreLimits) -> Self::Store;

    /// Closes `store` and opens it again from where it keeps its data; a store
    /// without persistence returns it unchanged.
    fn reopen(&mut self, store: Self::Store) -> Self::Store {
        store
    }
}

/// Any `FnMut(StoreLimits) -> S` is a factory of stores that are not reopened.
impl<S: Store, F: FnMut(StoreLimits) -> S> StoreFactory for F {
    type Store = S;

    fn create(&mut self, limits: StoreLimits) -> S {
        self(limits)
    }
}

/// Generates one `#[test]` per conformance case for a [`StoreFactory`] expression,
/// inside a module `store_conformance` (use it in a `#[cfg(test)]` module).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            empty_store,
            put_session_creates_and_replaces,
            delete_session_cascades,
            deletes_are_idempotent,
            messages_live_while_referenced,
            message_may_move_between_entries_in_a_batch,
            entries_load_in_sequence_order,
            remove_entries_up_to,
            enqueue_validation,
            update_entry,
            incoming_qos2,
            retained,
            failed_batch_changes_nothing,
            first_failing_op_is_reported,
            budget_refuses_growth_and_allows_draining,
            records_round_trip_exactly,
            reopen_keeps_everything,
            cursors_put_replace_delete,
            cursor_ops_are_atomic_with_their_batch,
            cursors_survive_reopen,
            cursors_in_the_budget,
            reclaim_space_keeps_everything,
            random_against_model,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $case() {
                    $crate::store::conformance::$case(&mut ($factory));
                }
            )*

            #[test]
            fn covers_every_case() {
                let generated: &[&str] = &[$(stringify!($case)),*];
                assert_eq!(generated, $crate::store::conformance::CASE_NAMES);
            }
        }
    };
}

/// Defines [`run_conformance`] and [`CASE_NAMES`] from one list so they cannot drift.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        /// Runs every case against stores from `factory`, in the order of [`CASE_NAMES`].
        pub fn run_conformance<F: StoreFactory>(mut factory: F) {
            $( $case(&mut factory); )*
        }

        /// The cases, by name, in the order [`run_conformance`] runs them.
        pub const CASE_NAMES: &[&str] = &[$(stringify!($case)),*];
    };
}

suite!(
    empty_store,
    put_session_creates_and_replaces,
    delete_session_cascades,
    deletes_are_idempotent,
    messages_live_while_referenced,
    message_may_move_between_entries_in_a_batch,
    entries_load_in_sequence_order,
    remove_entries_up_to,
    enqueue_validation,
    update_entry,
    incoming_qos2,
    retained,
    failed_batch_changes_nothing,
    first_failing_op_is_reported,
    budget_refuses_growth_and_allows_draining,
    records_round_trip_exactly,
    reopen_keeps_everything,
    cursors_put_replace_delete,
    cursor_ops_are_atomic_with_their_batch,
    cursors_survive_reopen,
    cursors_in_the_budget,
    reclaim_space_keeps_everything,
    random_against_model,
);

// ---------------------------------------------------------------------------------
// Record builders: every field set, and varied by `n`, so an encoding that forgets a
// field or mixes two up fails the round trip.
// ---------------------------------------------------------------------------------

/// A client id for `n`.
fn cid(n: u64) -> ByteString {
    ByteString::from(format!("client-{n}"))
}

/// A session for `client` with `n` subscriptions covering every option.
fn session(client: &ByteString, n: u64) -> SessionRecord {
    let handling = [
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ];
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    SessionRecord {
        client_id: client.clone(),
        protocol: if n.is_multiple_of(2) {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        expiry_interval: (n as u32).wrapping_mul(7919),
        expires_at: (!n.is_multiple_of(3)).then_some(1_700_000_000_000 + n),
        subscriptions: (0..n)
            .map(|i| {
                let filter = match i % 3 {
                    0 => format!("sensors/{i}/+"),
                    1 => format!("$share/g{i}/cmd/#"),
                    _ => format!("a/b/{i}"),
                };
                let rec = SubscriptionRecord {
                    qos: qos[(i % 3) as usize],
                    no_local: i.is_multiple_of(2),
                    retain_as_published: i % 4 < 2,
                    retain_handling: handling[((i + n) % 3) as usize],
                    identifier: (!i.is_multiple_of(5)).then_some(i as u32 + 1),
                };
                (ByteString::from(filter), rec)
            })
            .collect(),
    }
}

/// A message for `n` with `payload_len` bytes of payload.
fn message(n: u64, payload_len: usize) -> StoredMessage {
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    StoredMessage {
        topic: ByteString::from(format!("topic/{}", n % 5)),
        payload: Bytes::from(
            (0..payload_len)
                .map(|i| (i as u64 ^ n) as u8)
                .collect::<Vec<u8>>(),
        ),
        qos: qos[(n % 3) as usize],
        retain: n % 2 == 1,
        properties: StoredProperties {
            payload_format_indicator: (n % 3 != 2).then_some((n % 2) as u8),
            response_topic: n
                .is_multiple_of(2)
                .then(|| ByteString::from(format!("reply/{n}"))),
            correlation_data: n
                .is_multiple_of(3)
                .then(|| Bytes::from(n.to_be_bytes().to_vec())),
            user_properties: (0..n % 4)
                .map(|i| {
                    (
                        ByteString::from(format!("k{i}")),
                        ByteString::from(format!("v{n}")),
                    )
                })
                .collect(),
            content_type: (n % 4 == 1).then(|| ByteString::from("application/json")),
        },
        expires_at: n.is_multiple_of(2).then_some(1_800_000_000_000 + n),
        origin: ByteString::from(format!("publisher-{}", n % 3)),
    }
}

/// An entry pointing at `id`, queued.
fn entry(id: u64) -> EntryRecord {
    EntryRecord {
        message: MessageId(id),
        qos: if id.is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        },
        retain: id.is_multiple_of(3),
        subscription_ids: (0..id % 3).map(|i| i as u32 + 10).collect(),
        state: EntryState::Queued,
    }
}

fn put_session(client: &ByteString, n: u64) -> StoreOp {
    StoreOp::PutSession(session(client, n))
}

fn put_message(id: u64) -> StoreOp {
    StoreOp::PutMessage {
        id: MessageId(id),
        message: message(id, 16),
    }
}

fn enqueue(client: &ByteString, seq: u64, id: u64) -> StoreOp {
    StoreOp::Enqueue {
        client_id: client.clone(),
        seq,
        entry: entry(id),
    }
}

fn remove_entry(client: &ByteString, seq: u64) -> StoreOp {
    StoreOp::RemoveEntry {
        client_id: client.clone(),
        seq,
    }
}

fn put_cursor(name: &str, value: u64) -> StoreOp {
    StoreOp::PutCursor {
        name: ByteString::from(name),
        value,
    }
}

fn delete_cursor(name: &str) -> StoreOp {
    StoreOp::DeleteCursor {
        name: ByteString::from(name),
    }
}

/// The cursors of a snapshot as (name, value) pairs, in load order.
fn cursor_list(snap: &Snapshot) -> Vec<(&str, u64)> {
    snap.cursors.iter().map(|(n, v)| (&n[..], *v)).collect()
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// Applies a batch that the case expects to succeed.
fn ok<S: Store>(store: &mut S, batch: &[StoreOp], what: &str) {
    if let Err(e) = store.apply(batch) {
        panic!("{what}: apply failed: {e}");
    }
}

/// Loads, failing the case on error.
fn load<S: Store>(store: &S) -> Snapshot {
    match store.load() {
        Ok(snap) => snap,
        Err(e) => panic!("load failed: {e}"),
    }
}

/// Applies a batch the case expects to be refused with `Invalid { index, reason }`.
fn refused<S: Store>(store: &mut S, batch: &[StoreOp], index: usize, reason: InvalidOp) {
    match store.apply(batch) {
        Err(StoreError::Invalid {
            index: i,
            reason: r,
        }) => {
            assert_eq!((i, &r), (index, &reason), "wrong op or reason reported")
        }
        Err(e) => panic!("expected Invalid {{ {index}, {reason} }}, got {e}"),
        Ok(()) => panic!("expected Invalid {{ {index}, {reason} }}, batch was applied"),
    }
}

/// The counts of `stats` (bytes are implementation-defined).
fn counts(s: StoreStats) -> [u64; 6] {
    [
        s.sessions,
        s.entries,
        s.messages,
        s.retained,
        s.incoming_qos2,
        s.cursors,
    ]
}

/// The counts a snapshot implies.
fn snapshot_counts(snap: &Snapshot) -> [u64; 6] {
    [
        snap.sessions.len() as u64,
        snap.sessions.iter().map(|s| s.entries.len() as u64).sum(),
        snap.messages.len() as u64,
        snap.retained.len() as u64,
        snap.sessions
            .iter()
            .map(|s| s.incoming_qos2.len() as u64)
            .sum(),
        snap.cursors.len() as u64,
    ]
}

/// Checks the invariants every loaded snapshot has, whatever led to it.
fn check_invariants(snap: &Snapshot, stats: StoreStats) {
    assert_eq!(snap.version, super::FORMAT_VERSION, "format version");
    assert_eq!(
        counts(stats),
        snapshot_counts(snap),
        "stats counts agree with load"
    );
    let ids: Vec<_> = snap.sessions.iter().map(|s| &s.record.client_id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "sessions sorted by client id, unique"
    );
    let topics: Vec<_> = snap.retained.iter().map(|m| &m.topic).collect();
    assert!(
        topics.windows(2).all(|w| w[0] < w[1]),
        "retained sorted by topic, unique"
    );
    let mut referenced = BTreeSet::new();
    for s in &snap.sessions {
        assert!(
            s.entries.windows(2).all(|w| w[0].0 < w[1].0),
            "entries in sequence order"
        );
        assert!(
            s.incoming_qos2.windows(2).all(|w| w[0] < w[1]),
            "qos2 ids ascending"
        );
        for (_, e) in &s.entries {
            assert!(
                snap.message(e.message).is_some(),
                "entry's message {:?} stored",
                e.message
            );
            referenced.insert(e.message);
        }
    }
    assert!(
        snap.messages.windows(2).all(|w| w[0].0 < w[1].0),
        "messages by ascending id, unique"
    );
    let stored: BTreeSet<_> = snap.messages.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        stored, referenced,
        "exactly the referenced messages are stored"
    );
}

/// Loads, checks the invariants and returns the snapshot.
fn checked<S: Store>(store: &S) -> Snapshot {
    let snap = load(store);
    check_invariants(&snap, store.stats());
    snap
}

fn session_of<'a>(snap: &'a Snapshot, client: &ByteString) -> Option<&'a SessionSnapshot> {
    snap.sessions.iter().find(|s| s.record.client_id == *client)
}

fn seqs(snap: &Snapshot, client: &ByteString) -> Vec<u64> {
    session_of(snap, client)
        .map(|s| s.entries.iter().map(|(q, _)| *q).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------

/// A new store loads empty, at the current format version.
pub fn empty_store<F: StoreFactory>(factory: &mut F) {
    let store = factory.create(StoreLimits::default());
    let snap = checked(&store);
    assert_eq!(snap, Snapshot::empty());
    assert_eq!(counts(store.stats()), [0; 6]);
    let mut store = store;
    ok(&mut store, &[], "an empty batch");
    assert_eq!(checked(&store), Snapshot::empty());
}

/// PutSession creates, then replaces the record (subscriptions included) and keeps
/// the session's entries and incoming QoS 2 ids.
pub fn put_session_creates_and_replaces<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let c = cid(1);
    ok(&mut store, &[put_session(&c, 3)], "create");
    assert_eq!(checked(&store).sessions[0].record, session(&c, 3));

    let q2 = StoreOp::AddIncomingQos2 {
        client_id: c.clone(),
        packet_id: 9,
    };
    ok(&mut store, &[put_message(1), enqueue(&c, 1, 1), q2], "fill");
    ok(&mut store, &[put_session(&c, 1)], "replace");
    let snap = checked(&store);
    assert_eq!(snap.sessions.len(), 1);
    assert_eq!(
        snap.sessions[0].record,
        session(&c, 1),
        "record replaced, subscriptions too"
    );
    assert_eq!(seqs(&snap, &c), vec![1], "entries kept");
    assert_eq!(snap.sessions[0].incoming_qos2, vec![9], "qos2 ids kept");

    ok(&mut store, &[put_session(&c, 0)], "no subscriptions");
    assert!(checked(&store).sessions[0].record.subscriptions.is_empty());
}

/// DeleteSession removes the session, its entries and QoS 2 ids, and the messages only
/// it referenced; other sessions and shared messages are untouched.
pub fn delete_session_cascades<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b) = (cid(1), cid(2));
    let setup = [
        put_session(&a, 2),
        put_session(&b, 2),
        put_message(10),
        put_message(11),
        enqueue(&a, 1, 10),
        enqueue(&a, 2, 11),
        enqueue(&b, 1, 11),
        StoreOp::AddIncomingQos2 {
            client_id: a.clone(),
            packet_id: 1,
        },
        StoreOp::AddIncomingQos2 {
            client_id: b.clone(),
            packet_id: 1,
        },
    ];
    ok(&mut store, &setup, "setup");
    ok(
        &mut store,
        &[StoreOp::DeleteSession {
            client_id: a.clone(),
        }],
        "delete a",
    );
    let snap = checked(&store);
    assert!(session_of(&snap, &a).is_none(), "session gone");
    let sb = session_of(&snap, &b).expect("other session kept");
    assert_eq!(sb.entries, vec![(1, entry(11))]);
    assert_eq!(sb.incoming_qos2, vec![1]);
    assert_eq!(
        snap.messages.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![MessageId(11)],
        "only a's message collected"
    );

    // Recreating the session starts empty: nothing of the old one comes back.
    ok(&mut store, &[put_session(&a, 0)], "recreate a");
    let snap = checked(&store);
    let sa = session_of(&snap, &a).expect("recreated");
    assert!(
        sa.entries.is_empty() && sa.incoming_qos2.is_empty(),
        "no leftovers"
    );
}

/// Deleting what is absent succeeds and changes nothing, also twice in one batch.
pub fn deletes_are_idempotent<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, ghost) = (cid(1), cid(99));
    ok(
        &mut store,
        &[
            put_session(&a, 1),
            put_message(1),
            enqueue(&a, 1, 1),
            StoreOp::PutRetained(message(3, 4)),
            put_cursor("kept", 3),
        ],
        "setup",
    );
    let before = checked(&store);
    let stats = store.stats();
    let absent = [
        StoreOp::DeleteSession {
            client_id: ghost.clone(),
        },
        remove_entry(&ghost, 1),
        remove_entry(&a, 2),
        StoreOp::RemoveIncomingQos2 {
            client_id: a.clone(),
            packet_id: 5,
        },
        StoreOp::RemoveIncomingQos2 {
            client_id: ghost.clone(),
            packet_id: 5,
        },
        StoreOp::DeleteRetained {
            topic: "no/such/topic".into(),
        },
        delete_cursor("no/such/cursor"),
        delete_cursor(""),
    ];
    ok(&mut store, &absent, "deletes of absent things");
    assert_eq!(checked(&store), before, "nothing changed");
    assert_eq!(counts(store.stats()), counts(stats));

    let twice = [
        remove_entry(&a, 1),
        remove_entry(&a, 1),
        StoreOp::DeleteSession {
            client_id: a.clone(),
        },
        StoreOp::DeleteSession {
            client_id: a.clone(),
        },
        delete_cursor("kept"),
        delete_cursor("kept"),
    ];
    ok(&mut store, &twice, "deletes repeated");
    ok(&mut store, &twice, "deletes replayed");
    let snap = checked(&store);
    assert!(snap.sessions.is_empty() && snap.messages.is_empty());
    assert!(snap.cursors.is_empty());
    assert_eq!(snap.retained.len(), 1);
}

/// A message lives while an entry references it; an unreferenced put is not kept; a
/// live id cannot be put again.
pub fn messages_live_while_referenced<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b) = (cid(1), cid(2));
    ok(
        &mut store,
        &[put_session(&a, 0), put_session(&b, 0)],
        "sessions",
    );
    ok(&mut store, &[put_message(7)], "unreferenced put");
    assert!(
        checked(&store).messages.is_empty(),
        "unreferenced message not stored"
    );

    ok(
        &mut store,
        &[put_message(7), enqueue(&a, 1, 7), enqueue(&b, 1, 7)],
        "shared",
    );
    assert_eq!(checked(&store).message(MessageId(7)), Some(&message(7, 16)));
    refused(
        &mut store,
        &[put_message(7)],
        0,
        InvalidOp::DuplicateMessage { id: MessageId(7) },
    );

    ok(&mut store, &[remove_entry(&a, 1)], "one reference left");
    assert!(checked(&store).message(MessageId(7)).is_some());
    ok(&mut store, &[remove_entry(&b, 1)], "no reference left");
    assert!(
        checked(&store).messages.is_empty(),
        "collected with its last entry"
    );

    // The id is free again once collected.
    ok(
        &mut store,
        &[put_message(7), enqueue(&a, 2, 7)],
        "id reused",
    );
    assert_eq!(checked(&store).messages.len(), 1);
}

/// Collection waits for the end of the batch: removing the last entry and enqueueing
/// the same message elsewhere in one batch keeps it.
pub fn message_may_move_between_entries_in_a_batch<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b) = (cid(1), cid(2));
    ok(
        &mut store,
        &[
            put_session(&a, 0),
            put_session(&b, 0),
            put_message(5),
            enqueue(&a, 1, 5),
        ],
        "setup",
    );
    ok(
        &mut store,
        &[remove_entry(&a, 1), enqueue(&b, 4, 5)],
        "move",
    );
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &a), Vec::<u64>::new());
    assert_eq!(seqs(&snap, &b), vec![4]);
    assert!(snap.message(MessageId(5)).is_some(), "message kept");

    // Deleting the session and re-enqueueing the message elsewhere, same thing.
    ok(
        &mut store,
        &[
            StoreOp::DeleteSession {
                client_id: b.clone(),
            },
            enqueue(&a, 9, 5),
        ],
        "cascade then move",
    );
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &a), vec![9]);
    assert!(snap.message(MessageId(5)).is_some());
}

/// Entries load by ascending sequence whatever the order they were enqueued in,
/// including sequences at the ends of the range.
pub fn entries_load_in_sequence_order<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let a = cid(1);
    // The message is put with its first entry: alone it would be collected.
    let first = [put_session(&a, 0), put_message(1), enqueue(&a, 300, 1)];
    ok(&mut store, &first, "first");
    ok(&mut store, &[enqueue(&a, 2, 1)], "first");
    ok(
        &mut store,
        &[
            enqueue(&a, u64::MAX, 1),
            enqueue(&a, 0, 1),
            enqueue(&a, 256, 1),
        ],
        "second",
    );
    ok(&mut store, &[enqueue(&a, 1, 1)], "third");
    assert_eq!(
        seqs(&checked(&store), &a),
        vec![0, 1, 2, 256, 300, u64::MAX]
    );

    // Sessions whose ids share prefixes keep their entries apart.
    let (ab, abc) = (ByteString::from("ab"), ByteString::from("abc"));
    let b = ByteString::from("a");
    ok(
        &mut store,
        &[
            put_session(&b, 0),
            put_session(&ab, 0),
            put_session(&abc, 0),
        ],
        "prefix sessions",
    );
    ok(
        &mut store,
        &[enqueue(&abc, 1, 1), enqueue(&b, 3, 1), enqueue(&ab, 2, 1)],
        "prefix entries",
    );
    ok(
        &mut store,
        &[StoreOp::DeleteSession {
            client_id: ab.clone(),
        }],
        "delete the middle one",
    );
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &b), vec![3]);
    assert_eq!(seqs(&snap, &abc), vec![1]);
    assert_eq!(seqs(&snap, &a), vec![0, 1, 2, 256, 300, u64::MAX]);
}

/// A cumulative removal takes exactly the session's entries up to its sequence (not
/// another session's, also with a prefix id), releases their messages, and is a no-op
/// for an absent session or range.
pub fn remove_entries_up_to<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, ab) = (cid(1), ByteString::from(format!("{}b", cid(1))));
    let mut batch = vec![put_session(&a, 0), put_session(&ab, 0)];
    for (seq, id) in [(1, 1), (2, 2), (5, 3), (9, 4)] {
        batch.push(put_message(id));
        batch.push(enqueue(&a, seq, id));
    }
    batch.push(enqueue(&ab, 1, 4));
    ok(&mut store, &batch, "setup");
    let up_to = |client: &ByteString, up_to: u64| StoreOp::RemoveEntriesUpTo {
        client_id: client.clone(),
        up_to,
    };
    ok(&mut store, &[up_to(&a, 5)], "cumulative removal");
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &a), vec![9]);
    assert_eq!(
        seqs(&snap, &ab),
        vec![1],
        "a prefix session keeps its entries"
    );
    assert_eq!(
        snap.messages.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
        vec![4],
        "messages of removed entries are collected"
    );
    let before = store.stats();
    ok(&mut store, &[up_to(&a, 5), up_to(&cid(7), 100)], "no-ops");
    assert_eq!(store.stats(), before);
    ok(
        &mut store,
        &[up_to(&a, u64::MAX), up_to(&ab, 1)],
        "the rest",
    );
    let snap = checked(&store);
    assert!(seqs(&snap, &a).is_empty() && seqs(&snap, &ab).is_empty());
    assert!(snap.messages.is_empty());
}

/// Enqueue needs a stored session and message and a free sequence.
pub fn enqueue_validation<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, ghost) = (cid(1), cid(99));
    ok(
        &mut store,
        &[put_session(&a, 0), put_message(1), enqueue(&a, 1, 1)],
        "setup",
    );
    refused(
        &mut store,
        &[enqueue(&ghost, 1, 1)],
        0,
        InvalidOp::UnknownSession {
            client_id: ghost.clone(),
        },
    );
    refused(
        &mut store,
        &[enqueue(&a, 2, 2)],
        0,
        InvalidOp::UnknownMessage { id: MessageId(2) },
    );
    refused(
        &mut store,
        &[enqueue(&a, 1, 1)],
        0,
        InvalidOp::DuplicateEntry {
            client_id: a.clone(),
            seq: 1,
        },
    );
    refused(
        &mut store,
        &[StoreOp::AddIncomingQos2 {
            client_id: ghost.clone(),
            packet_id: 1,
        }],
        0,
        InvalidOp::UnknownSession { client_id: ghost },
    );
    // A session deleted earlier in the batch no longer exists for later ops.
    refused(
        &mut store,
        &[
            StoreOp::DeleteSession {
                client_id: a.clone(),
            },
            enqueue(&a, 5, 1),
        ],
        1,
        InvalidOp::UnknownSession {
            client_id: a.clone(),
        },
    );
    assert_eq!(
        seqs(&checked(&store), &a),
        vec![1],
        "refusals changed nothing"
    );
}

/// UpdateEntry changes only the state, to any state; an absent entry is refused.
pub fn update_entry<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let a = cid(1);
    ok(
        &mut store,
        &[
            put_session(&a, 0),
            put_message(2),
            enqueue(&a, 1, 2),
            enqueue(&a, 2, 2),
        ],
        "setup",
    );
    let states = [
        EntryState::AwaitPubAck { packet_id: 1 },
        EntryState::AwaitPubRec { packet_id: 65535 },
        EntryState::AwaitPubComp { packet_id: 65535 },
        EntryState::Queued,
        EntryState::AwaitPubRec { packet_id: 7 },
    ];
    for state in states {
        ok(
            &mut store,
            &[StoreOp::UpdateEntry {
                client_id: a.clone(),
                seq: 2,
                state,
            }],
            "update",
        );
        let snap = checked(&store);
        let entries = &session_of(&snap, &a).expect("session").entries;
        assert_eq!(
            entries[1],
            (2, EntryRecord { state, ..entry(2) }),
            "only the state changed"
        );
        assert_eq!(entries[0], (1, entry(2)), "other entry untouched");
        assert_eq!(state.packet_id(), entries[1].1.state.packet_id());
    }
    let bad = StoreOp::UpdateEntry {
        client_id: a.clone(),
        seq: 3,
        state: EntryState::Queued,
    };
    refused(
        &mut store,
        &[bad],
        0,
        InvalidOp::UnknownEntry {
            client_id: a.clone(),
            seq: 3,
        },
    );
    let ghost = StoreOp::UpdateEntry {
        client_id: cid(9),
        seq: 1,
        state: EntryState::Queued,
    };
    refused(
        &mut store,
        &[ghost],
        0,
        InvalidOp::UnknownEntry {
            client_id: cid(9),
            seq: 1,
        },
    );
    let removed = [
        remove_entry(&a, 1),
        StoreOp::UpdateEntry {
            client_id: a.clone(),
            seq: 1,
            state: EntryState::Queued,
        },
    ];
    refused(
        &mut store,
        &removed,
        1,
        InvalidOp::UnknownEntry {
            client_id: a.clone(),
            seq: 1,
        },
    );
}

/// Incoming QoS 2 ids behave as a set per session.
pub fn incoming_qos2<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b) = (cid(1), cid(2));
    let add = |c: &ByteString, packet_id| StoreOp::AddIncomingQos2 {
        client_id: c.clone(),
        packet_id,
    };
    let remove = |c: &ByteString, packet_id| StoreOp::RemoveIncomingQos2 {
        client_id: c.clone(),
        packet_id,
    };
    ok(
        &mut store,
        &[put_session(&a, 0), put_session(&b, 0)],
        "sessions",
    );
    ok(
        &mut store,
        &[add(&a, 65535), add(&a, 1), add(&a, 300), add(&b, 1)],
        "add",
    );
    ok(&mut store, &[add(&a, 1)], "add again");
    let snap = checked(&store);
    assert_eq!(
        session_of(&snap, &a).map(|s| s.incoming_qos2.clone()),
        Some(vec![1, 300, 65535])
    );
    assert_eq!(
        session_of(&snap, &b).map(|s| s.incoming_qos2.clone()),
        Some(vec![1])
    );
    ok(
        &mut store,
        &[remove(&a, 300), remove(&a, 300), remove(&b, 2)],
        "remove",
    );
    let snap = checked(&store);
    assert_eq!(
        session_of(&snap, &a).map(|s| s.incoming_qos2.clone()),
        Some(vec![1, 65535])
    );
    assert_eq!(
        session_of(&snap, &b).map(|s| s.incoming_qos2.clone()),
        Some(vec![1])
    );
    assert_eq!(store.stats().incoming_qos2, 3);
}

/// Retained messages: one per topic, replaced by a put, cleared by a delete.
pub fn retained<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let mut m1 = message(1, 10);
    m1.topic = "x/1".into();
    let mut m2 = message(2, 0);
    m2.topic = "x/2".into();
    let mut m1b = message(3, 30);
    m1b.topic = "x/1".into();
    ok(
        &mut store,
        &[
            StoreOp::PutRetained(m2.clone()),
            StoreOp::PutRetained(m1.clone()),
        ],
        "put",
    );
    assert_eq!(
        checked(&store).retained,
        vec![m1.clone(), m2.clone()],
        "sorted by topic"
    );
    ok(&mut store, &[StoreOp::PutRetained(m1b.clone())], "replace");
    assert_eq!(checked(&store).retained, vec![m1b, m2.clone()]);
    ok(
        &mut store,
        &[StoreOp::DeleteRetained {
            topic: "x/1".into(),
        }],
        "delete",
    );
    assert_eq!(checked(&store).retained, vec![m2]);
    assert_eq!(store.stats().retained, 1);
    assert!(
        checked(&store).messages.is_empty(),
        "retained messages are not entry messages"
    );
}

/// A batch whose last op is refused leaves nothing of its earlier ops, of any kind,
/// and the store stays usable.
pub fn failed_batch_changes_nothing<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b, c) = (cid(1), cid(2), cid(3));
    let setup = [
        put_session(&a, 2),
        put_session(&b, 1),
        put_message(1),
        put_message(2),
        enqueue(&a, 1, 1),
        enqueue(&a, 2, 2),
        enqueue(&b, 1, 2),
        StoreOp::AddIncomingQos2 {
            client_id: a.clone(),
            packet_id: 4,
        },
        StoreOp::PutRetained(message(8, 8)),
        put_cursor("outbox/0", 10),
        put_cursor("inbox/0", 20),
    ];
    ok(&mut store, &setup, "setup");
    let before = checked(&store);
    let stats = store.stats();

    let everything = vec![
        put_cursor("outbox/0", 11),
        delete_cursor("inbox/0"),
        put_cursor("outbox/1", 1),
        put_session(&a, 5),
        put_session(&c, 1),
        put_message(3),
        enqueue(&c, 1, 3),
        enqueue(&a, 3, 1),
        StoreOp::UpdateEntry {
            client_id: a.clone(),
            seq: 1,
            state: EntryState::AwaitPubAck { packet_id: 1 },
        },
        remove_entry(&a, 2),
        remove_entry(&b, 1),
        StoreOp::AddIncomingQos2 {
            client_id: a.clone(),
            packet_id: 5,
        },
        StoreOp::RemoveIncomingQos2 {
            client_id: a.clone(),
            packet_id: 4,
        },
        StoreOp::PutRetained(message(9, 1)),
        StoreOp::DeleteRetained {
            topic: message(8, 8).topic,
        },
        StoreOp::DeleteSession {
            client_id: b.clone(),
        },
        StoreOp::DeleteSession {
            client_id: a.clone(),
        },
    ];
    let failing = [
        enqueue(&cid(42), 1, 1),
        put_message(1),
        StoreOp::UpdateEntry {
            client_id: a.clone(),
            seq: 99,
            state: EntryState::Queued,
        },
    ];
    for last in failing {
        let mut batch = everything.clone();
        batch.push(last);
        let index = batch.len() - 1;
        match store.apply(&batch) {
            Err(StoreError::Invalid { index: i, .. }) => assert_eq!(i, index, "the last op failed"),
            other => panic!("expected the batch to be refused, got {other:?}"),
        }
        assert_eq!(checked(&store), before, "a failed batch changed nothing");
        assert_eq!(
            store.stats(),
            stats,
            "a failed batch changed no stats, bytes included"
        );
    }
    ok(&mut store, &everything, "the same batch without the bad op");
    let snap = checked(&store);
    assert_eq!(snap.sessions.len(), 1, "only c left");
    assert_eq!(seqs(&snap, &c), vec![1]);
    assert_eq!(cursor_list(&snap), vec![("outbox/0", 11), ("outbox/1", 1)]);
}

/// With several bad ops, the first in batch order is reported.
pub fn first_failing_op_is_reported<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let a = cid(1);
    let batch = [
        put_session(&a, 0),
        put_message(1),
        enqueue(&a, 1, 9),
        enqueue(&cid(2), 1, 1),
    ];
    refused(
        &mut store,
        &batch,
        2,
        InvalidOp::UnknownMessage { id: MessageId(9) },
    );
    assert_eq!(checked(&store), Snapshot::empty());
}

/// A budget refuses batches that grow the store past it, atomically; draining a full
/// store works, and space comes back.
pub fn budget_refuses_growth_and_allows_draining<F: StoreFactory>(factory: &mut F) {
    let baseline = factory.create(StoreLimits::default()).stats().bytes;
    let limit = baseline + 16 * 1024;
    let mut store = factory.create(StoreLimits {
        max_bytes: Some(limit),
    });
    let a = cid(1);
    ok(&mut store, &[put_session(&a, 1)], "session");
    let mut seq = 0;
    let full = loop {
        assert!(seq < 10_000, "a 16 KiB budget was never reached");
        let msg = StoreOp::PutMessage {
            id: MessageId(seq),
            message: message(seq, 512),
        };
        let batch = [msg, enqueue(&a, seq, seq)];
        let before = checked(&store);
        let stats = store.stats();
        match store.apply(&batch) {
            Ok(()) => {
                assert!(
                    store.stats().bytes <= limit,
                    "an accepted batch stays within the budget"
                );
                seq += 1;
            }
            Err(StoreError::Full { needed, limit: l }) => {
                assert_eq!(l, limit, "Full reports the configured limit");
                assert!(needed > limit, "Full reports what the batch needed");
                assert_eq!(checked(&store), before, "a refused batch changed nothing");
                assert_eq!(store.stats(), stats);
                break seq;
            }
            Err(e) => panic!("expected Full, got {e}"),
        }
    };
    assert!(full > 0, "the budget fits at least one 512-byte message");

    // Small shrinking and neutral batches are accepted while full.
    ok(
        &mut store,
        &[StoreOp::UpdateEntry {
            client_id: a.clone(),
            seq: 0,
            state: EntryState::AwaitPubAck { packet_id: 1 },
        }],
        "update while full",
    );
    ok(&mut store, &[remove_entry(&a, 0)], "remove one while full");

    let drain: Vec<_> = (0..full).map(|s| remove_entry(&a, s)).collect();
    ok(&mut store, &drain, "drain");
    assert!(checked(&store).messages.is_empty());
    let msg = StoreOp::PutMessage {
        id: MessageId(seq),
        message: message(seq, 512),
    };
    ok(&mut store, &[msg, enqueue(&a, seq, seq)], "space came back");

    // Deleting a session of a full store works too.
    ok(
        &mut store,
        &[StoreOp::DeleteSession {
            client_id: a.clone(),
        }],
        "delete while full",
    );
    assert!(checked(&store).sessions.is_empty());
}

/// Every field of every record comes back equal, including empty and large values.
pub fn records_round_trip_exactly<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let mut batch = Vec::new();
    let mut empty_everything = message(0, 0);
    empty_everything.topic = "t".into();
    empty_everything.origin = "".into();
    empty_everything.properties = StoredProperties::default();
    empty_everything.expires_at = None;
    let mut extremes = message(5, 256 * 1024);
    extremes.expires_at = Some(u64::MAX);
    extremes.properties.user_properties = vec![
        ("dup".into(), "1".into()),
        ("dup".into(), "2".into()),
        ("".into(), "".into()),
    ];
    extremes.topic = "ünïcødé/τοπικ/+literal#".into();
    for n in 0..8u64 {
        let c = cid(n);
        let mut record = session(&c, n * 2);
        if n == 7 {
            record.expiry_interval = u32::MAX;
            record.expires_at = Some(u64::MAX);
        }
        batch.push(StoreOp::PutSession(record));
        batch.push(put_message(n));
        let mut e = entry(n);
        e.subscription_ids = (0..n as u32).map(|i| i.wrapping_mul(268_435_455)).collect();
        e.state = match n % 4 {
            0 => EntryState::Queued,
            1 => EntryState::AwaitPubAck {
                packet_id: n as u16,
            },
            2 => EntryState::AwaitPubRec { packet_id: 65535 },
            _ => EntryState::AwaitPubComp { packet_id: 1 },
        };
        batch.push(StoreOp::Enqueue {
            client_id: c.clone(),
            seq: n,
            entry: e,
        });
        batch.push(StoreOp::PutRetained(message(n + 100, n as usize * 3)));
    }
    batch.push(StoreOp::PutMessage {
        id: MessageId(1000),
        message: empty_everything.clone(),
    });
    batch.push(StoreOp::PutMessage {
        id: MessageId(u64::MAX),
        message: extremes.clone(),
    });
    batch.push(enqueue(&cid(0), 1000, 1000));
    batch.push(StoreOp::Enqueue {
        client_id: cid(1),
        seq: 1000,
        entry: EntryRecord {
            message: MessageId(u64::MAX),
            ..entry(1)
        },
    });
    batch.push(StoreOp::PutRetained(extremes.clone()));
    batch.push(put_cursor("", 0));
    batch.push(put_cursor("ünïcødé/κέρσορας", u64::MAX));
    batch.push(put_cursor(&"x".repeat(4096), 1 << 63));
    ok(&mut store, &batch, "everything");

    let mut model = Model::default();
    model.apply(&batch).expect("model accepts the batch");
    assert_eq!(checked(&store), model.snapshot());
    let store = factory.reopen(store);
    assert_eq!(checked(&store), model.snapshot(), "after reopen");
}

/// Rule 12: [`Store::reclaim_space`] changes nothing `load` or `stats` returns, whether
/// it compacts or not, and the store stays usable and reopens the same.
pub fn reclaim_space_keeps_everything<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b) = (cid(1), cid(2));
    // A queue of large messages, drained but for one message `b` also holds: a file
    // worth compacting, for a store that has one.
    let mut fill = vec![put_session(&a, 1), put_session(&b, 2)];
    for id in 1..=400 {
        fill.push(StoreOp::PutMessage {
            id: MessageId(id),
            message: message(id, 4096),
        });
        fill.push(enqueue(&a, id, id));
    }
    fill.extend([
        enqueue(&b, 1, 400),
        StoreOp::AddIncomingQos2 {
            client_id: b.clone(),
            packet_id: 9,
        },
        StoreOp::PutRetained(message(7, 100)),
        put_cursor("outbox/0", 3),
    ]);
    ok(&mut store, &fill, "fill");
    ok(
        &mut store,
        &[StoreOp::RemoveEntriesUpTo {
            client_id: a.clone(),
            up_to: 400,
        }],
        "drain",
    );
    let before = checked(&store);
    let stats = store.stats();
    let eager = CompactionPolicy {
        min_reclaim_bytes: 1,
    };
    for round in 0..2 {
        if let Err(e) = store.reclaim_space(&eager) {
            panic!("reclaim_space round {round}: {e}");
        }
        assert_eq!(checked(&store), before, "load after reclaim_space {round}");
        assert_eq!(store.stats(), stats, "stats after reclaim_space {round}");
    }
    ok(
        &mut store,
        &[put_message(401), enqueue(&a, 401, 401)],
        "after reclaim_space",
    );
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &a), vec![401]);
    let store = factory.reopen(store);
    assert_eq!(checked(&store), snap, "reopen after reclaim_space");
}

/// What was applied survives a reopen, and the reopened store accepts more batches.
pub fn reopen_keeps_everything<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let (a, b) = (cid(1), cid(2));
    ok(
        &mut store,
        &[
            put_session(&a, 2),
            put_session(&b, 1),
            put_message(1),
            enqueue(&a, 1, 1),
            enqueue(&b, 1, 1),
        ],
        "first",
    );
    ok(
        &mut store,
        &[
            StoreOp::AddIncomingQos2 {
                client_id: b.clone(),
                packet_id: 3,
            },
            StoreOp::PutRetained(message(4, 4)),
            put_cursor("outbox/0", 7),
        ],
        "second",
    );
    // A refused batch just before closing must not surface after the reopen.
    assert!(store
        .apply(&[put_session(&cid(5), 1), enqueue(&cid(6), 1, 1)])
        .is_err());
    let before = checked(&store);
    let stats = store.stats();
    let mut store = factory.reopen(store);
    assert_eq!(checked(&store), before, "load after reopen");
    assert_eq!(counts(store.stats()), counts(stats), "stats after reopen");
    ok(
        &mut store,
        &[remove_entry(&a, 1), put_message(2), enqueue(&a, 2, 2)],
        "after reopen",
    );
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &a), vec![2]);
    let store = factory.reopen(store);
    assert_eq!(checked(&store), snap, "second reopen");
}

/// Cursors: a put creates or replaces, a delete removes (absent: no-op), ops in a
/// batch take effect in order, `load` returns each cursor as last put, by name;
/// sessions and cursors do not affect each other.
pub fn cursors_put_replace_delete<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    ok(
        &mut store,
        &[
            put_cursor("outbox/1", 5),
            put_cursor("outbox/0", u64::MAX),
            put_cursor("inbox/gw-1/0", 0),
            put_cursor("outbox", 1),
        ],
        "put",
    );
    let snap = checked(&store);
    assert_eq!(
        cursor_list(&snap),
        vec![
            ("inbox/gw-1/0", 0),
            ("outbox", 1),
            ("outbox/0", u64::MAX),
            ("outbox/1", 5)
        ],
        "every cursor, by name, names that are prefixes of others apart"
    );
    assert_eq!(store.stats().cursors, 4);

    // Replacing takes any value, smaller ones included: the store does not order them.
    ok(
        &mut store,
        &[put_cursor("outbox/1", 6), put_cursor("outbox/0", 3)],
        "replace",
    );
    let snap = checked(&store);
    assert_eq!(snap.cursors.get("outbox/1"), Some(&6));
    assert_eq!(snap.cursors.get("outbox/0"), Some(&3));
    assert_eq!(store.stats().cursors, 4, "a replacement adds no cursor");

    // In order within one batch: the last op on a name wins.
    ok(
        &mut store,
        &[
            put_cursor("outbox/1", 7),
            put_cursor("outbox/1", 8),
            delete_cursor("outbox/1"),
            delete_cursor("outbox"),
            put_cursor("outbox", 9),
            put_cursor("new", 1),
            delete_cursor("new"),
        ],
        "sequential",
    );
    assert_eq!(
        cursor_list(&checked(&store)),
        vec![("inbox/gw-1/0", 0), ("outbox", 9), ("outbox/0", 3)]
    );

    // Cursors live apart from sessions: a session named like a cursor, and its
    // deletion, leave the cursors alone, and deleting a cursor leaves the session.
    let named = ByteString::from("outbox/0");
    ok(
        &mut store,
        &[
            put_session(&named, 1),
            put_message(1),
            enqueue(&named, 1, 1),
        ],
        "a session named like a cursor",
    );
    ok(
        &mut store,
        &[delete_cursor("outbox/0")],
        "delete the cursor",
    );
    let snap = checked(&store);
    assert_eq!(seqs(&snap, &named), vec![1], "the session is untouched");
    assert!(!snap.cursors.contains_key("outbox/0"));
    ok(
        &mut store,
        &[
            put_cursor("outbox/0", 4),
            StoreOp::DeleteSession { client_id: named },
        ],
        "delete the session",
    );
    assert_eq!(
        cursor_list(&checked(&store)),
        vec![("inbox/gw-1/0", 0), ("outbox", 9), ("outbox/0", 4)],
        "cursors kept when a session goes"
    );

    ok(
        &mut store,
        &[
            delete_cursor("inbox/gw-1/0"),
            delete_cursor("outbox"),
            delete_cursor("outbox/0"),
        ],
        "delete all",
    );
    let snap = checked(&store);
    assert!(snap.cursors.is_empty());
    assert_eq!(store.stats().cursors, 0);
}

/// Cursor ops are undone with the rest of a batch that is refused by a later op, by
/// the budget, or anywhere in between.
pub fn cursor_ops_are_atomic_with_their_batch<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    let a = cid(1);
    ok(
        &mut store,
        &[
            put_session(&a, 0),
            put_message(1),
            enqueue(&a, 1, 1),
            put_cursor("outbox/0", 1),
            put_cursor("inbox/0", 100),
        ],
        "setup",
    );
    let before = checked(&store);
    let stats = store.stats();

    // What the bridge does: remove what was acknowledged and move the cursor past it.
    let acknowledged = vec![
        remove_entry(&a, 1),
        put_cursor("outbox/0", 2),
        put_cursor("inbox/0", 101),
        delete_cursor("inbox/0"),
        put_cursor("inbox/1", 5),
    ];
    let failing = [
        (
            enqueue(&a, 2, 77),
            InvalidOp::UnknownMessage { id: MessageId(77) },
        ),
        (
            StoreOp::UpdateEntry {
                client_id: a.clone(),
                seq: 1,
                state: EntryState::Queued,
            },
            InvalidOp::UnknownEntry {
                client_id: a.clone(),
                seq: 1,
            },
        ),
    ];
    for (last, reason) in failing {
        let mut batch = acknowledged.clone();
        batch.push(last);
        let index = batch.len() - 1;
        refused(&mut store, &batch, index, reason);
        assert_eq!(
            checked(&store),
            before,
            "a refused batch moved no cursor and removed no entry"
        );
        assert_eq!(store.stats(), stats, "bytes included");
    }
    // A refusal before the cursor ops, too.
    let mut batch = vec![enqueue(&cid(9), 1, 1)];
    batch.extend(acknowledged.iter().cloned());
    refused(
        &mut store,
        &batch,
        0,
        InvalidOp::UnknownSession { client_id: cid(9) },
    );
    assert_eq!(checked(&store), before);

    ok(&mut store, &acknowledged, "the batch without the bad op");
    let snap = checked(&store);
    assert_eq!(cursor_list(&snap), vec![("inbox/1", 5), ("outbox/0", 2)]);
    assert!(seqs(&snap, &a).is_empty() && snap.messages.is_empty());
}

/// Cursors survive a reopen, can be changed after it, and a refused cursor batch
/// just before closing does not surface.
pub fn cursors_survive_reopen<F: StoreFactory>(factory: &mut F) {
    let mut store = factory.create(StoreLimits::default());
    ok(
        &mut store,
        &[
            put_cursor("outbox/0", 41),
            put_cursor("outbox/1", u64::MAX),
            put_cursor("inbox/0", 0),
        ],
        "put",
    );
    ok(&mut store, &[put_cursor("outbox/0", 42)], "replace");
    assert!(store
        .apply(&[put_cursor("outbox/0", 43), enqueue(&cid(1), 1, 1)])
        .is_err());
    let before = checked(&store);
    let stats = store.stats();
    let mut store = factory.reopen(store);
    let snap = checked(&store);
    assert_eq!(snap, before, "load after reopen");
    assert_eq!(
        cursor_list(&snap),
        vec![("inbox/0", 0), ("outbox/0", 42), ("outbox/1", u64::MAX)]
    );
    assert_eq!(store.stats(), stats, "stats after reopen, bytes included");

    ok(
        &mut store,
        &[
            delete_cursor("outbox/1"),
            put_cursor("outbox/0", 50),
            put_cursor("outbox/2", 1),
        ],
        "after reopen",
    );
    let snap = checked(&store);
    let store = factory.reopen(store);
    assert_eq!(checked(&store), snap, "second reopen");
    assert_eq!(
        cursor_list(&snap),
        vec![("inbox/0", 0), ("outbox/0", 50), ("outbox/2", 1)]
    );
}

/// Cursors take budget like other records; replacing one never grows the store, so
/// a full store can always move its cursors, and deleting them gives space back.
pub fn cursors_in_the_budget<F: StoreFactory>(factory: &mut F) {
    let baseline = factory.create(StoreLimits::default()).stats().bytes;
    let limit = baseline + 4 * 1024;
    let mut store = factory.create(StoreLimits {
        max_bytes: Some(limit),
    });
    // Names of equal length, so every new cursor costs the same.
    let name = |i: u64| format!("cursor/{i:05}");
    let mut n = 0;
    loop {
        assert!(n < 10_000, "a 4 KiB budget was never reached by cursors");
        let before = checked(&store);
        let stats = store.stats();
        match store.apply(&[put_cursor(&name(n), n)]) {
            Ok(()) => {
                assert!(store.stats().bytes <= limit, "within the budget");
                assert!(
                    store.stats().bytes > stats.bytes,
                    "a new cursor takes bytes"
                );
                n += 1;
            }
            Err(StoreError::Full { needed, limit: l }) => {
                assert_eq!(l, limit);
                assert!(needed > limit);
                assert_eq!(checked(&store), before, "a refused cursor changed nothing");
                assert_eq!(store.stats(), stats);
                break;
            }
            Err(e) => panic!("expected Full, got {e}"),
        }
    }
    assert!(n > 1, "the budget fits a few cursors");
    let full = store.stats();

    // Moving cursors while full: any value, many at once, bytes unchanged.
    let moves: Vec<_> = (0..n).map(|i| put_cursor(&name(i), u64::MAX - i)).collect();
    ok(&mut store, &moves, "replace every cursor while full");
    ok(&mut store, &[put_cursor(&name(0), 0)], "move one back");
    assert_eq!(
        store.stats(),
        full,
        "replacing cursors does not grow the store"
    );

    // A batch that moves a cursor and adds one is refused whole.
    let before = checked(&store);
    match store.apply(&[put_cursor(&name(1), 7), put_cursor(&name(n), n)]) {
        Err(StoreError::Full { .. }) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        checked(&store),
        before,
        "the move was undone with the batch"
    );

    // Swapping one cursor for another of the same size is neutral, so accepted.
    ok(
        &mut store,
        &[delete_cursor(&name(0)), put_cursor(&name(n), n)],
        "swap while full",
    );
    assert_eq!(store.stats().bytes, full.bytes);

    // Deleting gives the space back.
    ok(&mut store, &[delete_cursor(&name(1))], "delete while full");
    assert!(store.stats().bytes < full.bytes);
    ok(
        &mut store,
        &[put_cursor(&name(n + 1), 1)],
        "space came back",
    );
    assert_eq!(store.stats().cursors, n);
}

/// Seeds of the random run.
const RANDOM_SEEDS: u64 = 8;
/// Batches per seed.
const RANDOM_BATCHES: u64 = 300;

/// Seeded random batches, every result and every load compared with [`Model`];
/// reopens now and then.
pub fn random_against_model<F: StoreFactory>(factory: &mut F) {
    for seed in 1..=RANDOM_SEEDS {
        random_run(factory, seed, RANDOM_BATCHES);
    }
}

/// One seeded run of `batches` random batches.
pub fn random_run<F: StoreFactory>(factory: &mut F, seed: u64, batches: u64) {
    let mut rng = XorShift::new(seed);
    let mut store = factory.create(StoreLimits::default());
    let mut model = Model::default();
    let mut next_id = 0u64;
    let (mut accepted, mut refused_count) = (0u64, 0u64);
    for step in 0..batches {
        let len = 1 + rng.below(6);
        // Ops are drawn against a scratch model that follows the batch, so later ops
        // see what earlier ones created.
        let mut batch = Vec::new();
        let mut scratch = model.clone();
        for _ in 0..len {
            let start = batch.len();
            random_op(&mut rng, &scratch, &mut next_id, &mut batch);
            for op in &batch[start..] {
                // A refused op changes nothing in the model; the batch will fail anyway.
                let _ = scratch.apply_op(op);
            }
        }
        let mut next_model = model.clone();
        let expected = next_model.apply(&batch);
        let got = store.apply(&batch);
        match (&expected, got) {
            (Ok(()), Ok(())) => {
                model = next_model;
                accepted += 1;
            }
            (
                Err((index, reason)),
                Err(StoreError::Invalid {
                    index: i,
                    reason: r,
                }),
            ) => {
                assert_eq!(
                    (*index, reason),
                    (i, &r),
                    "seed {seed} step {step}: refusal differs from the model"
                );
                refused_count += 1;
            }
            (expected, got) => {
                panic!("seed {seed} step {step}: model says {expected:?}, store says {got:?}\nbatch: {batch:?}")
            }
        }
        if step % 37 == 36 {
            store = factory.reopen(store);
        }
        let snap = checked(&store);
        assert_eq!(
            snap,
            model.snapshot(),
            "seed {seed} step {step}: store and model differ after {batch:?}"
        );
    }
    // The generator must exercise both outcomes, or the run proves little.
    assert!(
        accepted > batches / 3 && refused_count > 0,
        "seed {seed}: {accepted} accepted, {refused_count} refused"
    );
}

/// Draws one op, usually valid against `model`, sometimes not.
fn random_op(rng: &mut XorShift, model: &Model, next_id: &mut u64, batch: &mut Vec<StoreOp>) {
    // Small key spaces so that ops collide: the interesting cases are the collisions.
    // Keys are mostly drawn from what the model holds, so most batches are valid and
    // the refusals that remain test atomicity.
    let clients: Vec<&ByteString> = model.sessions.keys().collect();
    let client = if !clients.is_empty() && rng.below(20) != 0 {
        clients[rng.below(clients.len() as u64) as usize].clone()
    } else {
        cid(rng.below(5))
    };
    let existing: Vec<u64> = model
        .sessions
        .get(&client)
        .map(|(_, entries, _)| entries.keys().copied().collect())
        .unwrap_or_default();
    let seq = if !existing.is_empty() && rng.below(10) != 0 {
        existing[rng.below(existing.len() as u64) as usize]
    } else {
        rng.below(12)
    };
    let fresh_seq = existing.last().map_or(0, |s| s + 1 + rng.below(3));
    let live: Vec<u64> = model.messages.keys().map(|id| id.0).collect();
    let pick_live = |rng: &mut XorShift| live[rng.below(live.len() as u64) as usize];
    let op = match rng.below(110) {
        // Any of the five clients, so sessions get created, not only replaced.
        0..=9 => StoreOp::PutSession(session(&cid(rng.below(5)), rng.below(4))),
        10..=13 => StoreOp::DeleteSession { client_id: client },
        14..=19 => {
            // Usually a fresh id (collected at the end of the batch unless an enqueue
            // in the same batch picks it up); sometimes a live one, which is refused.
            let id = if !live.is_empty() && rng.below(8) == 0 {
                pick_live(rng)
            } else {
                *next_id += 1;
                *next_id
            };
            StoreOp::PutMessage {
                id: MessageId(id),
                message: message(id, rng.below(40) as usize),
            }
        }
        20..=54 => {
            let id = match rng.below(20) {
                // A message that was never put: refused.
                0 => u64::MAX - rng.below(3),
                // The message put last in this batch, if any.
                1..=3 => *next_id,
                n if n < 12 && !live.is_empty() => pick_live(rng),
                _ => {
                    *next_id += 1;
                    let message = message(*next_id, rng.below(40) as usize);
                    batch.push(StoreOp::PutMessage {
                        id: MessageId(*next_id),
                        message,
                    });
                    *next_id
                }
            };
            // Sometimes a taken sequence, which is refused.
            let seq = if rng.below(20) == 0 { seq } else { fresh_seq };
            StoreOp::Enqueue {
                client_id: client,
                seq,
                entry: entry(id),
            }
        }
        55..=64 => {
            let state = match rng.below(4) {
                0 => EntryState::Queued,
                1 => EntryState::AwaitPubAck {
                    packet_id: 1 + rng.below(65535) as u16,
                },
                2 => EntryState::AwaitPubRec {
                    packet_id: 1 + rng.below(65535) as u16,
                },
                _ => EntryState::AwaitPubComp {
                    packet_id: 1 + rng.below(65535) as u16,
                },
            };
            StoreOp::UpdateEntry {
                client_id: client,
                seq,
                state,
            }
        }
        65..=76 => StoreOp::RemoveEntry {
            client_id: client,
            seq,
        },
        77..=79 => StoreOp::RemoveEntriesUpTo {
            client_id: client,
            up_to: seq,
        },
        80..=85 => StoreOp::AddIncomingQos2 {
            client_id: client,
            packet_id: rng.below(6) as u16,
        },
        86..=90 => StoreOp::RemoveIncomingQos2 {
            client_id: client,
            packet_id: rng.below(6) as u16,
        },
        91..=96 => {
            let n = rng.below(1000);
            StoreOp::PutRetained(message(n, rng.below(20) as usize))
        }
        97..=99 => StoreOp::DeleteRetained {
            topic: ByteString::from(format!("topic/{}", rng.below(6))),
        },
        // A few names, so puts replace and deletes hit as often as they miss.
        100..=106 => StoreOp::PutCursor {
            name: ByteString::from(format!("cursor/{}", rng.below(4))),
            value: rng.next_u64() >> rng.below(64),
        },
        _ => StoreOp::DeleteCursor {
            name: ByteString::from(format!("cursor/{}", rng.below(5))),
        },
    };
    batch.push(op);
}

/// xorshift64: deterministic, dependency-free, good enough to pick ops.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (0 is replaced, since xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n` > 0; the modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A session in the [`Model`]: record, entries by sequence, incoming QoS 2 ids.
type ModelSession = (SessionRecord, BTreeMap<u64, EntryRecord>, BTreeSet<u16>);

/// The contract written as the simplest code that keeps it: clone, apply in order,
/// collect unreferenced messages by scanning everything.
#[derive(Debug, Clone, Default)]
pub struct Model {
    sessions: BTreeMap<ByteString, ModelSession>,
    messages: BTreeMap<MessageId, StoredMessage>,
    retained: BTreeMap<ByteString, StoredMessage>,
    cursors: BTreeMap<ByteString, u64>,
}

impl Model {
    /// Applies `batch` all or nothing; `Err` names the first refused op.
    pub fn apply(&mut self, batch: &[StoreOp]) -> Result<(), (usize, InvalidOp)> {
        let mut next = self.clone();
        for (index, op) in batch.iter().enumerate() {
            next.apply_op(op).map_err(|reason| (index, reason))?;
        }
        let referenced: BTreeSet<MessageId> = next
            .sessions
            .values()
            .flat_map(|(_, entries, _)| entries.values().map(|e| e.message))
            .collect();
        next.messages.retain(|id, _| referenced.contains(id));
        *self = next;
        Ok(())
    }

    fn apply_op(&mut self, op: &StoreOp) -> Result<(), InvalidOp> {
        let unknown_session = |c: &ByteString| InvalidOp::UnknownSession {
            client_id: c.clone(),
        };
        match op {
            StoreOp::PutSession(record) => {
                let slot = self
                    .sessions
                    .entry(record.client_id.clone())
                    .or_insert_with(|| (record.clone(), BTreeMap::new(), BTreeSet::new()));
                slot.0 = record.clone();
            }
            StoreOp::DeleteSession { client_id } => {
                self.sessions.remove(client_id);
            }
            StoreOp::PutMessage { id, message } => {
                if self.messages.contains_key(id) {
                    return Err(InvalidOp::DuplicateMessage { id: *id });
                }
                self.messages.insert(*id, message.clone());
            }
            StoreOp::Enqueue {
                client_id,
                seq,
                entry,
            } => {
                let (_, entries, _) = self
                    .sessions
                    .get_mut(client_id)
                    .ok_or_else(|| unknown_session(client_id))?;
                if entries.contains_key(seq) {
                    return Err(InvalidOp::DuplicateEntry {
                        client_id: client_id.clone(),
                        seq: *seq,
                    });
                }
                if !self.messages.contains_key(&entry.message) {
                    return Err(InvalidOp::UnknownMessage { id: entry.message });
                }
                entries.insert(*seq, entry.clone());
            }
            StoreOp::UpdateEntry {
                client_id,
                seq,
                state,
            } => {
                let e = self
                    .sessions
                    .get_mut(client_id)
                    .and_then(|(_, entries, _)| entries.get_mut(seq))
                    .ok_or_else(|| InvalidOp::UnknownEntry {
                        client_id: client_id.clone(),
                        seq: *seq,
                    })?;
                e.state = *state;
            }
            StoreOp::RemoveEntry { client_id, seq } => {
                if let Some((_, entries, _)) = self.sessions.get_mut(client_id) {
                    entries.remove(seq);
                }
            }
            StoreOp::RemoveEntriesUpTo { client_id, up_to } => {
                if let Some((_, entries, _)) = self.sessions.get_mut(client_id) {
                    entries.retain(|seq, _| seq > up_to);
                }
            }
            StoreOp::AddIncomingQos2 {
                client_id,
                packet_id,
            } => {
                let (_, _, ids) = self
                    .sessions
                    .get_mut(client_id)
                    .ok_or_else(|| unknown_session(client_id))?;
                ids.insert(*packet_id);
            }
            StoreOp::RemoveIncomingQos2 {
                client_id,
                packet_id,
            } => {
                if let Some((_, _, ids)) = self.sessions.get_mut(client_id) {
                    ids.remove(packet_id);
                }
            }
            StoreOp::PutRetained(message) => {
                self.retained.insert(message.topic.clone(), message.clone());
            }
            StoreOp::DeleteRetained { topic } => {
                self.retained.remove(topic);
            }
            StoreOp::PutCursor { name, value } => {
                self.cursors.insert(name.clone(), *value);
            }
            StoreOp::DeleteCursor { name } => {
                self.cursors.remove(name);
            }
        }
        Ok(())
    }

    /// What `load` must return for the model's state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: super::FORMAT_VERSION,
            sessions: self
                .sessions
                .values()
                .map(|(record, entries, ids)| SessionSnapshot {
                    record: record.clone(),
                    entries: entries.iter().map(|(s, e)| (*s, e.clone())).collect(),
                    incoming_qos2: ids.iter().copied().collect(),
                })
                .collect(),
            messages: self
                .messages
                .iter()
                .map(|(id, m)| (*id, m.clone()))
                .collect(),
            retained: self.retained.values().cloned().collect(),
            cursors: self.cursors.clone(),
        }
    }
}
