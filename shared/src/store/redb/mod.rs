//! [`RedbStore`]: the durable [`Store`] on redb, one database file (issue 5).
//!
//! # Layout
//!
//! One redb file, eight tables; record values are encoded by [`codec`] (versioned,
//! hand-written, length-prefixed), counters are redb's own `u64`:
//!
//! | table           | key                      | value                              |
//! |-----------------|--------------------------|------------------------------------|
//! | `sessions`      | client id                | session record without the id      |
//! | `entries`       | (client id, seq)         | entry (fixed head, then sub ids)   |
//! | `incoming_qos2` | (client id, packet id)   | `()`                               |
//! | `messages`      | message id               | message, topic included            |
//! | `message_refs`  | message id               | number of entries referencing it   |
//! | `retained`      | topic                    | message without the topic          |
//! | `cursors`       | cursor name              | `u64` value                        |
//! | `meta`          | `format_version`/`stats` | [`FORMAT_VERSION`] / running totals|
//!
//! redb orders tuple keys element by element, so one session's entries and QoS 2 ids
//! are a contiguous range in sequence order, and a session whose id is a prefix of
//! another's does not mix with it. Reference counts live in their own small table so
//! that enqueueing or acknowledging a fan-out message rewrites eight bytes, not the
//! message; `load` and `open` never have to scan the entries to rebuild them. A
//! cursor's row has a fixed-size value, so moving a cursor never changes
//! [`StoreStats::bytes`] (contract rule 8).
//!
//! # Format versions
//!
//! `meta` holds the [`FORMAT_VERSION`] the file was written in. Opening a file of a
//! newer version fails with [`StoreError::UnsupportedVersion`]. A version 1 file (from
//! before cursors) is upgraded by `open`, in one transaction: it gains the empty
//! `cursors` table, its stored totals gain the cursor count, and its version becomes
//! 2, so from then on a build that reads only version 1 refuses it rather than
//! dropping cursors it does not know.
//!
//! `apply` is one write transaction. Ops are validated and applied in order inside it;
//! reference counts of the messages the batch touches are cached and written at the
//! end, where unreferenced messages are collected (contract rule 7). The running
//! totals ([`StoreStats`]) are written to `meta` in the same transaction, so `stats`
//! is O(1) after a restart. [`StoreStats::bytes`] counts the encoded keys and values
//! in use plus [`ROW_OVERHEAD`] per row: what the budget (rule 8) must bound is what
//! the data needs, not the file size, which redb never shrinks by itself (freed pages
//! are reused by later commits; see [`RedbStore::disk_bytes`]). A refused batch is
//! aborted, so the file and the totals are untouched.
//!
//! # Compaction
//!
//! [`Store::reclaim_space`] compares the file size with [`StoreStats::bytes`] under a
//! [`CompactionPolicy`] and, when due, runs redb's compaction: it moves the live pages
//! to the front of the file and truncates it, in a series of two-phase commits, so a
//! crash during it leaves the store as it was before or after (its content is the same
//! either way). It needs the database to itself, which `&mut self` gives: no batch is
//! applied meanwhile.
//!
//! # Durability ([`Fsync`])
//!
//! - `Always` and `Batch`: every commit uses [`Durability::Immediate`]. When `apply`
//!   returns `Ok` the batch has been fsynced: it survives kill -9 and power loss. The
//!   two differ only in how the broker groups ops into batches.
//! - `Never`: commits use [`Durability::None`]. redb keeps such a commit in this
//!   process's memory only (the pages may reach the file, but the header that makes
//!   them the current state is not written), so **a kill -9, a panic with
//!   `panic = "abort"` or a power loss rolls the store back to the last durable
//!   commit**. A clean [`RedbStore::close`] (or drop) makes everything durable, as does
//!   [`RedbStore::sync`], and a commit is made durable anyway once
//!   [`RedbOptions::checkpoint_interval`] has passed since the last durable one, which
//!   bounds both the loss window and the pages redb cannot reuse meanwhile. After any
//!   crash the state is that of a prefix of the applied batches, never part of one.
//!
//! # Two-phase commit
//!
//! Every write transaction sets `set_two_phase_commit(true)` (DESIGN.md: redb ≥ 4.6,
//! two-phase commit on). With the default single-phase commit, redb writes the new
//! pages and flips the commit slot in one fsync and relies on checksums to detect,
//! after a crash, a slot whose pages did not all reach the disk. Checksums detect a
//! torn write only if the damaged pages are among those checksummed for that slot; a
//! flash controller that reorders writes across the fsync can leave a slot that looks
//! valid pointing at a mix of old and new pages. Two-phase commit writes and fsyncs the
//! data and the inactive slot first, and only then flips the primary bit and fsyncs
//! again, so the slot that is primary after power loss always describes pages that
//! were already on stable storage. It costs a second fsync per commit, which group
//! commit amortises over many messages.
//!
//! # Errors
//!
//! Opening reports a file redb cannot read (garbage, truncated, damaged pages: the
//! open verifies every checksum when [`RedbOptions::verify_on_open`] is set, as it is
//! by default) as [`StoreError::Corrupt`] with the path and what to do; a file written
//! by a newer Tern as [`StoreError::UnsupportedVersion`]; another process holding the
//! file (a second tern-edge on the same data directory) as [`StoreError::Io`] of kind
//! `ResourceBusy`. A commit that fails with an I/O error leaves the batch's outcome
//! unknown (redb may already have made it durable): the store then refuses further
//! batches until reopened, which recovers the file.

