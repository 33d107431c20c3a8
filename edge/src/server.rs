//! The shared broker and the dispatch of its outputs to connections.
//!
//! One [`Hub`] (the sans-IO [`Broker`] plus a handle per live connection) sits behind a
//! mutex. Connection drivers report input in batches through [`Server`]; after every
//! batch, still under the same lock, the hub drains `poll_output` and hands each packet
//! to its connection's writer queue. A timer task calls `handle_timeout` when the broker
//! asks for it. No protocol decision is taken here.
//!
//! Flow control towards slow readers (the broker cannot see sockets): each connection's
//! queue is bounded. Above half of `max_queued_messages` queued packets, the connection
//! is congested and the reader whose input produced the packets waits, briefly, for it
//! to drain (see `connection.rs`): that pushes back on publishers through TCP instead of
//! losing messages. At `max_queued_messages`, QoS 0 PUBLISHes to it are dropped and
//! counted (QoS 0 allows loss) and producers stop waiting for it; if even the headroom
//! kept for QoS 1/2 and acknowledgements fills up, the client is disconnected as a slow
//! consumer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tern_bridge::DeliverError;
use tern_core::broker::{Broker, BrokerConfig, ConnId, Counts, Output, Stats, StoreBatch};
use tern_core::message::QoS;
use tern_core::mqtt::codec::DecodeError;
use tern_core::mqtt::packet::Packet;
use tern_core::store::{Snapshot, StoredMessage};
use tokio::sync::{oneshot, watch, Notify};

use crate::auth::{Authenticator, Decision, Verified};
use crate::listener::ConnInfo;
use crate::outgoing::{Outgoing, PushError};

/// Longest the timer task sleeps without looking at the broker's deadline again.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// How often a reader paused on a backed-up subscriber looks again without a wake-up.
const BACKLOG_RECHECK: Duration = Duration::from_millis(100);

/// Fewest QoS 0 messages a connection may have queued, whatever the limits say.
const MIN_QUEUED: usize = 64;

/// Queue room kept beyond the QoS 0 limit for control packets (CONNACK, SUBACK, acks).
const CONTROL_HEADROOM: usize = 64;

/// Queue sizes of every connection, derived from the broker limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Channel capacity: beyond it the client is disconnected.
    pub(crate) capacity: usize,
    /// From this many queued packets on, QoS 0 PUBLISHes are dropped.
    pub(crate) qos0_limit: usize,
    /// Above this many queued packets, producers wait for the queue to drain.
    pub(crate) high_water: usize,
}

impl QueueLimits {
    fn new(config: &BrokerConfig) -> Self {
        let qos0_limit = config.max_queued_messages.max(MIN_QUEUED);
        // Room for a full in-flight window of QoS 1/2 PUBLISHes and as many PUBRELs.
        let headroom = 2 * usize::from(config.max_inflight) + CONTROL_HEADROOM;
        QueueLimits {
            capacity: qos0_limit.saturating_add(headroom),
            qos0_limit,
            high_water: qos0_limit / 2,
        }
    }
}

/// What the hub keeps for each live connection. Dropping it closes the connection's
/// queue: the writer writes what is queued, then closes.
pub(crate) struct ConnHandle {
    outgoing: Arc<Outgoing>,
    /// For log lines.
    peer: SocketAddr,
    /// QoS 0 PUBLISHes dropped because the client did not keep up.
    dropped: u64,
    /// What the transport's handshake learned (client certificate).
    info: ConnInfo,
}

impl ConnHandle {
    /// A handle for a connection from `peer`, feeding its writer through `outgoing`.
    pub(crate) fn new(outgoing: Arc<Outgoing>, peer: SocketAddr, info: ConnInfo) -> Self {
        ConnHandle {
            outgoing,
            peer,
            dropped: 0,
            info,
        }
    }

