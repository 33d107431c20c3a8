//! The receiving half of one priority class: dedup by sequence and the durable cursor
//! that acknowledgements report.
//!
//! A message is handed to the local broker once: anything at or below the highest
//! sequence already handed over (`handed`) is dropped. Acks report `delivered`, which
//! only moves when the local port says a delivery is durable, so a crash between
//! receipt and durability makes the peer resend, and the next connection starts from
//! the durable cursor.

use tern_core::store::StoredMessage;

use super::sender::weight;

/// Receiver state of one class on one connection.
#[derive(Debug, Default)]
pub(crate) struct Receiver {
    /// Highest sequence the local port made durable.
    pub(crate) delivered: u64,
    /// Highest sequence handed to the local port (durable or not yet).
    pub(crate) handed: u64,
    /// An Ack{delivered} should be sent.
    pub(crate) ack_pending: bool,
    /// Messages received on this connection (duplicates included).
    pub(crate) msgs_received: u64,
    /// Payload and topic bytes received on this connection.
    pub(crate) bytes_received: u64,
}

/// What to do with a received batch.
#[derive(Debug, PartialEq)]
pub(crate) enum Accept {
    /// Hand these new messages to the port, then report durability up to `up_to`.
    Deliver(Vec<StoredMessage>, u64),
    /// Nothing new.
    Duplicate,
}

impl Receiver {
    /// A receiver whose port is durable up to `delivered`.
    pub(crate) fn open(delivered: u64) -> Self {
        Receiver {
            delivered,
            handed: delivered,
            ..Receiver::default()
        }
    }

    /// Takes a batch whose sequences are strictly increasing.
    pub(crate) fn accept(&mut self, messages: Vec<(u64, StoredMessage)>) -> Accept {
        self.msgs_received += messages.len() as u64;
        self.bytes_received += messages.iter().map(|(_, m)| weight(m) as u64).sum::<u64>();
        let handed = self.handed;
        let fresh: Vec<StoredMessage> = messages
            .into_iter()
            .filter(|(seq, _)| *seq > handed)
            .map(|(seq, m)| {
                self.handed = seq;
                m
            })
            .collect();
        if fresh.is_empty() {
            // Everything was seen already. If it is all durable, the peer missed our
            // ack (or resent anyway): repeat it so its window moves.
            if self.handed == self.delivered {
                self.ack_pending = true;
            }
            return Accept::Duplicate;
        }
        Accept::Deliver(fresh, self.handed)
    }

    /// The port made everything up to `up_to` durable.
    pub(crate) fn delivered(&mut self, up_to: u64) {
        if up_to > self.delivered && up_to <= self.handed {
            self.delivered = up_to;
            self.ack_pending = true;
        }
    }
}
