//! `tern-bench sink`: the cheapest MQTT server that still speaks the protocol, to show
//! tern-bench's own ceiling (the `ceiling` scenario runs against it).
//!
//! It answers CONNECT, SUBSCRIBE, UNSUBSCRIBE and PINGREQ, acknowledges QoS 1/2
//! PUBLISHes and throws them away; it routes nothing. A client whose CONNECT user name
//! is `tern-bench-source:<payload size>` gets, after its SUBSCRIBE, an endless stream of
//! valid QoS 0 bench messages on the subscribed topic, as fast as its socket takes them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use clap::Args;
use tern_core::message::QoS;
use tern_core::mqtt::codec::encode;
use tern_core::mqtt::packet::{ConnAck, Packet, PubResponse, SubAck, UnsubAck};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::client::{put_publish_header, ClientError, PacketReader, READ_CHUNK};
use crate::clock;
use crate::payload::{Layout, Stamp};

/// CONNECT user name prefix that selects source mode; the payload size follows.
pub const SOURCE_USER: &str = "tern-bench-source:";
/// The line printed on stdout once listening, followed by the address.
pub const READY_LINE: &str = "tern-bench sink listening on ";

/// Options of `tern-bench sink`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:1884")]
    pub bind: SocketAddr,
}

/// Serves until killed.
pub async fn serve(args: &SinkArgs) -> io::Result<()> {
    let listener = TcpListener::bind(args.bind).await?;
    // stdout is line-buffered: the parent reading this line sees it at once.
    println!("{READY_LINE}{}", listener.local_addr()?);
    accept_loop(listener).await
}

/// Serves every connection `listener` accepts.
async fn accept_loop(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A client that misbehaves or leaves only ends its own connection.
            let _ = handle(stream).await;
        });
    }
}

async fn handle(stream: TcpStream) -> Result<(), ClientError> {
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut reader = PacketReader::new(rd, READ_CHUNK, None);
    let Packet::Connect(connect) = reader.recv().await? else {
        return Err(ClientError::Unexpected("expected CONNECT"));
    };
    let version = connect.protocol;
    reader.set_version(version);
    let source = connect
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix(SOURCE_USER))
        .and_then(|s| s.parse::<usize>().ok());
    let mut out = BytesMut::with_capacity(64 * 1024);
    encode(&Packet::ConnAck(ConnAck::default()), version, &mut out);
    loop {
        let mut source_topic = None;
        while let Some(p) = reader.next_packet()? {
            match p {
                Packet::Publish(p) => match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        encode(&Packet::PubAck(PubResponse::new(id)), version, &mut out)
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        encode(&Packet::PubRec(PubResponse::new(id)), version, &mut out)
                    }
                    _ => {}
                },
                Packet::PubRel(r) => encode(
                    &Packet::PubComp(PubResponse::new(r.packet_id)),
                    version,
                    &mut out,
                ),
                Packet::Subscribe(s) => {
                    let reason_codes = s.filters.iter().map(|(_, o)| o.qos as u8).collect();
                    encode(
                        &Packet::SubAck(SubAck {
                            packet_id: s.packet_id,
                            reason_string: None,
                            reason_codes,
                        }),
                        version,
                        &mut out,
                    );
                    source_topic = s.filters.first().map(|(f, _)| topic_for(f));
                }
                Packet::Unsubscribe(u) => {
                    let reason_codes = vec![0; u.filters.len()];
                    encode(
                        &Packet::UnsubAck(UnsubAck {
                            packet_id: u.packet_id,
                            reason_string: None,
                            reason_codes,
                        }),
                        version,
                        &mut out,
                    );
                }
                Packet::PingReq => encode(&Packet::PingResp, version, &mut out),
                Packet::Disconnect(_) => {
                    wr.write_all(&out).await?;
                    return Ok(());
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        if let (Some(size), Some(topic)) = (source, source_topic) {
            return stream_source(reader, wr, topic, size).await;
        }
        if reader.fill().await? == 0 {
            return Ok(());
        }
    }
}

/// A topic name that matches `filter` (wildcards replaced by `0`).
fn topic_for(filter: &str) -> Bytes {
    let t: Vec<&str> = filter
        .split('/')
        .map(|l| if l == "+" || l == "#" { "0" } else { l })
        .collect();
    Bytes::from(t.join("/"))
}

