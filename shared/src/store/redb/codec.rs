//! The byte layout of the records [`super::RedbStore`] keeps in redb values.
//!
//! Hand-written rather than a serde format: there are four record kinds, the layout is
//! part of the on-disk format and must not move when a dependency is upgraded, and
//! decoding must reject anything malformed with a message rather than panic.
//!
//! Every value starts with a one-byte record version ([`RECORD_VERSION`]), so a later
//! format can read old records and rewrite them lazily. Integers that are usually small
//! (lengths, counts, expiry interval, subscription identifiers) are LEB128 varints;
//! byte strings are a varint length then the bytes; an `Option` is a presence byte
//! (0 or 1) then the value. Keys are not repeated in values: the session's client id
//! and the retained message's topic come from the key.
//!
//! An entry has a fixed-size head so the hot updates need no decoding: the message id
//! at `[1..9]` (big endian) and the state at `[11..14]` (tag, packet id big endian).

use std::collections::HashSet;

use bytes::Bytes;
use bytestring::ByteString;

use crate::message::QoS;
use crate::mqtt::packet::{ProtocolVersion, RetainHandling};
use crate::store::{
    EntryRecord, EntryState, MessageId, SessionRecord, StoredMessage, StoredProperties,
    SubscriptionRecord,
};

/// Version byte at the start of every value written by this build.
pub const RECORD_VERSION: u8 = 1;

/// Where the message id of an encoded entry lives.
const ENTRY_MESSAGE: std::ops::Range<usize> = 1..9;
/// Where the state (tag, packet id) of an encoded entry lives.
const ENTRY_STATE: std::ops::Range<usize> = 11..14;

/// Why a value could not be decoded; the caller adds the table, key and file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(DecodeError(what.into()))
}

// ---------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn put_opt_bytes(buf: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            buf.push(1);
            put_bytes(buf, b);
        }
        None => buf.push(0),
    }
}

fn put_opt_varint(buf: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            buf.push(1);
            put_varint(buf, v);
        }
        None => buf.push(0),
    }
}

fn protocol_byte(p: ProtocolVersion) -> u8 {
    match p {
        ProtocolVersion::V31 => 3,
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    }
}

fn retain_handling_byte(r: RetainHandling) -> u8 {
    match r {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendIfNew => 1,
        RetainHandling::DoNotSend => 2,
    }
}

fn state_bytes(s: EntryState) -> [u8; 3] {
    let (tag, id) = match s {
        EntryState::Queued => (0, 0),
        EntryState::AwaitPubAck { packet_id } => (1, packet_id),
        EntryState::AwaitPubRec { packet_id } => (2, packet_id),
        EntryState::AwaitPubComp { packet_id } => (3, packet_id),
    };
    let [hi, lo] = id.to_be_bytes();
    [tag, hi, lo]
}

/// Encodes a session record without its client id (the key).
pub fn encode_session(r: &SessionRecord, buf: &mut Vec<u8>) {
    buf.push(RECORD_VERSION);
    buf.push(protocol_byte(r.protocol));
    put_varint(buf, u64::from(r.expiry_interval));
    put_opt_varint(buf, r.expires_at);
    put_varint(buf, r.subscriptions.len() as u64);
    for (filter, sub) in &r.subscriptions {
        put_bytes(buf, filter.as_bytes());
        let flags = sub.qos as u8
            | u8::from(sub.no_local) << 2
            | u8::from(sub.retain_as_published) << 3
            | retain_handling_byte(sub.retain_handling) << 4;
        buf.push(flags);
        put_opt_varint(buf, sub.identifier.map(u64::from));
    }
}

/// Encodes an entry: the fixed head (see the module doc), then the subscription ids.
pub fn encode_entry(e: &EntryRecord, buf: &mut Vec<u8>) {
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(&e.message.0.to_be_bytes());
    buf.push(e.qos as u8);
    buf.push(u8::from(e.retain));
    buf.extend_from_slice(&state_bytes(e.state));
    put_varint(buf, e.subscription_ids.len() as u64);
    for id in &e.subscription_ids {
        put_varint(buf, u64::from(*id));
    }
}

