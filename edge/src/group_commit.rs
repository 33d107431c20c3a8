//! The store behind the broker: opening it, and the group-commit thread that applies
//! the broker's store batches and reports them durable.
//!
//! The broker hands out batches in order (`poll_store_batch`); this thread applies them
//! in that order. With `fsync = "batch"` every batch waiting when a commit starts is
//! merged into that commit, so the fsync cost is shared by everything that arrived
//! while the previous one ran; `commit_window_us` can wait a little longer, and
//! `max_batch_ops` bounds a transaction. With `fsync = "always"` each batch is its own
//! transaction. The store does blocking I/O, so it runs on its own thread, never on
//! the tokio workers.
//!
//! Space: the store file does not shrink by itself when queues drain. It is compacted
//! (see [`CompactionPolicy`]) when opened, before the broker serves, and by this thread
//! once no batch came for `compact_idle_secs`. A gateway whose bridge writes the store
//! all the time is never idle, so while batches keep coming the thread also looks once
//! per `compact_idle_secs`, but compacts then only a store that holds little
//! ([`BUSY_COMPACT_MAX_IN_USE`]): a compaction copies what is in use, so its pause is
//! short then. The thread owns the store, so nothing else touches it meanwhile; batches
//! that arrive during a compaction wait in the channel (and their PUBACKs with them)
//! and are merged into the next commit.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tern_core::broker::StoreBatch;
use tern_core::store::{
    coalesce, CompactionPolicy, Fsync, MemoryStore, RedbOptions, RedbStore, Snapshot, Store,
    StoreError, StoreLimits, StoreOp,
};

use crate::config::{EdgeConfig, StoreBackend, StoreConfig};
use crate::server::Server;

/// A store the commit thread can own.
pub(crate) type BoxedStore = Box<dyn Store + Send>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the store {}: {source}", path.display())]
pub struct OpenError {
    /// The store file.
    pub path: PathBuf,
    /// What went wrong; corrupt files say what to do.
    #[source]
    pub source: StoreError,
}

/// Opens the configured store, compacts it if configured and worth it, and reads
/// everything it holds.
pub(crate) fn open(config: &EdgeConfig) -> Result<(BoxedStore, Snapshot), OpenError> {
    let path = config.node.data_dir.join(&config.store.file);
    let wrap = |source| OpenError {
        path: path.clone(),
        source,
    };
    let limits = StoreLimits {
        max_bytes: (config.store.max_bytes > 0).then_some(config.store.max_bytes),
    };
    let create = || -> Result<BoxedStore, StoreError> {
        Ok(match config.store.backend {
            StoreBackend::Memory => Box::new(MemoryStore::new(limits)),
            StoreBackend::Redb => {
                let options = RedbOptions {
                    durability: config.store.fsync,
                    limits,
                    ..RedbOptions::default()
                };
                Box::new(RedbStore::open(&path, options)?)
            }
        })
    };
    let mut store = create().map_err(wrap)?;
    if config.store.compact_on_start {
        if let Err(error) = reclaim(store.as_mut(), &policy(&config.store), "startup") {
            // The file is as it was before or after the compaction (redb commits it in
            // steps); a store that refuses batches after the error is reopened, so a
            // file that cannot be compacted never keeps the gateway from starting.
            tracing::warn!(%error, "store compaction failed; serving without it");
            store = create().map_err(wrap)?;
        }
    }
    let snapshot = store.load().map_err(wrap)?;
    Ok((store, snapshot))
}

/// The compaction policy of the `[store]` section.
fn policy(config: &StoreConfig) -> CompactionPolicy {
    CompactionPolicy {
        min_reclaim_bytes: config.compact_min_bytes,
    }
}