mod codec;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableHandle, WriteTransaction,
};
use bytestring::ByteString;

use super::{
    Compaction, CompactionPolicy, Fsync, InvalidOp, MessageId, SessionSnapshot, Snapshot, Store,
    StoreError, StoreLimits, StoreOp, StoreStats, FORMAT_VERSION,
};

/// Sessions by client id.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Entries by (client id, seq).
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
/// Incoming QoS 2 packet ids by (client id, packet id).
const INCOMING_QOS2: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming_qos2");
/// Messages by id.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Entries referencing each message, by message id; a row exactly per message.
const MESSAGE_REFS: TableDefinition<u64, u64> = TableDefinition::new("message_refs");
/// Retained messages by topic.
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// Named cursors (format version 2).
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
/// Format version and running totals.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `meta` key of the format version (`u32`, big endian).
const META_VERSION: &str = "format_version";
/// `meta` key of the running totals: `u64`s, big endian: sessions, entries, messages,
/// retained, incoming QoS 2 ids, bytes, then (format version 2) cursors.
const META_STATS: &str = "stats";

/// Per-row allowance in [`StoreStats::bytes`] for redb's own bookkeeping (offsets in
/// the leaf page); an estimate, so the budget tracks rows as well as bytes.
pub const ROW_OVERHEAD: u64 = 8;

/// What the operator should do about a corrupt store; part of every `Corrupt` detail.
const REMEDY: &str = "stop tern-edge and move the file aside to start with an empty store, \
                      or restore it from a backup";

/// How a [`RedbStore`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// When commits reach stable storage (see the module documentation).
    pub durability: Fsync,
    /// Bounds enforced by `apply`.
    pub limits: StoreLimits,
    /// With [`Fsync::Never`], the longest time between durable commits.
    pub checkpoint_interval: Duration,
    /// Verify every page checksum when opening (reads the whole file once); without
    /// it, a damaged page is only noticed when read and may make redb panic.
    pub verify_on_open: bool,
    /// Memory redb may use to cache pages.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            durability: Fsync::Batch,
            limits: StoreLimits::default(),
            checkpoint_interval: Duration::from_secs(1),
            verify_on_open: true,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The durable [`Store`]: one redb file; see the module documentation.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    options: RedbOptions,
    /// Running totals, equal to what `meta` holds after the last commit.
    stats: StoreStats,
    /// When the last `Immediate` commit finished (for [`Fsync::Never`]).
    last_durable: Instant,
    /// Commits made with `Durability::None` since the last durable one.
    pending: bool,
    /// Set when a commit failed: the outcome is unknown, so no further batches.
    poisoned: Option<String>,
    /// The last compaction, if it left the file still due (see [`CompactionPolicy`]).
    futile: Option<Compaction>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("stats", &self.stats)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Maps a redb error on `path` to a [`StoreError`]; `doing` says what was attempted.
fn store_error(path: &Path, doing: &str, e: impl Into<::redb::Error>) -> StoreError {
    use ::redb::Error as E;
    let io_error = |kind: io::ErrorKind, msg: String| StoreError::Io {
        path: path.to_owned(),
        source: io::Error::new(kind, msg),
    };
    let corrupt = |what: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail: format!("{doing}: {what}; {REMEDY}"),
    };
    match e.into() {
        // What redb reports for a file that is not a database or is cut short.
        E::Io(source)
            if matches!(
                source.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            corrupt(source.to_string())
        }
        E::Io(source) => StoreError::Io {
            path: path.to_owned(),
            source: io::Error::new(source.kind(), format!("{doing}: {source}")),
        },
        E::DatabaseAlreadyOpen | E::LockProtocolMismatch => io_error(
            io::ErrorKind::ResourceBusy,
            format!(
                "{doing}: the store is open in another process or handle \
                 (is another tern-edge using this data directory?)"
            ),
        ),
        E::Corrupted(what) => corrupt(what),
        E::UpgradeRequired(v) => corrupt(format!(
            "written in redb file format {v}, which this build does not read"
        )),
        e @ (E::TableTypeMismatch { .. }
        | E::TableIsMultimap(_)
        | E::TableIsNotMultimap(_)
        | E::TypeDefinitionChanged { .. }) => corrupt(format!("not a Tern store ({e})")),
        e => io_error(io::ErrorKind::Other, format!("{doing}: {e}")),
    }
}

