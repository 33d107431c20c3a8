//! `durable_load`: the load generator of `tests/bench/durability.sh` for what tern-bench
//! does not do: **persistent-session** subscribers (MQTT 3.1.1, clean session off), so that
//! every QoS 1 message really goes through the store (queued or in flight for a session
//! that outlives its connection), and offline backlogs.
//!
//! * `throughput`: N publisher → subscriber pairs at QoS 1, each subscriber on its own
//!   topic, `--persistent` for clean-session-off subscribers. Publishers keep `--inflight`
//!   unacknowledged messages. Reports msg/s delivered (first PUBLISH sent to last message
//!   received), PUBACKs, lost and duplicated messages (the payload carries the sequence).
//! * `fill`: creates `--sessions` persistent sessions (`bl/<i>`, subscribed then offline)
//!   and publishes `--per-session` QoS 1 messages to each, all acknowledged.
//! * `drain`: connects session `--session` and receives until `--expect` distinct
//!   messages arrived or nothing came for 5 s.
//!
//! Output: one JSON object on stdout. It is an example, not a test: build it with
//! `cargo build --release -p tern-tests --example durable_load`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tern_tests::raw::{self, kind, Props, PublishOut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(about = "persistent-session QoS 1 load for tests/bench/durability.sh")]
struct Cli {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publisher → subscriber pairs at QoS 1.
    Throughput {
        /// Pairs.
        #[arg(long, default_value_t = 4)]
        pairs: u32,
        /// Messages per publisher.
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Unacknowledged messages per publisher.
        #[arg(long, default_value_t = 256)]
        inflight: usize,
        /// Subscribers with clean session off (their messages are stored).
        #[arg(long)]
        persistent: bool,
    },
    /// Persistent sessions with an offline backlog.
    Fill {
        /// Sessions.
        #[arg(long, default_value_t = 10)]
        sessions: u32,
        /// Messages queued per session.
        #[arg(long, default_value_t = 100_000)]
        per_session: u64,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Unacknowledged messages per publisher.
        #[arg(long, default_value_t = 256)]
        inflight: usize,
    },
    /// Receives the backlog of one session made by `fill`.
    Drain {
        /// Session number.
        #[arg(long, default_value_t = 0)]
        session: u32,
        /// Messages expected.
        #[arg(long)]
        expect: u64,
    },
}

type Res<T> = Result<T, String>;

/// A connection with a read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str, id: &str, clean: bool) -> Res<(Conn, bool)> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).ok();
        let mut c = Conn {
            stream,
            buf: Vec::with_capacity(1 << 16),
        };
        let connect = raw::Connect::new(raw::V4, id).clean(clean).keep_alive(0);
        c.write(&connect.encode()).await?;
        let p = c.next(Duration::from_secs(10)).await?;
        let ack = p.connack(raw::V4)?;
        if ack.code != 0 {
            return Err(format!("CONNACK {:#x}", ack.code));
        }
        Ok((c, ack.session_present))
    }

    async fn write(&mut self, b: &[u8]) -> Res<()> {
        self.stream
            .write_all(b)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads more bytes (at least one) within `timeout`.
    async fn fill(&mut self, timeout: Duration) -> Res<()> {
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(timeout, self.stream.read(&mut chunk)).await {
            Err(_) => Err("timeout".into()),
            Ok(Ok(0)) => Err("connection closed".into()),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("read: {e}")),
        }
    }

    async fn next(&mut self, timeout: Duration) -> Res<raw::Packet> {
        loop {
            if let Some(p) = raw::split_packet(&mut self.buf)? {
                return Ok(p);
            }
            self.fill(timeout).await?;
        }
    }

    async fn subscribe(&mut self, filter: &str) -> Res<()> {
        self.write(&raw::subscribe(raw::V4, 1, &[(filter, 1)], &Props::new()))
            .await?;
        let p = self.next(Duration::from_secs(10)).await?;
        match p.suback(raw::V4)?.2.as_slice() {
            [1] => Ok(()),
            other => Err(format!("SUBACK {other:?}")),
        }
    }
}

