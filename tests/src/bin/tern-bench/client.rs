//! A lean MQTT 3.1.1 client over tokio's `TcpStream`, just what the bench needs.
//!
//! Packets are decoded with `tern_core::mqtt::codec` into zero-copy slices of one large
//! read buffer, and control packets are encoded with it too. PUBLISH on the send hot path
//! is the exception: [`put_publish_header`] writes the header straight into the batch
//! buffer and the payload follows in place, because the codec takes a `Publish` holding
//! a `Bytes` payload, which would cost an allocation and a copy per message. A unit test
//! checks that both encodings are byte-for-byte identical.
//!
//! After CONNECT (and SUBSCRIBE) a [`Conn`] is split into a [`PacketReader`] for the
//! reader task and the write half for the writer, so that reading never waits on writing
//! (a broker that stops reading while its own writes to us are blocked cannot deadlock
//! against us).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use tern_core::message::QoS;
use tern_core::mqtt::codec::{decode, encode, DecodeError};
use tern_core::mqtt::packet::{
    Connect, ConnectProperties, Disconnect, Packet, ProtocolVersion, PubResponse, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The protocol the bench speaks.
pub const PROTOCOL: ProtocolVersion = ProtocolVersion::V311;
/// Largest packet accepted from a broker.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Read buffer of a busy connection: large, so that one read drains many packets.
pub const READ_CHUNK: usize = 256 * 1024;
/// Read buffer of an idle connection (the `connections` scenario holds thousands).
pub const IDLE_READ_BUF: usize = 64;

/// Why a client operation failed.
#[derive(Debug)]
pub enum ClientError {
    /// Socket error.
    Io(io::Error),
    /// The broker sent bytes the codec rejects.
    Decode(DecodeError),
    /// CONNACK with a non-zero return code.
    Refused(u8),
    /// SUBACK with a failure code.
    SubscribeFailed(u8),
    /// A packet that makes no sense at this point.
    Unexpected(&'static str),
    /// The broker closed the connection.
    Closed,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::Decode(e) => write!(f, "decode: {e}"),
            ClientError::Refused(c) => write!(f, "connection refused, return code {c:#04x}"),
            ClientError::SubscribeFailed(c) => write!(f, "subscription refused, code {c:#04x}"),
            ClientError::Unexpected(what) => write!(f, "unexpected packet: {what}"),
            ClientError::Closed => write!(f, "connection closed by broker"),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Decode(e)
    }
}

/// What to put in CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Client identifier (unique per run).
    pub client_id: String,
    /// Keep-alive in seconds; 0 disables it (the bench's connections are never silent
    /// long enough to matter, and idle ones are checked with PINGREQ at the end).
    pub keep_alive: u16,
    /// User name, used by the sink to select its source mode.
    pub username: Option<String>,
    /// Initial read buffer capacity.
    pub read_buf: usize,
    /// Clean session: `false` asks the broker to keep (or resume) the session, its
    /// subscriptions and the messages queued for it while the client is away.
    pub clean: bool,
}

/// Reads packets from the read half of a connection.
pub struct PacketReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    version: Option<ProtocolVersion>,
    chunk: usize,
}

impl PacketReader {
    /// A reader with `capacity` bytes of buffer; `version` is `None` on the server side
    /// until CONNECT was read.
    pub fn new(
        rd: OwnedReadHalf,
        capacity: usize,
        version: Option<ProtocolVersion>,
    ) -> PacketReader {
        PacketReader {
            rd,
            buf: BytesMut::with_capacity(capacity),
            version,
            chunk: capacity.max(4096),
        }
    }

    /// Sets the protocol version once CONNECT has been seen (server side).
    pub fn set_version(&mut self, v: ProtocolVersion) {
        self.version = Some(v);
    }

    /// Reads more bytes from the socket; `Ok(0)` means end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            // Reclaims the front of the buffer in place once the decoded packets (slices
            // of it) have been dropped; allocates only when they are still alive.
            self.buf.reserve(self.chunk);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next complete packet already buffered, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        decode(&mut self.buf, self.version, MAX_PACKET)
    }

    /// Waits for the next packet.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            if self.fill().await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Bytes read but not yet decoded.
    pub fn into_leftover(self) -> (OwnedReadHalf, BytesMut) {
        (self.rd, self.buf)
    }
}

/// A connected MQTT client, before it is split into its reader and writer roles.
pub struct Conn {
    reader: PacketReader,
    wr: OwnedWriteHalf,
    session_present: bool,
}

