//! Verification of what subscribers receive: counts, per-publisher ordering, duplicates,
//! corruption, misrouting; and the rules that turn those counts into pass or fail.
//!
//! Each subscriber keeps one [`Tally`]: for every publisher a bitset of the sequence
//! numbers seen (exact duplicate and loss counts, and the union across the members of a
//! shared-subscription group) and the next sequence it expects (ordering).

use bytes::Bytes;
use tern_core::message::QoS;

use crate::payload::{Layout, Stamp};

/// Sequence numbers above this are treated as corrupt rather than grown into a bitset.
const MAX_SEQ: u64 = 1 << 36;

/// What one subscriber received.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Per publisher: one past the highest sequence seen.
    next: Vec<u64>,
    /// Per publisher: bitset of sequence numbers seen.
    seen: Vec<Vec<u64>>,
    /// PUBLISH packets received, valid or not.
    pub received: u64,
    /// Same (publisher, sequence) received again.
    pub duplicates: u64,
    /// Arrived after a later message of the same publisher.
    pub reordered: u64,
    /// Payload failed the length, filler or check-word test.
    pub corrupt: u64,
    /// Valid payload on a topic its publisher does not publish to, or from an unknown
    /// publisher.
    pub foreign: u64,
}

impl Tally {
    /// A tally expecting messages from `publishers` publishers.
    pub fn new(publishers: usize) -> Tally {
        Tally {
            next: vec![0; publishers],
            seen: vec![Vec::new(); publishers],
            ..Tally::default()
        }
    }

    /// Records one received PUBLISH; returns its stamp if it is a valid first delivery.
    pub fn record(
        &mut self,
        layout: &Layout,
        topics: &[Bytes],
        topic: &[u8],
        payload: &[u8],
    ) -> Option<Stamp> {
        self.received += 1;
        let stamp = match layout.read(payload) {
            Ok(s) => s,
            Err(_) => {
                self.corrupt += 1;
                return None;
            }
        };
        let p = stamp.publisher as usize;
        if p >= self.next.len() || topics[p] != topic {
            self.foreign += 1;
            return None;
        }
        if stamp.seq >= MAX_SEQ {
            self.corrupt += 1;
            return None;
        }
        let bits = &mut self.seen[p];
        let word = (stamp.seq >> 6) as usize;
        if word >= bits.len() {
            bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << (stamp.seq & 63);
        if bits[word] & mask != 0 {
            self.duplicates += 1;
            return None;
        }
        bits[word] |= mask;
        if stamp.seq < self.next[p] {
            self.reordered += 1;
        } else {
            self.next[p] = stamp.seq + 1;
        }
        Some(stamp)
    }

    /// Records a PUBLISH on a topic outside the run (e.g. without the expected prefix).
    pub fn record_foreign(&mut self) {
        self.received += 1;
        self.foreign += 1;
    }

    /// Distinct messages received from publisher `p`.
    pub fn unique_from(&self, p: usize) -> u64 {
        self.seen
            .get(p)
            .map_or(0, |b| b.iter().map(|w| u64::from(w.count_ones())).sum())
    }

    /// Sequence numbers missing below the highest one seen from publisher `p` (holes in a
    /// stream whose end is unknown, as in the ceiling scenario).
    pub fn holes_from(&self, p: usize) -> u64 {
        self.next
            .get(p)
            .map_or(0, |n| n.saturating_sub(self.unique_from(p)))
    }

    /// Distinct messages from publisher `p` over a group of tallies (a shared
    /// subscription group), and the sum of each member's distinct count: their difference
    /// is the messages delivered to more than one member.
    pub fn union_from(group: &[&Tally], p: usize) -> (u64, u64) {
        let len = group
            .iter()
            .map(|t| t.seen.get(p).map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        let mut union = 0u64;
        for w in 0..len {
            let mut word = 0u64;
            for t in group {
                word |= t.seen.get(p).and_then(|b| b.get(w)).copied().unwrap_or(0);
            }
            union += u64::from(word.count_ones());
        }
        let sum = group.iter().map(|t| t.unique_from(p)).sum();
        (union, sum)
    }
}

/// Totals of a run, as judged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Messages the publishers wrote.
    pub sent: u64,
    /// Messages the broker acknowledged (QoS ≥ 1).
    pub acked: u64,
    /// Deliveries the topology calls for.
    pub expected: u64,
    /// Distinct deliveries that arrived.
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Deliveries that arrived more than once.
    pub duplicates: u64,
    /// Deliveries out of per-publisher order.
    pub reordered: u64,
    /// Payloads that failed verification.
    pub corrupt: u64,
    /// Deliveries to a subscriber that should not have had them.
    pub foreign: u64,
    /// Acknowledgements out of order or with an error reason code.
    pub bad_acks: u64,
}

/// How strictly to judge a run.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Delivery QoS of the run.
    pub qos: QoS,
    /// Also fail on QoS 0 loss and reordering, and on QoS 1 duplicates.
    pub strict: bool,
}

