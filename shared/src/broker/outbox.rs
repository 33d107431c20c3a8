//! Outputs and store operations, and the rule that ties them: nothing leaves before
//! the store operations it follows are durable.
//!
//! With persistence on, every state change that must survive a restart becomes a
//! [`StoreOp`]. Ops collect into the open batch; the I/O layer takes it with
//! `poll_store_batch`, applies it (one transaction, possibly merged with others: group
//! commit) and reports `handle_store_committed`. An output produced while ops are
//! pending, or while an earlier batch is uncommitted, is held and released in order
//! once its batch commits. So a PUBACK or PUBREC never reaches a publisher before the
//! message is on disk, and outputs keep the order they were produced in. With nothing
//! pending and nothing uncommitted, outputs pass straight through.
//!
//! One exception: a QoS 1 delivery to a subscriber ([`Outbox::push_delivery`]) goes out
//! at once unless something for the same connection is held, since a duplicate after
//! a crash is within QoS 1's promise (the publisher, not yet acknowledged, resends).
//! Sent early, it is often acknowledged before its `Enqueue` is committed; the commit
//! thread then drops the pair (`store::coalesce`), and a subscriber that keeps up
//! costs the store nothing but the publisher's acknowledgement wait.

use std::collections::{HashMap, VecDeque};

use super::{ConnId, Output};
use crate::message::QoS;
use crate::mqtt::packet::{Packet, Publish};
use crate::store::StoreOp;

/// A group of store operations to apply atomically, then acknowledge by `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreBatch {
    /// Increasing batch number; `handle_store_committed(id)` releases what waited on it.
    pub id: u64,
    /// The operations, in order.
    pub ops: Vec<StoreOp>,
}

/// Outputs ready to go, outputs held for durability, and the open store batch.
#[derive(Debug)]
pub(super) struct Outbox {
    ready: VecDeque<Output>,
    held: VecDeque<(u64, Output)>,
    /// How many of `held` are for each connection: an early output may not overtake.
    held_per_conn: HashMap<ConnId, usize>,
    ops: Vec<StoreOp>,
    persistent: bool,
    /// Number the pending ops will carry.
    open_batch: u64,
    /// Every batch up to this number is durable.
    committed: u64,
}

impl Outbox {
    pub(super) fn new() -> Self {
        Outbox {
            ready: VecDeque::new(),
            held: VecDeque::new(),
            held_per_conn: HashMap::new(),
            ops: Vec::new(),
            persistent: false,
            open_batch: 1,
            committed: 0,
        }
    }

    /// From now on, state changes produce store ops and outputs wait for them.
    pub(super) fn enable_persistence(&mut self) {
        self.persistent = true;
    }

    /// True when store ops are recorded.
    pub(super) fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The number of the batch that ops recorded now will belong to.
    pub(super) fn open_batch(&self) -> u64 {
        self.open_batch
    }

    pub(super) fn push(&mut self, output: Output) {
        let must_wait = !self.ops.is_empty() || self.committed + 1 < self.open_batch;
        if self.persistent && must_wait {
            self.hold(output);
        } else {
            self.ready.push_back(output);
        }
    }

    /// Sends a QoS 1/2 delivery: QoS 1 early (see the module doc), QoS 2 only once
    /// what it follows is durable, as a redelivery after a crash would break
    /// exactly-once.
    pub(super) fn push_delivery(&mut self, conn: ConnId, publish: Publish) {
        let early = publish.qos == QoS::AtLeastOnce;
        let output = Output::Send(conn, Packet::Publish(publish));
        if early {
            self.push_early(output);
        } else {
            self.push(output);
        }
    }

    /// Like [`Outbox::push`] for an output that needs no store op to be durable first
    /// (a QoS 1 delivery): it goes out now unless an output for its connection is
    /// held, which it must not overtake.
    fn push_early(&mut self, output: Output) {
        let behind = output_conn(&output).is_some_and(|c| self.held_per_conn.contains_key(&c));
        if behind {
            self.hold(output);
        } else {
            self.ready.push_back(output);
        }
    }

    fn hold(&mut self, output: Output) {
        if let Some(conn) = output_conn(&output) {
            *self.held_per_conn.entry(conn).or_default() += 1;
        }
        self.held.push_back((self.open_batch, output));
    }

    /// Takes the oldest held output if its batch is at or below `up_to`.
    fn release(&mut self, up_to: u64) -> Option<Output> {
        if self.held.front().is_none_or(|(b, _)| *b > up_to) {
            return None;
        }
        let (_, output) = self.held.pop_front()?;
        if let Some(conn) = output_conn(&output) {
            if let Some(n) = self.held_per_conn.get_mut(&conn) {
                *n -= 1;
                if *n == 0 {
                    self.held_per_conn.remove(&conn);
                }
            }
        }
        Some(output)
    }