/// A `Corrupt` error for a value that did not decode.
fn decode_error(
    path: &Path,
    table: &str,
    key: &dyn std::fmt::Debug,
    e: impl ToString,
) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail: format!("table {table}, key {key:?}: {}; {REMEDY}", e.to_string()),
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file (and its directory) if missing.
    pub fn open(path: &Path, options: RedbOptions) -> Result<RedbStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let db = Builder::new()
            .set_cache_size(options.cache_bytes)
            .set_check_integrity_on_open(options.verify_on_open)
            .create(path)
            .map_err(|e| store_error(path, "opening the store", e))?;
        let stats = Self::init(&db, path)?;
        Ok(RedbStore {
            db,
            path: path.to_owned(),
            options,
            stats,
            last_durable: Instant::now(),
            pending: false,
            poisoned: None,
            futile: None,
        })
    }

    /// Creates the tables of a new file, or checks the version of an existing one, and
    /// returns the stored totals.
    fn init(db: &Database, path: &Path) -> Result<StoreStats, StoreError> {
        let err = |e: ::redb::Error| store_error(path, "reading the store's metadata", e);
        let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_two_phase_commit(true);
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(|e| err(e.into()))?
            .map(|t| t.name().to_owned())
            .collect();
        let fresh = !tables.iter().any(|t| t == META.name());
        if fresh && !tables.is_empty() {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "a redb database but not a Tern store (tables {tables:?}); {REMEDY}"
                ),
            });
        }
        let stats = {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            if fresh {
                meta.insert(META_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
                    .map_err(|e| err(e.into()))?;
                meta.insert(META_STATS, encode_stats(&StoreStats::default()).as_slice())
                    .map_err(|e| err(e.into()))?;
                StoreStats::default()
            } else {
                let version = meta
                    .get(META_VERSION)
                    .map_err(|e| err(e.into()))?
                    .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| {
                        decode_error(path, "meta", &META_VERSION, "missing or malformed")
                    })?;
                if version > FORMAT_VERSION {
                    return Err(StoreError::UnsupportedVersion {
                        found: version,
                        supported: FORMAT_VERSION,
                    });
                }
                if version == 0 {
                    return Err(decode_error(path, "meta", &META_VERSION, "version 0"));
                }
                let stats = meta
                    .get(META_STATS)
                    .map_err(|e| err(e.into()))?
                    .and_then(|v| decode_stats(v.value(), version))
                    .ok_or_else(|| {
                        decode_error(path, "meta", &META_STATS, "missing or malformed")
                    })?;
                if version < FORMAT_VERSION {
                    // Version 1 -> 2: no cursors yet (their table is created below, in
                    // this transaction); the totals gain the cursor count.
                    if tables.iter().any(|t| t == CURSORS.name()) {
                        return Err(decode_error(
                            path,
                            "meta",
                            &META_VERSION,
                            format!("version {version} with a cursors table"),
                        ));
                    }
                    meta.insert(META_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
                        .map_err(|e| err(e.into()))?;
                    meta.insert(META_STATS, encode_stats(&stats).as_slice())
                        .map_err(|e| err(e.into()))?;
                }
                stats
            }
        };
        // Opening every table creates any that is missing and checks the types of the
        // others, so `load` and `apply` can rely on them.
        txn.open_table(SESSIONS).map_err(|e| err(e.into()))?;
        txn.open_table(ENTRIES).map_err(|e| err(e.into()))?;
        txn.open_table(INCOMING_QOS2).map_err(|e| err(e.into()))?;
        txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
        txn.open_table(MESSAGE_REFS).map_err(|e| err(e.into()))?;
        txn.open_table(RETAINED).map_err(|e| err(e.into()))?;
        txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(stats)
    }

    /// The file of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &RedbOptions {
        &self.options
    }

    /// Size of the file on disk (at least [`StoreStats::bytes`]; freed pages are reused
    /// but the file is not shrunk, see [`RedbStore::compact`]).
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Makes every batch applied so far durable (a no-op unless [`Fsync::Never`] left
    /// some pending).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        if !self.pending {
            return Ok(());
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| store_error(&self.path, "syncing", e))?;
        txn.set_two_phase_commit(true);
        self.commit(txn, true)
    }

    /// Closes the store, making pending commits durable; reports what a drop would
    /// only log.
    pub fn close(self) -> Result<(), StoreError> {
        let path = self.path;
        self.db
            .close()
            .map_err(|e| store_error(&path, "closing the store", e))
    }

    /// Rewrites the file so that it takes no more pages than the data needs; slow (it
    /// copies the live pages), for startup or an idle moment. Returns whether the file
    /// changed. An I/O error leaves the store refusing batches until reopened.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        self.sync()?;
        self.db.compact().map_err(|e| {
            let err = store_error(&self.path, "compacting the store", e);
            if matches!(err, StoreError::Io { .. }) {
                // A commit of the compaction failed: as for a batch, its outcome is
                // unknown until the file is reopened (which recovers it).
                self.poisoned = Some(err.to_string());
            }
            err
        })
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(StoreError::Io {
                path: self.path.clone(),
                source: io::Error::other(format!(
                    "a commit failed earlier ({why}); the store must be reopened"
                )),
            }),
        }
    }

    /// Whether the next commit must be durable.
    fn durable_commit(&self) -> bool {
        match self.options.durability {
            Fsync::Always | Fsync::Batch => true,
            Fsync::Never => self.last_durable.elapsed() >= self.options.checkpoint_interval,
        }
    }

    /// Commits `txn`; a failure poisons the store (its outcome is unknown).
    fn commit(&mut self, mut txn: WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let level = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(e) = txn.set_durability(level) {
            let _ = txn.abort();
            return Err(store_error(&self.path, "committing", e));
        }
        if let Err(e) = txn.commit() {
            let err = store_error(&self.path, "committing", e);
            self.poisoned = Some(err.to_string());
            return Err(err);
        }
        if durable {
            self.last_durable = Instant::now();
            self.pending = false;
        } else {
            self.pending = true;
        }
        Ok(())
    }

    /// Counts everything from the tables, to check the running totals in tests.
    #[cfg(test)]
    fn recount(&self) -> StoreStats {
        let snap = self.load().expect("load for recount");
        let txn = self.db.begin_read().expect("read");
        let mut s = StoreStats {
            sessions: snap.sessions.len() as u64,
            messages: snap.messages.len() as u64,
            retained: snap.retained.len() as u64,
            cursors: snap.cursors.len() as u64,
            ..StoreStats::default()
        };
        let entries = txn.open_table(ENTRIES).expect("entries");
        for row in entries.iter().expect("iter") {
            let (k, v) = row.expect("row");
            s.entries += 1;
            s.bytes += entry_bytes(k.value().0, v.value().len());
        }
        let refs = txn.open_table(MESSAGE_REFS).expect("refs");
        let mut counted: HashMap<u64, u64> = HashMap::new();
        for (_, e) in snap.sessions.iter().flat_map(|s| &s.entries) {
            *counted.entry(e.message.0).or_default() += 1;
        }
        assert_eq!(
            refs.len().expect("len"),
            snap.messages.len() as u64,
            "a refs row per message"
        );
        for (id, n) in counted {
            assert_eq!(
                refs.get(id).expect("get").map(|g| g.value()),
                Some(n),
                "refs of {id}"
            );
        }
        let messages = txn.open_table(MESSAGES).expect("messages");
        for row in messages.iter().expect("iter") {
            s.bytes += message_bytes(row.expect("row").1.value().len());
        }
        let retained = txn.open_table(RETAINED).expect("retained");
        for row in retained.iter().expect("iter") {
            let (k, v) = row.expect("row");
            s.bytes += retained_bytes(k.value(), v.value().len());
        }
        let sessions = txn.open_table(SESSIONS).expect("sessions");
        for row in sessions.iter().expect("iter") {
            let (k, v) = row.expect("row");
            s.bytes += session_bytes(k.value(), v.value().len());
        }
        for sess in &snap.sessions {
            s.incoming_qos2 += sess.incoming_qos2.len() as u64;
            s.bytes += sess.incoming_qos2.len() as u64 * qos2_bytes(&sess.record.client_id);
        }
        s.bytes += snap.cursors.keys().map(|n| cursor_bytes(n)).sum::<u64>();
        s
    }
}

