//! Publishers: an async one for throughput runs (as fast as possible, or rate-limited at
//! millisecond granularity), and a paced one on its own OS thread for latency runs,
//! because tokio's timer ticks in milliseconds, far too coarse to space messages
//! microseconds apart.
//!
//! Both write many PUBLISHes per `write_all`, keep at most `inflight` QoS ≥ 1 messages
//! unacknowledged, and stamp each payload with its send time — or, when a rate is set,
//! with its *intended* send time on the open-loop schedule, so that a broker that makes
//! the publisher fall behind is charged for the delay (no coordinated omission).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tern_core::message::QoS;
use tern_core::mqtt::codec::decode;
use tern_core::mqtt::packet::Packet;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::client::{self, put_ack, put_disconnect, put_publish_header, Conn, PacketReader};
use crate::clock;
use crate::payload::{Layout, Stamp};
use crate::progress::Counters;
use crate::report::new_histogram;

/// When a publisher stops.
#[derive(Debug, Clone, Copy)]
pub enum End {
    /// At this time on the process clock (ns).
    Deadline(u64),
    /// After this many messages.
    Count(u64),
}

/// Everything one publisher needs.
#[derive(Debug, Clone)]
pub struct PubCtx {
    /// Publisher index, written into every payload.
    pub id: u64,
    /// QoS of its PUBLISHes.
    pub qos: QoS,
    /// Its topic.
    pub topic: Bytes,
    /// Payload layout.
    pub layout: Arc<Layout>,
    /// Shared live counters.
    pub counters: Arc<Counters>,
    /// Start of the schedule (ns).
    pub start_ns: u64,
    /// When to stop.
    pub end: End,
    /// Messages per second for this publisher; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Most messages per write.
    pub batch: usize,
    /// Most unacknowledged QoS ≥ 1 messages.
    pub inflight: usize,
    /// How long to wait for missing acknowledgements (and for credit before calling the
    /// broker stalled).
    pub drain_timeout: Duration,
}

impl PubCtx {
    /// Intended send time of message `k` on the schedule.
    fn intended_ns(&self, k: u64) -> u64 {
        match self.rate {
            Some(r) => self.start_ns + (k as f64 * 1e9 / r) as u64,
            None => self.start_ns,
        }
    }

    /// Messages the schedule has made due by `now`.
    fn due(&self, now: u64) -> u64 {
        match self.rate {
            None => u64::MAX,
            Some(_) if now < self.start_ns => 0,
            Some(r) => ((now - self.start_ns) as f64 * r / 1e9) as u64 + 1,
        }
    }

    /// True once `sent` messages complete the run.
    fn finished(&self, sent: u64, now: u64) -> bool {
        match self.end {
            End::Count(c) => sent >= c,
            // A scheduled publisher stops at the first message intended past the end, so
            // that falling behind does not shorten its run.
            End::Deadline(d) if self.rate.is_some() => self.intended_ns(sent) >= d,
            End::Deadline(d) => now >= d,
        }
    }

    /// Messages still allowed by a count limit.
    fn remaining(&self, sent: u64) -> u64 {
        match self.end {
            End::Count(c) => c.saturating_sub(sent),
            End::Deadline(_) => u64::MAX,
        }
    }

    /// Timestamp to write into message `seq` sent at `now`.
    fn stamp_ns(&self, seq: u64, now: u64) -> u64 {
        if self.rate.is_some() {
            self.intended_ns(seq)
        } else {
            now
        }
    }
}

/// What a publisher did.
#[derive(Debug)]
pub struct PubOutcome {
    /// PUBLISHes written.
    pub sent: u64,
    /// PUBLISHes acknowledged (PUBACK, or PUBCOMP at QoS 2).
    pub acked: u64,
    /// Acknowledgements out of order or with a failure reason code.
    pub bad_acks: u64,
    /// Process-clock time of the last write (ns).
    pub last_send_ns: u64,
    /// First failure, if any.
    pub error: Option<String>,
    /// Paced publishers: how late each write was against its intended time.
    pub send_lag: Option<Histogram<u64>>,
}

