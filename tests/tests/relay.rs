//! The link-impairing relay of the test harness (`tern_tests::relay`) against plain loopback
//! UDP and TCP echo and sink servers: a perfect link passes everything; loss is near its
//! ratio and the same seed drops the same datagrams; delay adds latency; reordering
//! reorders without losing; a rate cap bounds throughput from above (and a full queue
//! drops); a blackhole drops (UDP) or stalls (TCP) and then lets traffic through again;
//! a cut forgets UDP flows and resets TCP connections; dropping the relay frees its port.
//!
//! Timing assertions are lower bounds only (a loaded machine is slow, never fast).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_tests::relay::{Impairment, Relay, Stats, QUEUE_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{sleep, timeout};

const LOCAL: &str = "127.0.0.1:0";
/// Long enough for anything on loopback that is not meant to be lost.
const PATIENCE: Duration = Duration::from_secs(5);

fn local() -> SocketAddr {
    LOCAL.parse().expect("loopback address")
}

/// A UDP server that sends every datagram back to its sender.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind(local()).await.expect("bind udp echo");
    let addr = socket.local_addr().expect("udp echo address");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// What a UDP sink received: (first 4 bytes as a big-endian number, source, arrival time).
type Received = Arc<Mutex<Vec<(u32, SocketAddr, Instant)>>>;

/// A UDP server that records what it receives and answers nothing.
async fn udp_sink() -> (SocketAddr, Received) {
    let socket = UdpSocket::bind(local()).await.expect("bind udp sink");
    let addr = socket.local_addr().expect("udp sink address");
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if n >= 4 {
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                log.lock()
                    .expect("sink log")
                    .push((seq, from, Instant::now()));
            }
        }
    });
    (addr, received)
}