fn payload(stream: u64, seq: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(16));
    p.extend_from_slice(&stream.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(size.max(16), b'.');
    p
}

fn seq_of(payload: &[u8]) -> Option<(u64, u64)> {
    let s = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
    let q = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((s, q))
}

/// Publishes `count` QoS 1 messages on `topic`, `inflight` at a time; returns PUBACKs.
async fn publish(
    addr: String,
    id: String,
    topic: String,
    stream: u64,
    count: u64,
    size: usize,
    inflight: usize,
) -> Res<u64> {
    let (mut c, _) = Conn::connect(&addr, &id, true).await?;
    let window = inflight.clamp(1, 60_000) as u64;
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut out = Vec::with_capacity(64 * (size + 64));
    while acked < count {
        out.clear();
        while sent < count && sent - acked < window && out.len() < 32 * 1024 {
            let pid = (sent % 65_535) as u16 + 1;
            let p = PublishOut::new(&topic, &payload(stream, sent, size)).qos(1, pid);
            out.extend(p.encode(raw::V4));
            sent += 1;
        }
        if !out.is_empty() {
            c.write(&out).await?;
        }
        // With the window full (or everything sent), wait for acknowledgements; take all
        // that arrived.
        if sent - acked >= window || sent == count {
            c.fill(Duration::from_secs(30))
                .await
                .map_err(|e| format!("{id}: waiting for PUBACK: {e}"))?;
            while let Some(p) = raw::split_packet(&mut c.buf)? {
                if p.kind == kind::PUBACK {
                    acked += 1;
                } else {
                    return Err(format!("{id}: unexpected packet type {}", p.kind));
                }
            }
        }
    }
    c.write(&raw::disconnect(raw::V4, 0, &Props::new())).await?;
    Ok(acked)
}

/// What a subscriber saw.
#[derive(Default)]
struct Received {
    distinct: u64,
    duplicates: u64,
    last: Option<Instant>,
}

/// Receives until `expect` distinct messages of `stream` arrived or `idle` passed quietly.
async fn receive(mut c: Conn, stream: u64, expect: u64, idle: Duration) -> Res<Received> {
    let mut seen: HashSet<u64> = HashSet::with_capacity(expect as usize);
    let mut r = Received::default();
    let mut acks = Vec::with_capacity(4096);
    // The read that brought the CONNACK may have brought PUBLISHes too: take what is
    // buffered before reading more.
    let mut first = true;
    while r.distinct < expect {
        if !first && c.fill(idle).await.is_err() {
            break;
        }
        first = false;
        acks.clear();
        while let Some(p) = raw::split_packet(&mut c.buf)? {
            if p.kind != kind::PUBLISH {
                continue;
            }
            let publ = p.publish(raw::V4)?;
            if let Some(pid) = publ.pid {
                acks.extend(raw::ack(kind::PUBACK, pid, None));
            }
            match seq_of(&publ.payload) {
                Some((s, q)) if s == stream => {
                    if seen.insert(q) {
                        r.distinct += 1;
                    } else {
                        r.duplicates += 1;
                    }
                }
                _ => return Err("foreign payload".into()),
            }
        }
        r.last = Some(Instant::now());
        if !acks.is_empty() {
            c.write(&acks).await?;
        }
    }
    Ok(r)
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", nanos & 0xFFFF_FFFF)
}