impl PubOutcome {
    /// An empty outcome.
    pub fn new() -> PubOutcome {
        PubOutcome {
            sent: 0,
            acked: 0,
            bad_acks: 0,
            last_send_ns: 0,
            error: None,
            send_lag: None,
        }
    }
}

/// Acknowledgement bookkeeping shared by a publisher and its reader.
struct AckState {
    acked: AtomicU64,
    bad: AtomicU64,
    /// Free slots of the in-flight window (async publisher only).
    credits: Semaphore,
    notify: Notify,
    closed: AtomicBool,
}

impl AckState {
    fn new(inflight: usize) -> AckState {
        AckState {
            acked: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            credits: Semaphore::new(inflight),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }
}

/// Packet identifier of message `seq`: 1..=65535 in turn. Never reused while in flight,
/// since the window is below 65535 and brokers acknowledge in order.
fn pid_of(seq: u64) -> u16 {
    (seq % 65535) as u16 + 1
}

/// Applies one packet from the broker to `st`. Returns how many messages it completed
/// and the packet id of a PUBREL to send, if any.
fn on_ack(
    p: Packet,
    qos: QoS,
    next: &mut u64,
    st: &AckState,
) -> Result<(u64, Option<u16>), String> {
    match (qos, p) {
        (QoS::AtLeastOnce, Packet::PubAck(r)) | (QoS::ExactlyOnce, Packet::PubComp(r)) => {
            if r.packet_id != pid_of(*next) || r.reason_code >= 0x80 {
                st.bad.fetch_add(1, Ordering::Relaxed);
            }
            *next += 1;
            Ok((1, None))
        }
        (QoS::ExactlyOnce, Packet::PubRec(r)) if r.reason_code >= 0x80 => {
            // A refused QoS 2 message ends its flow here.
            st.bad.fetch_add(1, Ordering::Relaxed);
            *next += 1;
            Ok((1, None))
        }
        (QoS::ExactlyOnce, Packet::PubRec(r)) => Ok((0, Some(r.packet_id))),
        (_, Packet::PingResp) => Ok((0, None)),
        (_, other) => Err(format!("unexpected {} from broker", other.name())),
    }
}

fn credit(st: &AckState, done: u64) {
    if done > 0 {
        st.acked.fetch_add(done, Ordering::Release);
        st.credits.add_permits(done as usize);
        st.notify.notify_one();
    }
}

/// Reads acknowledgements until the connection ends.
async fn read_acks(
    mut reader: PacketReader,
    qos: QoS,
    st: Arc<AckState>,
    rel: mpsc::UnboundedSender<u16>,
) -> Result<(), String> {
    let mut next = 0u64;
    let result = loop {
        match reader.fill().await {
            Ok(0) => break Err("connection closed by broker".to_string()),
            Err(e) => break Err(format!("read: {e}")),
            Ok(_) => {}
        }
        let mut done = 0;
        let step = loop {
            match reader.next_packet() {
                Ok(Some(p)) => match on_ack(p, qos, &mut next, &st) {
                    Ok((d, r)) => {
                        done += d;
                        if let Some(pid) = r {
                            // The publisher may already be gone at the very end; nothing to do then.
                            let _ = rel.send(pid);
                        }
                    }
                    Err(e) => break Err(e),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("decode: {e}")),
            }
        };
        credit(&st, done);
        if let Err(e) = step {
            break Err(e);
        }
    };
    st.closed.store(true, Ordering::Release);
    st.notify.notify_one();
    result
}

/// Takes up to `n` free window slots without waiting.
fn take_credits(st: &AckState, n: u64) -> u64 {
    let want = (st.credits.available_permits() as u64)
        .min(n)
        .min(u64::from(u32::MAX));
    if want == 0 {
        return 0;
    }
    match st.credits.try_acquire_many(want as u32) {
        Ok(p) => {
            p.forget();
            want
        }
        Err(_) => 0,
    }
}

/// Runs an async publisher to completion.
pub async fn run(conn: Conn, ctx: PubCtx) -> PubOutcome {
    let (reader, mut wr) = conn.into_parts();
    let st = Arc::new(AckState::new(ctx.inflight));
    let (rel_tx, mut rel_rx) = mpsc::unbounded_channel();
    let reader_task = tokio::spawn(read_acks(reader, ctx.qos, st.clone(), rel_tx));
    let pkt = client::publish_len(ctx.topic.len(), ctx.qos, ctx.layout.size());
    let mut wbuf = BytesMut::with_capacity(pkt * ctx.batch + 64);
    let mut out = PubOutcome::new();
    let qos0 = ctx.qos == QoS::AtMostOnce;

    while out.error.is_none() {
        let now = clock::now_ns();
        if ctx.finished(out.sent, now) {
            break;
        }
        let mut n = (ctx.batch as u64).min(ctx.remaining(out.sent));
        if ctx.rate.is_some() {
            let due = ctx.due(now).saturating_sub(out.sent);
            if due == 0 {
                tokio::time::sleep_until(clock::instant_at(ctx.intended_ns(out.sent)).into()).await;
                continue;
            }
            n = n.min(due);
        }
        if !qos0 {
            while let Ok(pid) = rel_rx.try_recv() {
                put_ack(&mut wbuf, Packet::PubRel, pid);
            }
            let got = take_credits(&st, n);
            if got == 0 {
                // Window full: wait for credit, answering PUBRECs meanwhile, and give up
                // if the broker stops acknowledging altogether.
                let stall = Instant::now() + ctx.drain_timeout;
                let wake = match ctx.end {
                    End::Deadline(d) => clock::instant_at(d).min(stall),
                    End::Count(_) => stall,
                };
                tokio::select! {
                    permit = st.credits.acquire() => {
                        // The semaphore is never closed: acquire cannot fail.
                        if let Ok(p) = permit {
                            p.forget();
                            n = 1 + take_credits(&st, n - 1);
                        }
                    }
                    Some(pid) = rel_rx.recv() => {
                        put_ack(&mut wbuf, Packet::PubRel, pid);
                        n = 0;
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        if Instant::now() >= stall && !ctx.finished(out.sent, clock::now_ns()) {
                            out.error = Some(format!("broker stopped acknowledging ({} in flight)", ctx.inflight));
                        }
                        n = 0;
                    }
                }
                if st.closed.load(Ordering::Acquire) {
                    n = 0;
                    out.error
                        .get_or_insert_with(|| "connection closed by broker".to_string());
                }
            } else {
                n = got;
            }
        }
        let ts = clock::now_ns();
        for seq in out.sent..out.sent + n {
            put_publish_header(
                &mut wbuf,
                &ctx.topic,
                ctx.qos,
                pid_of(seq),
                ctx.layout.size(),
            );
            ctx.layout.write(
                &mut wbuf,
                Stamp {
                    publisher: ctx.id,
                    seq,
                    sent_ns: ctx.stamp_ns(seq, ts),
                },
            );
        }
        if wbuf.is_empty() {
            continue;
        }
        if let Err(e) = wr.write_all(&wbuf).await {
            out.error = Some(format!("write: {e}"));
            break;
        }
        wbuf.clear();
        out.sent += n;
        out.last_send_ns = clock::now_ns();
        Counters::add(&ctx.counters.sent, n);
    }

    // Wait for the outstanding acknowledgements.
    if !qos0 && out.error.is_none() {
        let stall = Instant::now() + ctx.drain_timeout;
        loop {
            if !wbuf.is_empty() {
                if let Err(e) = wr.write_all(&wbuf).await {
                    out.error = Some(format!("write: {e}"));
                    break;
                }
                wbuf.clear();
            }
            if st.acked.load(Ordering::Acquire) >= out.sent || st.closed.load(Ordering::Acquire) {
                break;
            }
            tokio::select! {
                Some(pid) = rel_rx.recv() => put_ack(&mut wbuf, Packet::PubRel, pid),
                _ = st.notify.notified() => {}
                _ = tokio::time::sleep_until(stall.into()) => break,
            }
        }
    }
    out.acked = st.acked.load(Ordering::Acquire);
    out.bad_acks = st.bad.load(Ordering::Relaxed);
    if reader_task.is_finished() {
        if let Ok(Err(e)) = reader_task.await {
            out.error.get_or_insert(e);
        }
    } else {
        reader_task.abort();
    }
    wbuf.clear();
    put_disconnect(&mut wbuf);
    // The run is over; a failed goodbye changes nothing.
    let _ = wr.write_all(&wbuf).await;
    let _ = wr.shutdown().await;
    out
}

/// Turns a connected client into a blocking socket for [`run_paced_group`]; must be called
/// on the runtime.
pub fn into_blocking(conn: Conn) -> Result<(std::net::TcpStream, BytesMut), String> {
    let (reader, wr) = conn.into_parts();
    let (rd, leftover) = reader.into_leftover();
    let stream = rd.reunite(wr).map_err(|e| e.to_string())?;
    let std = stream.into_std().map_err(|e| e.to_string())?;
    std.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok((std, leftover))
}

/// Reads acknowledgements on a blocking socket until it closes.
fn read_acks_blocking(
    mut stream: std::net::TcpStream,
    mut buf: BytesMut,
    qos: QoS,
    st: &AckState,
    writer: &Mutex<std::net::TcpStream>,
) -> Result<(), String> {
    let mut next = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut rel = BytesMut::new();
    let result = loop {
        let mut done = 0;
        let step = loop {
            match decode(&mut buf, Some(client::PROTOCOL), client::MAX_PACKET) {
                Ok(Some(p)) => match on_ack(p, qos, &mut next, st) {
                    Ok((d, r)) => {
                        done += d;
                        if let Some(pid) = r {
                            put_ack(&mut rel, Packet::PubRel, pid);
                        }
                    }
                    Err(e) => break Err(e),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("decode: {e}")),
            }
        };
        st.acked.fetch_add(done, Ordering::Release);
        if let Err(e) = step {
            break Err(e);
        }
        if !rel.is_empty() {
            let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = w.write_all(&rel) {
                break Err(format!("write: {e}"));
            }
            rel.clear();
        }
        match stream.read(&mut chunk) {
            Ok(0) => break Err("connection closed by broker".to_string()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(format!("read: {e}")),
        }
    };
    st.closed.store(true, Ordering::Release);
    result
}

/// One paced publisher inside a group: its socket, acknowledgement reader and tallies.
struct Paced {
    ctx: PubCtx,
    st: Arc<AckState>,
    writer: Arc<Mutex<std::net::TcpStream>>,
    reader: std::thread::JoinHandle<Result<(), String>>,
    wbuf: BytesMut,
    out: PubOutcome,
}

impl Paced {
    fn start(
        stream: std::net::TcpStream,
        leftover: BytesMut,
        ctx: PubCtx,
    ) -> Result<Paced, String> {
        let st = Arc::new(AckState::new(ctx.inflight));
        let writer = Arc::new(Mutex::new(
            stream
                .try_clone()
                .map_err(|e| format!("clone socket: {e}"))?,
        ));
        let reader = {
            let (st, writer, qos) = (st.clone(), writer.clone(), ctx.qos);
            std::thread::spawn(move || read_acks_blocking(stream, leftover, qos, &st, &writer))
        };
        let pkt = client::publish_len(ctx.topic.len(), ctx.qos, ctx.layout.size());
        let wbuf = BytesMut::with_capacity(pkt * ctx.batch + 64);
        Ok(Paced {
            ctx,
            st,
            writer,
            reader,
            wbuf,
            out: PubOutcome::new(),
        })
    }

    /// Waits until `n` more messages fit the in-flight window; returns how many fit.
    fn window(&mut self, n: u64) -> Result<u64, String> {
        if self.ctx.qos == QoS::AtMostOnce {
            return Ok(n);
        }
        let stall = Instant::now() + self.ctx.drain_timeout;
        loop {
            let in_flight = self.out.sent - self.st.acked.load(Ordering::Acquire);
            if in_flight < self.ctx.inflight as u64 {
                return Ok(n.min(self.ctx.inflight as u64 - in_flight));
            }
            if self.st.closed.load(Ordering::Acquire) || Instant::now() >= stall {
                return Err("broker stopped acknowledging".to_string());
            }
            // Rare (the window is far larger than what a latency run keeps in flight);
            // the delay still counts, since stamps are intended times.
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Writes messages `k..k + n` in one write.
    fn send(&mut self, k: u64, n: u64) -> Result<(), String> {
        let ctx = &self.ctx;
        for seq in k..k + n {
            put_publish_header(
                &mut self.wbuf,
                &ctx.topic,
                ctx.qos,
                pid_of(seq),
                ctx.layout.size(),
            );
            ctx.layout.write(
                &mut self.wbuf,
                Stamp {
                    publisher: ctx.id,
                    seq,
                    sent_ns: ctx.intended_ns(seq),
                },
            );
        }
        let res = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(&self.wbuf);
        self.wbuf.clear();
        res.map_err(|e| format!("write: {e}"))?;
        self.out.sent += n;
        Counters::add(&ctx.counters.sent, n);
        Ok(())
    }

    /// Waits for outstanding acknowledgements, says DISCONNECT and collects the outcome.
    fn finish(mut self) -> PubOutcome {
        if self.ctx.qos != QoS::AtMostOnce && self.out.error.is_none() {
            let stall = Instant::now() + self.ctx.drain_timeout;
            while self.st.acked.load(Ordering::Acquire) < self.out.sent
                && !self.st.closed.load(Ordering::Acquire)
                && Instant::now() < stall
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.out.acked = self.st.acked.load(Ordering::Acquire);
        self.out.bad_acks = self.st.bad.load(Ordering::Relaxed);
        let closed_early = self.st.closed.load(Ordering::Acquire);
        {
            let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            put_disconnect(&mut self.wbuf);
            // The run is over; a failed goodbye changes nothing.
            let _ = w.write_all(&self.wbuf);
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        if let Ok(Err(e)) = self.reader.join() {
            if closed_early {
                self.out.error.get_or_insert(e);
            }
        }
        self.out
    }
}

/// Runs a group of paced publishers on the calling (dedicated) thread. They share one
/// schedule (same start, rate and end): at each intended send time the thread wakes once
/// and writes the due messages to every member, all that are due in one write when
/// behind. One wake-up per tick for the whole group instead of one per publisher matters
/// where waking a thread is expensive (it costs about 27 µs on the 2-core VM of
/// BENCHMARKS.md). Outcomes come back in member order; the first carries the group's
/// send lag.
pub fn run_paced_group(members: Vec<(std::net::TcpStream, BytesMut, PubCtx)>) -> Vec<PubOutcome> {
    crate::sys::tighten_timer_slack();
    let mut group = Vec::with_capacity(members.len());
    let mut failed = Vec::new();
    for (stream, leftover, ctx) in members {
        match Paced::start(stream, leftover, ctx) {
            Ok(p) => group.push(p),
            Err(e) => failed.push(e),
        }
    }
    let Some(lead) = group.first().map(|p| p.ctx.clone()) else {
        return failed
            .into_iter()
            .map(|e| PubOutcome {
                error: Some(e),
                ..PubOutcome::new()
            })
            .collect();
    };
    let mut lag = new_histogram();
    let mut k = 0u64;
    'run: while failed.is_empty() {
        let mut now = clock::now_ns();
        if lead.finished(k, now) {
            break;
        }
        let intended = lead.intended_ns(k);
        if now < intended {
            std::thread::sleep(Duration::from_nanos(intended - now));
            now = clock::now_ns();
        }
        let mut n = lead
            .due(now)
            .saturating_sub(k)
            .clamp(1, lead.batch as u64)
            .min(lead.remaining(k));
        for p in &mut group {
            match p.window(n) {
                Ok(fit) => n = n.min(fit),
                Err(e) => {
                    p.out.error = Some(e);
                    break 'run;
                }
            }
        }
        for p in &mut group {
            if let Err(e) = p.send(k, n) {
                p.out.error = Some(e);
                break 'run;
            }
        }
        let done = clock::now_ns();
        lag.saturating_record(done.saturating_sub(intended));
        k += n;
        for p in &mut group {
            p.out.last_send_ns = done;
        }
    }
    let mut outs: Vec<PubOutcome> = group.into_iter().map(Paced::finish).collect();
    outs[0].send_lag = Some(lag);
    outs.extend(failed.into_iter().map(|e| PubOutcome {
        error: Some(e),
        ..PubOutcome::new()
    }));
    outs
}
