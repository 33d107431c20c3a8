//! Tests of [`RedbStore`]: the conformance suite with reopening, the error paths of
//! opening, and atomicity and durability across kill -9 of a child process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use super::*;
use crate::message::QoS;
use crate::mqtt::packet::ProtocolVersion;
use crate::store::conformance::{Model, StoreFactory, XorShift};
use crate::store::{EntryRecord, EntryState, SessionRecord, StoredMessage, StoredProperties};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tern-redb-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options for tests: no fsync per batch (closing makes everything durable, and the
/// reopen closes), so the suite runs in seconds; durability has its own tests.
fn fast(limits: StoreLimits) -> RedbOptions {
    RedbOptions {
        durability: Fsync::Never,
        limits,
        checkpoint_interval: Duration::from_secs(3600),
        cache_bytes: 4 * 1024 * 1024,
        ..RedbOptions::default()
    }
}

/// Stores in files of one temp dir; `reopen` closes the file and opens it again.
struct Factory {
    dir: TempDir,
    n: u32,
    durability: Fsync,
}

impl Factory {
    fn new() -> Self {
        Self::with(Fsync::Never)
    }

    fn with(durability: Fsync) -> Self {
        Factory {
            dir: TempDir::new("suite"),
            n: 0,
            durability,
        }
    }

    fn options(&self, limits: StoreLimits) -> RedbOptions {
        RedbOptions {
            durability: self.durability,
            ..fast(limits)
        }
    }
}

impl StoreFactory for Factory {
    type Store = RedbStore;

    fn create(&mut self, limits: StoreLimits) -> RedbStore {
        self.n += 1;
        let path = self.dir.file(&format!("store-{}.redb", self.n));
        RedbStore::open(&path, self.options(limits)).expect("open a new store")
    }

    fn reopen(&mut self, store: RedbStore) -> RedbStore {
        let path = store.path().to_owned();
        let options = *store.options();
        store.close().expect("close");
        let store = RedbStore::open(&path, options).expect("reopen");
        assert_eq!(store.recount(), store.stats(), "stored totals after reopen");
        store
    }
}

crate::store_conformance_tests!(Factory::new());

fn unwrap_err<T: std::fmt::Debug>(r: Result<T, StoreError>) -> StoreError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------
// A deterministic workload: batch `n` of a queue that is filled and drained.
// ---------------------------------------------------------------------------------

/// Messages put (and entries enqueued) per batch.
const PER_BATCH: u64 = 8;

fn client(n: u64) -> ByteString {
    ByteString::from(format!("c{}", n % 3))
}

fn workload_message(id: u64, payload: usize) -> StoredMessage {
    StoredMessage {
        topic: ByteString::from(format!("sensors/{}/temp", id % 7)),
        payload: Bytes::from(vec![id as u8; payload]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: StoredProperties {
            user_properties: vec![("n".into(), ByteString::from(id.to_string()))],
            ..StoredProperties::default()
        },
        expires_at: id.is_multiple_of(2).then_some(1_900_000_000_000 + id),
        origin: "publisher".into(),
    }
}

/// Batch `n` (from 1): puts and enqueues, acks of older entries, state changes, QoS 2
/// ids, a retained `progress` message holding `n` and cursors (one holding `n`, one
/// replaced or deleted), all in one transaction.
fn workload_batch(n: u64) -> Vec<StoreOp> {
    let mut ops = Vec::new();
    if n == 1 {
        for c in 0..3 {
            ops.push(StoreOp::PutSession(SessionRecord {
                client_id: client(c),
                protocol: ProtocolVersion::V5,
                expiry_interval: 3600,
                expires_at: None,
                subscriptions: Vec::new(),
            }));
        }
    }
    for j in 0..PER_BATCH {
        let id = n * PER_BATCH + j;
        ops.push(StoreOp::PutMessage {
            id: MessageId(id),
            message: workload_message(id, 100),
        });
        ops.push(StoreOp::Enqueue {
            client_id: client(j),
            seq: id,
            entry: EntryRecord {
                message: MessageId(id),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![1],
                state: EntryState::Queued,
            },
        });
        if n > 4 {
            ops.push(StoreOp::RemoveEntry {
                client_id: client(j),
                seq: (n - 4) * PER_BATCH + j,
            });
        }
    }
    if n >= 2 {
        ops.push(StoreOp::UpdateEntry {
            client_id: client(0),
            seq: (n - 1) * PER_BATCH,
            state: EntryState::AwaitPubAck {
                packet_id: (n % 65535 + 1) as u16,
            },
        });
    }
    ops.push(StoreOp::AddIncomingQos2 {
        client_id: client(1),
        packet_id: (n % 100) as u16,
    });
    ops.push(StoreOp::RemoveIncomingQos2 {
        client_id: client(1),
        packet_id: ((n + 50) % 100) as u16,
    });
    let mut progress = workload_message(n, 0);
    progress.topic = "progress".into();
    progress.payload = Bytes::from(n.to_be_bytes().to_vec());
    ops.push(StoreOp::PutRetained(progress));
    ops.push(StoreOp::PutCursor {
        name: "outbox/0".into(),
        value: n,
    });
    ops.push(if n.is_multiple_of(3) {
        StoreOp::DeleteCursor {
            name: "inbox/0".into(),
        }
    } else {
        StoreOp::PutCursor {
            name: "inbox/0".into(),
            value: n * 10,
        }
    });
    ops
}

/// Batch `n` as a version 1 build could write it: without the cursor ops.
fn workload_batch_v1(n: u64) -> Vec<StoreOp> {
    let mut ops = workload_batch(n);
    ops.retain(|op| !matches!(op, StoreOp::PutCursor { .. } | StoreOp::DeleteCursor { .. }));
    ops
}

/// The number of the last workload batch in a snapshot (0: none).
fn progress(snap: &Snapshot) -> u64 {
    snap.retained
        .iter()
        .find(|m| m.topic == "progress")
        .map_or(0, |m| {
            let mut a = [0; 8];
            a.copy_from_slice(&m.payload);
            u64::from_be_bytes(a)
        })
}

/// Applies workload batches to `model` until it stands at batch `k`.
fn advance(model: &mut Model, at: &mut u64, k: u64) {
    while *at < k {
        *at += 1;
        model
            .apply(&workload_batch(*at))
            .expect("workload is valid");
    }
}

// ---------------------------------------------------------------------------------
// Durability and reopening
// ---------------------------------------------------------------------------------

#[test]
fn store_redb_reopen_after_many_durable_batches() {
    let dir = TempDir::new("many");
    let path = dir.file("nested/dir/store.redb");
    let options = RedbOptions {
        durability: Fsync::Batch,
        ..fast(StoreLimits::default())
    };
    let mut model = Model::default();
    let mut at = 0;
    let mut store = RedbStore::open(&path, options).expect("creates file and directories");
    for round in 0..4 {
        for _ in 0..50 {
            let n = at + 1;
            store.apply(&workload_batch(n)).expect("apply");
            advance(&mut model, &mut at, n);
        }
        // Round 0 and 2 close cleanly; 1 and 3 just drop the handle.
        if round % 2 == 0 {
            store.close().expect("close");
        } else {
            drop(store);
        }
        store = RedbStore::open(&path, options).expect("reopen");
        assert_eq!(
            store.load().expect("load"),
            model.snapshot(),
            "round {round}"
        );
        assert_eq!(store.recount(), store.stats());
    }
    assert_eq!(progress(&store.load().expect("load")), 200);
}

#[test]
fn store_redb_never_mode_syncs_on_demand_and_on_close() {
    let dir = TempDir::new("never");
    let path = dir.file("store.redb");
    let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open");
    store.apply(&workload_batch(1)).expect("apply");
    assert!(store.pending, "a None commit is pending");
    store.sync().expect("sync");
    assert!(!store.pending);
    store.sync().expect("a second sync is a no-op");
    store.apply(&workload_batch(2)).expect("apply");
    store.close().expect("close makes it durable");
    let store = RedbStore::open(&path, fast(StoreLimits::default())).expect("reopen");
    assert_eq!(progress(&store.load().expect("load")), 2);

    // A zero checkpoint interval makes every Never commit durable.
    let mut options = fast(StoreLimits::default());
    options.checkpoint_interval = Duration::ZERO;
    drop(store);
    let mut store = RedbStore::open(&path, options).expect("reopen");
    store.apply(&workload_batch(3)).expect("apply");
    assert!(
        !store.pending,
        "checkpoint interval elapsed: durable commit"
    );
}

#[test]
fn store_redb_space_is_reused_as_queues_drain() {
    let dir = TempDir::new("space");
    let path = dir.file("store.redb");
    let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open");
    let a = session_a(&mut store);
    let empty_bytes = store.stats().bytes;
    let mut sizes = Vec::new();
    for cycle in 0..4u64 {
        fill_queue(&mut store, &a, cycle * 10_000, 1000, 1000);
        assert!(store.stats().bytes > 1_000_000, "{:?}", store.stats());
        let drain: Vec<_> = (0..1000)
            .map(|i| StoreOp::RemoveEntry {
                client_id: a.clone(),
                seq: cycle * 10_000 + i,
            })
            .collect();
        store.apply(&drain).expect("drain");
        store.sync().expect("sync");
        assert_eq!(
            store.stats().bytes,
            empty_bytes,
            "bytes come back when drained"
        );
        sizes.push(store.disk_bytes().expect("size"));
    }
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    assert!(
        last <= first + first / 2,
        "freed pages are reused: file sizes per cycle {sizes:?}"
    );
    store.compact().expect("compact");
    let compacted = store.disk_bytes().expect("size");
    assert!(
        compacted <= last,
        "compaction does not grow the file: {compacted} vs {last}"
    );
}

/// Puts `count` messages of `payload` bytes from `first` on for session `a`, in batches.
fn fill_queue(store: &mut RedbStore, a: &ByteString, first: u64, count: u64, payload: usize) {
    let ids: Vec<u64> = (first..first + count).collect();
    for chunk in ids.chunks(500) {
        let mut batch = Vec::new();
        for &id in chunk {
            batch.push(StoreOp::PutMessage {
                id: MessageId(id),
                message: workload_message(id, payload),
            });
            batch.push(StoreOp::Enqueue {
                client_id: a.clone(),
                seq: id,
                entry: EntryRecord {
                    message: MessageId(id),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    state: EntryState::Queued,
                },
            });
        }
        store.apply(&batch).expect("fill");
    }
}

fn session_a(store: &mut RedbStore) -> ByteString {
    let a = ByteString::from("a");
    store
        .apply(&[StoreOp::PutSession(SessionRecord {
            client_id: a.clone(),
            protocol: ProtocolVersion::V311,
            expiry_interval: 0,
            expires_at: None,
            subscriptions: Vec::new(),
        })])
        .expect("session");
    a
}

#[test]
fn store_redb_reclaim_space_shrinks_a_drained_file_and_keeps_the_rest() {
    const MIB: u64 = 1024 * 1024;
    let dir = TempDir::new("reclaim");
    let path = dir.file("store.redb");
    let policy = CompactionPolicy {
        min_reclaim_bytes: MIB,
    };
    let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open");
    let a = session_a(&mut store);
    assert_eq!(
        store.reclaim_space(&policy).expect("reclaim"),
        None,
        "nothing to gain"
    );
    fill_queue(&mut store, &a, 0, 10_000, 1000);
    store.sync().expect("sync");
    let full = store.disk_bytes().expect("size");
    assert!(full > 10 * MIB, "{full}");
    assert_eq!(
        store.reclaim_space(&policy).expect("reclaim"),
        None,
        "all in use"
    );
    // Drain all but the last 100 messages.
    store
        .apply(&[StoreOp::RemoveEntriesUpTo {
            client_id: a.clone(),
            up_to: 9_899,
        }])
        .expect("drain");
    let before = store.load().expect("load");
    let done = store
        .reclaim_space(&policy)
        .expect("reclaim")
        .expect("a drained file is compacted");
    assert_eq!(done.file_bytes_before, full);
    assert_eq!(done.file_bytes_after, store.disk_bytes().expect("size"));
    assert!(
        done.file_bytes_after * 4 < full,
        "the file shrinks: {done:?}"
    );
    assert_eq!(store.load().expect("load"), before, "the content is kept");
    assert_eq!(
        store.reclaim_space(&policy).expect("reclaim"),
        None,
        "done once"
    );
    store.close().expect("close");
    let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("reopen");
    assert_eq!(store.load().expect("load"), before, "and survives a reopen");
    assert_eq!(store.recount(), store.stats());
    // The store keeps working after it: fill and drain again.
    fill_queue(&mut store, &a, 10_000, 1000, 1000);
    assert_eq!(store.load().expect("load").messages.len(), 1100);
}

// ---------------------------------------------------------------------------------
// Opening: errors are reported with the path and what to do, never a panic
// ---------------------------------------------------------------------------------

#[test]
fn store_redb_garbage_file_is_corrupt_with_path_and_remedy() {
    let dir = TempDir::new("garbage");
    let path = dir.file("store.redb");
    let mut rng = XorShift::new(7);
    let garbage: Vec<u8> = (0..65_536).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(&path, garbage).expect("write");
    match unwrap_err(RedbStore::open(&path, RedbOptions::default())) {
        StoreError::Corrupt { path: p, detail } => {
            assert_eq!(p, path);
            assert!(detail.contains("move the file aside"), "{detail}");
        }
        e => panic!("expected Corrupt, got {e}"),
    }
}

/// A valid store, closed, with `n` workload batches.
fn store_with_batches(path: &Path, n: u64) {
    let mut store = RedbStore::open(path, fast(StoreLimits::default())).expect("open");
    for i in 1..=n {
        store.apply(&workload_batch(i)).expect("apply");
    }
    store.close().expect("close");
}

#[test]
fn store_redb_truncated_file_is_corrupt_or_recovered_never_a_panic() {
    let dir = TempDir::new("truncated");
    let path = dir.file("store.redb");
    store_with_batches(&path, 100);
    let len = std::fs::metadata(&path).expect("meta").len();
    for cut in [len / 2, 4096, 100] {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open for truncation");
        file.set_len(cut).expect("truncate");
        drop(file);
        match RedbStore::open(&path, RedbOptions::default()) {
            Err(StoreError::Corrupt { path: p, detail }) => {
                assert_eq!(p, path);
                assert!(detail.contains("restore it from a backup"), "{detail}");
            }
            Err(e) => panic!("truncated to {cut}: expected Corrupt, got {e}"),
            // redb may recover a consistent older state; then it must load cleanly.
            Ok(store) => {
                let snap = store.load().expect("a recovered store loads");
                assert_eq!(store.recount(), store.stats());
                drop(snap);
            }
        }
    }
}

#[test]
fn store_redb_damaged_pages_are_caught_on_open() {
    let dir = TempDir::new("damaged");
    let path = dir.file("store.redb");
    store_with_batches(&path, 200);
    let mut bytes = std::fs::read(&path).expect("read");
    // Flip bytes all over the file past the header region.
    let mut rng = XorShift::new(3);
    for _ in 0..64 {
        let i = 8192 + rng.below(bytes.len() as u64 - 8192) as usize;
        bytes[i] ^= 0x5a;
    }
    std::fs::write(&path, bytes).expect("write");
    match RedbStore::open(&path, RedbOptions::default()) {
        Err(StoreError::Corrupt { path: p, .. }) => assert_eq!(p, path),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(store) => {
            // Only possible if every flip hit free pages; then the data is intact.
            assert_eq!(progress(&store.load().expect("load")), 200);
        }
    }
}

#[test]
fn store_redb_newer_format_version_is_refused() {
    let dir = TempDir::new("version");
    let path = dir.file("store.redb");
    store_with_batches(&path, 1);
    {
        let db = Database::open(&path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        {
            let mut meta = txn.open_table(META).expect("meta");
            let newer = (FORMAT_VERSION + 1).to_be_bytes();
            meta.insert(META_VERSION, newer.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    match unwrap_err(RedbStore::open(&path, RedbOptions::default())) {
        StoreError::UnsupportedVersion { found, supported } => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        e => panic!("expected UnsupportedVersion, got {e}"),
    }
}

/// The raw format version and encoded totals of a closed store.
fn raw_meta(path: &Path) -> (u32, Vec<u8>) {
    let db = Database::open(path).expect("raw open");
    let txn = db.begin_read().expect("txn");
    let meta = txn.open_table(META).expect("meta");
    let version = meta.get(META_VERSION).expect("get").expect("version");
    let version = u32::from_be_bytes(version.value().try_into().expect("4 bytes"));
    let stats = meta.get(META_STATS).expect("get").expect("stats");
    (version, stats.value().to_vec())
}

/// Rewrites a closed store that has no cursors into what a version 1 build wrote for
/// the same batches: no `cursors` table, six totals, version 1.
fn downgrade_to_v1(path: &Path) {
    let db = Database::open(path).expect("raw open");
    let txn = db.begin_write().expect("txn");
    {
        use ::redb::ReadableTableMetadata;
        let cursors = txn.open_table(CURSORS).expect("cursors");
        assert_eq!(
            cursors.len().expect("len"),
            0,
            "a version 1 store has no cursors"
        );
    }
    assert!(txn.delete_table(CURSORS).expect("delete cursors"));
    {
        let mut meta = txn.open_table(META).expect("meta");
        let stats = meta
            .get(META_STATS)
            .expect("get")
            .expect("stats")
            .value()
            .to_vec();
        assert_eq!(stats.len(), 56);
        assert_eq!(stats[48..], [0; 8], "no cursors counted");
        meta.insert(META_STATS, &stats[..48]).expect("insert");
        meta.insert(META_VERSION, 1u32.to_be_bytes().as_slice())
            .expect("insert");
    }
    txn.commit().expect("commit");
}

#[test]
fn store_redb_version_1_store_opens_and_is_upgraded() {
    let dir = TempDir::new("v1");
    let path = dir.file("store.redb");
    let mut model = Model::default();
    {
        let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open");
        for n in 1..=20 {
            let batch = workload_batch_v1(n);
            store.apply(&batch).expect("apply");
            model.apply(&batch).expect("model");
        }
        store.close().expect("close");
    }
    downgrade_to_v1(&path);
    assert_eq!(raw_meta(&path).0, 1);
    {
        let db = Database::open(&path).expect("raw open");
        let txn = db.begin_read().expect("txn");
        let names: Vec<String> = txn
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_owned())
            .collect();
        assert!(!names.iter().any(|t| t == "cursors"), "{names:?}");
    }

    let store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open v1");
    let snap = store.load().expect("load");
    assert_eq!(snap, model.snapshot(), "everything of the version 1 store");
    assert_eq!(snap.version, FORMAT_VERSION);
    assert!(snap.cursors.is_empty());
    assert_eq!(store.recount(), store.stats(), "totals carried over");
    assert_eq!(store.stats().cursors, 0);

    // The upgrade is durable by itself: an open and close with no batch keeps it.
    store.close().expect("close");
    let (version, stats) = raw_meta(&path);
    assert_eq!(
        (version, stats.len()),
        (FORMAT_VERSION, 56),
        "upgraded on open"
    );

    // The upgraded store takes cursors and keeps them.
    let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("reopen");
    assert_eq!(store.load().expect("load"), model.snapshot());
    let batch = workload_batch(21);
    store.apply(&batch).expect("apply with cursors");
    model.apply(&batch).expect("model");
    store.close().expect("close");
    let store = RedbStore::open(&path, fast(StoreLimits::default())).expect("reopen");
    let snap = store.load().expect("load");
    assert_eq!(snap, model.snapshot());
    assert_eq!(snap.cursors.get("outbox/0"), Some(&21));
    assert_eq!(store.recount(), store.stats());
}

#[test]
fn store_redb_malformed_meta_is_corrupt() {
    let dir = TempDir::new("meta");
    let set = |path: &Path, key: &str, value: &[u8]| {
        let db = Database::open(path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(key, value)
            .expect("insert");
        txn.commit().expect("commit");
    };
    let expect_corrupt =
        |path: &Path, what: &str| match unwrap_err(RedbStore::open(path, RedbOptions::default())) {
            StoreError::Corrupt { detail, .. } => {
                assert!(detail.contains("table meta"), "{what}: {detail}")
            }
            e => panic!("{what}: expected Corrupt, got {e}"),
        };

    let path = dir.file("v0.redb");
    store_with_batches(&path, 1);
    set(&path, META_VERSION, &0u32.to_be_bytes());
    expect_corrupt(&path, "version 0");

    // Version 2 totals must carry the cursor count.
    let path = dir.file("short.redb");
    store_with_batches(&path, 1);
    let (_, stats) = raw_meta(&path);
    set(&path, META_STATS, &stats[..48]);
    expect_corrupt(&path, "version 2 with version 1 totals");

    // Version 1 totals must not.
    let path = dir.file("long.redb");
    {
        let mut store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open");
        store.apply(&workload_batch_v1(1)).expect("apply");
        store.close().expect("close");
    }
    downgrade_to_v1(&path);
    let (_, stats) = raw_meta(&path);
    let mut long = stats.clone();
    long.extend_from_slice(&[0; 8]);
    set(&path, META_STATS, &long);
    expect_corrupt(&path, "version 1 with version 2 totals");

    // A version 1 store cannot already have cursors.
    set(&path, META_STATS, &stats);
    {
        let db = Database::open(&path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(CURSORS).expect("cursors");
        txn.commit().expect("commit");
    }
    expect_corrupt(&path, "version 1 with a cursors table");
}

#[test]
fn store_redb_foreign_database_is_refused() {
    let dir = TempDir::new("foreign");
    let path = dir.file("other.redb");
    {
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("txn");
        {
            let def: TableDefinition<&str, &str> = TableDefinition::new("something");
            txn.open_table(def)
                .expect("table")
                .insert("k", "v")
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    match unwrap_err(RedbStore::open(&path, RedbOptions::default())) {
        StoreError::Corrupt { detail, .. } => {
            assert!(detail.contains("not a Tern store"), "{detail}")
        }
        e => panic!("expected Corrupt, got {e}"),
    }
}

#[test]
fn store_redb_second_open_is_busy_not_corrupt() {
    let dir = TempDir::new("busy");
    let path = dir.file("store.redb");
    let _first = RedbStore::open(&path, RedbOptions::default()).expect("first");
    match unwrap_err(RedbStore::open(&path, RedbOptions::default())) {
        StoreError::Io { path: p, source } => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), io::ErrorKind::ResourceBusy);
            assert!(source.to_string().contains("another tern-edge"), "{source}");
        }
        e => panic!("expected Io(ResourceBusy), got {e}"),
    }
}

#[test]
fn store_redb_unusable_path_is_an_io_error() {
    let dir = TempDir::new("io");
    // A directory where the file should be.
    let path = dir.file("is-a-dir");
    std::fs::create_dir_all(&path).expect("mkdir");
    assert!(matches!(
        unwrap_err(RedbStore::open(&path, RedbOptions::default())),
        StoreError::Io { .. }
    ));
    // A file where the directory should be.
    let blocker = dir.file("blocker");
    std::fs::write(&blocker, b"x").expect("write");
    match unwrap_err(RedbStore::open(
        &blocker.join("store.redb"),
        RedbOptions::default(),
    )) {
        StoreError::Io { path, .. } => assert_eq!(path, blocker),
        e => panic!("expected Io, got {e}"),
    }
}

#[test]
fn store_redb_budget_counts_bytes_in_use_not_file_size() {
    let dir = TempDir::new("budget");
    let path = dir.file("store.redb");
    let store = RedbStore::open(&path, fast(StoreLimits::default())).expect("open");
    assert_eq!(store.stats().bytes, 0, "an empty store uses no budget");
    assert!(store.disk_bytes().expect("size") > 0);
}

// ---------------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------------

/// Set in the environment of the child process: the store file it writes to.
const CHILD_ENV: &str = "TERN_REDB_CRASH_CHILD";
/// Set with [`CHILD_ENV`]: `batch` or `never`.
const CHILD_FSYNC_ENV: &str = "TERN_REDB_CRASH_FSYNC";

fn child_options(fsync: &str) -> RedbOptions {
    match fsync {
        "never" => RedbOptions {
            durability: Fsync::Never,
            checkpoint_interval: Duration::from_millis(20),
            ..RedbOptions::default()
        },
        _ => RedbOptions::default(),
    }
}

/// Not a test on its own: the body of the child process of the kill -9 tests, which
/// resumes the workload where the store stands and prints the number of every batch
/// whose `apply` returned `Ok`, until it is killed (or after 60 s, in case the parent
/// died first). Returns at once when the environment does not ask for it.
#[test]
fn store_redb_crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let fsync = std::env::var(CHILD_FSYNC_ENV).unwrap_or_default();
    let mut store = RedbStore::open(Path::new(&path), child_options(&fsync)).expect("child open");
    let start = progress(&store.load().expect("child load"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = std::io::stdout().lock();
    let mut n = start + 1;
    while Instant::now() < deadline {
        store.apply(&workload_batch(n)).expect("child apply");
        writeln!(out, "{n}").expect("write");
        out.flush().expect("flush");
        n += 1;
    }
}

/// Runs the child `cycles` times on one file, killing it with SIGKILL at a random
/// moment each time, and checks after each kill that the store holds exactly the state
/// after some prefix of the batches — at least every acknowledged one when `durable`.
fn kill_9_cycles(fsync: &str, cycles: u32, durable: bool) {
    let dir = TempDir::new("crash");
    let path = dir.file("store.redb");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("kill -9 test ({fsync}) seed {seed}");
    let mut rng = XorShift::new(seed);
    let exe = std::env::current_exe().expect("test binary");
    let mut model = Model::default();
    let mut at = 0;
    let mut previous = 0;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store::redb::tests::store_redb_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env(CHILD_FSYNC_ENV, fsync)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        let target = 1 + rng.below(40);
        let mut acked = 0u64;
        let mut seen = 0;
        for line in lines.by_ref() {
            let Ok(n) = line.expect("read child").trim().parse::<u64>() else {
                continue;
            };
            acked = n;
            seen += 1;
            if seen >= target {
                break;
            }
        }
        assert!(seen > 0, "cycle {cycle}: the child acknowledged nothing");
        // Land the kill anywhere in the next commit, not just between two.
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // Acknowledgements printed before the kill count too.
        for line in lines {
            if let Ok(n) = line.expect("read child").trim().parse::<u64>() {
                acked = n;
            }
        }

        let store = RedbStore::open(&path, RedbOptions::default()).expect("reopen after kill -9");
        let snap = store.load().expect("load after kill -9");
        let k = progress(&snap);
        assert_eq!(
            snap.cursors.get("outbox/0").copied().unwrap_or(0),
            k,
            "cycle {cycle}: the cursor moved with its batch"
        );
        if durable {
            assert!(
                k >= acked,
                "cycle {cycle}: batch {acked} was acknowledged, store has {k}"
            );
        }
        assert!(
            k >= previous,
            "cycle {cycle}: store went back from {previous} to {k}"
        );
        advance(&mut model, &mut at, k);
        assert_eq!(
            snap,
            model.snapshot(),
            "cycle {cycle}: state is not that after batch {k}"
        );
        assert_eq!(store.recount(), store.stats(), "cycle {cycle}: totals");
        eprintln!("cycle {cycle}: acknowledged {acked}, store at {k}");
        previous = k;
    }
    if durable {
        assert!(previous > 0);
    }
}

#[test]
fn store_redb_survives_kill_9_with_every_acknowledged_batch() {
    kill_9_cycles("batch", 6, true);
}

#[test]
fn store_redb_never_mode_loses_only_whole_recent_batches_on_kill_9() {
    kill_9_cycles("never", 3, false);
}