/// A TCP server that echoes every connection.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind(local()).await.expect("bind tcp echo");
    let addr = listener.local_addr().expect("tcp echo address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The relay's counters once `ready` holds (or after [`PATIENCE`]): the relay counts a
/// datagram or chunk after sending it, so the count may lag what the receiver saw.
async fn stats_when(relay: &Relay, ready: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = relay.stats();
        if ready(&stats) || Instant::now() > deadline {
            return stats;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// A datagram numbered `seq`, `len` bytes long.
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let mut d = vec![0xA5u8; len.max(4)];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

/// A client socket connected to the relay.
async fn client(relay: &Relay) -> UdpSocket {
    let socket = UdpSocket::bind(local()).await.expect("bind client");
    socket
        .connect(relay.local_addr())
        .await
        .expect("connect client");
    socket
}

/// Sends `datagram` and waits up to `wait` for a datagram back.
async fn ping(socket: &UdpSocket, seq: u32, wait: Duration) -> Option<Vec<u8>> {
    socket.send(&datagram(seq, 32)).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    match timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Sends `count` numbered datagrams of `len` bytes, pausing briefly every few so that no
/// kernel socket buffer overflows (only the relay may drop).
async fn send_paced(socket: &UdpSocket, count: u32, len: usize) {
    for seq in 0..count {
        socket.send(&datagram(seq, len)).await.expect("send");
        if seq % 16 == 15 {
            sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Waits until the sink has seen no new datagram for `quiet`.
async fn settle(received: &Received, quiet: Duration) {
    let mut seen = usize::MAX;
    loop {
        let now = received.lock().expect("sink log").len();
        if now == seen {
            return;
        }
        seen = now;
        sleep(quiet).await;
    }
}

fn seqs(received: &Received) -> BTreeSet<u32> {
    let log = received.lock().expect("sink log");
    log.iter().map(|&(seq, _, _)| seq).collect()
}

#[tokio::test]
async fn udp_perfect_link_passes_everything() {
    let echo = udp_echo().await;
    let relay = Relay::udp(local(), echo, Impairment::default()).expect("relay");
    let socket = client(&relay).await;
    for seq in 0..500 {
        let back = ping(&socket, seq, PATIENCE).await.expect("echo");
        assert_eq!(back, datagram(seq, 32), "datagram {seq} came back intact");
    }
    let stats = stats_when(&relay, |s| s.to_client.forwarded >= 500).await;
    assert_eq!(stats.flows, 1, "one client, one flow: {stats:?}");
    for dir in [stats.to_upstream, stats.to_client] {
        assert_eq!(dir.received, 500, "{stats:?}");
        assert_eq!(dir.forwarded, 500, "{stats:?}");
        assert_eq!(dir.forwarded_bytes, 500 * 32, "{stats:?}");
        assert_eq!(dir.dropped(), 0, "{stats:?}");
    }
}

#[tokio::test]
async fn udp_loss_is_near_its_ratio() {
    let (sink, received) = udp_sink().await;
    let impairment = Impairment {
        loss: 0.2,
        seed: 7,
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), sink, impairment).expect("relay");
    let socket = client(&relay).await;
    send_paced(&socket, 2000, 100).await;
    settle(&received, Duration::from_millis(200)).await;
    let got = seqs(&received).len() as u64;
    let stats = relay.stats().to_upstream;
    assert_eq!(stats.received, 2000, "{stats:?}");
    assert_eq!(stats.forwarded, got, "{stats:?}");
    assert_eq!(stats.dropped_loss + got, 2000, "{stats:?}");
    // 20% of 2000 = 400, standard deviation about 18.
    assert!(
        (340..=460).contains(&stats.dropped_loss),
        "about 20% lost: {stats:?}"
    );
}

/// The sequence numbers that get through a lossy relay with `seed`.
async fn survivors(seed: u64) -> BTreeSet<u32> {
    let (sink, received) = udp_sink().await;
    let impairment = Impairment {
        loss: 0.3,
        reorder: 0.1,
        seed,
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), sink, impairment).expect("relay");
    let socket = client(&relay).await;
    send_paced(&socket, 500, 64).await;
    settle(&received, Duration::from_millis(200)).await;
    assert_eq!(relay.stats().to_upstream.received, 500);
    seqs(&received)
}

#[tokio::test]
async fn udp_same_seed_same_drops() {
    let a = survivors(42).await;
    let b = survivors(42).await;
    let c = survivors(43).await;
    assert!(
        (250..=450).contains(&a.len()),
        "about 70% pass: {}",
        a.len()
    );
    assert_eq!(a, b, "same seed, same datagrams lost");
    assert_ne!(a, c, "another seed, another pattern");
}

#[tokio::test]
async fn udp_delay_adds_latency() {
    let echo = udp_echo().await;
    let impairment = Impairment {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(10),
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), echo, impairment).expect("relay");
    let socket = client(&relay).await;
    for seq in 0..5 {
        let start = Instant::now();
        ping(&socket, seq, PATIENCE).await.expect("echo");
        let rtt = start.elapsed();
        assert!(
            rtt >= Duration::from_millis(100),
            "RTT {rtt:?} >= 2 x 50 ms"
        );
    }
}

#[tokio::test]
async fn udp_reorder_reorders_without_loss() {
    let (sink, received) = udp_sink().await;
    let impairment = Impairment {
        delay: Duration::from_millis(5),
        reorder: 0.2,
        seed: 3,
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), sink, impairment).expect("relay");
    let socket = client(&relay).await;
    send_paced(&socket, 300, 64).await;
    settle(&received, Duration::from_millis(200)).await;
    let order: Vec<u32> = {
        let log = received.lock().expect("sink log");
        log.iter().map(|&(seq, _, _)| seq).collect()
    };
    assert_eq!(order.len(), 300, "nothing lost");
    let overtaken = order.windows(2).filter(|w| w[0] > w[1]).count();
    let stats = relay.stats().to_upstream;
    assert!(stats.reordered > 20, "{stats:?}");
    assert!(overtaken > 10, "out of order {overtaken} times");
}

#[tokio::test]
async fn udp_rate_cap_bounds_throughput() {
    let (sink, received) = udp_sink().await;
    let impairment = Impairment {
        rate_bits_per_sec: Some(1_000_000),
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), sink, impairment).expect("relay");
    let socket = client(&relay).await;
    let start = Instant::now();
    // 100 kB at 1 Mbit/s: 0.8 s on the wire; fits the default 256 KiB queue.
    send_paced(&socket, 100, 1000).await;
    settle(&received, Duration::from_millis(300)).await;
    let log = received.lock().expect("sink log").clone();
    assert_eq!(log.len(), 100, "all within the queue: {:?}", relay.stats());
    let last = log.iter().map(|&(_, _, at)| at).max().expect("some");
    let took = last - start;
    assert!(took >= Duration::from_millis(780), "took {took:?}");
}

#[tokio::test]
async fn udp_rate_cap_queue_drops() {
    let (sink, received) = udp_sink().await;
    let impairment = Impairment {
        rate_bits_per_sec: Some(100_000),
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), sink, impairment).expect("relay");
    let socket = client(&relay).await;
    // 400 kB into a 256 KiB queue in front of a 100 kbit/s link (12.5 kB/s).
    send_paced(&socket, 400, 1000).await;
    let stats = stats_when(&relay, |s| s.to_upstream.received >= 400)
        .await
        .to_upstream;
    assert_eq!(stats.received, 400, "{stats:?}");
    let queued = (QUEUE_BYTES / 1000) as u64;
    assert!(
        stats.dropped_queue >= 400 - queued - 10,
        "the queue overflows: {stats:?}"
    );
    assert!(
        stats.dropped_queue <= 400 - queued + 10,
        "the queue holds about {queued}: {stats:?}"
    );
    // What was queued still leaves, at the link's pace (80 ms per datagram).
    sleep(Duration::from_millis(500)).await;
    let log = seqs(&received);
    assert!(!log.is_empty() && log.len() < 20, "paced: {}", log.len());
    assert!(log.iter().all(|&seq| seq < 300), "the first ones queued");
}

#[tokio::test]
async fn udp_blackhole_drops_then_resumes() {
    let echo = udp_echo().await;
    let relay = Relay::udp(local(), echo, Impairment::default()).expect("relay");
    let socket = client(&relay).await;
    assert!(ping(&socket, 1, PATIENCE).await.is_some(), "link up");

    relay.blackhole(true);
    assert!(relay.is_blackholed());
    for seq in 2..12 {
        assert!(
            ping(&socket, seq, Duration::from_millis(50))
                .await
                .is_none(),
            "blackholed"
        );
    }
    assert_eq!(relay.stats().to_upstream.dropped_blackhole, 10);
    relay.blackhole(false);
    assert_eq!(
        ping(&socket, 12, PATIENCE).await,
        Some(datagram(12, 32)),
        "back after the blackhole"
    );

    relay.blackhole_for(Duration::from_millis(300));
    let start = Instant::now();
    assert!(
        ping(&socket, 13, Duration::from_millis(100))
            .await
            .is_none(),
        "blackholed for a while"
    );
    // Keep trying; the first answer comes only once the 300 ms are over.
    let mut seq = 14;
    loop {
        if ping(&socket, seq, Duration::from_millis(50))
            .await
            .is_some()
        {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "blackhole_for never ended");
        seq += 1;
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(!relay.is_blackholed());
}

#[tokio::test]
async fn udp_set_impairment_applies_at_once() {
    let echo = udp_echo().await;
    let relay = Relay::udp(local(), echo, Impairment::default()).expect("relay");
    let socket = client(&relay).await;
    assert!(ping(&socket, 1, PATIENCE).await.is_some());
    relay.set_impairment(Impairment {
        loss: 1.0,
        ..Impairment::default()
    });
    assert_eq!(relay.impairment().loss, 1.0);
    assert!(ping(&socket, 2, Duration::from_millis(200)).await.is_none());
    assert_eq!(relay.stats().to_upstream.dropped_loss, 1);
    relay.set_impairment(Impairment::default());
    assert!(ping(&socket, 3, PATIENCE).await.is_some());
}

#[tokio::test]
async fn udp_clients_get_their_own_flows_and_cut_forgets_them() {
    let (sink, received) = udp_sink().await;
    let relay = Relay::udp(local(), sink, Impairment::default()).expect("relay");
    let a = client(&relay).await;
    let b = client(&relay).await;
    a.send(&datagram(1, 8)).await.expect("send");
    b.send(&datagram(2, 8)).await.expect("send");
    a.send(&datagram(3, 8)).await.expect("send");
    settle(&received, Duration::from_millis(100)).await;
    relay.cut();
    // The cut is asynchronous: give the relay a moment to drop the flows.
    sleep(Duration::from_millis(50)).await;
    a.send(&datagram(4, 8)).await.expect("send");
    settle(&received, Duration::from_millis(100)).await;

    let log = received.lock().expect("sink log").clone();
    let source = |seq: u32| {
        log.iter()
            .find(|&&(s, _, _)| s == seq)
            .map(|&(_, from, _)| from)
            .expect("received")
    };
    assert_eq!(source(1), source(3), "one flow per client");
    assert_ne!(source(1), source(2), "another client, another flow");
    assert_ne!(source(1), source(4), "a new flow after the cut");
    assert_eq!(relay.stats().flows, 3);
}

/// Writes `data` through an echo connection and reads it all back.
async fn tcp_round_trip(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w
    });
    let mut back = vec![0u8; len];
    timeout(Duration::from_secs(30), r.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("read back");
    drop(writer.await.expect("writer"));
    back
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn tcp_perfect_link_passes_everything() {
    let echo = tcp_echo().await;
    let relay = Relay::tcp(local(), echo, Impairment::default()).expect("relay");
    let stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    let data = pattern(1 << 20);
    let back = tcp_round_trip(stream, data.clone()).await;
    assert!(back == data, "1 MiB came back intact");
    let stats = stats_when(&relay, |s| s.to_client.forwarded_bytes >= 1 << 20).await;
    assert_eq!(stats.to_upstream.forwarded_bytes, 1 << 20, "{stats:?}");
    assert_eq!(stats.to_client.forwarded_bytes, 1 << 20, "{stats:?}");
    assert_eq!(stats.flows, 1);
}

#[tokio::test]
async fn tcp_close_is_passed_on() {
    let echo = tcp_echo().await;
    let relay = Relay::tcp(local(), echo, Impairment::default()).expect("relay");
    let mut stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    stream.write_all(b"bye").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut back))
        .await
        .expect("in time")
        .expect("clean end of stream");
    assert_eq!(back, b"bye");
}