impl Conn {
    /// Opens a TCP connection and completes CONNECT / CONNACK.
    pub async fn connect(addr: SocketAddr, opts: &ConnectOpts) -> Result<Conn, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        // Latency matters more than packet count; batching is done by the bench itself.
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            reader: PacketReader::new(rd, opts.read_buf, Some(PROTOCOL)),
            wr,
            session_present: false,
        };
        let connect = Packet::Connect(Box::new(Connect {
            protocol: PROTOCOL,
            clean_start: opts.clean,
            keep_alive: opts.keep_alive,
            client_id: opts.client_id.as_str().into(),
            last_will: None,
            username: opts.username.as_deref().map(Into::into),
            password: None,
            properties: ConnectProperties::default(),
        }));
        conn.send(&connect).await?;
        match conn.reader.recv().await? {
            Packet::ConnAck(a) if a.reason_code == 0 => {
                conn.session_present = a.session_present;
                Ok(conn)
            }
            Packet::ConnAck(a) => Err(ClientError::Refused(a.reason_code)),
            _ => Err(ClientError::Unexpected("expected CONNACK")),
        }
    }

    /// Whether the broker resumed a session it kept for this client id (CONNACK).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Encodes and writes one control packet.
    pub async fn send(&mut self, p: &Packet) -> Result<(), ClientError> {
        let mut b = BytesMut::with_capacity(64);
        encode(p, PROTOCOL, &mut b);
        self.wr.write_all(&b).await?;
        Ok(())
    }

    /// Subscribes to one filter and returns the granted QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<QoS, ClientError> {
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![(filter.into(), SubscriptionOptions::new(qos))],
        });
        self.send(&sub).await?;
        match self.reader.recv().await? {
            Packet::SubAck(a) if a.packet_id == 1 => match a.reason_codes.first().copied() {
                Some(c) if c <= 2 => QoS::from_u8(c).ok_or(ClientError::SubscribeFailed(c)),
                Some(c) => Err(ClientError::SubscribeFailed(c)),
                None => Err(ClientError::Unexpected("SUBACK without return code")),
            },
            _ => Err(ClientError::Unexpected("expected SUBACK")),
        }
    }

    /// Sends PINGREQ and waits for PINGRESP: proves the connection is still served.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::PingReq).await?;
        match self.reader.recv().await? {
            Packet::PingResp => Ok(()),
            _ => Err(ClientError::Unexpected("expected PINGRESP")),
        }
    }

    /// Splits the connection into its reader and write half.
    pub fn into_parts(self) -> (PacketReader, OwnedWriteHalf) {
        (self.reader, self.wr)
    }
}

/// Appends DISCONNECT to `buf`.
pub fn put_disconnect(buf: &mut BytesMut) {
    encode(&Packet::Disconnect(Disconnect::default()), PROTOCOL, buf);
}

/// Appends an acknowledgement packet (PUBACK, PUBREC, PUBREL or PUBCOMP) to `buf`.
pub fn put_ack(buf: &mut BytesMut, make: fn(PubResponse) -> Packet, packet_id: u16) {
    encode(&make(PubResponse::new(packet_id)), PROTOCOL, buf);
}

/// Size of a PUBLISH with this topic, QoS and payload size, fixed header included.
pub fn publish_len(topic_len: usize, qos: QoS, payload_len: usize) -> usize {
    let rem = remaining_len(topic_len, qos, payload_len);
    1 + varint_len(rem) + rem
}

fn remaining_len(topic_len: usize, qos: QoS, payload_len: usize) -> usize {
    2 + topic_len + if qos == QoS::AtMostOnce { 0 } else { 2 } + payload_len
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 128 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Appends the fixed and variable header of a PUBLISH (no DUP, no RETAIN); the caller
/// appends exactly `payload_len` payload bytes right after. `packet_id` is ignored at
/// QoS 0.
pub fn put_publish_header(
    buf: &mut BytesMut,
    topic: &[u8],
    qos: QoS,
    packet_id: u16,
    payload_len: usize,
) {
    buf.put_u8(0x30 | ((qos as u8) << 1));
    let mut rem = remaining_len(topic.len(), qos, payload_len);
    loop {
        let byte = (rem & 0x7f) as u8;
        rem >>= 7;
        if rem == 0 {
            buf.put_u8(byte);
            break;
        }
        buf.put_u8(byte | 0x80);
    }
    // Topics are built by the bench and are far below 64 KiB.
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic);
    if qos != QoS::AtMostOnce {
        buf.put_u16(packet_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_core::mqtt::packet::{Publish, PublishProperties};

    #[test]
    fn hand_encoded_publish_matches_codec() {
        for (qos, size) in [
            (QoS::AtMostOnce, 100),
            (QoS::AtLeastOnce, 1000),
            (QoS::ExactlyOnce, 200_000),
        ] {
            let payload = Bytes::from(vec![7u8; size]);
            let topic = "tb/abc/12";
            let mut ours = BytesMut::new();
            put_publish_header(&mut ours, topic.as_bytes(), qos, 77, size);
            ours.put_slice(&payload);
            let mut theirs = BytesMut::new();
            let p = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.into(),
                packet_id: (qos != QoS::AtMostOnce).then_some(77),
                properties: PublishProperties::default(),
                payload,
            });
            encode(&p, PROTOCOL, &mut theirs);
            assert_eq!(ours, theirs, "qos {qos:?} size {size}");
            assert_eq!(publish_len(topic.len(), qos, size), ours.len());
        }
    }
}
