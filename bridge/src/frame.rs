//! The frames of the bridge link protocol and their binary encoding.
//!
//! A frame is what one transport lane carries as one length-delimited unit (the
//! transport adds the length). The first byte names the frame type; integers are
//! LEB128 varints unless noted, strings and byte strings are a varint length followed by
//! the bytes.
//!
//! ```text
//! Hello   0x01 version:u16be gateway_id:str classes:[str] downstream:[(filter:str class:u8)] delivered:[varint]
//! Welcome 0x02 delivered:[varint]
//! Refuse  0x03 reason:str
//! Batch   0x04 flags:u8 class:u8 count:varint [raw_len:varint if lz4] body
//!              body = first_seq:varint msg (delta:varint>=1 msg)*   (lz4 block if flags bit 0)
//!              msg  = mflags:u8 topic:str payload:bytes origin:str [expires_at:varint] [props]
//! Ack     0x05 class:u8 up_to:varint
//! ```
//!
//! `[x]` is a varint count followed by that many `x`. Decoding is bounded: every count
//! is checked against the bytes left before anything is allocated, a compressed body
//! may not inflate beyond [`MAX_BATCH_BODY`], unknown flag bits and trailing bytes are
//! errors, and nothing panics on any input. Payloads, topics and other byte strings of
//! an uncompressed batch are zero-copy slices of the received frame.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use tern_core::message::QoS;
use tern_core::store::{StoredMessage, StoredProperties};

/// The link protocol version this crate speaks (sent in [`Hello`]).
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest body a compressed batch may inflate to.
pub const MAX_BATCH_BODY: usize = 32 << 20;

/// Most priority classes a link can have (lane `1 + class` must fit a byte).
pub const MAX_CLASSES: usize = 255;

/// Bodies shorter than this are never compressed: lz4 cannot win on them.
const MIN_COMPRESS: usize = 256;

const T_HELLO: u8 = 0x01;
const T_WELCOME: u8 = 0x02;
const T_REFUSE: u8 = 0x03;
const T_BATCH: u8 = 0x04;
const T_ACK: u8 = 0x05;

const BATCH_LZ4: u8 = 0x01;

const M_QOS: u8 = 0x03;
const M_RETAIN: u8 = 0x04;
const M_EXPIRY: u8 = 0x08;
const M_PROPS: u8 = 0x10;
const M_KNOWN: u8 = M_QOS | M_RETAIN | M_EXPIRY | M_PROPS;

const P_FORMAT: u8 = 0x01;
const P_RESPONSE: u8 = 0x02;
const P_CORRELATION: u8 = 0x04;
const P_CONTENT: u8 = 0x08;
const P_USER: u8 = 0x10;
const P_KNOWN: u8 = P_FORMAT | P_RESPONSE | P_CORRELATION | P_CONTENT | P_USER;

/// One unit of the link protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Client → server, first frame on lane 0.
    Hello(Hello),
    /// Server → client: the gateway is accepted.
    Welcome(Welcome),
    /// Server → client: the gateway is refused; the connection ends.
    Refuse {
        /// Why, for the logs of both sides.
        reason: String,
    },
    /// Messages of one class, sequences strictly increasing.
    Batch(Batch),
    /// Cumulative acknowledgement: every message of `class` up to `up_to` is durable.
    Ack {
        /// Priority class acknowledged.
        class: u8,
        /// Highest sequence durably delivered.
        up_to: u64,
    },
}

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the client ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The gateway's id; must equal its certificate's identity.
    pub gateway_id: String,
    /// Names of the priority classes, class id = index, 0 highest.
    pub classes: Vec<String>,
    /// Downstream subscriptions: `(topic filter, class)`.
    pub downstream: Vec<(String, u8)>,
    /// Per class: highest downstream sequence the gateway durably has.
    pub delivered: Vec<u64>,
}

/// The server's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Per class: highest upstream sequence the cloud durably has.
    pub delivered: Vec<u64>,
}