/// Bytes of a session row.
fn session_bytes(client_id: &str, value_len: usize) -> u64 {
    client_id.len() as u64 + value_len as u64 + ROW_OVERHEAD
}

/// Bytes of an entry row (the tuple key carries a 4-byte length for the id).
fn entry_bytes(client_id: &str, value_len: usize) -> u64 {
    client_id.len() as u64 + 12 + value_len as u64 + ROW_OVERHEAD
}

/// Bytes of an incoming QoS 2 row.
fn qos2_bytes(client_id: &str) -> u64 {
    client_id.len() as u64 + 6 + ROW_OVERHEAD
}

/// Bytes of a message row plus its reference-count row.
fn message_bytes(value_len: usize) -> u64 {
    8 + value_len as u64 + ROW_OVERHEAD + 16 + ROW_OVERHEAD
}

/// Bytes of a cursor row; the value has a fixed size, so replacing it adds nothing.
fn cursor_bytes(name: &str) -> u64 {
    name.len() as u64 + 8 + ROW_OVERHEAD
}

/// Bytes of a retained row.
fn retained_bytes(topic: &str, value_len: usize) -> u64 {
    topic.len() as u64 + value_len as u64 + ROW_OVERHEAD
}

/// Lowers a running total; saturating, so a damaged total cannot make `apply` panic
/// (the test build checks every total against a recount instead).
fn dec(total: &mut u64, by: u64) {
    *total = total.saturating_sub(by);
}