#[tokio::test]
async fn tcp_delay_adds_latency() {
    let echo = tcp_echo().await;
    let impairment = Impairment {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        // Ignored on TCP: the stream stays whole.
        loss: 0.5,
        reorder: 0.5,
        ..Impairment::default()
    };
    let relay = Relay::tcp(local(), echo, impairment).expect("relay");
    let mut stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    for i in 0..5u8 {
        let start = Instant::now();
        stream.write_all(&[i; 100]).await.expect("write");
        let mut back = [0u8; 100];
        timeout(PATIENCE, stream.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        let rtt = start.elapsed();
        assert_eq!(back, [i; 100]);
        assert!(
            rtt >= Duration::from_millis(100),
            "RTT {rtt:?} >= 2 x 50 ms"
        );
    }
    let data = pattern(200_000);
    let back = tcp_round_trip(stream, data.clone()).await;
    assert!(
        back == data,
        "jitter, loss and reorder do not touch the bytes"
    );
}

#[tokio::test]
async fn tcp_rate_cap_bounds_throughput() {
    let echo = tcp_echo().await;
    let impairment = Impairment {
        rate_bits_per_sec: Some(2_000_000),
        ..Impairment::default()
    };
    let relay = Relay::tcp(local(), echo, impairment).expect("relay");
    let stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    // 500 kB at 2 Mbit/s: 2 s each way (the two directions overlap).
    let data = pattern(500_000);
    let start = Instant::now();
    let back = tcp_round_trip(stream, data.clone()).await;
    let took = start.elapsed();
    assert!(back == data, "the capped link loses nothing");
    assert!(took >= Duration::from_millis(1950), "took {took:?}");
}

#[tokio::test]
async fn tcp_blackhole_stalls_then_resumes() {
    let echo = tcp_echo().await;
    let relay = Relay::tcp(local(), echo, Impairment::default()).expect("relay");
    let mut stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    let mut back = [0u8; 4];

    relay.blackhole(true);
    stream.write_all(b"ping").await.expect("write");
    assert!(
        timeout(Duration::from_millis(300), stream.read_exact(&mut back))
            .await
            .is_err(),
        "nothing comes back through a blackhole"
    );
    relay.blackhole(false);
    timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("the connection survived the blackhole");
    assert_eq!(&back, b"ping");

    relay.blackhole_for(Duration::from_millis(300));
    let start = Instant::now();
    stream.write_all(b"pong").await.expect("write");
    timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&back, b"pong");
    assert!(start.elapsed() >= Duration::from_millis(290));
}