/// Messages of one class with their sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Priority class.
    pub class: u8,
    /// `(sequence, message)`, sequences strictly increasing.
    pub messages: Vec<(u64, StoredMessage)>,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ended inside a field.
    #[error("frame truncated")]
    Truncated,
    /// Bytes left after the last field.
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    /// The first byte names no frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A Hello of a protocol version this side does not speak.
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// A varint longer than 64 bits.
    #[error("varint overflows 64 bits")]
    Varint,
    /// A count or length larger than what is left of the frame or than a limit.
    #[error("{what} too large: {value}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
    /// Flag bits this version does not define, or QoS 3.
    #[error("invalid flags {flags:#04x} in {what}")]
    Flags {
        /// Which field.
        what: &'static str,
        /// The flags byte.
        flags: u8,
    },
    /// A batch with no message, or sequences not strictly increasing.
    #[error("invalid batch: {0}")]
    Batch(&'static str),
    /// A compressed body that does not inflate to its announced size.
    #[error("corrupt compressed batch")]
    Decompress,
}

/// Encodes `frame`. With `compress`, a batch body is lz4-compressed when that makes
/// it smaller. Never fails; a peer rejects fields beyond the decoder's limits.
pub fn encode(frame: &Frame, compress: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    match frame {
        Frame::Hello(h) => {
            out.put_u8(T_HELLO);
            out.put_u16(h.version);
            put_str(&mut out, &h.gateway_id);
            put_varint(&mut out, h.classes.len() as u64);
            for c in &h.classes {
                put_str(&mut out, c);
            }
            put_varint(&mut out, h.downstream.len() as u64);
            for (filter, class) in &h.downstream {
                put_str(&mut out, filter);
                out.put_u8(*class);
            }
            put_seqs(&mut out, &h.delivered);
        }
        Frame::Welcome(w) => {
            out.put_u8(T_WELCOME);
            put_seqs(&mut out, &w.delivered);
        }
        Frame::Refuse { reason } => {
            out.put_u8(T_REFUSE);
            put_str(&mut out, reason);
        }
        Frame::Ack { class, up_to } => {
            out.put_u8(T_ACK);
            out.put_u8(*class);
            put_varint(&mut out, *up_to);
        }
        Frame::Batch(b) => return encode_batch(b, compress),
    }
    out.freeze()
}

fn encode_batch(batch: &Batch, compress: bool) -> Bytes {
    let size: usize = batch
        .messages
        .iter()
        .map(|(_, m)| m.topic.len() + m.payload.len() + m.origin.len() + 16)
        .sum();
    let mut body = BytesMut::with_capacity(size + 16);
    let mut prev = None;
    for (seq, msg) in &batch.messages {
        match prev {
            None => put_varint(&mut body, *seq),
            Some(p) => put_varint(&mut body, seq.wrapping_sub(p)),
        }
        prev = Some(*seq);
        put_message(&mut body, msg);
    }
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_u8(T_BATCH);
    if compress && body.len() >= MIN_COMPRESS && body.len() <= MAX_BATCH_BODY {
        let packed = lz4_flex::block::compress(&body);
        if packed.len() < body.len() {
            out.put_u8(BATCH_LZ4);
            out.put_u8(batch.class);
            put_varint(&mut out, batch.messages.len() as u64);
            put_varint(&mut out, body.len() as u64);
            out.put_slice(&packed);
            return out.freeze();
        }
    }
    out.put_u8(0);
    out.put_u8(batch.class);
    put_varint(&mut out, batch.messages.len() as u64);
    out.put_slice(&body);
    out.freeze()
}