/// Compacts `store` if `policy` says it is worth it and logs what it did; `when` names
/// the occasion for the log.
fn reclaim(
    store: &mut (dyn Store + Send),
    policy: &CompactionPolicy,
    when: &str,
) -> Result<(), StoreError> {
    if let Some(done) = store.reclaim_space(policy)? {
        tracing::info!(
            when,
            file_bytes_before = done.file_bytes_before,
            file_bytes_after = done.file_bytes_after,
            in_use_bytes = done.in_use_bytes,
            ms = u64::try_from(done.duration.as_millis()).unwrap_or(u64::MAX),
            "store file compacted"
        );
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the wall clock stored records use.
pub(crate) fn unix_ms_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the commit thread; it ends once every sender of the returned channel is
/// dropped and the batches already sent are applied.
pub(crate) fn spawn(
    store: BoxedStore,
    config: &StoreConfig,
    server: Server,
) -> (mpsc::Sender<StoreBatch>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let committer = Committer {
        store,
        full_logged: None,
        full_refusals: 0,
        limit: (config.max_bytes > 0).then_some(config.max_bytes),
        merge: config.fsync != Fsync::Always,
        window: Duration::from_micros(config.commit_window_us),
        max_ops: config.max_batch_ops.max(1),
        compact_idle: (config.compact_idle_secs > 0)
            .then(|| Duration::from_secs(config.compact_idle_secs)),
        policy: policy(config),
        compact_checked: Instant::now(),
        server,
    };
    let handle = std::thread::Builder::new()
        .name("tern-commit".into())
        .spawn(move || committer.run(rx));
    match handle {
        Ok(handle) => (tx, handle),
        Err(error) => {
            // Without the thread nothing could ever be acknowledged: stop here.
            tracing::error!(%error, "cannot start the store commit thread");
            std::process::exit(1);
        }
    }
}

/// Least time between two "store full" log lines.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// While batches keep coming, only a store holding at most this many bytes is
/// compacted: a drained 140 MB file compacted in 0.2 s, one holding 60 MB in 2 s
/// (release build, loaded 2-core machine).
const BUSY_COMPACT_MAX_IN_USE: u64 = 4 * 1024 * 1024;

/// Whether the commit thread, busy with batches, should look at the store file now:
/// once per `every` since it last did (`since_check`), if the store holds little.
fn busy_compaction_check(every: Duration, since_check: Duration, in_use_bytes: u64) -> bool {
    since_check >= every && in_use_bytes <= BUSY_COMPACT_MAX_IN_USE
}

struct Committer {
    store: BoxedStore,
    /// When "store full" was last logged, and the refusals since.
    full_logged: Option<Instant>,
    full_refusals: u64,
    /// The store's byte budget, reported to the broker with the usage.
    limit: Option<u64>,
    merge: bool,
    window: Duration,
    max_ops: usize,
    /// Compact after this long without a batch, and look this often while busy;
    /// `None`: never while running.
    compact_idle: Option<Duration>,
    policy: CompactionPolicy,
    /// When the store file was last looked at for compaction.
    compact_checked: Instant,
    server: Server,
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<StoreBatch>) {
        // A store restored near its budget refuses from the first PUBLISH on.
        self.server
            .store_usage(self.store.stats().bytes, self.limit);
        let mut ops: Vec<StoreOp> = Vec::new();
        // (batch id, where its ops end in `ops`), in order.
        let mut group: Vec<(u64, usize)> = Vec::new();
        // A batch came since the store was last checked for compaction.
        let mut wrote = false;
        while let Some(first) = self.next_batch(&rx, &mut wrote) {
            if let Some(every) = self.compact_idle {
                let since = self.compact_checked.elapsed();
                if busy_compaction_check(every, since, self.store.stats().bytes) {
                    self.compact("busy");
                }
            }
            ops.clear();
            group.clear();
            ops.extend(first.ops);
            group.push((first.id, ops.len()));
            if self.merge {
                if !self.window.is_zero() {
                    std::thread::sleep(self.window);
                }
                while ops.len() < self.max_ops {
                    let Ok(next) = rx.try_recv() else { break };
                    ops.extend(next.ops);
                    group.push((next.id, ops.len()));
                }
            }
            // Entries enqueued and acknowledged within the group need not be written.
            let coalesced = coalesce(&ops);
            match self.store.apply(coalesced.as_deref().unwrap_or(&ops)) {
                Ok(()) => {
                    // Usage first: whoever sees an acknowledgement released by this
                    // commit also sees (in metrics, in the store budget) the bytes that
                    // hold its message.
                    self.server
                        .store_usage(self.store.stats().bytes, self.limit);
                    if let Some(&(last, _)) = group.last() {
                        self.server.store_committed(last);
                    }
                    continue;
                }
                Err(error) if group.len() > 1 && !matches!(error, StoreError::Io { .. }) => {
                    // One batch spoiled the group (e.g. it grows a full store): apply
                    // them one by one, in order, so a drain is never refused for a
                    // publisher's sake (store contract rule 8).
                    let mut start = 0;
                    for &(id, end) in &group {
                        let result = self.store.apply(&ops[start..end]);
                        self.settle(id, result);
                        start = end;
                    }
                }
                Err(error) => self.settle(group[0].0, Err(error)),
            }
            self.server
                .store_usage(self.store.stats().bytes, self.limit);
        }
        tracing::debug!("store commit thread done");
    }

    /// Waits for the next batch (`None` once every sender is gone). When `wrote` and
    /// none comes for `compact_idle`, compacts the store if it is worth it first: the
    /// file only changes with batches, so one check per idle spell is enough.
    fn next_batch(
        &mut self,
        rx: &mpsc::Receiver<StoreBatch>,
        wrote: &mut bool,
    ) -> Option<StoreBatch> {
        if let (Some(idle), true) = (self.compact_idle, *wrote) {
            match rx.recv_timeout(idle) {
                Ok(batch) => return Some(batch),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {
                    *wrote = false;
                    self.compact("idle");
                }
            }
        }
        let batch = rx.recv().ok()?;
        *wrote = true;
        Some(batch)
    }

    /// Compacts the store if it is worth it; `when` names the occasion for the log.
    fn compact(&mut self, when: &str) {
        self.compact_checked = Instant::now();
        if let Err(error) = reclaim(self.store.as_mut(), &self.policy, when) {
            tracing::error!(%error, "store compaction failed");
            if matches!(error, StoreError::Io { .. }) {
                exit_unusable();
            }
        }
    }

    /// Reports the outcome of applying batch `id` to the broker.
    fn settle(&mut self, id: u64, result: Result<(), StoreError>) {
        let error = match result {
            Ok(()) => return self.server.store_committed(id),
            Err(error) => error,
        };
        let quota = matches!(error, StoreError::Full { .. });
        if !quota {
            tracing::error!(%error, "store write failed");
        } else if self
            .full_logged
            .is_none_or(|at| at.elapsed() >= FULL_LOG_INTERVAL)
        {
            // Once per interval: a full store refuses every publisher in turn.
            tracing::warn!(%error, refused = self.full_refusals + 1, "store full; refusing publishers (0x97) until queues drain");
            self.full_logged = Some(Instant::now());
            self.full_refusals = 0;
        } else {
            self.full_refusals += 1;
        }
        self.server.store_failed(id, quota);
        if matches!(error, StoreError::Io { .. }) {
            exit_unusable();
        }
    }
}

/// Ends the process after a store I/O error: the store refuses further writes until
/// reopened (its contract), and a restart reopens it (systemd/procd restart us on
/// failure).
fn exit_unusable() -> ! {
    tracing::error!("the store is unusable after an I/O error; exiting");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(30);

    #[test]
    fn busy_compaction_check_once_per_interval() {
        assert!(!busy_compaction_check(EVERY, Duration::from_secs(29), 0));
        assert!(busy_compaction_check(EVERY, EVERY, 0));
        assert!(busy_compaction_check(
            EVERY,
            Duration::from_secs(3600),
            1000
        ));
    }

    #[test]
    fn busy_compaction_check_only_for_a_store_holding_little() {
        assert!(busy_compaction_check(EVERY, EVERY, BUSY_COMPACT_MAX_IN_USE));
        assert!(!busy_compaction_check(
            EVERY,
            EVERY,
            BUSY_COMPACT_MAX_IN_USE + 1
        ));
    }
}