    /// Logs what was dropped, if anything; the drop then closes the queue.
    fn forget(self, conn: ConnId) {
        if self.dropped > 0 {
            tracing::info!(
                conn = conn.0,
                peer = %self.peer,
                dropped = self.dropped,
                "QoS 0 messages were dropped for this slow consumer"
            );
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.outgoing.close();
    }
}

/// The broker and the live connections, always used together under one lock.
pub(crate) struct Hub {
    broker: Broker,
    conns: HashMap<ConnId, ConnHandle>,
    limits: QueueLimits,
    /// Connections pushed above their high-water mark by the current input.
    congested: Vec<Arc<Outgoing>>,
    /// When the timer task will next wake, so that a batch can wake it earlier.
    timer_armed: Option<Instant>,
    /// Where store batches go to be made durable; `None` once shut down.
    committer: Option<std::sync::mpsc::Sender<StoreBatch>>,
    /// Decides on parked CONNECTs; `None`: refuse them all.
    auth: Option<Authenticator>,
    /// Bridge drivers to wake when a bridge queue gains messages.
    bridge_wakers: Vec<Arc<Notify>>,
    /// Bridge deliveries waiting for their store batch, by `Broker::inject` token.
    injections: HashMap<u64, oneshot::Sender<Result<(), DeliverError>>>,
    next_injection: u64,
}

impl Hub {
    /// Hands every pending output to the connections. Called after each input.
    fn dispatch(&mut self) {
        if let Some(committer) = &self.committer {
            while let Some(batch) = self.broker.poll_store_batch() {
                // A send fails only once the commit thread is gone (shutdown): what was
                // waiting for it is never acknowledged, which is the safe side.
                let _ = committer.send(batch);
            }
        }
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Send(conn, packet) => self.send(conn, packet),
                Output::Authenticate(conn, request) => {
                    let now = Instant::now();
                    let from = self
                        .conns
                        .get(&conn)
                        .map(|h| (h.peer, h.info.cert_as_username));
                    let decision = match (&mut self.auth, from) {
                        (Some(auth), Some((peer, cert_user))) => {
                            auth.start(conn, request, peer, cert_user, now)
                        }
                        (None, Some(_)) => {
                            // Never without an authenticator (the broker only asks when
                            // told to); refuse rather than let anyone in unchecked.
                            tracing::warn!(
                                conn = conn.0,
                                client_id = %request.client_id,
                                "authentication requested but no authenticator is configured"
                            );
                            Decision::Now(Err(tern_core::mqtt::reason::NOT_AUTHORIZED))
                        }
                        (_, None) => Decision::Later, // Gone already: nobody to answer.
                    };
                    if let Decision::Now(result) = decision {
                        self.broker.handle_authenticated(conn, result, now);
                    }
                }
                Output::Close(conn) => {
                    // Dropping the sender lets the writer flush what is queued, then close.
                    if let Some(handle) = self.conns.remove(&conn) {
                        handle.forget(conn);
                    }
                }
                Output::Injected { token, durable, .. } => {
                    if let Some(done) = self.injections.remove(&token) {
                        let result = if durable {
                            Ok(())
                        } else {
                            Err(DeliverError::Store("store batch failed".into()))
                        };
                        // The bridge link may be gone; then nobody waits for the answer.
                        let _ = done.send(result);
                    }
                }
            }
        }
        if self.broker.take_bridge_ready() {
            for waker in &self.bridge_wakers {
                waker.notify_one();
            }
        }
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        let Some(handle) = self.conns.get_mut(&conn) else {
            return; // Gone (closed or cut off): nobody to send to.
        };
        let qos0 = matches!(&packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce);
        let limit = if qos0 {
            self.limits.qos0_limit
        } else {
            self.limits.capacity
        };
        match handle.outgoing.push(packet, limit) {
            Ok(queued) => {
                if queued >= self.limits.high_water
                    && !handle.outgoing.is_stalled()
                    && !self
                        .congested
                        .iter()
                        .any(|c| Arc::ptr_eq(c, &handle.outgoing))
                {
                    self.congested.push(handle.outgoing.clone());
                }
            }
            Err(PushError::Full) if qos0 => {
                handle.dropped += 1;
                if !handle.outgoing.set_stalled() {
                    tracing::warn!(
                        conn = conn.0,
                        peer = %handle.peer,
                        "slow consumer: dropping QoS 0 messages until it catches up"
                    );
                }
            }
            Err(PushError::Full) => {
                tracing::warn!(
                    conn = conn.0,
                    peer = %handle.peer,
                    "slow consumer: outgoing queue full, disconnecting"
                );
                if let Some(handle) = self.conns.remove(&conn) {
                    handle.outgoing.kill();
                    handle.forget(conn);
                }
            }
            Err(PushError::Closed) => {
                // The writer stopped (write error); the driver reports the close.
                if let Some(handle) = self.conns.remove(&conn) {
                    handle.forget(conn);
                }
            }
        }
    }

    /// True if the broker now wants a timeout earlier than the timer task is armed for.
    fn timer_needs_wake(&self) -> bool {
        match (self.broker.poll_timeout(), self.timer_armed) {
            (Some(deadline), Some(armed)) => deadline < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// What the commit thread last reported about the store, for the admin endpoint.
/// Written once per commit (relaxed atomics: each value is read on its own).
#[derive(Debug, Default)]
pub(crate) struct StoreMetrics {
    /// Bytes of records the store holds.
    pub(crate) bytes: AtomicU64,
    /// The budget in bytes (0: unlimited).
    pub(crate) budget: AtomicU64,
    /// Transactions committed.
    pub(crate) commits: AtomicU64,
    /// Store batches refused because the store is full.
    pub(crate) full_refusals: AtomicU64,
    /// Store batches that failed otherwise.
    pub(crate) errors: AtomicU64,
}

/// Whether a reader should pause before feeding the rest of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Throttle {
    /// Go on.
    No,
    /// A PUBLISH just met a subscriber whose session queue is backed up: wait for
    /// `Server::backlog_cleared`.
    Backlog,
}

/// A cheap handle on the shared broker, cloned into every task.
#[derive(Clone)]
pub(crate) struct Server {
    hub: Arc<Mutex<Hub>>,
    timer: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    max_packet_size: usize,
    limits: QueueLimits,
    /// Wakes readers paused on a backed-up subscriber (see `backlog_cleared`).
    backlog: Arc<Notify>,
    backlog_waiters: Arc<AtomicUsize>,
    /// The store's usage and commit counters.
    store_metrics: Arc<StoreMetrics>,
}

impl Server {
    /// A server around a new broker with `config`; `shutdown` turns true to stop.
    pub(crate) fn new(config: BrokerConfig, shutdown: watch::Receiver<bool>) -> Self {
        let max_packet_size = usize::try_from(config.max_packet_size).unwrap_or(usize::MAX);
        let limits = QueueLimits::new(&config);
        let hub = Hub {
            broker: Broker::new(config, Instant::now()),
            conns: HashMap::new(),
            limits,
            congested: Vec::new(),
            timer_armed: None,
            committer: None,
            auth: None,
            bridge_wakers: Vec::new(),
            injections: HashMap::new(),
            next_injection: 0,
        };
        Server {
            hub: Arc::new(Mutex::new(hub)),
            timer: Arc::new(Notify::new()),
            shutdown,
            max_packet_size,
            limits,
            backlog: Arc::new(Notify::new()),
            backlog_waiters: Arc::new(AtomicUsize::new(0)),
            store_metrics: Arc::default(),
        }
    }

    /// Largest packet the decoder accepts, in bytes.
    pub(crate) fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// The queue sizes of every connection.
    pub(crate) fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// A receiver that turns true when the server shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        match self.hub.lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A panic inside the broker left its state half-updated. Going on would
                // risk other clients' data; stop the way the release build (panic =
                // "abort") does.
                tracing::error!("the broker panicked earlier; its state is unusable, aborting");
                std::process::abort();
            }
        }
    }

    /// Runs `f` on the hub, then dispatches outputs and wakes the timer if needed.
    /// Congested connections are handed to `congested`, if given, else forgotten.
    fn with_hub<R>(
        &self,
        congested: Option<&mut Vec<Arc<Outgoing>>>,
        f: impl FnOnce(&mut Hub, Instant) -> R,
    ) -> R {
        let mut hub = self.lock();
        let now = Instant::now();
        let result = f(&mut hub, now);
        hub.dispatch();
        if self.backlog_waiters.load(Ordering::SeqCst) > 0 && !hub.broker.is_congested(now) {
            self.backlog.notify_waiters();
        }
        match congested {
            Some(out) => out.append(&mut hub.congested),
            None => hub.congested.clear(),
        }
        if hub.timer_needs_wake() {
            self.timer.notify_one();
        }
        result
    }

    /// Rebuilds the broker's state from `snapshot` and sends every store batch to
    /// `committer` from now on. Call before the listeners start.
    pub(crate) fn attach_store(
        &self,
        snapshot: Snapshot,
        committer: std::sync::mpsc::Sender<StoreBatch>,
    ) {
        self.with_hub(None, |hub, now| {
            hub.broker
                .restore(snapshot, now, crate::group_commit::unix_ms_now());
            hub.committer = Some(committer);
        });
    }

    /// Stops sending store batches, so the commit thread finishes what it has.
    pub(crate) fn detach_store(&self) {
        self.with_hub(None, |hub, _| hub.committer = None);
    }

    /// Store batch `id` and all before it are durable: release what waited on them.
    /// Called once per committed transaction.
    pub(crate) fn store_committed(&self, id: u64) {
        self.store_metrics.commits.fetch_add(1, Ordering::Relaxed);
        self.with_hub(None, |hub, _| hub.broker.handle_store_committed(id));
    }

    /// The store holds `bytes` of its budget `limit`.
    pub(crate) fn store_usage(&self, bytes: u64, limit: Option<u64>) {
        let m = &self.store_metrics;
        m.bytes.store(bytes, Ordering::Relaxed);
        m.budget.store(limit.unwrap_or(0), Ordering::Relaxed);
        self.with_hub(None, |hub, _| hub.broker.handle_store_usage(bytes, limit));
    }

    /// Store batch `id` failed (`quota`: the store is full).
    pub(crate) fn store_failed(&self, id: u64, quota: bool) {
        let counter = if quota {
            &self.store_metrics.full_refusals
        } else {
            &self.store_metrics.errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.with_hub(None, |hub, now| {
            hub.broker.handle_store_failed(id, quota, now)
        });
    }

    /// The store's usage and commit counters.
    pub(crate) fn store_metrics(&self) -> &StoreMetrics {
        &self.store_metrics
    }

    /// The broker's counters and table sizes, read under the lock.
    pub(crate) fn broker_metrics(&self) -> (Stats, Counts) {
        let hub = self.lock();
        (hub.broker.stats().clone(), hub.broker.counts())
    }

    /// Runs `f` on the broker (bridge queues, cursors), then dispatches its outputs.
    pub(crate) fn with_broker<R>(&self, f: impl FnOnce(&mut Broker, Instant) -> R) -> R {
        self.with_hub(None, |hub, now| f(&mut hub.broker, now))
    }

    /// Wakes `waker` whenever a bridge queue gains messages.
    pub(crate) fn add_bridge_waker(&self, waker: Arc<Notify>) {
        self.with_hub(None, |hub, _| hub.bridge_wakers.push(waker));
    }

    /// Publishes bridged `messages` as `Broker::inject` does; the receiver resolves
    /// when their store batch is durable (or failed).
    pub(crate) fn inject(
        &self,
        messages: Vec<StoredMessage>,
        origin: &ByteString,
        cursor: (ByteString, u64),
    ) -> oneshot::Receiver<Result<(), DeliverError>> {
        let (done, result) = oneshot::channel();
        self.with_hub(None, |hub, now| {
            hub.next_injection += 1;
            let token = hub.next_injection;
            hub.injections.insert(token, done);
            let unix_ms = crate::group_commit::unix_ms_now();
            hub.broker
                .inject(messages, origin, cursor, token, now, unix_ms);
        });
        result
    }

    /// Registers a new connection; returns its id.
    pub(crate) fn open(&self, handle: ConnHandle) -> ConnId {
        self.with_hub(None, |hub, now| {
            let conn = hub.broker.handle_open(now);
            if let Some(identity) = &handle.info.certificate {
                hub.broker
                    .set_certificate_identity(conn, identity.as_str().into());
            }
            hub.conns.insert(conn, handle);
            conn
        })
    }

    /// Installs the authenticator (and tells the broker whether to park CONNECTs for
    /// it) and the ACL. Call before the listeners start.
    pub(crate) fn set_access(&self, auth: Authenticator, acl: Option<tern_core::auth::acl::Acl>) {
        self.with_hub(None, |hub, _| {
            hub.broker.require_authentication(auth.required());
            hub.broker.set_acl(acl);
            hub.auth = Some(auth);
        });
    }

    /// Applies finished password verifications, until shutdown.
    pub(crate) async fn run_auth(
        self,
        mut verified: tokio::sync::mpsc::UnboundedReceiver<Verified>,
    ) {
        let mut shutdown = self.shutdown.clone();
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                received = verified.recv_many(&mut batch, 64) => {
                    if received == 0 {
                        return;
                    }
                    self.with_hub(None, |hub, now| {
                        for done in batch.drain(..) {
                            let answers = match &mut hub.auth {
                                Some(auth) => auth.finish(&done, now),
                                None => vec![(done.conn, Err(tern_core::mqtt::reason::NOT_AUTHORIZED))],
                            };
                            for (conn, result) in answers {
                                hub.broker.handle_authenticated(conn, result, now);
                            }
                            hub.dispatch();
                        }
                    });
                }
                _ = stopped(&mut shutdown) => return,
            }
        }
    }

    /// Hands decoded packets from the front of `packets`, then the decode error in
    /// `error` (taken), to the broker in one lock acquisition. Stops early when a
    /// packet pushed some connection above its high-water mark: those connections are
    /// put in `congested` and the rest stays in `packets`, for the caller to feed once
    /// they drained. Input for a connection the broker closed is dropped.
    pub(crate) fn input(
        &self,
        conn: ConnId,
        packets: &mut VecDeque<Packet>,
        error: &mut Option<DecodeError>,
        congested: &mut Vec<Arc<Outgoing>>,
    ) -> Throttle {
        self.with_hub(Some(congested), |hub, now| {
            while let Some(packet) = packets.pop_front() {
                if !hub.conns.contains_key(&conn) {
                    break;
                }
                let publish = matches!(packet, Packet::Publish(_));
                hub.broker.handle_packet(conn, packet, now);
                // Dispatch as we go so that a Close stops the rest of the batch.
                hub.dispatch();
                if !hub.congested.is_empty() {
                    return Throttle::No;
                }
                // Only a publisher is paused for a backed-up subscriber: the
                // subscriber's own acknowledgements are what drains it.
                if publish && hub.broker.is_congested(now) {
                    return Throttle::Backlog;
                }
            }
            if !hub.conns.contains_key(&conn) {
                // Closed by the broker: nothing more of this client is expected.
                packets.clear();
                *error = None;
                return Throttle::No;
            }
            if let Some(error) = error.take() {
                hub.broker.handle_decode_error(conn, &error, now);
            }
            Throttle::No
        })
    }

    /// True while a connected subscriber's session queue is backed up (see
    /// `Broker::is_congested`): readers should pause publishers.
    pub(crate) fn backlogged(&self) -> bool {
        self.lock().broker.is_congested(Instant::now())
    }

    /// Waits until no subscriber's session queue is backed up. The broker stops
    /// counting a subscriber that acknowledges nothing for a second, so this ends.
    pub(crate) async fn backlog_cleared(&self) {
        loop {
            let notified = self.backlog.notified();
            tokio::pin!(notified);
            // Register before looking, so that a release in between is not missed.
            notified.as_mut().enable();
            if !self.backlogged() {
                return;
            }
            self.backlog_waiters.fetch_add(1, Ordering::SeqCst);
            // The timeout re-checks for subscribers that stalled meanwhile.
            let _ = tokio::time::timeout(BACKLOG_RECHECK, notified).await;
            self.backlog_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Closes every connection through the broker (v5 clients get DISCONNECT 0x8B,
    /// "server shutting down"); the writers flush and close.
    pub(crate) fn close_all(&self) {
        self.with_hub(None, |hub, now| hub.broker.handle_shutdown(now));
    }

    /// The connection's socket is gone (or going): called exactly once per connection.
    pub(crate) fn closed(&self, conn: ConnId) {
        self.with_hub(None, |hub, now| {
            if let Some(handle) = hub.conns.remove(&conn) {
                handle.forget(conn);
            }
            hub.broker.handle_closed(conn, now);
        })
    }

    /// Calls `handle_timeout` whenever the broker's deadline passes, until shutdown.
    pub(crate) async fn run_timer(self) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let wake_at = {
                let mut hub = self.lock();
                let cap = Instant::now() + MAX_TIMER_SLEEP;
                let wake_at = hub.broker.poll_timeout().map_or(cap, |t| t.min(cap));
                hub.timer_armed = Some(wake_at);
                wake_at
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    let mut hub = self.lock();
                    let now = Instant::now();
                    if hub.broker.poll_timeout().is_some_and(|deadline| deadline <= now) {
                        hub.broker.handle_timeout(now);
                        hub.dispatch();
                        hub.congested.clear();
                    }
                    // The next loop re-reads the deadline, so no wake-up is needed here.
                }
                _ = self.timer.notified() => {}
                _ = stopped(&mut shutdown) => return,
            }
        }
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it at once.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
