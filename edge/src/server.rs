//! The shared broker and the dispatch of its outputs to connections.
//!
//! One [`Hub`] (the sans-IO [`Broker`] plus a handle per live connection) sits behind a
//! mutex. Connection drivers report input in batches through [`Server`]; after every
//! batch, still under the same lock, the hub drains `poll_output` and hands each packet
//! to its connection's writer queue. A timer task calls `handle_timeout` when the broker
//! asks for it. No protocol decision is taken here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tern_core::broker::{Broker, BrokerConfig, ConnId, Output};
use tern_core::mqtt::codec::DecodeError;
use tern_core::mqtt::packet::Packet;
use tokio::sync::{mpsc, watch, Notify};

/// Longest the timer task sleeps without looking at the broker's deadline again.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// Smallest outgoing queue per connection, whatever the limits say.
const MIN_OUTGOING_QUEUE: usize = 64;

/// What the hub keeps for each live connection.
pub(crate) struct ConnHandle {
    /// Packets for the connection's writer. Dropping it tells the writer to flush what
    /// is queued and close.
    outgoing: mpsc::Sender<Packet>,
    /// Tells the writer to stop at once, without flushing (slow consumer).
    kill: Arc<Notify>,
    /// For log lines.
    peer: SocketAddr,
}

impl ConnHandle {
    /// A handle for a connection from `peer`, with its writer's queue and kill switch.
    pub(crate) fn new(outgoing: mpsc::Sender<Packet>, kill: Arc<Notify>, peer: SocketAddr) -> Self {
        ConnHandle {
            outgoing,
            kill,
            peer,
        }
    }
}

/// The broker and the live connections, always used together under one lock.
pub(crate) struct Hub {
    broker: Broker,
    conns: HashMap<ConnId, ConnHandle>,
    /// When the timer task will next wake, so that a batch can wake it earlier.
    timer_armed: Option<Instant>,
}

impl Hub {
    /// Hands every pending output to the connections. Called after each input.
    fn dispatch(&mut self) {
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Send(conn, packet) => {
                    let Some(handle) = self.conns.get(&conn) else {
                        continue; // Gone (closed or killed): nobody to send to.
                    };
                    match handle.outgoing.try_send(packet) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(
                                conn = conn.0,
                                peer = %handle.peer,
                                "slow consumer: outgoing queue full, disconnecting"
                            );
                            if let Some(handle) = self.conns.remove(&conn) {
                                handle.kill.notify_one();
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            // The writer stopped (write error); the driver reports the close.
                            self.conns.remove(&conn);
                        }
                    }
                }
                Output::Close(conn) => {
                    // Dropping the sender lets the writer flush what is queued, then close.
                    self.conns.remove(&conn);
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

/// A cheap handle on the shared broker, cloned into every task.
#[derive(Clone)]
pub(crate) struct Server {
    hub: Arc<Mutex<Hub>>,
    timer: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    max_packet_size: usize,
    outgoing_queue: usize,
}

impl Server {
    /// A server around a new broker with `config`; `shutdown` turns true to stop.
    pub(crate) fn new(config: BrokerConfig, shutdown: watch::Receiver<bool>) -> Self {
        let max_packet_size = usize::try_from(config.max_packet_size).unwrap_or(usize::MAX);
        let outgoing_queue = config
            .max_queued_messages
            .saturating_add(usize::from(config.max_inflight))
            .max(MIN_OUTGOING_QUEUE);
        let hub = Hub {
            broker: Broker::new(config, Instant::now()),
            conns: HashMap::new(),
            timer_armed: None,
        };
        Server {
            hub: Arc::new(Mutex::new(hub)),
            timer: Arc::new(Notify::new()),
            shutdown,
            max_packet_size,
            outgoing_queue,
        }
    }

    /// Largest packet the decoder accepts, in bytes.
    pub(crate) fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Capacity of each connection's outgoing packet queue.
    pub(crate) fn outgoing_queue(&self) -> usize {
        self.outgoing_queue
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
    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub, Instant) -> R) -> R {
        let mut hub = self.lock();
        let result = f(&mut hub, Instant::now());
        hub.dispatch();
        if hub.timer_needs_wake() {
            self.timer.notify_one();
        }
        result
    }

    /// Registers a new connection; returns its id.
    pub(crate) fn open(&self, handle: ConnHandle) -> ConnId {
        self.with_hub(|hub, now| {
            let conn = hub.broker.handle_open(now);
            hub.conns.insert(conn, handle);
            conn
        })
    }

    /// Hands a batch of decoded packets, then possibly a decode error, to the broker in
    /// one lock acquisition. Input for a connection the broker already closed is dropped.
    pub(crate) fn input(
        &self,
        conn: ConnId,
        packets: impl Iterator<Item = Packet>,
        error: Option<&DecodeError>,
    ) {
        self.with_hub(|hub, now| {
            for packet in packets {
                if !hub.conns.contains_key(&conn) {
                    return;
                }
                hub.broker.handle_packet(conn, packet, now);
                // Dispatch as we go so that a Close stops the rest of the batch.
                hub.dispatch();
            }
            if let Some(error) = error {
                if hub.conns.contains_key(&conn) {
                    hub.broker.handle_decode_error(conn, error, now);
                }
            }
        })
    }

    /// The connection's socket is gone (or going): called exactly once per connection.
    pub(crate) fn closed(&self, conn: ConnId) {
        self.with_hub(|hub, now| {
            hub.conns.remove(&conn);
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
