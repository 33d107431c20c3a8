//! Durable store benchmarks: group commit on [`RedbStore`] with `fsync = "batch"`
//! (`Durability::Immediate`, two-phase commit), 100-byte payloads.
//!
//! Before criterion runs, a summary table is printed to stderr: for each batch size,
//! messages per second and bytes written to the device per message (from
//! `/proc/self/io` `write_bytes`, so fsyncs, page rewrites and the commit header are
//! all counted), both for appending (PutMessage + Enqueue) and for a steady state where
//! each batch also acknowledges as many older entries as it adds.
//!
//! Run: `cargo bench -p tern-core --features redb --bench store`. The store lives under
//! `TERN_BENCH_DIR` (default: the system temp dir), so point it at the device to measure.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{BenchmarkId, Criterion, Throughput};
use tern_core::message::QoS;
use tern_core::mqtt::packet::ProtocolVersion;
use tern_core::store::{
    EntryRecord, EntryState, Fsync, MessageId, RedbOptions, RedbStore, SessionRecord, Store,
    StoreOp, StoredMessage, StoredProperties,
};

const SIZES: [u64; 5] = [1, 16, 64, 256, 1024];
const CLIENT: &str = "subscriber";

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("TERN_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    base.join(format!("tern-store-bench-{}", std::process::id()))
}

fn open(name: &str) -> RedbStore {
    let path = bench_dir().join(name);
    let _ = std::fs::remove_file(&path);
    let options = RedbOptions {
        durability: Fsync::Batch,
        ..RedbOptions::default()
    };
    let mut store = RedbStore::open(&path, options).expect("open");
    let session = StoreOp::PutSession(SessionRecord {
        client_id: ByteString::from(CLIENT),
        protocol: ProtocolVersion::V311,
        expiry_interval: 3600,
        expires_at: None,
        subscriptions: Vec::new(),
    });
    store.apply(&[session]).expect("session");
    store
}

fn message(id: u64) -> StoredMessage {
    StoredMessage {
        topic: ByteString::from(format!("sensors/{}/temp", id % 100)),
        payload: Bytes::from(vec![(id % 251) as u8; 100]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: StoredProperties::default(),
        expires_at: None,
        origin: "publisher".into(),
    }
}

/// `n` PutMessage + Enqueue pairs from id `first`, and `ack` removals of the entries
/// `n` ids before them (what the subscriber acknowledged meanwhile).
fn batch(first: u64, n: u64, ack: bool) -> Vec<StoreOp> {
    let client = ByteString::from(CLIENT);
    let mut ops = Vec::with_capacity(3 * n as usize);
    for id in first..first + n {
        ops.push(StoreOp::PutMessage {
            id: MessageId(id),
            message: message(id),
        });
        ops.push(StoreOp::Enqueue {
            client_id: client.clone(),
            seq: id,
            entry: EntryRecord {
                message: MessageId(id),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                state: EntryState::Queued,
            },
        });
        if ack && id >= n {
            ops.push(StoreOp::RemoveEntry {
                client_id: client.clone(),
                seq: id - n,
            });
        }
    }
    ops
}

/// Bytes this process has caused to be written to the storage device so far.
fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Messages per second and bytes written per message for one batch size and mode.
fn measure(n: u64, ack: bool) -> (f64, Option<f64>) {
    let mut store = open(&format!("summary-{n}-{ack}.redb"));
    // Enough batches for a stable figure, at least two seconds' worth of small ones.
    let batches = (20_000 / n).clamp(200, 2_000);
    let mut id = 0;
    // Warm up: the first commits allocate the file's regions.
    for _ in 0..10 {
        store.apply(&batch(id, n, ack)).expect("apply");
        id += n;
    }
    let before = write_bytes();
    let start = Instant::now();
    for _ in 0..batches {
        store.apply(&batch(id, n, ack)).expect("apply");
        id += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = write_bytes();
    let msgs = (batches * n) as f64;
    let per_msg = before.zip(after).map(|(b, a)| (a - b) as f64 / msgs);
    let _ = std::fs::remove_file(store.path());
    (msgs / elapsed, per_msg)
}

fn summary() {
    eprintln!(
        "store summary (redb, fsync = batch, 100-byte payloads, dir {:?}):",
        bench_dir()
    );
    eprintln!(
        "{:>6} | {:>12} {:>12} | {:>12} {:>12}",
        "batch", "append msg/s", "B/msg", "steady msg/s", "B/msg"
    );
    for n in SIZES {
        let (rate, bytes) = measure(n, false);
        let (srate, sbytes) = measure(n, true);
        let fmt = |b: Option<f64>| b.map_or_else(|| "n/a".to_owned(), |b| format!("{b:.0}"));
        eprintln!(
            "{n:>6} | {rate:>12.0} {:>12} | {srate:>12.0} {:>12}",
            fmt(bytes),
            fmt(sbytes)
        );
    }
}

fn bench_group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("redb_group_commit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for n in SIZES {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("steady", n), &n, |b, &n| {
            let mut store = open(&format!("criterion-{n}.redb"));
            let mut id = 0;
            b.iter(|| {
                store.apply(black_box(&batch(id, n, true))).expect("apply");
                id += n;
            });
            let _ = std::fs::remove_file(store.path());
        });
    }
    group.finish();
}

fn main() {
    std::fs::create_dir_all(bench_dir()).expect("bench dir");
    let mut c = Criterion::default().configure_from_args();
    // `cargo test --benches` runs benches in test mode: skip the summary there.
    if !std::env::args().any(|a| a == "--test") {
        summary();
    }
    bench_group_commit(&mut c);
    c.final_summary();
    let _ = std::fs::remove_dir_all(bench_dir());
}