    /// Records `op` in the open batch (a no-op without persistence).
    pub(super) fn op(&mut self, op: StoreOp) {
        if self.persistent {
            self.ops.push(op);
        }
    }

    pub(super) fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// Closes the open batch. A batch without ops is still issued when outputs wait
    /// on it, so that they are released in order behind the batches before it.
    pub(super) fn poll_batch(&mut self) -> Option<StoreBatch> {
        let waiting = self.held.back().is_some_and(|(b, _)| *b == self.open_batch);
        if !self.persistent || (self.ops.is_empty() && !waiting) {
            return None;
        }
        let id = self.open_batch;
        self.open_batch += 1;
        Some(StoreBatch {
            id,
            ops: std::mem::take(&mut self.ops),
        })
    }

    /// Batch `id` (and so every earlier one) is durable: release what waited on it.
    pub(super) fn committed(&mut self, id: u64) {
        self.committed = self.committed.max(id);
        while let Some(output) = self.release(self.committed) {
            self.ready.push_back(output);
        }
    }

    /// Batch `id` failed: its held outputs are handed back to the caller to decide on,
    /// and later batches may proceed.
    pub(super) fn failed(&mut self, id: u64) -> Vec<Output> {
        let lost = std::iter::from_fn(|| self.release(id)).collect();
        self.committed = self.committed.max(id);
        lost
    }
}

/// The connection an output is for, if any.
fn output_conn(output: &Output) -> Option<ConnId> {
    match output {
        Output::Send(conn, _) | Output::Authenticate(conn, _) | Output::Close(conn) => Some(*conn),
        Output::Injected { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(n: u64) -> Output {
        Output::Send(ConnId(n), Packet::PingResp)
    }

    fn drain(o: &mut Outbox) -> Vec<Output> {
        std::iter::from_fn(|| o.poll_output()).collect()
    }

    #[test]
    fn without_persistence_everything_passes() {
        let mut o = Outbox::new();
        o.op(StoreOp::DeleteRetained { topic: "t".into() });
        o.push(ping(1));
        assert_eq!(drain(&mut o), [ping(1)]);
        assert_eq!(o.poll_batch(), None);
    }

    #[test]
    fn outputs_wait_for_their_batch_and_keep_order() {
        let mut o = Outbox::new();
        o.enable_persistence();
        o.push(ping(1));
        o.op(StoreOp::DeleteRetained { topic: "t".into() });
        o.push(ping(2));
        assert_eq!(drain(&mut o), [ping(1)]);
        let b1 = o.poll_batch().expect("batch");
        // Batch 1 is not yet durable: an output without ops of its own waits too.
        o.push(ping(3));
        assert!(drain(&mut o).is_empty());
        let b2 = o
            .poll_batch()
            .expect("empty batch carrying the waiting output");
        assert!(b2.ops.is_empty());
        o.committed(b1.id);
        assert_eq!(drain(&mut o), [ping(2)]);
        o.committed(b2.id);
        assert_eq!(drain(&mut o), [ping(3)]);
        o.push(ping(4));
        assert_eq!(drain(&mut o), [ping(4)]);
    }

    #[test]
    fn an_early_output_waits_only_behind_its_own_connection() {
        let mut o = Outbox::new();
        o.enable_persistence();
        o.op(StoreOp::DeleteRetained { topic: "t".into() });
        o.push(ping(1));
        o.push_early(ping(2));
        o.push_early(ping(1));
        assert_eq!(drain(&mut o), [ping(2)], "conn 2 has nothing held");
        let b = o.poll_batch().expect("batch");
        o.committed(b.id);
        assert_eq!(drain(&mut o), [ping(1), ping(1)], "conn 1 kept its order");
        o.op(StoreOp::DeleteRetained { topic: "t".into() });
        o.push_early(ping(1));
        assert_eq!(drain(&mut o), [ping(1)], "nothing held for conn 1 any more");
    }

    #[test]
    fn a_failed_batch_hands_back_its_outputs() {
        let mut o = Outbox::new();
        o.enable_persistence();
        o.op(StoreOp::DeleteRetained { topic: "t".into() });
        o.push(ping(1));
        let b = o.poll_batch().expect("batch");
        assert_eq!(o.failed(b.id), [ping(1)]);
        o.push(ping(2));
        assert_eq!(drain(&mut o), [ping(2)]);
    }
}
