//! The sans-IO protocol state of one bridge connection, in the manner of quinn-proto.
//!
//! A [`Link`] is either the client (the gateway, which sends Hello) or the server (the
//! cloud, which answers Welcome or Refuse). The I/O layer feeds it what happened —
//! `handle_bytes`/`handle_frame` for received frames, `handle_delivered` when the local
//! port made a delivery durable, `handle_outbound_ready` when local queues gained
//! messages, `handle_timeout` when `poll_timeout`'s instant is reached — and then
//! drains `poll_transmit` (frames to send, with their lane) and `poll_event`
//! (deliveries, acknowledgements, open and close). Outbound messages are pulled through
//! [`Outbound`], a view of the local queues, so the machine stays deterministic and is
//! tested without sockets on virtual time (`tests`).
//!
//! Lanes: 0 carries Hello, Welcome, Refuse and every Ack (small, never stuck behind
//! data); `1 + class` carries that class's batches.
//!
//! Per class, both sides run a [`sender::Sender`] (window of unacked messages, resumes
//! after the peer's durable cursor) and a [`receiver::Receiver`] (dedup by sequence,
//! cumulative acks only after the port's durability). The lowest class id with data
//! and window room always sends first; a byte-rate bucket limits the whole link and a
//! message-rate bucket paces each class while it replays a backlog after connecting.

mod pace;
mod receiver;
mod sender;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_core::store::StoredMessage;

use crate::frame::{self, Batch, Frame, FrameError, Hello, Welcome, MAX_CLASSES};
use crate::port::Port;

use self::pace::Bucket;
use self::receiver::{Accept, Receiver};
use self::sender::{clean_batch, Sender};

/// Largest batch a sender builds, whatever the limits say.
const MAX_BATCH_MSGS: usize = 65_536;

/// How long the handshake may take: Hello to Welcome on the client, connection to
/// Hello on the server.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches the client keeps while waiting for the Welcome: each lane is its own QUIC
/// stream, so the server's first batches may overtake its Welcome.
const MAX_EARLY_FRAMES: usize = 1_024;

/// Flow limits of a link's senders (each side applies its own to what it sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most unacknowledged messages per class (default 10,000).
    pub window_msgs: usize,
    /// Most unacknowledged topic + payload bytes per class (default 16 MiB).
    pub window_bytes: usize,
    /// Most messages per batch (default 1,000; at most 65,536).
    pub batch_msgs: usize,
    /// About this many topic + payload bytes per batch (default 1 MiB; a single larger
    /// message still goes alone).
    pub batch_bytes: usize,
    /// Byte-rate limit over all classes, frame bytes per second; 0 = off (default).
    pub rate_bytes_per_sec: u64,
    /// Messages per second per class while it replays a backlog after connecting,
    /// until its queue first runs empty; 0 = off (default).
    pub replay_msgs_per_sec: u64,
    /// lz4-compress batch bodies when that makes them smaller (default off).
    pub compress: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window_msgs: 10_000,
            window_bytes: 16 << 20,
            batch_msgs: 1_000,
            batch_bytes: 1 << 20,
            rate_bytes_per_sec: 0,
            replay_msgs_per_sec: 0,
            compress: false,
        }
    }
}