/// Size of the encoded totals of format version 2 (version 1: without cursors, 48).
const STATS_LEN: usize = 56;

fn encode_stats(s: &StoreStats) -> [u8; STATS_LEN] {
    let mut out = [0; STATS_LEN];
    let fields = [
        s.sessions,
        s.entries,
        s.messages,
        s.retained,
        s.incoming_qos2,
        s.bytes,
        s.cursors,
    ];
    for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// Decodes the totals as stored by format `version` (1: no cursor count).
fn decode_stats(b: &[u8], version: u32) -> Option<StoreStats> {
    let len = if version == 1 { 48 } else { STATS_LEN };
    if b.len() != len {
        return None;
    }
    let mut f = b.chunks_exact(8).map(|c| {
        let mut a = [0; 8];
        a.copy_from_slice(c);
        u64::from_be_bytes(a)
    });
    Some(StoreStats {
        sessions: f.next()?,
        entries: f.next()?,
        messages: f.next()?,
        retained: f.next()?,
        incoming_qos2: f.next()?,
        bytes: f.next()?,
        cursors: if version == 1 { 0 } else { f.next()? },
    })
}

/// Why an op or the end of a batch failed.
enum Fail {
    /// The op was refused (contract rule 4).
    Invalid(InvalidOp),
    /// redb failed.
    Db(::redb::Error),
    /// A stored value did not decode: table, key, why.
    Decode(&'static str, String, codec::DecodeError),
}

impl From<::redb::StorageError> for Fail {
    fn from(e: ::redb::StorageError) -> Self {
        Fail::Db(e.into())
    }
}

/// The tables of one write transaction and the batch's working state.
struct Batch<'t> {
    sessions: Table<'t, &'static str, &'static [u8]>,
    entries: Table<'t, (&'static str, u64), &'static [u8]>,
    qos2: Table<'t, (&'static str, u16), ()>,
    messages: Table<'t, u64, &'static [u8]>,
    refs: Table<'t, u64, u64>,
    retained: Table<'t, &'static str, &'static [u8]>,
    cursors: Table<'t, &'static str, u64>,
    meta: Table<'t, &'static str, &'static [u8]>,
    /// Reference counts of the messages the batch touched, as they stand now.
    counts: HashMap<u64, u64>,
    /// A client id known to have a session now: consecutive ops of one session (a
    /// burst of enqueues) look its session up once.
    known_session: String,
    stats: StoreStats,
    /// Scratch buffer for encoding.
    buf: Vec<u8>,
}

impl<'t> Batch<'t> {
    fn open(txn: &'t WriteTransaction, stats: StoreStats) -> Result<Self, ::redb::Error> {
        Ok(Batch {
            sessions: txn.open_table(SESSIONS)?,
            entries: txn.open_table(ENTRIES)?,
            qos2: txn.open_table(INCOMING_QOS2)?,
            messages: txn.open_table(MESSAGES)?,
            refs: txn.open_table(MESSAGE_REFS)?,
            retained: txn.open_table(RETAINED)?,
            cursors: txn.open_table(CURSORS)?,
            meta: txn.open_table(META)?,
            counts: HashMap::new(),
            known_session: String::new(),
            stats,
            buf: Vec::with_capacity(256),
        })
    }

    fn session_exists(&mut self, client_id: &str) -> Result<bool, Fail> {
        if !self.known_session.is_empty() && self.known_session == client_id {
            return Ok(true);
        }
        let exists = self.sessions.get(client_id)?.is_some();
        if exists {
            self.known_session.clear();
            self.known_session.push_str(client_id);
        }
        Ok(exists)
    }

    /// The current reference count of `id`, `None` if no such message is stored.
    fn count(&mut self, id: u64) -> Result<Option<&mut u64>, Fail> {
        if !self.counts.contains_key(&id) {
            let Some(n) = self.refs.get(id)?.map(|g| g.value()) else {
                return Ok(None);
            };
            self.counts.insert(id, n);
        }
        Ok(self.counts.get_mut(&id))
    }

