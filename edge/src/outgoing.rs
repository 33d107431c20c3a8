//! The queue of packets between the hub and one connection's writer task.
//!
//! A bounded FIFO under a small mutex, filled under the hub lock and emptied by the
//! writer a whole burst at a time (one swap, then encoding without the lock). It owns
//! no memory while empty, which keeps idle connections cheap on small devices (a
//! tokio channel keeps a block of 32 packet slots, about 9 KiB, per connection). It
//! also carries the flow-control signals shared by the hub, the writer and producers
//! waiting for it to drain (see `server.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tern_core::mqtt::packet::Packet;
use tokio::sync::Notify;

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds as many packets as the limit allows.
    Full,
    /// The queue was closed, or its writer is gone.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    packets: VecDeque<Packet>,
    /// No more packets will come: the writer flushes what is queued, then closes.
    closed: bool,
    /// The writer stopped: packets would never be written.
    writer_gone: bool,
}

/// Packets on their way to one connection's writer, and its flow-control signals.
#[derive(Debug)]
pub(crate) struct Outgoing {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the writer: packets were queued, or the queue was closed or killed.
    wake: Notify,
    /// Fired by the writer after each write, for producers waiting on congestion.
    drained: Notify,
    /// Stop at once, without flushing (slow consumer).
    killed: AtomicBool,
    /// Wakes a writer blocked in a write when `killed` is set.
    kill_wake: Notify,
    /// Set while QoS 0 messages are being dropped: producers do not wait for this
    /// connection until the writer has drained it below the high-water mark.
    stalled: AtomicBool,
}