fn put_message(out: &mut BytesMut, m: &StoredMessage) {
    let p = &m.properties;
    let has_props = p.payload_format_indicator.is_some()
        || p.response_topic.is_some()
        || p.correlation_data.is_some()
        || p.content_type.is_some()
        || !p.user_properties.is_empty();
    let mut flags = m.qos as u8;
    if m.retain {
        flags |= M_RETAIN;
    }
    if m.expires_at.is_some() {
        flags |= M_EXPIRY;
    }
    if has_props {
        flags |= M_PROPS;
    }
    out.put_u8(flags);
    put_bytes(out, m.topic.as_bytes());
    put_bytes(out, &m.payload);
    put_bytes(out, m.origin.as_bytes());
    if let Some(at) = m.expires_at {
        put_varint(out, at);
    }
    if has_props {
        let mut pf = 0;
        if p.payload_format_indicator.is_some() {
            pf |= P_FORMAT;
        }
        if p.response_topic.is_some() {
            pf |= P_RESPONSE;
        }
        if p.correlation_data.is_some() {
            pf |= P_CORRELATION;
        }
        if p.content_type.is_some() {
            pf |= P_CONTENT;
        }
        if !p.user_properties.is_empty() {
            pf |= P_USER;
        }
        out.put_u8(pf);
        if let Some(v) = p.payload_format_indicator {
            out.put_u8(v);
        }
        if let Some(v) = &p.response_topic {
            put_bytes(out, v.as_bytes());
        }
        if let Some(v) = &p.correlation_data {
            put_bytes(out, v);
        }
        if let Some(v) = &p.content_type {
            put_bytes(out, v.as_bytes());
        }
        if !p.user_properties.is_empty() {
            put_varint(out, p.user_properties.len() as u64);
            for (k, v) in &p.user_properties {
                put_bytes(out, k.as_bytes());
                put_bytes(out, v.as_bytes());
            }
        }
    }
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_seqs(out: &mut BytesMut, seqs: &[u64]) {
    put_varint(out, seqs.len() as u64);
    for s in seqs {
        put_varint(out, *s);
    }
}

/// Decodes one frame. Bounded and total: any input gives a frame or an error.
pub fn decode(frame: Bytes) -> Result<Frame, FrameError> {
    let mut r = Reader::new(frame);
    let decoded = match r.u8()? {
        T_HELLO => {
            let version = r.u16()?;
            if version != PROTOCOL_VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            let gateway_id = r.string("gateway id")?;
            let n = r.count("class count", 1)?;
            if n > MAX_CLASSES {
                return Err(FrameError::TooLarge {
                    what: "class count",
                    value: n as u64,
                });
            }
            let mut classes = Vec::with_capacity(n);
            for _ in 0..n {
                classes.push(r.string("class name")?);
            }
            let n = r.count("downstream count", 2)?;
            let mut downstream = Vec::with_capacity(n);
            for _ in 0..n {
                let filter = r.string("downstream filter")?;
                downstream.push((filter, r.u8()?));
            }
            let delivered = r.seqs("delivered count")?;
            Frame::Hello(Hello {
                version,
                gateway_id,
                classes,
                downstream,
                delivered,
            })
        }
        T_WELCOME => Frame::Welcome(Welcome {
            delivered: r.seqs("delivered count")?,
        }),
        T_REFUSE => Frame::Refuse {
            reason: r.string("reason")?,
        },
        T_ACK => Frame::Ack {
            class: r.u8()?,
            up_to: r.varint()?,
        },
        T_BATCH => return decode_batch(r),
        t => return Err(FrameError::UnknownType(t)),
    };
    r.finish()?;
    Ok(decoded)
}

fn decode_batch(mut r: Reader) -> Result<Frame, FrameError> {
    let flags = r.u8()?;
    if flags & !BATCH_LZ4 != 0 {
        return Err(FrameError::Flags {
            what: "batch",
            flags,
        });
    }
    let class = r.u8()?;
    let count = r.varint()?;
    if count == 0 {
        return Err(FrameError::Batch("no message"));
    }
    let mut body = if flags & BATCH_LZ4 != 0 {
        let raw_len = r.varint()?;
        let packed = r.rest();
        // lz4 inflates at most ~255:1; a larger announced size is a lie, refuse it
        // before allocating.
        let plausible = (packed.len() as u64).saturating_mul(255).saturating_add(16);
        if raw_len > MAX_BATCH_BODY as u64 || raw_len > plausible {
            return Err(FrameError::TooLarge {
                what: "compressed batch body",
                value: raw_len,
            });
        }
        let mut raw = vec![0u8; raw_len as usize];
        match lz4_flex::block::decompress_into(&packed, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return Err(FrameError::Decompress),
        }
        Reader::new(Bytes::from(raw))
    } else {
        r
    };
    // Each message takes at least 5 bytes (flags, three lengths, one seq byte).
    if count > (body.remaining() / 5) as u64 {
        return Err(FrameError::TooLarge {
            what: "message count",
            value: count,
        });
    }
    let mut messages = Vec::with_capacity(count as usize);
    let mut seq = body.varint()?;
    messages.push((seq, body.message()?));
    for _ in 1..count {
        let delta = body.varint()?;
        if delta == 0 {
            return Err(FrameError::Batch("sequences not strictly increasing"));
        }
        seq = seq
            .checked_add(delta)
            .ok_or(FrameError::Batch("sequence overflows"))?;
        messages.push((seq, body.message()?));
    }
    body.finish()?;
    Ok(Frame::Batch(Batch { class, messages }))
}

/// A cursor over a received frame that hands out zero-copy slices.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(FrameError::Trailing(n)),
        }
    }

    fn rest(&mut self) -> Bytes {
        let rest = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        rest
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        let b = *self.buf.get(self.pos).ok_or(FrameError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(FrameError::Varint);
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FrameError::Varint)
    }

    /// A count of items each taking at least `min_item` bytes, checked against the
    /// bytes left so that no allocation exceeds the frame's own size.
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize, FrameError> {
        let n = self.varint()?;
        if n > (self.remaining() / min_item) as u64 {
            return Err(FrameError::TooLarge { what, value: n });
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, FrameError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(FrameError::TooLarge { what, value: n });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(self.buf.slice(start..self.pos))
    }

    fn byte_string(&mut self, what: &'static str) -> Result<ByteString, FrameError> {
        ByteString::try_from(self.bytes(what)?).map_err(|_| FrameError::Utf8(what))
    }

    fn string(&mut self, what: &'static str) -> Result<String, FrameError> {
        String::from_utf8(self.bytes(what)?.to_vec()).map_err(|_| FrameError::Utf8(what))
    }

    fn seqs(&mut self, what: &'static str) -> Result<Vec<u64>, FrameError> {
        let n = self.count(what, 1)?;
        if n > MAX_CLASSES {
            return Err(FrameError::TooLarge {
                what,
                value: n as u64,
            });
        }
        (0..n).map(|_| self.varint()).collect()
    }

    fn message(&mut self) -> Result<StoredMessage, FrameError> {
        let flags = self.u8()?;
        let qos = QoS::from_u8(flags & M_QOS);
        let Some(qos) = qos.filter(|_| flags & !M_KNOWN == 0) else {
            return Err(FrameError::Flags {
                what: "message",
                flags,
            });
        };
        let topic = self.byte_string("topic")?;
        let payload = self.bytes("payload")?;
        let origin = self.byte_string("origin")?;
        let expires_at = if flags & M_EXPIRY != 0 {
            Some(self.varint()?)
        } else {
            None
        };
        let mut properties = StoredProperties::default();
        if flags & M_PROPS != 0 {
            let pf = self.u8()?;
            if pf & !P_KNOWN != 0 {
                return Err(FrameError::Flags {
                    what: "properties",
                    flags: pf,
                });
            }
            if pf & P_FORMAT != 0 {
                properties.payload_format_indicator = Some(self.u8()?);
            }
            if pf & P_RESPONSE != 0 {
                properties.response_topic = Some(self.byte_string("response topic")?);
            }
            if pf & P_CORRELATION != 0 {
                properties.correlation_data = Some(self.bytes("correlation data")?);
            }
            if pf & P_CONTENT != 0 {
                properties.content_type = Some(self.byte_string("content type")?);
            }
            if pf & P_USER != 0 {
                let n = self.count("user property count", 2)?;
                properties.user_properties.reserve_exact(n);
                for _ in 0..n {
                    let k = self.byte_string("user property")?;
                    let v = self.byte_string("user property")?;
                    properties.user_properties.push((k, v));
                }
            }
        }
        Ok(StoredMessage {
            topic,
            payload,
            qos,
            retain: flags & M_RETAIN != 0,
            properties,
            expires_at,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8]) -> StoredMessage {
        StoredMessage {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: StoredProperties::default(),
            expires_at: None,
            origin: "dev-1".into(),
        }
    }

    fn full_msg() -> StoredMessage {
        StoredMessage {
            topic: "a/b/ç".into(),
            payload: Bytes::from_static(b"\x00\x01payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: StoredProperties {
                payload_format_indicator: Some(1),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                content_type: Some("text/plain".into()),
            },
            expires_at: Some(1_700_000_000_123),
            origin: "sensor".into(),
        }
    }

    fn round_trip(frame: &Frame, compress: bool) -> Frame {
        decode(encode(frame, compress)).expect("round trip")
    }

    #[test]
    fn control_frames_round_trip() {
        let frames = [
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                gateway_id: "gw-1".into(),
                classes: vec!["alarm".into(), "telemetry".into(), "bulk".into()],
                downstream: vec![("commands/gw-1/#".into(), 0), ("cfg/+".into(), 2)],
                delivered: vec![0, 17, u64::MAX],
            }),
            Frame::Welcome(Welcome {
                delivered: vec![5, 0, 1 << 40],
            }),
            Frame::Refuse {
                reason: "gateway id does not match".into(),
            },
            Frame::Ack {
                class: 2,
                up_to: 123_456_789,
            },
        ];
        for f in &frames {
            assert_eq!(&round_trip(f, false), f);
            assert_eq!(&round_trip(f, true), f);
        }
    }

    #[test]
    fn batch_round_trips_with_and_without_compression() {
        let messages: Vec<_> = (0..200u64)
            .map(|i| {
                let m = if i % 7 == 0 {
                    full_msg()
                } else {
                    msg("site/gw-1/temp", format!("reading {i:05}").as_bytes())
                };
                (1000 + i * 3 + (i % 2), m)
            })
            .collect();
        let f = Frame::Batch(Batch { class: 1, messages });
        let plain = encode(&f, false);
        let packed = encode(&f, true);
        assert!(
            packed.len() < plain.len() / 2,
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(packed[1], BATCH_LZ4);
        assert_eq!(plain[1], 0);
        assert_eq!(decode(plain).unwrap(), f);
        assert_eq!(decode(packed).unwrap(), f);
    }

    #[test]
    fn small_or_incompressible_batches_stay_plain() {
        let f = Frame::Batch(Batch {
            class: 0,
            messages: vec![(1, msg("t", b"x"))],
        });
        assert_eq!(encode(&f, true)[1], 0);
        let noise: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
        let f = Frame::Batch(Batch {
            class: 0,
            messages: vec![(u64::MAX, msg("t", &noise))],
        });
        let e = encode(&f, true);
        assert_eq!(e[1], 0);
        assert_eq!(decode(e).unwrap(), f);
    }

    #[test]
    fn uncompressed_payload_is_zero_copy() {
        let f = Frame::Batch(Batch {
            class: 0,
            messages: vec![(9, msg("topic", b"the payload bytes"))],
        });
        let wire = encode(&f, false);
        let range = wire.as_ptr_range();
        let Frame::Batch(b) = decode(wire.clone()).unwrap() else {
            panic!("not a batch")
        };
        let p = b.messages[0].1.payload.as_ptr();
        assert!(range.contains(&p));
    }

    #[test]
    fn garbage_and_malformed_input_is_an_error() {
        let cases: Vec<(&[u8], FrameError)> = vec![
            (b"", FrameError::Truncated),
            (b"\x09", FrameError::UnknownType(9)),
            (b"\x01\x00\x02", FrameError::UnsupportedVersion(2)),
            (b"\x05\x01", FrameError::Truncated),
            (b"\x05\x01\x01\x00", FrameError::Trailing(1)),
            (
                b"\x05\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
                FrameError::Varint,
            ),
            (b"\x04\x00\x00\x00", FrameError::Batch("no message")),
            (
                b"\x04\x02\x00\x01\x00",
                FrameError::Flags {
                    what: "batch",
                    flags: 2,
                },
            ),
            (
                b"\x04\x00\x00\xff\xff\x03\x01",
                FrameError::TooLarge {
                    what: "message count",
                    value: 65535,
                },
            ),
            (
                b"\x04\x01\x00\x01\xff\xff\xff\x0f\x00",
                FrameError::TooLarge {
                    what: "compressed batch body",
                    value: 0x1ff_ffff,
                },
            ),
            (
                b"\x03\x05abc",
                FrameError::TooLarge {
                    what: "reason",
                    value: 5,
                },
            ),
            (b"\x03\x02\xff\xfe", FrameError::Utf8("reason")),
            (
                b"\x02\xff\x01",
                FrameError::TooLarge {
                    what: "delivered count",
                    value: 255,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode(Bytes::copy_from_slice(input)),
                Err(want),
                "{input:x?}"
            );
        }
    }

    #[test]
    fn batch_with_repeated_sequence_or_qos_3_is_refused() {
        let f = Frame::Batch(Batch {
            class: 0,
            messages: vec![(5, msg("t", b"a")), (6, msg("t", b"b"))],
        });
        let mut wire = encode(&f, false).to_vec();
        // Layout: type, flags, class, count, seq(5), msg(flags, 1 t, 1 a, 5 dev-1), delta.
        let delta_at = 4 + 1 + 1 + 2 + 2 + 6;
        assert_eq!(wire[delta_at], 1);
        wire[delta_at] = 0;
        assert_eq!(
            decode(Bytes::from(wire.clone())),
            Err(FrameError::Batch("sequences not strictly increasing"))
        );
        wire[delta_at] = 1;
        wire[5] = 3;
        assert!(matches!(
            decode(Bytes::from(wire)),
            Err(FrameError::Flags {
                what: "message",
                ..
            })
        ));
    }

    #[test]
    fn corrupt_compressed_body_is_an_error() {
        let messages = (1..100u64).map(|i| (i, msg("a/b/c", &[7u8; 64]))).collect();
        let wire = encode(&Frame::Batch(Batch { class: 3, messages }), true);
        assert_eq!(wire[1], BATCH_LZ4);
        let mut bad = wire.to_vec();
        let last = bad.len() - 1;
        bad.truncate(last - 3);
        assert!(decode(Bytes::from(bad)).is_err());
    }

    #[test]
    fn every_truncation_and_random_mutation_is_handled() {
        let messages: Vec<_> = (1..40u64).map(|i| (i * 2, full_msg())).collect();
        for compress in [false, true] {
            let wire = encode(
                &Frame::Batch(Batch {
                    class: 1,
                    messages: messages.clone(),
                }),
                compress,
            );
            for n in 0..wire.len() {
                assert!(decode(wire.slice(..n)).is_err(), "prefix {n}");
            }
            let mut rng = fastrand::Rng::with_seed(7);
            for _ in 0..2000 {
                let mut m = wire.to_vec();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..m.len());
                    m[i] = rng.u8(..);
                }
                let _ = decode(Bytes::from(m));
            }
        }
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5000 {
            let len = rng.usize(..64);
            let mut m: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if let Some(first) = m.first_mut() {
                *first = rng.u8(1..6);
            }
            let _ = decode(Bytes::from(m));
        }
    }
}