    /// Drops one reference to `id` (collection waits for the end of the batch).
    fn release(&mut self, id: MessageId) -> Result<(), Fail> {
        match self.count(id.0)? {
            Some(n) if *n > 0 => {
                *n -= 1;
                Ok(())
            }
            _ => Err(Fail::Db(::redb::Error::Corrupted(format!(
                "an entry references message {} whose reference count is missing or zero",
                id.0
            )))),
        }
    }

    fn op(&mut self, op: &StoreOp) -> Result<(), Fail> {
        let unknown_session = |c: &ByteString| {
            Fail::Invalid(InvalidOp::UnknownSession {
                client_id: c.clone(),
            })
        };
        match op {
            StoreOp::PutSession(record) => {
                self.buf.clear();
                codec::encode_session(record, &mut self.buf);
                let cid: &str = &record.client_id;
                let old = self.sessions.insert(cid, self.buf.as_slice())?;
                match old {
                    Some(old) => {
                        let old_len = old.value().len();
                        dec(&mut self.stats.bytes, session_bytes(cid, old_len));
                    }
                    None => self.stats.sessions += 1,
                }
                self.stats.bytes += session_bytes(cid, self.buf.len());
            }
            StoreOp::DeleteSession { client_id } => {
                let cid: &str = client_id;
                if self.known_session == cid {
                    self.known_session.clear();
                }
                let removed = self.sessions.remove(cid)?.map(|g| g.value().len());
                let Some(len) = removed else {
                    return Ok(());
                };
                dec(&mut self.stats.sessions, 1);
                dec(&mut self.stats.bytes, session_bytes(cid, len));
                let mut released = Vec::new();
                for row in self
                    .entries
                    .extract_from_if((cid, 0u64)..=(cid, u64::MAX), |_, _| true)?
                {
                    let (k, v) = row?;
                    let v = v.value();
                    let id = codec::entry_message(v)
                        .map_err(|e| Fail::Decode("entries", format!("{:?}", k.value()), e))?;
                    released.push((id, v.len()));
                }
                for (id, len) in released {
                    dec(&mut self.stats.entries, 1);
                    dec(&mut self.stats.bytes, entry_bytes(cid, len));
                    self.release(id)?;
                }
                let mut ids = 0u64;
                for row in self
                    .qos2
                    .extract_from_if((cid, 0u16)..=(cid, u16::MAX), |_, _| true)?
                {
                    row?;
                    ids += 1;
                }
                dec(&mut self.stats.incoming_qos2, ids);
                dec(&mut self.stats.bytes, ids * qos2_bytes(cid));
            }
            StoreOp::PutMessage { id, message } => {
                if self.counts.contains_key(&id.0) || self.refs.get(id.0)?.is_some() {
                    return Err(Fail::Invalid(InvalidOp::DuplicateMessage { id: *id }));
                }
                self.buf.clear();
                codec::encode_message(message, true, &mut self.buf);
                self.messages.insert(id.0, self.buf.as_slice())?;
                self.counts.insert(id.0, 0);
                self.stats.messages += 1;
                self.stats.bytes += message_bytes(self.buf.len());
            }
            StoreOp::Enqueue {
                client_id,
                seq,
                entry,
            } => {
                let cid: &str = client_id;
                if !self.session_exists(cid)? {
                    return Err(unknown_session(client_id));
                }
                // The insert reports a duplicate itself; a failed op aborts the whole
                // transaction, so the overwritten entry is never committed.
                self.buf.clear();
                codec::encode_entry(entry, &mut self.buf);
                if self
                    .entries
                    .insert((cid, *seq), self.buf.as_slice())?
                    .is_some()
                {
                    return Err(Fail::Invalid(InvalidOp::DuplicateEntry {
                        client_id: client_id.clone(),
                        seq: *seq,
                    }));
                }
                match self.count(entry.message.0)? {
                    Some(n) => *n += 1,
                    None => {
                        return Err(Fail::Invalid(InvalidOp::UnknownMessage {
                            id: entry.message,
                        }))
                    }
                }
                self.stats.entries += 1;
                self.stats.bytes += entry_bytes(cid, self.buf.len());
            }
            StoreOp::UpdateEntry {
                client_id,
                seq,
                state,
            } => {
                let cid: &str = client_id;
                let Some(mut value) = self.entries.get((cid, *seq))?.map(|g| g.value().to_vec())
                else {
                    return Err(Fail::Invalid(InvalidOp::UnknownEntry {
                        client_id: client_id.clone(),
                        seq: *seq,
                    }));
                };
                codec::patch_entry_state(&mut value, *state)
                    .map_err(|e| Fail::Decode("entries", format!("{:?}", (cid, seq)), e))?;
                // Same length: the byte total does not change.
                self.entries.insert((cid, *seq), value.as_slice())?;
            }
            StoreOp::RemoveEntriesUpTo { client_id, up_to } => {
                let cid: &str = client_id;
                // One range walk instead of a lookup from the root per entry.
                let mut released = Vec::new();
                for row in self
                    .entries
                    .extract_from_if((cid, 0u64)..=(cid, *up_to), |_, _| true)?
                {
                    let (k, v) = row?;
                    let v = v.value();
                    let id = codec::entry_message(v)
                        .map_err(|e| Fail::Decode("entries", format!("{:?}", k.value()), e))?;
                    released.push((id, v.len()));
                }
                for (id, len) in released {
                    dec(&mut self.stats.entries, 1);
                    dec(&mut self.stats.bytes, entry_bytes(cid, len));
                    self.release(id)?;
                }
            }
            StoreOp::RemoveEntry { client_id, seq } => {
                let cid: &str = client_id;
                let removed = match self.entries.remove((cid, *seq))? {
                    Some(g) => {
                        let v = g.value();
                        Some((codec::entry_message(v), v.len()))
                    }
                    None => None,
                };
                if let Some((id, len)) = removed {
                    let id =
                        id.map_err(|e| Fail::Decode("entries", format!("{:?}", (cid, seq)), e))?;
                    dec(&mut self.stats.entries, 1);
                    dec(&mut self.stats.bytes, entry_bytes(cid, len));
                    self.release(id)?;
                }
            }
            StoreOp::AddIncomingQos2 {
                client_id,
                packet_id,
            } => {
                let cid: &str = client_id;
                if !self.session_exists(cid)? {
                    return Err(unknown_session(client_id));
                }
                if self.qos2.insert((cid, *packet_id), ())?.is_none() {
                    self.stats.incoming_qos2 += 1;
                    self.stats.bytes += qos2_bytes(cid);
                }
            }
            StoreOp::RemoveIncomingQos2 {
                client_id,
                packet_id,
            } => {
                let cid: &str = client_id;
                if self.qos2.remove((cid, *packet_id))?.is_some() {
                    dec(&mut self.stats.incoming_qos2, 1);
                    dec(&mut self.stats.bytes, qos2_bytes(cid));
                }
            }
            StoreOp::PutRetained(message) => {
                self.buf.clear();
                codec::encode_message(message, false, &mut self.buf);
                let topic: &str = &message.topic;
                let old = self.retained.insert(topic, self.buf.as_slice())?;
                match old {
                    Some(old) => {
                        let old_len = old.value().len();
                        dec(&mut self.stats.bytes, retained_bytes(topic, old_len));
                    }
                    None => self.stats.retained += 1,
                }
                self.stats.bytes += retained_bytes(topic, self.buf.len());
            }
            StoreOp::DeleteRetained { topic } => {
                let topic: &str = topic;
                if let Some(old) = self.retained.remove(topic)? {
                    let old_len = old.value().len();
                    dec(&mut self.stats.retained, 1);
                    dec(&mut self.stats.bytes, retained_bytes(topic, old_len));
                }
            }
            StoreOp::PutCursor { name, value } => {
                let name: &str = name;
                if self.cursors.insert(name, *value)?.is_none() {
                    self.stats.cursors += 1;
                    self.stats.bytes += cursor_bytes(name);
                }
            }
            StoreOp::DeleteCursor { name } => {
                let name: &str = name;
                if self.cursors.remove(name)?.is_some() {
                    dec(&mut self.stats.cursors, 1);
                    dec(&mut self.stats.bytes, cursor_bytes(name));
                }
            }
        }
        Ok(())
    }

