//! The bench payload: who sent it, which message it is, when, and a filler that proves
//! it arrived intact.
//!
//! ```text
//!  0..8    publisher id        u64 LE
//!  8..16   sequence number     u64 LE, 0, 1, 2, … per publisher
//! 16..24   send timestamp      u64 LE, ns on the process clock (`clock`); in the latency
//!                              scenario the *intended* send time of the open-loop schedule
//! 24..N-8  filler              a fixed pattern, the same for every message of a run
//! N-8..N   check word          a hash of the three header fields
//! ```
//!
//! The filler catches truncation and byte corruption (one `memcmp`); the check word
//! catches a header that was altered or stitched onto another message's body. Both cost
//! far less per message than the socket work around them.

use bytes::{BufMut, BytesMut};

/// Bytes before the filler.
pub const HEADER_LEN: usize = 24;
/// Bytes of the trailing check word.
pub const CHECK_LEN: usize = 8;
/// Smallest payload that holds the header and the check word.
pub const MIN_SIZE: usize = HEADER_LEN + CHECK_LEN;

/// Header fields of one bench payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publisher in the run.
    pub publisher: u64,
    /// Per-publisher sequence number, from 0.
    pub seq: u64,
    /// Send time (or intended send time) in ns on the process clock.
    pub sent_ns: u64,
}

/// Why a payload failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Not the configured payload size.
    Length,
    /// Filler bytes differ from the pattern.
    Filler,
    /// The check word does not match the header.
    Check,
}

/// Payload layout of one run: its size and the filler pattern.
#[derive(Debug, Clone)]
pub struct Layout {
    size: usize,
    filler: Vec<u8>,
}

impl Layout {
    /// A layout for payloads of `size` bytes (at least [`MIN_SIZE`]).
    pub fn new(size: usize) -> Result<Layout, String> {
        if size < MIN_SIZE {
            return Err(format!(
                "payload size {size} is below the minimum of {MIN_SIZE} bytes (publisher id, sequence, timestamp, check word)"
            ));
        }
        let filler = (0..size - MIN_SIZE)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect();
        Ok(Layout { size, filler })
    }

    /// Payload size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Appends one payload to `buf`.
    pub fn write(&self, buf: &mut BytesMut, stamp: Stamp) {
        buf.put_u64_le(stamp.publisher);
        buf.put_u64_le(stamp.seq);
        buf.put_u64_le(stamp.sent_ns);
        buf.put_slice(&self.filler);
        buf.put_u64_le(check_word(stamp));
    }

    /// Verifies `payload` and returns its header.
    pub fn read(&self, payload: &[u8]) -> Result<Stamp, Corruption> {
        if payload.len() != self.size {
            return Err(Corruption::Length);
        }
        let stamp = Stamp {
            publisher: le_u64(&payload[0..8]),
            seq: le_u64(&payload[8..16]),
            sent_ns: le_u64(&payload[16..24]),
        };
        if payload[HEADER_LEN..self.size - CHECK_LEN] != self.filler[..] {
            return Err(Corruption::Filler);
        }
        if le_u64(&payload[self.size - CHECK_LEN..]) != check_word(stamp) {
            return Err(Corruption::Check);
        }
        Ok(stamp)
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// splitmix64's finaliser over the mixed header: cheap, and any single-bit change in a
/// header field changes about half of the output bits.
fn check_word(s: Stamp) -> u64 {
    let mut z =
        s.publisher ^ s.seq.rotate_left(21) ^ s.sent_ns.rotate_left(42) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let layout = Layout::new(100).expect("100 bytes is above the minimum");
        let stamp = Stamp {
            publisher: 3,
            seq: 42,
            sent_ns: 123_456,
        };
        let mut buf = BytesMut::new();
        layout.write(&mut buf, stamp);
        assert_eq!(buf.len(), 100);
        assert_eq!(layout.read(&buf), Ok(stamp));

        let mut bad = buf.clone();
        bad[50] ^= 1;
        assert_eq!(layout.read(&bad), Err(Corruption::Filler));
        let mut bad = buf.clone();
        bad[9] ^= 1;
        assert_eq!(layout.read(&bad), Err(Corruption::Check));
        assert_eq!(layout.read(&buf[..99]), Err(Corruption::Length));
        assert!(Layout::new(MIN_SIZE - 1).is_err());
    }
}