impl Outgoing {
    /// An empty queue that holds at most `capacity` packets.
    pub(crate) fn new(capacity: usize) -> Self {
        Outgoing {
            state: Mutex::new(State::default()),
            capacity,
            wake: Notify::new(),
            drained: Notify::new(),
            killed: AtomicBool::new(false),
            kill_wake: Notify::new(),
            stalled: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock (VecDeque operations and flag updates
        // only), so a poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `packet` unless `limit` (at most the capacity) packets are queued;
    /// returns the number of packets queued before it.
    pub(crate) fn push(&self, packet: Packet, limit: usize) -> Result<usize, PushError> {
        let queued = {
            let mut state = self.lock();
            if state.closed || state.writer_gone {
                return Err(PushError::Closed);
            }
            let queued = state.packets.len();
            if queued >= limit.min(self.capacity) {
                return Err(PushError::Full);
            }
            state.packets.push_back(packet);
            queued
        };
        if queued == 0 {
            // The writer only sleeps on an empty queue.
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// Packets queued now.
    pub(crate) fn len(&self) -> usize {
        self.lock().packets.len()
    }

    /// True once nothing more will be written: closed, or the writer is gone.
    pub(crate) fn is_closed(&self) -> bool {
        let state = self.lock();
        state.closed || state.writer_gone
    }

    /// No more packets: the writer writes what is queued, then closes the stream.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Tells the writer to stop at once, dropping what is queued.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill_wake.notify_one();
        self.close();
    }

    /// Writer side: completes once `kill` was called (to abandon a blocked write).
    pub(crate) async fn killed(&self) {
        loop {
            let notified = self.kill_wake.notified();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
    }

    /// True if `kill` was called.
    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Marks the connection stalled (QoS 0 being dropped); true if it already was.
    pub(crate) fn set_stalled(&self) -> bool {
        self.stalled.swap(true, Ordering::Relaxed)
    }

    /// True while QoS 0 messages to this connection are being dropped.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Writer side: waits for packets and moves all of them into `into` (which must be
    /// empty). Returns false when the queue is closed and empty, or killed.
    pub(crate) async fn take_all(&self, into: &mut VecDeque<Packet>) -> bool {
        debug_assert!(into.is_empty());
        loop {
            {
                let mut state = self.lock();
                if self.is_killed() {
                    return false;
                }
                if !state.packets.is_empty() {
                    std::mem::swap(&mut state.packets, into);
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            // A push or close in between leaves a permit, so nothing is missed.
            self.wake.notified().await;
        }
    }

    /// Writer side: a write completed. Wakes waiting producers and clears the stall
    /// once at most `high_water` packets are queued.
    pub(crate) fn wrote(&self, high_water: usize) {
        if self.len() <= high_water {
            self.stalled.store(false, Ordering::Relaxed);
        }
        self.drained.notify_waiters();
    }

    /// Writer side: the writer stopped; later pushes fail and waiting producers wake.
    pub(crate) fn writer_gone(&self) {
        let mut state = self.lock();
        state.writer_gone = true;
        state.packets = VecDeque::new();
        drop(state);
        self.drained.notify_waiters();
    }

    /// Producer side: waits until at most `high_water` packets are queued or the queue
    /// is closed or stalled. If `deadline` passes first, the queue is marked stalled:
    /// its client is not keeping up, and producers stop waiting for it.
    pub(crate) async fn drained(&self, high_water: usize, deadline: tokio::time::Instant) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Register before looking, so that a drain in between is not missed.
            notified.as_mut().enable();
            if self.len() <= high_water || self.is_closed() || self.is_stalled() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.set_stalled();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn bursts_come_out_whole_and_in_order() {
        let queue = Outgoing::new(10);
        for _ in 0..3 {
            queue.push(Packet::PingResp, usize::MAX).expect("room");
        }
        assert_eq!(queue.push(Packet::PingReq, usize::MAX), Ok(3));
        let mut out = VecDeque::new();
        assert!(queue.take_all(&mut out).await);
        assert_eq!(out.len(), 4);
        assert_eq!(out.back(), Some(&Packet::PingReq));
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn full_and_closed_are_refused() {
        let queue = Outgoing::new(2);
        queue.push(Packet::PingResp, usize::MAX).expect("room");
        queue.push(Packet::PingResp, usize::MAX).expect("room");
        assert_eq!(
            queue.push(Packet::PingResp, usize::MAX),
            Err(PushError::Full)
        );
        assert_eq!(queue.push(Packet::PingResp, 1), Err(PushError::Full));
        queue.close();
        assert_eq!(
            queue.push(Packet::PingResp, usize::MAX),
            Err(PushError::Closed)
        );
        // What was queued before the close is still written, then the end.
        let mut out = VecDeque::new();
        assert!(queue.take_all(&mut out).await);
        assert_eq!(out.len(), 2);
        out.clear();
        assert!(!queue.take_all(&mut out).await);
    }

    #[tokio::test]
    async fn the_writer_wakes_for_a_push_and_for_a_kill() {
        let queue = Arc::new(Outgoing::new(4));
        let writer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut out = VecDeque::new();
                let mut taken = 0;
                while queue.take_all(&mut out).await {
                    taken += out.len();
                    out.clear();
                }
                taken
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.push(Packet::PingResp, usize::MAX).expect("room");
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.push(Packet::PingResp, usize::MAX).expect("room");
        queue.kill();
        let taken = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer stops")
            .expect("no panic");
        assert!(taken >= 1, "took {taken}");
    }

    #[tokio::test]
    async fn producers_wait_for_a_drain_or_the_deadline() {
        let queue = Arc::new(Outgoing::new(10));
        for _ in 0..5 {
            queue.push(Packet::PingResp, usize::MAX).expect("room");
        }
        // Nobody drains: the wait ends at the deadline, and the queue counts as stalled.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        queue.drained(2, deadline).await;
        assert!(tokio::time::Instant::now() >= deadline);
        assert!(queue.is_stalled());
        // Producers no longer wait for it; a write below the high-water mark clears it.
        let far = tokio::time::Instant::now() + Duration::from_secs(5);
        queue.drained(2, far).await;
        assert!(tokio::time::Instant::now() < far);
        let mut out = VecDeque::new();
        assert!(queue.take_all(&mut out).await);
        queue.wrote(2);
        assert!(!queue.is_stalled());
        for packet in out {
            queue.push(packet, usize::MAX).expect("room");
        }

        // A writer drains: the wait ends early.
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                queue.drained(2, deadline).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut out = VecDeque::new();
        assert!(queue.take_all(&mut out).await);
        queue.wrote(2);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken by the drain")
            .expect("no panic");
    }
}
