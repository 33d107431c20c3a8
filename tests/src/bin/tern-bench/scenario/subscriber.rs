//! The subscriber: a reader task that decodes, verifies and times every PUBLISH, and a
//! writer task that sends the acknowledgements, one write per read's worth.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tern_core::message::QoS;
use tern_core::mqtt::packet::Packet;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

use crate::client::{put_ack, put_disconnect, Conn};
use crate::clock;
use crate::payload::Layout;
use crate::progress::Counters;
use crate::report::new_histogram;
use crate::verify::Tally;

/// Everything one subscriber needs.
pub struct SubCtx {
    /// Payload layout.
    pub layout: Arc<Layout>,
    /// Topic of each publisher (index = publisher id).
    pub topics: Arc<Vec<Bytes>>,
    /// Shared live counters.
    pub counters: Arc<Counters>,
    /// Becomes `true` when the run is over.
    pub stop: watch::Receiver<bool>,
    /// Latency is recorded only for messages stamped at or after this time (warm-up).
    pub record_from_ns: u64,
}

/// What a subscriber received.
#[derive(Debug)]
pub struct SubOutcome {
    /// Verification counts.
    pub tally: Tally,
    /// End-to-end latency (ns) of first deliveries.
    pub latency: Histogram<u64>,
    /// Process-clock time of the last read that carried a PUBLISH.
    pub last_recv_ns: u64,
    /// First failure, if any.
    pub error: Option<String>,
}

/// Runs a subscriber until `ctx.stop` turns true or the connection fails.
pub async fn run(conn: Conn, mut ctx: SubCtx) -> SubOutcome {
    let (mut reader, wr) = conn.into_parts();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_acks(wr, rx));
    let mut out = SubOutcome {
        tally: Tally::new(ctx.topics.len()),
        latency: new_histogram(),
        last_recv_ns: 0,
        error: None,
    };
    'run: loop {
        tokio::select! {
            biased;
            _ = ctx.stop.changed() => break,
            r = reader.fill() => match r {
                Ok(0) => {
                    out.error = Some("connection closed by broker".to_string());
                    break;
                }
                Err(e) => {
                    out.error = Some(format!("read: {e}"));
                    break;
                }
                Ok(_) => {}
            },
        }
        // One clock read per read(): every message in it had arrived by now.
        let now = clock::now_ns();
        let mut acks = BytesMut::new();
        let mut n = 0;
        loop {
            match reader.next_packet() {
                Ok(Some(Packet::Publish(p))) => {
                    n += 1;
                    if let Some(stamp) =
                        out.tally
                            .record(&ctx.layout, &ctx.topics, p.topic.as_bytes(), &p.payload)
                    {
                        if stamp.sent_ns >= ctx.record_from_ns {
                            out.latency
                                .saturating_record(now.saturating_sub(stamp.sent_ns));
                        }
                    }
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => put_ack(&mut acks, Packet::PubAck, id),
                        (QoS::ExactlyOnce, Some(id)) => put_ack(&mut acks, Packet::PubRec, id),
                        _ => {}
                    }
                }
                Ok(Some(Packet::PubRel(r))) => put_ack(&mut acks, Packet::PubComp, r.packet_id),
                Ok(Some(Packet::PingResp)) => {}
                Ok(Some(other)) => {
                    out.error = Some(format!("unexpected {} from broker", other.name()));
                    break 'run;
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(format!("decode: {e}"));
                    break 'run;
                }
            }
        }
        if n > 0 {
            out.last_recv_ns = now;
            Counters::add(&ctx.counters.received, n);
        }
        if !acks.is_empty() && tx.send(acks).is_err() {
            out.error = Some("acknowledgement writer failed".to_string());
            break;
        }
    }
    drop(tx);
    // The writer ends once the channel is drained; its errors show up as broker-side loss.
    let _ = writer.await;
    out
}

/// Writes acknowledgement batches, coalescing whatever is queued; says DISCONNECT at the end.
async fn write_acks(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<BytesMut>) {
    while let Some(mut b) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            b.extend_from_slice(&more);
        }
        if wr.write_all(&b).await.is_err() {
            return;
        }
    }
    let mut b = BytesMut::new();
    put_disconnect(&mut b);
    // The run is over; a failed goodbye changes nothing.
    let _ = wr.write_all(&b).await;
    let _ = wr.shutdown().await;
}