/// The local outbound queues as the link reads them (mirrors [`Port::peek`]).
pub(crate) trait Outbound {
    /// Messages of `class` with sequence > `after`, ascending, at most `max_msgs` and
    /// about `max_bytes` (at least one if any waits).
    fn peek(
        &mut self,
        class: u8,
        after: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<(u64, StoredMessage)>;
}

impl<P: Port + ?Sized> Outbound for &P {
    fn peek(
        &mut self,
        class: u8,
        after: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<(u64, StoredMessage)> {
        Port::peek(*self, class, after, max_msgs, max_bytes)
    }
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transmit {
    /// Transport lane: 0 control and acks, `1 + class` batches.
    pub(crate) lane: u8,
    /// The encoded frame.
    pub(crate) frame: Bytes,
}

/// What the I/O layer must act on.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// Server only: a valid Hello arrived; call [`Link::accept`] or [`Link::refuse`].
    Hello(Hello),
    /// The handshake is complete; batches flow.
    Opened,
    /// Hand `messages` of inbound `class` to the port; once durable, call
    /// [`Link::handle_delivered`] with `up_to`.
    Deliver {
        /// Inbound class.
        class: u8,
        /// New messages, in order.
        messages: Vec<StoredMessage>,
        /// Sequence of the last of them.
        up_to: u64,
    },
    /// The peer holds outbound `class` durably up to `up_to`: call [`Port::acked`].
    Acked {
        /// Outbound class.
        class: u8,
        /// Highest sequence acknowledged.
        up_to: u64,
    },
    /// The link is over; send what `poll_transmit` still yields, then close the
    /// connection with this reason.
    Closed(LinkError),
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkError {
    /// A frame could not be decoded.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The server refused this gateway.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// This side refused the peer's Hello.
    #[error("refused the gateway: {0}")]
    RefusedPeer(String),
    /// A frame that is not allowed now.
    #[error("unexpected {frame} {state}")]
    Unexpected {
        /// The frame type.
        frame: &'static str,
        /// Where the link was.
        state: &'static str,
    },
    /// The peer's frames disagree with the class count of the handshake.
    #[error("class {class} out of range (the link has {classes})")]
    UnknownClass {
        /// Class named by the peer.
        class: u8,
        /// Classes of the link.
        classes: usize,
    },
    /// A Welcome that does not match the Hello.
    #[error("welcome names {got} classes, hello named {want}")]
    WelcomeClasses {
        /// Classes in the Welcome.
        got: usize,
        /// Classes in the Hello.
        want: usize,
    },
    /// The peer acknowledged something never sent.
    #[error("ack of class {class} up to {up_to}, but only {sent} was sent")]
    AckBeyondSent {
        /// Class.
        class: u8,
        /// Sequence acknowledged.
        up_to: u64,
        /// Highest sequence sent.
        sent: u64,
    },
    /// A batch whose sequences are not strictly increasing.
    #[error("batch of class {0} with sequences not strictly increasing")]
    BatchOrder(u8),
    /// No Welcome (client) or Hello (server) in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
}

/// Counters and cursors of one class, for status reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClassStats {
    /// Highest outbound sequence sent.
    pub(crate) sent_seq: u64,
    /// Highest outbound sequence acknowledged by the peer.
    pub(crate) acked_seq: u64,
    /// Unacknowledged outbound messages.
    pub(crate) inflight_msgs: usize,
    /// Highest inbound sequence durably delivered locally.
    pub(crate) delivered_seq: u64,
    /// Outbound messages sent on this connection.
    pub(crate) msgs_sent: u64,
    /// Outbound batch bytes sent on this connection.
    pub(crate) bytes_sent: u64,
    /// Inbound messages received on this connection.
    pub(crate) msgs_received: u64,
    /// Inbound topic + payload bytes received on this connection.
    pub(crate) bytes_received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client: Hello queued, waiting for Welcome or Refuse.
    AwaitWelcome,
    /// Server: waiting for Hello.
    AwaitHello,
    /// Server: Hello reported, waiting for `accept` or `refuse`.
    AwaitAccept,
    Open,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitWelcome => "before Welcome",
            State::AwaitHello => "before Hello",
            State::AwaitAccept => "while the Hello is checked",
            State::Open => "on an open link",
            State::Closed => "after close",
        }
    }
}

/// The protocol state of one connection.
#[derive(Debug)]
pub(crate) struct Link {
    state: State,
    limits: Limits,
    /// Client: its own Hello. Server: the peer's, once valid.
    hello: Option<Hello>,
    deadline: Instant,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    control: VecDeque<Frame>,
    events: VecDeque<Event>,
    /// Client: batches that arrived before the Welcome.
    early: Vec<Batch>,
    /// Byte-rate limit over all classes.
    bytes: Option<Bucket>,
    /// Replay pacing, shared by the classes replaying a backlog.
    replay: Option<Bucket>,
}

impl Link {
    /// The gateway side: sends `hello` (its `delivered` are the local receivers'
    /// durable cursors, its `classes` fix the class count).
    pub(crate) fn client(hello: Hello, limits: Limits, now: Instant) -> Self {
        let mut link = Link::new(State::AwaitWelcome, limits, now);
        link.control.push_back(Frame::Hello(hello.clone()));
        link.hello = Some(hello);
        link
    }

    /// The cloud side: waits for a Hello.
    pub(crate) fn server(limits: Limits, now: Instant) -> Self {
        Link::new(State::AwaitHello, limits, now)
    }

