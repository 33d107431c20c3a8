//! When a store file is worth compacting: the pure decision behind
//! [`Store::reclaim_space`](super::Store::reclaim_space), and the report of what a
//! compaction did.
//!
//! A durable store reuses the pages its queues free, but its file never shrinks by
//! itself: a gateway whose store once grew to 500 MB during an outage keeps a 500 MB
//! file after the backlog drained. Compacting rewrites the file to what its content
//! needs; it copies the live pages, so it is cheap when little is stored (which is
//! when it pays off) and the store applies no batch meanwhile. The policy therefore
//! asks for both a large ratio and a large absolute gain, so a store is not rewritten
//! (and flash not worn) for a few pages:
//!
//! - the file is more than [`COMPACT_RATIO`] times the bytes in use
//!   ([`StoreStats::bytes`](super::StoreStats::bytes)), and
//! - it is at least [`CompactionPolicy::min_reclaim_bytes`] larger than them.
//!
//! The bytes in use are an estimate of what the records need; a file can stay above
//! the ratio after a compaction (B-tree pages left sparse by scattered deletes keep
//! their place). Repeating such a compaction gains nothing, so after one the next
//! waits until something changed by `min_reclaim_bytes`: the file grew, or the bytes
//! in use shrank.

use std::time::Duration;

/// A file must be more than this many times the bytes in use to be compacted.
pub const COMPACT_RATIO: u64 = 2;

/// When compacting a store file is worth it (profile key `store.compact_min_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Least number of bytes by which the file must exceed the bytes in use.
    pub min_reclaim_bytes: u64,
}

/// What one compaction did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// File size before, in bytes.
    pub file_bytes_before: u64,
    /// File size after, in bytes.
    pub file_bytes_after: u64,
    /// Bytes in use ([`StoreStats::bytes`](super::StoreStats::bytes)) meanwhile.
    pub in_use_bytes: u64,
    /// How long it took (the store applied no batch meanwhile).
    pub duration: Duration,
}

impl CompactionPolicy {
    /// Whether a file of `file_bytes` holding `in_use_bytes` should be compacted;
    /// `futile` is the previous compaction if it left the file still due.
    pub fn is_due(&self, file_bytes: u64, in_use_bytes: u64, futile: Option<&Compaction>) -> bool {
        let min = self.min_reclaim_bytes;
        let over_ratio = file_bytes > in_use_bytes.saturating_mul(COMPACT_RATIO);
        let gain = file_bytes.saturating_sub(in_use_bytes) >= min;
        let changed = futile.is_none_or(|last| {
            file_bytes >= last.file_bytes_after.saturating_add(min)
                || in_use_bytes.saturating_add(min) <= last.in_use_bytes
        });
        over_ratio && gain && changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn policy() -> CompactionPolicy {
        CompactionPolicy {
            min_reclaim_bytes: 8 * MIB,
        }
    }

    #[test]
    fn store_compaction_due_for_a_drained_large_file() {
        assert!(policy().is_due(500 * MIB, 10_000, None));
        assert!(policy().is_due(500 * MIB, 200 * MIB, None));
    }

    #[test]
    fn store_compaction_not_due_below_the_ratio() {
        assert!(!policy().is_due(500 * MIB, 250 * MIB, None), "exactly 2x");
        assert!(!policy().is_due(272 * MIB, 213 * MIB, None), "a full store");
    }

    #[test]
    fn store_compaction_not_due_for_a_small_gain() {
        // A small file far above the ratio: a few pages are not worth a rewrite.
        assert!(!policy().is_due(2 * MIB, 1000, None));
        assert!(!policy().is_due(8 * MIB - 1, 0, None));
        assert!(policy().is_due(8 * MIB, 0, None));
    }

    #[test]
    fn store_compaction_not_repeated_until_something_changed() {
        // A compaction left 40 MiB for 10 MiB in use (sparse pages): repeating it gains
        // nothing until the file grows or the content shrinks by 8 MiB.
        let last = Compaction {
            file_bytes_before: 100 * MIB,
            file_bytes_after: 40 * MIB,
            in_use_bytes: 10 * MIB,
            duration: Duration::ZERO,
        };
        let futile = Some(&last);
        assert!(!policy().is_due(40 * MIB, 10 * MIB, futile));
        assert!(!policy().is_due(48 * MIB - 1, 10 * MIB, futile));
        assert!(!policy().is_due(40 * MIB, 2 * MIB + 1, futile));
        assert!(policy().is_due(48 * MIB, 10 * MIB, futile), "the file grew");
        assert!(
            policy().is_due(40 * MIB, 2 * MIB, futile),
            "the content shrank"
        );
    }

    #[test]
    fn store_compaction_sizes_do_not_overflow() {
        let last = Compaction {
            file_bytes_before: u64::MAX,
            file_bytes_after: u64::MAX,
            in_use_bytes: u64::MAX,
            duration: Duration::ZERO,
        };
        assert!(!policy().is_due(u64::MAX, u64::MAX, Some(&last)));
        assert!(policy().is_due(u64::MAX, 0, None));
        assert!(!policy().is_due(0, 0, None));
    }
}