/// Judges `t`: returns (failures, notes).
pub fn judge(t: &Totals, policy: Policy) -> (Vec<String>, Vec<String>) {
    let mut fail = Vec::new();
    let mut note = Vec::new();
    let qos0 = policy.qos == QoS::AtMostOnce;
    if t.corrupt > 0 {
        fail.push(format!("{} corrupt payloads", t.corrupt));
    }
    if t.foreign > 0 {
        fail.push(format!(
            "{} messages delivered to a subscriber whose filter does not match",
            t.foreign
        ));
    }
    if t.bad_acks > 0 {
        fail.push(format!(
            "{} acknowledgements out of order or refused",
            t.bad_acks
        ));
    }
    if !qos0 && t.acked < t.sent {
        fail.push(format!(
            "{} of {} QoS {} publishes never acknowledged",
            t.sent - t.acked,
            t.sent,
            policy.qos as u8
        ));
    }
    let mut rule = |n: u64, what: &str, fails: bool| {
        if n == 0 {
            return;
        }
        let msg = format!("{n} {what}");
        if fails {
            fail.push(msg);
        } else {
            note.push(format!(
                "{msg} (allowed at QoS {}; --strict fails on it)",
                policy.qos as u8
            ));
        }
    };
    rule(t.lost, "messages lost", !qos0 || policy.strict);
    rule(
        t.reordered,
        "messages out of per-publisher order",
        !qos0 || policy.strict,
    );
    rule(
        t.duplicates,
        "duplicate deliveries",
        policy.qos != QoS::AtLeastOnce || policy.strict,
    );
    (fail, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn payload(layout: &Layout, publisher: u64, seq: u64) -> BytesMut {
        let mut b = BytesMut::new();
        layout.write(
            &mut b,
            Stamp {
                publisher,
                seq,
                sent_ns: 0,
            },
        );
        b
    }

    #[test]
    fn counts_duplicates_reorders_and_foreign() {
        let layout = Layout::new(40).expect("above minimum");
        let topics = vec![Bytes::from_static(b"t/0"), Bytes::from_static(b"t/1")];
        let mut t = Tally::new(2);
        for seq in [0, 1, 3, 2, 3] {
            t.record(&layout, &topics, b"t/0", &payload(&layout, 0, seq));
        }
        t.record(&layout, &topics, b"t/0", &payload(&layout, 1, 0));
        t.record(&layout, &topics, b"t/0", b"garbage");
        assert_eq!(t.received, 7);
        assert_eq!(t.unique_from(0), 4);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.foreign, 1);
        assert_eq!(t.corrupt, 1);
        assert_eq!(t.holes_from(0), 0);

        let mut other = Tally::new(2);
        for seq in [3, 4] {
            other.record(&layout, &topics, b"t/0", &payload(&layout, 0, seq));
        }
        assert_eq!(Tally::union_from(&[&t, &other], 0), (5, 6));
    }

    #[test]
    fn qos0_loss_is_a_note_unless_strict() {
        let t = Totals {
            sent: 10,
            expected: 10,
            delivered: 9,
            lost: 1,
            ..Totals::default()
        };
        let (f, n) = judge(
            &t,
            Policy {
                qos: QoS::AtMostOnce,
                strict: false,
            },
        );
        assert!(f.is_empty() && n.len() == 1);
        let (f, _) = judge(
            &t,
            Policy {
                qos: QoS::AtMostOnce,
                strict: true,
            },
        );
        assert_eq!(f.len(), 1);
        let t = Totals { acked: 10, ..t };
        let (f, _) = judge(
            &t,
            Policy {
                qos: QoS::AtLeastOnce,
                strict: false,
            },
        );
        assert_eq!(f.len(), 1);
    }
}