    /// Writes the reference counts, collects unreferenced messages and stores the
    /// totals; returns them.
    fn finish(mut self) -> Result<StoreStats, Fail> {
        let mut counts: Vec<(u64, u64)> = self.counts.drain().collect();
        // Key order keeps the B-tree writes local.
        counts.sort_unstable();
        for (id, n) in counts {
            if n == 0 {
                let removed = self.messages.remove(id)?.map(|g| g.value().len());
                if let Some(len) = removed {
                    dec(&mut self.stats.messages, 1);
                    dec(&mut self.stats.bytes, message_bytes(len));
                }
                self.refs.remove(id)?;
            } else {
                self.refs.insert(id, n)?;
            }
        }
        self.meta
            .insert(META_STATS, encode_stats(&self.stats).as_slice())?;
        Ok(self.stats)
    }
}

impl Store for RedbStore {
    fn apply(&mut self, batch: &[StoreOp]) -> Result<(), StoreError> {
        self.check_usable()?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| store_error(&self.path, "starting a transaction", e))?;
        txn.set_two_phase_commit(true);
        let outcome = match Batch::open(&txn, self.stats) {
            Err(e) => Err((None, Fail::Db(e))),
            Ok(mut b) => batch
                .iter()
                .enumerate()
                .try_for_each(|(i, op)| b.op(op).map_err(|f| (Some(i), f)))
                .and_then(|()| b.finish().map_err(|f| (None, f))),
        };
        let stats = match outcome {
            Ok(stats) => stats,
            Err((index, fail)) => {
                let _ = txn.abort();
                return Err(match (index, fail) {
                    (Some(index), Fail::Invalid(reason)) => StoreError::Invalid { index, reason },
                    (_, Fail::Invalid(reason)) => StoreError::Invalid { index: 0, reason },
                    (_, Fail::Db(e)) => store_error(&self.path, "applying a batch", e),
                    (_, Fail::Decode(table, key, e)) => decode_error(&self.path, table, &key, e),
                });
            }
        };
        if let Some(limit) = self.options.limits.max_bytes {
            // Only growth is refused, so a full store can always be drained.
            if stats.bytes > limit && stats.bytes > self.stats.bytes {
                let _ = txn.abort();
                return Err(StoreError::Full {
                    needed: stats.bytes,
                    limit,
                });
            }
        }
        let durable = self.durable_commit();
        self.commit(txn, durable)?;
        self.stats = stats;
        #[cfg(test)]
        assert_eq!(
            self.recount(),
            self.stats,
            "running totals drifted from the tables"
        );
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let path = &self.path;
        let err = |e: ::redb::Error| store_error(path, "loading the store", e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let sessions = txn.open_table(SESSIONS).map_err(|e| err(e.into()))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| err(e.into()))?;
        let qos2 = txn.open_table(INCOMING_QOS2).map_err(|e| err(e.into()))?;
        let messages = txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
        let retained = txn.open_table(RETAINED).map_err(|e| err(e.into()))?;
        let cursors = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;

