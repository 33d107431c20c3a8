//! The sending half of one priority class: what was sent, what the peer acknowledged,
//! and the window of messages in between.
//!
//! The sender holds no messages: it remembers the sequence and weight of each unacked
//! message (for the window) and asks the local queue for the next ones after the
//! highest sequence sent. The queue keeps every message until it is acknowledged, so a
//! new connection resends from the peer's durable cursor.

use std::collections::VecDeque;

use tern_core::store::StoredMessage;

/// Bytes a message counts for in windows and batch limits (topic + payload).
pub(crate) fn weight(m: &StoredMessage) -> usize {
    m.topic.len() + m.payload.len()
}

/// Sender state of one class on one connection.
#[derive(Debug, Default)]
pub(crate) struct Sender {
    /// Highest sequence handed to the peer (or the peer's durable cursor at open).
    pub(crate) sent: u64,
    /// Highest sequence the peer acknowledged as durable.
    pub(crate) acked: u64,
    /// `(sequence, weight)` of each sent, unacknowledged message, ascending.
    inflight: VecDeque<(u64, usize)>,
    inflight_bytes: usize,
    /// The queue may hold messages after `sent`: cleared by an empty peek, set by the
    /// port's "outbound ready" signal.
    pub(crate) maybe_ready: bool,
    /// Sending a backlog (replay pacing applies) until the queue is first drained.
    pub(crate) replay: bool,
    /// Messages sent on this connection.
    pub(crate) msgs_sent: u64,
    /// Batch frame bytes sent on this connection.
    pub(crate) bytes_sent: u64,
}

impl Sender {
    /// A sender resuming after `delivered`, the peer's durable cursor.
    pub(crate) fn open(delivered: u64) -> Self {
        Sender {
            sent: delivered,
            acked: delivered,
            maybe_ready: true,
            replay: true,
            ..Sender::default()
        }
    }

    /// Room left in the window: `(messages, bytes)`.
    pub(crate) fn room(&self, window_msgs: usize, window_bytes: usize) -> (usize, usize) {
        (
            window_msgs.saturating_sub(self.inflight.len()),
            window_bytes.saturating_sub(self.inflight_bytes),
        )
    }

    /// Unacknowledged messages.
    pub(crate) fn inflight_msgs(&self) -> usize {
        self.inflight.len()
    }

    /// Records a batch handed to the peer; `messages` are ascending and after `sent`.
    pub(crate) fn record_sent(&mut self, messages: &[(u64, StoredMessage)], frame_len: usize) {
        for (seq, m) in messages {
            let w = weight(m);
            self.inflight.push_back((*seq, w));
            self.inflight_bytes += w;
            self.sent = *seq;
        }
        self.msgs_sent += messages.len() as u64;
        self.bytes_sent += frame_len as u64;
    }

    /// The peer acknowledged up to `up_to`; returns true when that is news.
    pub(crate) fn ack(&mut self, up_to: u64) -> bool {
        if up_to <= self.acked {
            return false;
        }
        self.acked = up_to;
        while let Some(&(seq, w)) = self.inflight.front() {
            if seq > up_to {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= w;
        }
        true
    }
}

/// Keeps the longest prefix of a peeked batch that is strictly increasing and after
/// `after`, at most `max` messages: a queue that misbehaves cannot make the link send
/// a sequence twice.
pub(crate) fn clean_batch(batch: &mut Vec<(u64, StoredMessage)>, after: u64, max: usize) {
    let mut prev = after;
    let valid = batch
        .iter()
        .take(max)
        .take_while(|(seq, _)| {
            let ok = *seq > prev;
            prev = *seq;
            ok
        })
        .count();
    batch.truncate(valid);
}