    fn new(state: State, limits: Limits, now: Instant) -> Self {
        let limits = Limits {
            window_msgs: limits.window_msgs.max(1),
            window_bytes: limits.window_bytes.max(1),
            batch_msgs: limits.batch_msgs.clamp(1, MAX_BATCH_MSGS),
            batch_bytes: limits.batch_bytes.max(1),
            ..limits
        };
        Link {
            state,
            deadline: now + HANDSHAKE_TIMEOUT,
            limits,
            hello: None,
            senders: Vec::new(),
            receivers: Vec::new(),
            control: VecDeque::new(),
            events: VecDeque::new(),
            early: Vec::new(),
            bytes: None,
            replay: None,
        }
    }

    /// True once the handshake completed and until the link closes.
    pub(crate) fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True once the link has ended (events may still be queued).
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Cursors and counters of `class`.
    pub(crate) fn stats(&self, class: u8) -> ClassStats {
        let c = usize::from(class);
        let (Some(s), Some(r)) = (self.senders.get(c), self.receivers.get(c)) else {
            return ClassStats::default();
        };
        ClassStats {
            sent_seq: s.sent,
            acked_seq: s.acked,
            inflight_msgs: s.inflight_msgs(),
            delivered_seq: r.delivered,
            msgs_sent: s.msgs_sent,
            bytes_sent: s.bytes_sent,
            msgs_received: r.msgs_received,
            bytes_received: r.bytes_received,
        }
    }

    /// A frame arrived on `lane`, still encoded.
    pub(crate) fn handle_bytes(&mut self, lane: u8, bytes: Bytes, now: Instant) {
        match frame::decode(bytes) {
            Ok(f) => self.handle_frame(lane, f, now),
            Err(e @ FrameError::UnsupportedVersion(_)) if self.state == State::AwaitHello => {
                self.refuse(&e.to_string());
            }
            Err(e) => self.close(LinkError::Frame(e)),
        }
    }

    /// A frame arrived on `lane` (lanes are not checked: any frame may use any lane).
    pub(crate) fn handle_frame(&mut self, _lane: u8, frame: Frame, now: Instant) {
        match (self.state, frame) {
            (State::Closed, _) => {}
            (State::AwaitHello, Frame::Hello(hello)) => self.on_hello(hello),
            (State::AwaitWelcome, Frame::Welcome(w)) => self.on_welcome(w, now),
            (State::AwaitWelcome, Frame::Refuse { reason }) => {
                self.close(LinkError::Refused(reason))
            }
            (State::AwaitWelcome, Frame::Batch(b)) if self.early.len() < MAX_EARLY_FRAMES => {
                self.early.push(b);
            }
            (State::Open, Frame::Batch(b)) => self.on_batch(b),
            (State::Open, Frame::Ack { class, up_to }) => self.on_ack(class, up_to),
            (state, f) => self.close(LinkError::Unexpected {
                frame: match f {
                    Frame::Hello(_) => "Hello",
                    Frame::Welcome(_) => "Welcome",
                    Frame::Refuse { .. } => "Refuse",
                    Frame::Batch(_) => "Batch",
                    Frame::Ack { .. } => "Ack",
                },
                state: state.name(),
            }),
        }
    }

    /// The port made inbound `class` durable up to `up_to`: acknowledge it.
    pub(crate) fn handle_delivered(&mut self, class: u8, up_to: u64) {
        if self.state != State::Open {
            return;
        }
        if let Some(r) = self.receivers.get_mut(usize::from(class)) {
            r.delivered(up_to);
        }
    }

    /// Local outbound queues gained messages.
    pub(crate) fn handle_outbound_ready(&mut self) {
        for s in &mut self.senders {
            s.maybe_ready = true;
        }
    }

