//! One connection's pump: moves frames between a transport channel and a link
//! machine, and the machine's deliveries and acknowledgements to and from the port.
//!
//! Each lane gets a writer task fed by an unbounded queue, so a lane whose stream is
//! flow-controlled never blocks reading, acks or other lanes; what a queue can hold is
//! bounded by the link's window (plus acks). Deliveries are handed to the port as soon
//! as the link yields them and are confirmed to the link in order per class. When the
//! connection ends, every delivery still pending is awaited, so the next handshake
//! reads durable cursors that no late commit will move.

use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_core::store::StoredMessage;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinSet;

use super::{now, stopped, ClassStatus, Status};
use crate::link::{Event, Link, LinkError, Outbound, Transmit};
use crate::port::{DeliverError, Port};
use crate::transport::{ChannelReceiver, ChannelSender, TransportError};

/// How long final control frames (Refuse) may take to leave before closing.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The bridge is shutting down.
    Shutdown,
    /// A newer connection of the same gateway took over.
    Replaced,
    /// The transport failed or the peer closed.
    Lost(TransportError),
    /// The protocol ended the link (refusal, bad frame, timeout).
    Link(LinkError),
    /// The local port could not take a delivery.
    Delivery(String),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Shutdown => f.write_str("shutting down"),
            End::Replaced => f.write_str("replaced by a newer connection of this gateway"),
            End::Lost(e) => write!(f, "{e}"),
            End::Link(e) => write!(f, "{e}"),
            End::Delivery(e) => write!(f, "local delivery failed: {e}"),
        }
    }
}

/// Sends `frame`s on a lane through a writer task per lane.
struct Lanes {
    sender: ChannelSender,
    queues: Vec<Option<mpsc::UnboundedSender<Bytes>>>,
    writers: JoinSet<()>,
}

impl Lanes {
    fn new(sender: ChannelSender) -> Self {
        Lanes {
            sender,
            queues: Vec::new(),
            writers: JoinSet::new(),
        }
    }

    fn send(&mut self, t: Transmit) {
        let i = usize::from(t.lane);
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, || None);
        }
        let queue = self.queues[i].get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
            let sender = self.sender.clone();
            let lane = t.lane;
            self.writers.spawn(async move {
                while let Some(frame) = rx.recv().await {
                    if let Err(e) = sender.send(lane, frame).await {
                        // Closing makes the reader end the connection, also for a
                        // local error (a frame over the transport's limit).
                        sender.close(&format!("cannot send on lane {lane}: {e}"));
                        break;
                    }
                }
            });
            tx
        });
        // A closed queue means its writer failed; the reader reports why.
        let _ = queue.send(t.frame);
    }
}

/// Outbound view that has nothing (the link never peeks before it is open).
pub(crate) struct NoOutbound;

impl Outbound for NoOutbound {
    fn peek(&mut self, _: u8, _: u64, _: usize, _: usize) -> Vec<(u64, StoredMessage)> {
        Vec::new()
    }
}