#[tokio::test]
async fn tcp_cut_resets_connections() {
    let echo = tcp_echo().await;
    let relay = Relay::tcp(local(), echo, Impairment::default()).expect("relay");
    let mut stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    stream.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("read");

    relay.cut();
    let mut rest = Vec::new();
    let end = timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the cut ends the connection");
    let err = end.expect_err("a reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    let fresh = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect again");
    let back = tcp_round_trip(fresh, b"again".to_vec()).await;
    assert_eq!(back, b"again");
    assert_eq!(relay.stats().flows, 2);
}

#[tokio::test]
async fn tcp_upstream_down_resets_client() {
    // A port nobody listens on: bind, note it, close.
    let dead = {
        let l = std::net::TcpListener::bind(local()).expect("bind");
        l.local_addr().expect("address")
    };
    let relay = Relay::tcp(local(), dead, Impairment::default()).expect("relay");
    // The relay accepts, then resets; the reset may even overtake the end of the connect.
    let end = match TcpStream::connect(relay.local_addr()).await {
        Ok(mut stream) => {
            let mut buf = Vec::new();
            timeout(PATIENCE, stream.read_to_end(&mut buf))
                .await
                .expect("in time")
                .map(|_| ())
        }
        Err(e) => Err(e),
    };
    let err = end.expect_err("a reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn udp_and_tcp_share_a_port_and_the_controls() {
    // The echo servers on one port, like the bridge acceptor.
    let tcp = TcpListener::bind(local()).await.expect("bind");
    let port = tcp.local_addr().expect("address").port();
    drop(tcp);
    let upstream: SocketAddr = ([127, 0, 0, 1], port).into();
    let udp = UdpSocket::bind(upstream)
        .await
        .expect("udp on the same port");
    let tcp = TcpListener::bind(upstream).await.expect("tcp again");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    let relay = Relay::udp_and_tcp(local(), upstream, Impairment::default()).expect("relay");
    let socket = client(&relay).await;
    assert!(ping(&socket, 1, PATIENCE).await.is_some(), "udp");
    let stream = TcpStream::connect(relay.local_addr())
        .await
        .expect("tcp on the same port");
    assert_eq!(tcp_round_trip(stream, b"tcp".to_vec()).await, b"tcp");

    relay.blackhole(true);
    assert!(ping(&socket, 2, Duration::from_millis(200)).await.is_none());
    relay.blackhole(false);
    assert!(ping(&socket, 3, PATIENCE).await.is_some());
}

#[test]
fn works_without_a_runtime_and_drop_frees_the_port() {
    // A synchronous test: the relay brings its own runtime.
    let echo = std::net::UdpSocket::bind(local()).expect("bind echo");
    let echo_addr = echo.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let impairment = Impairment {
        delay: Duration::from_millis(20),
        ..Impairment::default()
    };
    let relay = Relay::udp(local(), echo_addr, impairment).expect("relay");
    let addr = relay.local_addr();
    let socket = std::net::UdpSocket::bind(local()).expect("bind client");
    socket.connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let start = Instant::now();
    socket.send(b"sync").expect("send");
    let mut buf = [0u8; 16];
    let n = socket.recv(&mut buf).expect("echo");
    assert_eq!(&buf[..n], b"sync");
    assert!(start.elapsed() >= Duration::from_millis(40));

    drop(relay);
    std::net::UdpSocket::bind(addr).expect("the relay's port is free after drop");
}
