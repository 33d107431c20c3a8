//! The subscriber: a reader task that decodes, verifies and times every PUBLISH, and a
//! writer task that sends the acknowledgements, one write per read's worth.
//!
//! Topics may arrive under a prefix (a bridge's remote prefix such as `site/gw1/`); it is
//! stripped before verification, and a topic without it counts as misrouted. A
//! subscriber with a persistent session ([`Resume`]) survives its broker going away: it
//! reconnects with the same client id until the run ends, and its tally carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tern_core::message::QoS;
use tern_core::mqtt::packet::Packet;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

use crate::client::{put_ack, put_disconnect, Conn, ConnectOpts};
use crate::clock;
use crate::payload::Layout;
use crate::progress::Counters;
use crate::report::new_histogram;
use crate::verify::Tally;

/// Pause between reconnection attempts of a persistent subscriber.
const RETRY: Duration = Duration::from_millis(100);
/// Longest wait for one reconnection (TCP connect and CONNACK).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything one subscriber needs.
pub struct SubCtx {
    /// Payload layout.
    pub layout: Arc<Layout>,
    /// Topic of each publisher (index = publisher id).
    pub topics: Arc<Vec<Bytes>>,
    /// Stripped from the front of every received topic before verification.
    pub topic_prefix: Bytes,
    /// Shared live counters.
    pub counters: Arc<Counters>,
    /// Becomes `true` when the run is over.
    pub stop: watch::Receiver<bool>,
    /// Latency is recorded only for messages stamped at or after this time (warm-up).
    pub record_from_ns: u64,
    /// How to get the session back after a lost connection; `None`: a lost connection
    /// ends the subscriber with an error.
    pub resume: Option<Resume>,
}

/// How a subscriber with a persistent session reconnects.
#[derive(Debug, Clone)]
pub struct Resume {
    /// Broker address.
    pub addr: SocketAddr,
    /// CONNECT options: the same client id, clean session off.
    pub opts: ConnectOpts,
    /// Filter to subscribe to again if the broker did not keep the session.
    pub filter: String,
    /// QoS of that subscription.
    pub qos: QoS,
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
    /// Times a persistent subscriber got its connection back.
    pub reconnects: u64,
    /// Reconnections on which the broker had not kept the session (subscribed again).
    pub sessions_lost: u64,
    /// Why the connection was last lost (persistent subscribers only).
    pub last_disconnect: Option<String>,
}

/// How one connection's reading ended.
enum Ended {
    /// The run is over.
    Stopped,
    /// The connection failed or the broker misbehaved.
    Failed(String),
}

/// Runs a subscriber until `ctx.stop` turns true or the connection fails (for good, when
/// the subscriber has no [`Resume`]).
pub async fn run(conn: Conn, mut ctx: SubCtx) -> SubOutcome {
    let mut out = SubOutcome {
        tally: Tally::new(ctx.topics.len()),
        latency: new_histogram(),
        last_recv_ns: 0,
        error: None,
        reconnects: 0,
        sessions_lost: 0,
        last_disconnect: None,
    };
    let mut conn = conn;
    loop {
        let why = match serve(conn, &mut ctx, &mut out).await {
            Ended::Stopped => break,
            Ended::Failed(why) => why,
        };
        let Some(resume) = ctx.resume.clone() else {
            out.error = Some(why);
            break;
        };
        out.last_disconnect = Some(why);
        match reconnect(&resume, &mut ctx.stop).await {
            Ok(Some((c, present))) => {
                out.reconnects += 1;
                if !present {
                    out.sessions_lost += 1;
                }
                conn = c;
            }
            Ok(None) => break,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// Reconnects until it works or the run ends (`Ok(None)`); returns the connection and
/// whether the broker still had the session. A broker that accepts the connection but
/// refuses the subscription is an error.
async fn reconnect(
    r: &Resume,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<(Conn, bool)>, String> {
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        tokio::select! {
            _ = stop.changed() => return Ok(None),
            _ = tokio::time::sleep(RETRY) => {}
        }
        let mut conn =
            match tokio::time::timeout(RECONNECT_TIMEOUT, Conn::connect(r.addr, &r.opts)).await {
                Ok(Ok(c)) => c,
                // The broker is not back yet: try again.
                Ok(Err(_)) | Err(_) => continue,
            };
        let present = conn.session_present();
        if !present {
            conn.subscribe(&r.filter, r.qos)
                .await
                .map_err(|e| format!("subscribe {} again: {e}", r.filter))?;
        }
        return Ok(Some((conn, present)));
    }
}

/// Reads, verifies and acknowledges on one connection until the run ends or it fails.
async fn serve(conn: Conn, ctx: &mut SubCtx, out: &mut SubOutcome) -> Ended {
    let (mut reader, wr) = conn.into_parts();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_acks(wr, rx));
    let ended = 'run: loop {
        tokio::select! {
            biased;
            _ = ctx.stop.changed() => break Ended::Stopped,
            r = reader.fill() => match r {
                Ok(0) => break Ended::Failed("connection closed by broker".to_string()),
                Err(e) => break Ended::Failed(format!("read: {e}")),
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
                    let stamp = match p.topic.as_bytes().strip_prefix(&ctx.topic_prefix[..]) {
                        Some(topic) => {
                            out.tally
                                .record(&ctx.layout, &ctx.topics, topic, &p.payload)
                        }
                        // Not under the prefix: misrouted (still acknowledged below).
                        None => {
                            out.tally.record_foreign();
                            None
                        }
                    };
                    if let Some(stamp) = stamp {
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
                    break 'run Ended::Failed(format!("unexpected {} from broker", other.name()));
                }
                Ok(None) => break,
                Err(e) => break 'run Ended::Failed(format!("decode: {e}")),
            }
        }
        if n > 0 {
            out.last_recv_ns = now;
            Counters::add(&ctx.counters.received, n);
        }
        if !acks.is_empty() && tx.send(acks).is_err() {
            break Ended::Failed("acknowledgement writer failed".to_string());
        }
    };
    drop(tx);
    // The writer ends once the channel is drained; its errors show up as broker-side loss.
    let _ = writer.await;
    ended
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