/// Encodes a message; the topic is left out where the key holds it (retained).
pub fn encode_message(m: &StoredMessage, with_topic: bool, buf: &mut Vec<u8>) {
    buf.push(RECORD_VERSION);
    if with_topic {
        put_bytes(buf, m.topic.as_bytes());
    }
    buf.push(m.qos as u8 | u8::from(m.retain) << 2);
    put_opt_varint(buf, m.expires_at);
    put_bytes(buf, m.origin.as_bytes());
    let p = &m.properties;
    match p.payload_format_indicator {
        Some(v) => buf.extend_from_slice(&[1, v]),
        None => buf.push(0),
    }
    put_opt_bytes(
        buf,
        p.response_topic.as_ref().map(|t| t.as_bytes().as_ref()),
    );
    put_opt_bytes(buf, p.correlation_data.as_deref());
    put_opt_bytes(buf, p.content_type.as_ref().map(|t| t.as_bytes().as_ref()));
    put_varint(buf, p.user_properties.len() as u64);
    for (k, v) in &p.user_properties {
        put_bytes(buf, k.as_bytes());
        put_bytes(buf, v.as_bytes());
    }
    // Last, so that nothing follows the bulk of the record.
    put_bytes(buf, &m.payload);
}

/// Overwrites the state of an encoded entry in place (its size does not change).
pub fn patch_entry_state(encoded: &mut [u8], state: EntryState) -> Result<()> {
    check_entry_head(encoded)?;
    encoded[ENTRY_STATE].copy_from_slice(&state_bytes(state));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------

/// A cursor over one value; every read checks the length.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading a value, checking its version byte.
    fn new(buf: &'a [u8]) -> Result<Self> {
        let mut r = Reader { buf };
        match r.u8()? {
            RECORD_VERSION => Ok(r),
            v => bad(format!(
                "record version {v} (this build reads {RECORD_VERSION})"
            )),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return bad(format!(
                "truncated: {n} bytes needed, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64_be(&mut self) -> Result<u64> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return bad("varint overflows 64 bits");
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bad("varint longer than 10 bytes")
    }

    fn varint_u32(&mut self) -> Result<u32> {
        let v = self.varint()?;
        u32::try_from(v).or_else(|_| bad(format!("{v} does not fit 32 bits")))
    }

    /// A count of items that each take at least one byte, so a corrupt count cannot
    /// make the decoder reserve gigabytes.
    fn count(&mut self) -> Result<usize> {
        let n = self.varint()?;
        if n > self.buf.len() as u64 {
            return bad(format!(
                "count {n} exceeds the {} bytes left",
                self.buf.len()
            ));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).or_else(|_| bad("length overflows"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<ByteString> {
        utf8(self.bytes()?)
    }

    fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => bad(format!("presence byte {b}")),
        }
    }

    fn opt_varint(&mut self) -> Result<Option<u64>> {
        if self.flag()? {
            Ok(Some(self.varint()?))
        } else {
            Ok(None)
        }
    }

    fn opt_string(&mut self) -> Result<Option<ByteString>> {
        if self.flag()? {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }

    fn end(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            bad(format!("{} trailing bytes", self.buf.len()))
        }
    }
}

/// Distinct strings an [`Interner`] keeps; beyond them, new strings are not shared.
const INTERNED_MAX: usize = 4096;

/// Shares one allocation among equal strings of decoded messages: a backlog of a
/// million messages usually has a handful of topics and publishers, and a string of
/// its own per message would cost about 64 bytes each. Bounded, so a backlog of
/// distinct topics costs no more than without it.
#[derive(Debug, Default)]
pub struct Interner {
    seen: HashSet<ByteString>,
}

impl Interner {
    /// The string of `b`, sharing the allocation of an equal one seen before.
    fn string(&mut self, b: &[u8]) -> Result<ByteString> {
        let s = str_of(b)?;
        if let Some(known) = self.seen.get(s) {
            return Ok(known.clone());
        }
        let new = ByteString::from(s);
        if self.seen.len() < INTERNED_MAX {
            self.seen.insert(new.clone());
        }
        Ok(new)
    }
}

/// A UTF-8 string from stored bytes.
pub fn utf8(b: &[u8]) -> Result<ByteString> {
    str_of(b).map(ByteString::from)
}

/// Stored bytes as UTF-8.
fn str_of(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).or_else(|e| bad(format!("invalid UTF-8: {e}")))
}

fn qos(b: u8) -> Result<QoS> {
    QoS::from_u8(b).map_or_else(|| bad(format!("QoS {b}")), Ok)
}

fn protocol(b: u8) -> Result<ProtocolVersion> {
    match b {
        3 => Ok(ProtocolVersion::V31),
        4 => Ok(ProtocolVersion::V311),
        5 => Ok(ProtocolVersion::V5),
        _ => bad(format!("protocol level {b}")),
    }
}

fn retain_handling(b: u8) -> Result<RetainHandling> {
    match b {
        0 => Ok(RetainHandling::SendAtSubscribe),
        1 => Ok(RetainHandling::SendIfNew),
        2 => Ok(RetainHandling::DoNotSend),
        _ => bad(format!("retain handling {b}")),
    }
}

fn state(b: &[u8]) -> Result<EntryState> {
    let packet_id = u16::from_be_bytes([b[1], b[2]]);
    match b[0] {
        0 => Ok(EntryState::Queued),
        1 => Ok(EntryState::AwaitPubAck { packet_id }),
        2 => Ok(EntryState::AwaitPubRec { packet_id }),
        3 => Ok(EntryState::AwaitPubComp { packet_id }),
        t => bad(format!("entry state {t}")),
    }
}

fn check_entry_head(b: &[u8]) -> Result<()> {
    if b.len() < ENTRY_STATE.end {
        return bad(format!("entry of {} bytes", b.len()));
    }
    if b[0] != RECORD_VERSION {
        return bad(format!(
            "record version {} (this build reads {RECORD_VERSION})",
            b[0]
        ));
    }
    Ok(())
}

/// Decodes a session record stored under `client_id`.
pub fn decode_session(client_id: ByteString, b: &[u8]) -> Result<SessionRecord> {
    let mut r = Reader::new(b)?;
    let protocol = protocol(r.u8()?)?;
    let expiry_interval = r.varint_u32()?;
    let expires_at = r.opt_varint()?;
    let n = r.count()?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let filter = r.string()?;
        let flags = r.u8()?;
        if flags & 0xc0 != 0 {
            return bad(format!("subscription flags {flags:#x}"));
        }
        let identifier = match r.opt_varint()? {
            Some(v) => Some(u32::try_from(v).or_else(|_| bad("subscription identifier"))?),
            None => None,
        };
        let sub = SubscriptionRecord {
            qos: qos(flags & 3)?,
            no_local: flags & 4 != 0,
            retain_as_published: flags & 8 != 0,
            retain_handling: retain_handling(flags >> 4 & 3)?,
            identifier,
        };
        subscriptions.push((filter, sub));
    }
    r.end()?;
    Ok(SessionRecord {
        client_id,
        protocol,
        expiry_interval,
        expires_at,
        subscriptions,
    })
}

/// The message id of an encoded entry, without decoding the rest.
pub fn entry_message(b: &[u8]) -> Result<MessageId> {
    check_entry_head(b)?;
    let mut a = [0; 8];
    a.copy_from_slice(&b[ENTRY_MESSAGE]);
    Ok(MessageId(u64::from_be_bytes(a)))
}

/// Decodes an entry.
pub fn decode_entry(b: &[u8]) -> Result<EntryRecord> {
    check_entry_head(b)?;
    let mut r = Reader::new(b)?;
    let message = MessageId(r.u64_be()?);
    let qos = qos(r.u8()?)?;
    let retain = r.flag()?;
    let state = state(r.take(3)?)?;
    let n = r.count()?;
    let subscription_ids = (0..n)
        .map(|_| r.varint_u32())
        .collect::<Result<Vec<u32>>>()?;
    r.end()?;
    Ok(EntryRecord {
        message,
        qos,
        retain,
        subscription_ids,
        state,
    })
}

/// Decodes a message; `topic` is `Some` when the key holds it (retained). Its topic
/// and origin come from `strings`.
pub fn decode_message(
    topic: Option<ByteString>,
    b: &[u8],
    strings: &mut Interner,
) -> Result<StoredMessage> {
    let mut r = Reader::new(b)?;
    let topic = match topic {
        Some(t) => t,
        None => strings.string(r.bytes()?)?,
    };
    let flags = r.u8()?;
    if flags & 0xf8 != 0 {
        return bad(format!("message flags {flags:#x}"));
    }
    let expires_at = r.opt_varint()?;
    let origin = strings.string(r.bytes()?)?;
    let payload_format_indicator = if r.flag()? { Some(r.u8()?) } else { None };
    let response_topic = r.opt_string()?;
    let correlation_data = if r.flag()? {
        Some(Bytes::copy_from_slice(r.bytes()?))
    } else {
        None
    };
    let content_type = r.opt_string()?;
    let n = r.count()?;
    let mut user_properties = Vec::with_capacity(n);
    for _ in 0..n {
        user_properties.push((r.string()?, r.string()?));
    }
    let payload = Bytes::copy_from_slice(r.bytes()?);
    r.end()?;
    Ok(StoredMessage {
        topic,
        payload,
        qos: qos(flags & 3)?,
        retain: flags & 4 != 0,
        properties: StoredProperties {
            payload_format_indicator,
            response_topic,
            correlation_data,
            user_properties,
            content_type,
        },
        expires_at,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StoredMessage {
        StoredMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: StoredProperties {
                payload_format_indicator: Some(1),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"\0\xff")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "".into())],
                content_type: Some("text/plain".into()),
            },
            expires_at: Some(u64::MAX),
            origin: "pub".into(),
        }
    }

    #[test]
    fn store_codec_varints_round_trip_at_the_edges() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut buf = vec![RECORD_VERSION];
            put_varint(&mut buf, v);
            let mut r = Reader::new(&buf).unwrap();
            assert_eq!(r.varint().unwrap(), v);
            r.end().unwrap();
        }
        let overlong = [
            RECORD_VERSION,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(Reader::new(&overlong).unwrap().varint().is_err());
    }

    #[test]
    fn store_codec_decoded_messages_share_equal_strings() {
        let mut buf = Vec::new();
        encode_message(&message(), true, &mut buf);
        let mut strings = Interner::default();
        let a = decode_message(None, &buf, &mut strings).unwrap();
        let b = decode_message(None, &buf, &mut strings).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.topic.as_bytes().as_ptr(), b.topic.as_bytes().as_ptr());
        assert_eq!(a.origin.as_bytes().as_ptr(), b.origin.as_bytes().as_ptr());
        assert_ne!(
            a.payload.as_ptr(),
            b.payload.as_ptr(),
            "payloads are not interned"
        );
        // Past the bound, strings are still decoded, just not shared.
        for i in 0..INTERNED_MAX + 10 {
            let s = format!("t/{i}");
            assert_eq!(strings.string(s.as_bytes()).unwrap(), s);
        }
        assert!(strings.seen.len() <= INTERNED_MAX);
        assert!(strings.string(b"\xff").is_err());
    }

    #[test]
    fn store_codec_message_round_trips_with_and_without_topic() {
        let m = message();
        let mut buf = Vec::new();
        encode_message(&m, true, &mut buf);
        assert_eq!(
            decode_message(None, &buf, &mut Interner::default()).unwrap(),
            m
        );
        buf.clear();
        encode_message(&m, false, &mut buf);
        assert_eq!(
            decode_message(Some("a/b".into()), &buf, &mut Interner::default()).unwrap(),
            m
        );
    }

    #[test]
    fn store_codec_entry_state_patches_in_place() {
        let mut e = EntryRecord {
            message: MessageId(0x0102_0304_0506_0708),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1, 268_435_455],
            state: EntryState::Queued,
        };
        let mut buf = Vec::new();
        encode_entry(&e, &mut buf);
        assert_eq!(entry_message(&buf).unwrap(), e.message);
        e.state = EntryState::AwaitPubComp { packet_id: 65535 };
        patch_entry_state(&mut buf, e.state).unwrap();
        assert_eq!(decode_entry(&buf).unwrap(), e);
    }

    #[test]
    fn store_codec_rejects_every_truncation_and_bad_version() {
        let mut buf = Vec::new();
        encode_message(&message(), true, &mut buf);
        for n in 0..buf.len() {
            assert!(
                decode_message(None, &buf[..n], &mut Interner::default()).is_err(),
                "prefix {n}"
            );
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(
            decode_message(None, &longer, &mut Interner::default()).is_err(),
            "trailing byte"
        );
        buf[0] = RECORD_VERSION + 1;
        let err = decode_message(None, &buf, &mut Interner::default()).unwrap_err();
        assert!(err.0.contains("record version"), "{err}");
        assert!(decode_entry(&[RECORD_VERSION; 5]).is_err());
        assert!(decode_session("c".into(), &[RECORD_VERSION, 9]).is_err());
    }
}