/// Streams QoS 0 bench messages from "publisher 0" until the client leaves.
async fn stream_source(
    mut reader: PacketReader,
    mut wr: OwnedWriteHalf,
    topic: Bytes,
    size: usize,
) -> Result<(), ClientError> {
    let layout = Layout::new(size)
        .map_err(|_| ClientError::Unexpected("source payload size below minimum"))?;
    let gone = Arc::new(AtomicBool::new(false));
    let flag = gone.clone();
    tokio::spawn(async move {
        // Discard whatever the client sends; notice when it leaves.
        while let Ok(n) = reader.fill().await {
            if n == 0 {
                break;
            }
            while let Ok(Some(_)) = reader.next_packet() {}
        }
        flag.store(true, Ordering::Relaxed);
    });
    let batch = (16 * 1024 / (size + 32)).clamp(1, 256) as u64;
    let mut buf = BytesMut::with_capacity(batch as usize * (size + topic.len() + 8));
    let mut seq = 0u64;
    while !gone.load(Ordering::Relaxed) {
        let ts = clock::now_ns();
        for s in seq..seq + batch {
            put_publish_header(&mut buf, &topic, QoS::AtMostOnce, 0, size);
            layout.write(
                &mut buf,
                Stamp {
                    publisher: 0,
                    seq: s,
                    sent_ns: ts,
                },
            );
        }
        seq += batch;
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The tool against its own sink, in process: acknowledgement flows at every QoS and
    //! the source stream verify cleanly.

    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::client::{Conn, ConnectOpts};
    use crate::progress::Counters;
    use crate::scenario::load::{self, Hooks, Length, LoadSpec};
    use crate::scenario::subscriber::{self, SubCtx};
    use crate::scenario::{Plan, Topology};
    use crate::verify::Tally;

    async fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        tokio::spawn(accept_loop(listener));
        addr
    }

    fn spec(addr: SocketAddr, qos: QoS, paced: bool) -> LoadSpec {
        LoadSpec {
            addr,
            sub_addr: addr,
            sub_topic_prefix: String::new(),
            sub_persistent: false,
            hooks: Hooks::default(),
            plan: Plan::new(Topology::Fan, "tb", "test", 2, 0).expect("fan plan"),
            qos,
            layout: Arc::new(Layout::new(64).expect("above minimum")),
            rate: paced.then_some(20_000.0),
            length: Length::Count(500),
            inflight: 16,
            batch: None,
            drain_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(1),
            keep_alive: 0,
            run_id: "test".to_string(),
            paced,
            warmup: Duration::ZERO,
            progress: false,
            sub_username: None,
            phase: "test".to_string(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishers_are_acknowledged_at_every_qos() {
        let addr = start().await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for paced in [false, true] {
                let o = load::run(&spec(addr, qos, paced))
                    .await
                    .expect("set up against the sink");
                assert!(o.errors.is_empty(), "{qos:?} paced={paced}: {:?}", o.errors);
                assert_eq!(o.totals.sent, 1000, "{qos:?} paced={paced}");
                assert_eq!(o.totals.acked, 1000, "{qos:?} paced={paced}");
                assert_eq!(o.totals.bad_acks, 0, "{qos:?} paced={paced}");
                assert_eq!(o.send_lag.is_some(), paced);
            }
        }
    }

    /// Streams from the sink's source for a moment into a subscriber that strips `prefix`
    /// and expects publisher 0 on `topic`; returns what it tallied.
    async fn stream(prefix: &'static [u8], topic: &'static [u8]) -> Tally {
        let addr = start().await;
        let opts = ConnectOpts {
            client_id: "tb-test-s0".to_string(),
            keep_alive: 0,
            username: Some(format!("{SOURCE_USER}64")),
            read_buf: 4096,
            clean: true,
        };
        let mut conn = Conn::connect(addr, &opts).await.expect("connect to sink");
        conn.subscribe("tb/test/+", QoS::AtMostOnce)
            .await
            .expect("subscribe at sink");
        let counters = Arc::new(Counters::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = SubCtx {
            layout: Arc::new(Layout::new(64).expect("above minimum")),
            topics: Arc::new(vec![Bytes::from_static(topic)]),
            topic_prefix: Bytes::from_static(prefix),
            counters: counters.clone(),
            stop: stop_rx,
            record_from_ns: u64::MAX,
            resume: None,
        };
        let task = tokio::spawn(subscriber::run(conn, ctx));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send(true).expect("subscriber is listening");
        let o = task.await.expect("subscriber task");
        assert!(o.error.is_none(), "{:?}", o.error);
        assert_eq!(o.reconnects, 0);
        o.tally
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source_stream_verifies() {
        let t = &stream(b"", b"tb/test/0").await;
        assert!(t.received > 0);
        assert_eq!(
            (
                t.corrupt,
                t.foreign,
                t.duplicates,
                t.reordered,
                t.holes_from(0)
            ),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(t.unique_from(0), t.received);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topic_prefix_is_stripped_and_required() {
        // The sink publishes on `tb/test/0`: seen under the prefix `tb/`, that is the
        // publisher topic `test/0`.
        let t = stream(b"tb/", b"test/0").await;
        assert!(t.received > 0);
        assert_eq!((t.foreign, t.corrupt), (0, 0));
        assert_eq!(t.unique_from(0), t.received);
        // A topic without the expected prefix is misrouted, even when the rest matches.
        let t = stream(b"site/gw1/", b"tb/test/0").await;
        assert!(t.received > 0);
        assert_eq!(t.foreign, t.received);
        assert_eq!(t.unique_from(0), 0);
    }
}