/// Sends what the link still has to say (a Refuse) directly, bounded in time.
pub(crate) async fn flush_control(link: &mut Link, sender: &ChannelSender) {
    let mut frames = Vec::new();
    while let Some(t) = link.poll_transmit(now(), &mut NoOutbound) {
        frames.push(t);
    }
    let send_all = async {
        for t in frames {
            if sender.send(t.lane, t.frame).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, send_all).await;
}

type Pending = VecDeque<(u64, oneshot::Receiver<Result<(), DeliverError>>)>;

/// A running connection: the link, its port, its channel halves, its status.
pub(crate) struct Conn {
    link: Link,
    port: Arc<dyn Port>,
    sender: ChannelSender,
    receiver: ChannelReceiver,
    lanes: Lanes,
    /// Per inbound class, deliveries handed to the port and not yet settled.
    pending: Vec<Pending>,
    status: Arc<Status>,
    /// Who is on the other end, for logs.
    peer: String,
    /// Counters of the status when this connection started (they are cumulative).
    base: Vec<ClassStatus>,
    opened: bool,
}

impl Conn {
    /// A connection whose handshake is under way (client) or accepted (server).
    pub(crate) fn new(
        link: Link,
        port: Arc<dyn Port>,
        sender: ChannelSender,
        receiver: ChannelReceiver,
        status: Arc<Status>,
        peer: String,
    ) -> Self {
        let base = status.snapshot().classes;
        Conn {
            link,
            port,
            lanes: Lanes::new(sender.clone()),
            sender,
            receiver,
            pending: Vec::new(),
            status,
            base,
            opened: false,
            peer,
        }
    }

    /// Pumps until the connection ends, then closes it and settles the deliveries
    /// still pending.
    pub(crate) async fn run(
        mut self,
        shutdown: &mut watch::Receiver<bool>,
        replaced: Option<&Notify>,
    ) -> (End, bool) {
        let end = self.pump(shutdown, replaced).await;
        if matches!(end, End::Link(_)) {
            flush_control(&mut self.link, &self.sender).await;
        }
        self.sender.close(&end.to_string());
        self.status.update(|s| {
            s.connected = false;
            s.last_error = Some(end.to_string());
        });
        drop(self.lanes);
        for queue in &mut self.pending {
            for (_, rx) in queue.drain(..) {
                // Settled or failed: either way the port's cursor is final afterwards.
                let _ = rx.await;
            }
        }
        (end, self.opened)
    }

    async fn pump(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        replaced: Option<&Notify>,
    ) -> End {
        let notify = self.port.outbound_ready();
        loop {
            // Registered before the queues are read, so a signal raised while they are
            // read is not lost.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(end) = self.drive() {
                return end;
            }
            let timeout = self.link.poll_timeout();
            tokio::select! {
                biased;
                _ = stopped(shutdown) => return End::Shutdown,
                _ = wait(replaced) => return End::Replaced,
                (class, up_to, result) = next_settled(&mut self.pending) => match result {
                    Ok(Ok(())) => self.link.handle_delivered(class, up_to),
                    Ok(Err(e)) => return End::Delivery(e.to_string()),
                    Err(_) => return End::Delivery("the port dropped the delivery".into()),
                },
                _ = sleep_until(timeout) => self.link.handle_timeout(now()),
                _ = &mut notified => self.link.handle_outbound_ready(),
                r = self.receiver.recv() => match r {
                    Ok((lane, frame)) => self.link.handle_bytes(lane, frame, now()),
                    Err(e) => return End::Lost(e),
                },
            }
        }
    }

    /// Runs the link until it has nothing to send or report.
    fn drive(&mut self) -> Option<End> {
        loop {
            let mut progress = false;
            let t = now();
            while let Some(tx) = self.link.poll_transmit(t, &mut &*self.port) {
                self.lanes.send(tx);
                progress = true;
            }
            while let Some(event) = self.link.poll_event() {
                progress = true;
                match event {
                    // The server answers Hello before the pump starts.
                    Event::Hello(_) => {}
                    Event::Opened => {
                        self.opened = true;
                        tracing::info!(peer = %self.peer, transport = %self.sender.kind(), "bridge: connected");
                        self.status.update(|s| {
                            s.connected = true;
                            s.connects += 1;
                            if s.connects > 1 {
                                s.reconnects += 1;
                            }
                            s.last_error = None;
                        });
                    }
                    Event::Deliver {
                        class,
                        messages,
                        up_to,
                    } => {
                        let rx = self.port.deliver(class, messages, up_to);
                        let c = usize::from(class);
                        if self.pending.len() <= c {
                            self.pending.resize_with(c + 1, VecDeque::new);
                        }
                        self.pending[c].push_back((up_to, rx));
                    }
                    Event::Acked { class, up_to } => self.port.acked(class, up_to),
                    Event::Closed(e) => return Some(End::Link(e)),
                }
            }
            if !progress {
                break;
            }
        }
        self.publish_status();
        None
    }

    fn publish_status(&self) {
        if !self.link.is_open() {
            return;
        }
        let link = &self.link;
        let base = &self.base;
        self.status.update(|s| {
            for (c, cs) in s.classes.iter_mut().enumerate() {
                let Ok(class) = u8::try_from(c) else { break };
                let st = link.stats(class);
                let b = base.get(c).cloned().unwrap_or_default();
                cs.sent_seq = st.sent_seq;
                cs.acked_seq = st.acked_seq;
                cs.delivered_seq = st.delivered_seq;
                cs.messages_sent = b.messages_sent + st.msgs_sent;
                cs.bytes_sent = b.bytes_sent + st.bytes_sent;
                cs.messages_received = b.messages_received + st.msgs_received;
                cs.bytes_received = b.bytes_received + st.bytes_received;
            }
        });
    }
}

/// The first class whose oldest pending delivery settled: `(class, up_to, result)`.
/// Only the oldest of each class is polled, so results come back in order per class.
fn next_settled(
    pending: &mut [Pending],
) -> impl Future<
    Output = (
        u8,
        u64,
        Result<Result<(), DeliverError>, oneshot::error::RecvError>,
    ),
> + '_ {
    poll_fn(move |cx| {
        for (c, queue) in pending.iter_mut().enumerate() {
            if let Some((up_to, rx)) = queue.front_mut() {
                if let Poll::Ready(result) = Pin::new(rx).poll(cx) {
                    let up_to = *up_to;
                    queue.pop_front();
                    // Invariant: classes are u8 ids, so at most 256 queues exist.
                    return Poll::Ready((c as u8, up_to, result));
                }
            }
        }
        Poll::Pending
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

async fn wait(notify: Option<&Notify>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}