        let mut snap = Snapshot::empty();
        for row in sessions.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let cid = k.value();
            let record = codec::decode_session(ByteString::from(cid), v.value())
                .map_err(|e| decode_error(path, "sessions", &cid, e))?;
            let mut session = SessionSnapshot {
                record,
                entries: Vec::new(),
                incoming_qos2: Vec::new(),
            };
            let range = entries
                .range((cid, 0u64)..=(cid, u64::MAX))
                .map_err(|e| err(e.into()))?;
            for row in range {
                let (k, v) = row.map_err(|e| err(e.into()))?;
                let (_, seq) = k.value();
                let entry = codec::decode_entry(v.value())
                    .map_err(|e| decode_error(path, "entries", &(cid, seq), e))?;
                session.entries.push((seq, entry));
            }
            let range = qos2
                .range((cid, 0u16)..=(cid, u16::MAX))
                .map_err(|e| err(e.into()))?;
            for row in range {
                let (k, _) = row.map_err(|e| err(e.into()))?;
                session.incoming_qos2.push(k.value().1);
            }
            snap.sessions.push(session);
        }
        let mut strings = codec::Interner::default();
        let count = messages.len().map_err(|e| err(e.into()))?;
        // Exactly sized: a million messages would otherwise leave up to half the
        // vector's capacity unused while the broker restores from it.
        snap.messages
            .reserve_exact(usize::try_from(count).unwrap_or(0));
        for row in messages.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let id = k.value();
            let message = codec::decode_message(None, v.value(), &mut strings)
                .map_err(|e| decode_error(path, "messages", &id, e))?;
            // The table iterates by ascending key: the vector is sorted.
            snap.messages.push((MessageId(id), message));
        }
        for row in retained.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let topic = k.value();
            let message =
                codec::decode_message(Some(ByteString::from(topic)), v.value(), &mut strings)
                    .map_err(|e| decode_error(path, "retained", &topic, e))?;
            snap.retained.push(message);
        }
        for row in cursors.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            snap.cursors.insert(ByteString::from(k.value()), v.value());
        }
        Ok(snap)
    }

    fn stats(&self) -> StoreStats {
        self.stats
    }

    fn reclaim_space(
        &mut self,
        policy: &CompactionPolicy,
    ) -> Result<Option<Compaction>, StoreError> {
        self.check_usable()?;
        let before = self.disk_bytes()?;
        let in_use = self.stats.bytes;
        if !policy.is_due(before, in_use, self.futile.as_ref()) {
            return Ok(None);
        }
        let started = Instant::now();
        self.compact()?;
        let done = Compaction {
            file_bytes_before: before,
            file_bytes_after: self.disk_bytes()?,
            in_use_bytes: in_use,
            duration: started.elapsed(),
        };
        self.futile = policy
            .is_due(done.file_bytes_after, in_use, None)
            .then_some(done);
        Ok(Some(done))
    }
}

#[cfg(test)]
mod tests;