    /// Time passed; call at (or after) `poll_timeout`'s instant.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::AwaitWelcome | State::AwaitHello) && now >= self.deadline {
            self.close(LinkError::HandshakeTimeout);
        }
    }

    /// Server: accepts the Hello reported by [`Event::Hello`]; `delivered` are the
    /// local port's durable cursors per class (missing ones count as 0).
    pub(crate) fn accept(&mut self, delivered: &[u64], now: Instant) {
        if self.state != State::AwaitAccept {
            return;
        }
        let n = self.hello.as_ref().map_or(0, |h| h.classes.len());
        let delivered: Vec<u64> = (0..n)
            .map(|c| delivered.get(c).copied().unwrap_or(0))
            .collect();
        self.control.push_back(Frame::Welcome(Welcome {
            delivered: delivered.clone(),
        }));
        let peer = self
            .hello
            .as_ref()
            .map(|h| h.delivered.clone())
            .unwrap_or_default();
        self.open(&peer, &delivered, now);
    }

    /// Server: refuses the peer with `reason` (sent in a Refuse frame); the link closes.
    pub(crate) fn refuse(&mut self, reason: &str) {
        if matches!(self.state, State::AwaitHello | State::AwaitAccept) {
            self.control.push_back(Frame::Refuse {
                reason: reason.to_string(),
            });
            self.close(LinkError::RefusedPeer(reason.to_string()));
        }
    }

    /// The next event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next: the handshake deadline, or when pacing
    /// lets a waiting class send.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitWelcome | State::AwaitHello => return Some(self.deadline),
            State::Open => {}
            _ => return None,
        }
        let mut wake: Option<Instant> = None;
        for (c, s) in self.senders.iter().enumerate() {
            if !s.maybe_ready || !self.has_room(c) {
                continue;
            }
            let at = match (&self.bytes, &self.replay) {
                (Some(b), _) if !b.has(0) => b.ready_at(0),
                (_, Some(r)) if s.replay => r.ready_at(self.replay_want(c, r)),
                _ => continue,
            };
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake
    }

    /// The next frame to send, pulling outbound messages from `source`. Call until
    /// `None`, then again after any `handle_*`.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        source: &mut impl Outbound,
    ) -> Option<Transmit> {
        if let Some(f) = self.control.pop_front() {
            return Some(Transmit {
                lane: 0,
                frame: frame::encode(&f, false),
            });
        }
        if self.state != State::Open {
            return None;
        }
        for (c, r) in self.receivers.iter_mut().enumerate() {
            if r.ack_pending {
                r.ack_pending = false;
                let ack = Frame::Ack {
                    class: c as u8,
                    up_to: r.delivered,
                };
                return Some(Transmit {
                    lane: 0,
                    frame: frame::encode(&ack, false),
                });
            }
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
            if !b.has(0) {
                return None;
            }
        }
        if let Some(r) = &mut self.replay {
            r.refill(now);
        }
        let mut replay_blocked = false;
        for c in 0..self.senders.len() {
            if !self.senders[c].maybe_ready || !self.has_room(c) {
                continue;
            }
            let (room_msgs, room_bytes) = self.room(c);
            let mut max_msgs = room_msgs.min(self.limits.batch_msgs);
            let mut max_bytes = room_bytes.min(self.limits.batch_bytes);
            if let Some(b) = &self.bytes {
                // A batch never puts the link more than one burst into debt, so a
                // higher class waits at most about that long for tokens.
                max_bytes = max_bytes.min(usize::try_from(b.burst()).unwrap_or(usize::MAX));
            }
            let replaying = self.senders[c].replay && self.replay.is_some();
            if replaying {
                if let Some(r) = &self.replay {
                    if replay_blocked || !r.has(self.replay_want(c, r)) {
                        replay_blocked = true;
                        continue;
                    }
                    max_msgs = max_msgs
                        .min(usize::try_from(r.available()).unwrap_or(usize::MAX))
                        .max(1);
                }
            }
            let s = &mut self.senders[c];
            let mut batch = source.peek(c as u8, s.sent, max_msgs, max_bytes);
            clean_batch(&mut batch, s.sent, max_msgs);
            if batch.is_empty() {
                s.maybe_ready = false;
                s.replay = false;
                continue;
            }
            let count = batch.len() as u64;
            let wire = Frame::Batch(Batch {
                class: c as u8,
                messages: batch,
            });
            let frame = frame::encode(&wire, self.limits.compress);
            let Frame::Batch(batch) = wire else {
                // Invariant: `wire` was built as a Batch just above.
                continue;
            };
            s.record_sent(&batch.messages, frame.len());
            if let Some(b) = &mut self.bytes {
                b.take(frame.len() as u64);
            }
            if replaying {
                if let Some(r) = &mut self.replay {
                    r.take(count);
                }
            }
            return Some(Transmit {
                lane: 1 + c as u8,
                frame,
            });
        }
        None
    }

    fn room(&self, c: usize) -> (usize, usize) {
        self.senders[c].room(self.limits.window_msgs, self.limits.window_bytes)
    }

    fn has_room(&self, c: usize) -> bool {
        let (m, b) = self.room(c);
        m > 0 && b > 0
    }

    /// Tokens a replaying class waits for before sending: a batch's worth, at most
    /// one burst (so batches stay large at low rates without exceeding the rate).
    fn replay_want(&self, c: usize, bucket: &Bucket) -> u64 {
        let (room, _) = self.room(c);
        (room.min(self.limits.batch_msgs) as u64)
            .min(bucket.burst())
            .max(1)
    }

    fn on_hello(&mut self, hello: Hello) {
        let n = hello.classes.len();
        let problem = if hello.gateway_id.is_empty() {
            Some("empty gateway id".to_string())
        } else if n == 0 || n > MAX_CLASSES {
            Some(format!("{n} priority classes (1 to {MAX_CLASSES} allowed)"))
        } else if hello.delivered.len() != n {
            Some(format!(
                "{} delivered cursors for {n} classes",
                hello.delivered.len()
            ))
        } else if let Some((f, c)) = hello.downstream.iter().find(|(_, c)| usize::from(*c) >= n) {
            Some(format!("downstream filter {f:?} names class {c} of {n}"))
        } else {
            None
        };
        match problem {
            Some(reason) => self.refuse(&format!("invalid hello: {reason}")),
            None => {
                self.state = State::AwaitAccept;
                self.hello = Some(hello.clone());
                self.events.push_back(Event::Hello(hello));
            }
        }
    }

    fn on_welcome(&mut self, welcome: Welcome, now: Instant) {
        let Some(hello) = &self.hello else {
            return;
        };
        let want = hello.classes.len();
        if welcome.delivered.len() != want {
            self.close(LinkError::WelcomeClasses {
                got: welcome.delivered.len(),
                want,
            });
            return;
        }
        let mine = hello.delivered.clone();
        self.open(&welcome.delivered, &mine, now);
        for batch in std::mem::take(&mut self.early) {
            if self.state == State::Open {
                self.on_batch(batch);
            }
        }
    }

    /// Starts the senders after `peer_delivered` and the receivers at
    /// `my_delivered`, per class.
    fn open(&mut self, peer_delivered: &[u64], my_delivered: &[u64], now: Instant) {
        self.senders = peer_delivered.iter().map(|d| Sender::open(*d)).collect();
        self.receivers = my_delivered.iter().map(|d| Receiver::open(*d)).collect();
        if self.limits.rate_bytes_per_sec > 0 {
            let rate = self.limits.rate_bytes_per_sec;
            self.bytes = Some(Bucket::new(rate, (rate / 4).max(1), now));
        }
        if self.limits.replay_msgs_per_sec > 0 {
            let rate = self.limits.replay_msgs_per_sec;
            self.replay = Some(Bucket::new(rate, (rate / 10).max(1), now));
        }
        self.state = State::Open;
        self.events.push_back(Event::Opened);
        for (c, d) in peer_delivered.iter().enumerate() {
            if *d > 0 {
                // The peer had these durable; our ack may have been lost with the
                // previous connection.
                self.events.push_back(Event::Acked {
                    class: c as u8,
                    up_to: *d,
                });
            }
        }
    }

    fn check_class(&mut self, class: u8) -> bool {
        let classes = self.senders.len();
        if usize::from(class) < classes {
            return true;
        }
        self.close(LinkError::UnknownClass { class, classes });
        false
    }

    fn on_batch(&mut self, batch: Batch) {
        if !self.check_class(batch.class) {
            return;
        }
        let ordered = batch.messages.windows(2).all(|w| w[0].0 < w[1].0);
        if !ordered {
            self.close(LinkError::BatchOrder(batch.class));
            return;
        }
        let class = batch.class;
        match self.receivers[usize::from(class)].accept(batch.messages) {
            Accept::Deliver(messages, up_to) => self.events.push_back(Event::Deliver {
                class,
                messages,
                up_to,
            }),
            Accept::Duplicate => {}
        }
    }

    fn on_ack(&mut self, class: u8, up_to: u64) {
        if !self.check_class(class) {
            return;
        }
        let s = &mut self.senders[usize::from(class)];
        if up_to > s.sent {
            let sent = s.sent;
            self.close(LinkError::AckBeyondSent { class, up_to, sent });
            return;
        }
        if s.ack(up_to) {
            self.events.push_back(Event::Acked { class, up_to });
        }
    }

    fn close(&mut self, error: LinkError) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(Event::Closed(error));
        }
    }
}