async fn throughput(
    addr: &str,
    pairs: u32,
    count: u64,
    size: usize,
    inflight: usize,
    persistent: bool,
) -> Res<serde_json::Value> {
    let run = run_id();
    let mut subs = Vec::new();
    for i in 0..pairs {
        let (mut c, _) = Conn::connect(addr, &format!("dl-sub-{run}-{i}"), !persistent).await?;
        c.subscribe(&format!("dl/{run}/{i}")).await?;
        subs.push(tokio::spawn(receive(
            c,
            u64::from(i),
            count,
            Duration::from_secs(10),
        )));
    }
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..pairs {
        pubs.push(tokio::spawn(publish(
            addr.to_string(),
            format!("dl-pub-{run}-{i}"),
            format!("dl/{run}/{i}"),
            u64::from(i),
            count,
            size,
            inflight,
        )));
    }
    let mut acked = 0;
    let mut errors = Vec::new();
    for p in pubs {
        match p.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) => acked += n,
            Err(e) => errors.push(e),
        }
    }
    let pub_secs = start.elapsed().as_secs_f64();
    let (mut distinct, mut dups) = (0, 0);
    let mut last = start;
    for s in subs {
        match s.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(r) => {
                distinct += r.distinct;
                dups += r.duplicates;
                last = last.max(r.last.unwrap_or(start));
            }
            Err(e) => errors.push(e),
        }
    }
    let secs = last.duration_since(start).as_secs_f64();
    let total = u64::from(pairs) * count;
    Ok(serde_json::json!({
        "scenario": "throughput",
        "pairs": pairs,
        "persistent": persistent,
        "size": size,
        "inflight": inflight,
        "sent": total,
        "acked": acked,
        "received": distinct,
        "lost": total - distinct.min(total),
        "duplicates": dups,
        "seconds": secs,
        "publish_seconds": pub_secs,
        "msgs_per_sec": if secs > 0.0 { distinct as f64 / secs } else { 0.0 },
        "errors": errors,
    }))
}

async fn fill(
    addr: &str,
    sessions: u32,
    per_session: u64,
    size: usize,
    inflight: usize,
) -> Res<serde_json::Value> {
    for i in 0..sessions {
        let (mut c, _) = Conn::connect(addr, &format!("bl-{i}"), false).await?;
        c.subscribe(&format!("bl/{i}")).await?;
        c.write(&raw::disconnect(raw::V4, 0, &Props::new())).await?;
    }
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..sessions {
        pubs.push(tokio::spawn(publish(
            addr.to_string(),
            format!("bl-pub-{i}"),
            format!("bl/{i}"),
            u64::from(i),
            per_session,
            size,
            inflight,
        )));
    }
    let mut acked = 0;
    let mut errors = Vec::new();
    for p in pubs {
        match p.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) => acked += n,
            Err(e) => errors.push(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "scenario": "fill",
        "sessions": sessions,
        "per_session": per_session,
        "size": size,
        "acked": acked,
        "seconds": secs,
        "msgs_per_sec": acked as f64 / secs.max(1e-9),
        "errors": errors,
    }))
}

async fn drain(addr: &str, session: u32, expect: u64) -> Res<serde_json::Value> {
    let start = Instant::now();
    let (c, present) = Conn::connect(addr, &format!("bl-{session}"), false).await?;
    let r = receive(c, u64::from(session), expect, Duration::from_secs(5)).await?;
    let secs = r.last.unwrap_or(start).duration_since(start).as_secs_f64();
    Ok(serde_json::json!({
        "scenario": "drain",
        "session": session,
        "session_present": present,
        "expected": expect,
        "received": r.distinct,
        "duplicates": r.duplicates,
        "seconds": secs,
        "msgs_per_sec": r.distinct as f64 / secs.max(1e-9),
    }))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let addr = format!("{}:{}", cli.host, cli.port);
    let result = match cli.cmd {
        Cmd::Throughput {
            pairs,
            count,
            size,
            inflight,
            persistent,
        } => throughput(&addr, pairs, count, size, inflight, persistent).await,
        Cmd::Fill {
            sessions,
            per_session,
            size,
            inflight,
        } => fill(&addr, sessions, per_session, size, inflight).await,
        Cmd::Drain { session, expect } => drain(&addr, session, expect).await,
    };
    match result {
        Ok(v) => {
            println!("{v}");
            let failed = v["errors"].as_array().is_some_and(|e| !e.is_empty())
                || v.get("lost").and_then(|l| l.as_u64()).unwrap_or(0) > 0
                || v.get("expected").and_then(|e| e.as_u64())
                    > v.get("received").and_then(|r| r.as_u64());
            std::process::exit(i32::from(failed));
        }
        Err(e) => {
            eprintln!("durable_load: {e}");
            std::process::exit(2);
        }
    }
}
