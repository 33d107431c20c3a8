//! Deterministic tests of the link: a `Pair` harness drives a client and a server
//! machine on virtual time, with plain structs as the durable stores of both ends
//! (outbound queues, delivered cursors, inboxes) and in-memory wires with latency.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_core::message::QoS;
use tern_core::store::{StoredMessage, StoredProperties};

use super::*;
use crate::frame::{self, PROTOCOL_VERSION};

const CLASSES: usize = 3;

fn message(class: u8, n: u64, size: usize) -> StoredMessage {
    let mut payload = format!("c{class}-{n}").into_bytes();
    if payload.len() < size {
        payload.resize(size, b'.');
    }
    StoredMessage {
        topic: format!("t/{class}").into(),
        payload: Bytes::from(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: StoredProperties::default(),
        expires_at: None,
        origin: "dev".into(),
    }
}

fn label(m: &StoredMessage) -> String {
    let p = std::str::from_utf8(&m.payload).expect("utf8 payload");
    p.trim_end_matches('.').to_string()
}

/// One end's durable store: outbound queues (unacked messages survive), inbound
/// cursors and inboxes, and deliveries not yet durable.
#[derive(Debug, Default)]
struct Node {
    out: Vec<BTreeMap<u64, StoredMessage>>,
    next_seq: Vec<u64>,
    acked: Vec<u64>,
    inbox: Vec<Vec<String>>,
    delivered: Vec<u64>,
    /// Deliveries handed over, not yet durable: `(class, labels, up_to)`.
    pending: VecDeque<(u8, Vec<String>, u64)>,
    /// Commit pending deliveries on every step.
    durable: bool,
    /// Next label number per class.
    published: Vec<u64>,
    size: usize,
}

impl Node {
    fn new() -> Self {
        Node {
            out: vec![BTreeMap::new(); CLASSES],
            next_seq: vec![0; CLASSES],
            acked: vec![0; CLASSES],
            inbox: vec![Vec::new(); CLASSES],
            delivered: vec![0; CLASSES],
            pending: VecDeque::new(),
            durable: true,
            published: vec![0; CLASSES],
            size: 16,
        }
    }

    /// Queues `n` messages on `class`; every third sequence is skipped (gaps).
    fn publish(&mut self, class: u8, n: u64) {
        let c = usize::from(class);
        for _ in 0..n {
            self.next_seq[c] += if self.next_seq[c] % 3 == 2 { 2 } else { 1 };
            let label = self.published[c];
            self.published[c] += 1;
            self.out[c].insert(self.next_seq[c], message(class, label, self.size));
        }
    }

    /// Commits pending deliveries: `(class, up_to)` for the link.
    fn commit(&mut self) -> Vec<(u8, u64)> {
        let mut done = Vec::new();
        while let Some((class, labels, up_to)) = self.pending.pop_front() {
            let c = usize::from(class);
            self.inbox[c].extend(labels);
            self.delivered[c] = up_to;
            done.push((class, up_to));
        }
        done
    }

    fn expected(&self, class: u8) -> Vec<String> {
        (0..self.published[usize::from(class)])
            .map(|n| format!("c{class}-{n}"))
            .collect()
    }
}

impl Outbound for Node {
    fn peek(
        &mut self,
        class: u8,
        after: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<(u64, StoredMessage)> {
        let mut bytes = 0;
        let mut batch = Vec::new();
        for (seq, m) in self.out[usize::from(class)].range(after + 1..) {
            if batch.len() >= max_msgs || (!batch.is_empty() && bytes + m.payload.len() > max_bytes)
            {
                break;
            }
            bytes += m.payload.len();
            batch.push((*seq, m.clone()));
        }
        batch
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// A frame seen on a wire: when, which way, lane, size, messages in it.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    from: Side,
    lane: u8,
    len: usize,
    msgs: usize,
}

/// Two links, two stores, two wires with latency, one virtual clock.
struct Pair {
    t0: Instant,
    now: Instant,
    client: Link,
    server: Link,
    edge: Node,
    cloud: Node,
    client_limits: Limits,
    server_limits: Limits,
    to_server: VecDeque<(Instant, u8, Bytes)>,
    to_client: VecDeque<(Instant, u8, Bytes)>,
    latency: Duration,
    refuse: Option<String>,
    sent: Vec<Sent>,
    /// `(when, class, label)` of every message the cloud made durable.
    arrivals: Vec<(Instant, u8, String)>,
    closed: Vec<(Side, LinkError)>,
    opened: usize,
}

fn hello(delivered: &[u64]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        gateway_id: "gw-1".into(),
        classes: vec!["alarm".into(), "telemetry".into(), "bulk".into()],
        downstream: vec![("commands/gw-1/#".into(), 0)],
        delivered: delivered.to_vec(),
    }
}

impl Pair {
    fn new(limits: Limits) -> Self {
        let t0 = Instant::now();
        let edge = Node::new();
        let client = Link::client(hello(&edge.delivered), limits.clone(), t0);
        Pair {
            t0,
            now: t0,
            client,
            server: Link::server(limits.clone(), t0),
            edge,
            cloud: Node::new(),
            client_limits: limits.clone(),
            server_limits: limits,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            latency: Duration::from_millis(10),
            refuse: None,
            sent: Vec::new(),
            arrivals: Vec::new(),
            closed: Vec::new(),
            opened: 0,
        }
    }

    /// The connection dies: frames in flight are lost, so are deliveries that were
    /// not yet durable (a crash of both ends at once, the worst case).
    fn cut(&mut self) {
        self.to_server.clear();
        self.to_client.clear();
        self.edge.pending.clear();
        self.cloud.pending.clear();
    }

    /// A new pair of machines over the same stores.
    fn reconnect(&mut self) {
        self.cut();
        self.client = Link::client(
            hello(&self.edge.delivered),
            self.client_limits.clone(),
            self.now,
        );
        self.server = Link::server(self.server_limits.clone(), self.now);
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Runs every input due at `now` until nothing moves.
    fn step(&mut self) {
        loop {
            let mut progress = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut self.edge) {
                self.wire(Side::Client, t);
                progress = true;
            }
            while let Some(t) = self.server.poll_transmit(self.now, &mut self.cloud) {
                self.wire(Side::Server, t);
                progress = true;
            }
            while self.to_server.front().is_some_and(|f| f.0 <= self.now) {
                let Some((_, lane, bytes)) = self.to_server.pop_front() else {
                    break;
                };
                self.server.handle_bytes(lane, bytes, self.now);
                progress = true;
            }
            while self.to_client.front().is_some_and(|f| f.0 <= self.now) {
                let Some((_, lane, bytes)) = self.to_client.pop_front() else {
                    break;
                };
                self.client.handle_bytes(lane, bytes, self.now);
                progress = true;
            }
            while let Some(ev) = self.client.poll_event() {
                self.on_event(Side::Client, ev);
                progress = true;
            }
            while let Some(ev) = self.server.poll_event() {
                self.on_event(Side::Server, ev);
                progress = true;
            }
            if self.edge.durable {
                for (class, up_to) in self.edge.commit() {
                    self.client.handle_delivered(class, up_to);
                    progress = true;
                }
            }
            if self.cloud.durable {
                let before: Vec<usize> = self.cloud.inbox.iter().map(Vec::len).collect();
                for (class, up_to) in self.cloud.commit() {
                    self.server.handle_delivered(class, up_to);
                    progress = true;
                }
                for (c, inbox) in self.cloud.inbox.iter().enumerate() {
                    for l in &inbox[before[c]..] {
                        self.arrivals.push((self.now, c as u8, l.clone()));
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn wire(&mut self, from: Side, t: Transmit) {
        let msgs = match frame::decode(t.frame.clone()) {
            Ok(Frame::Batch(b)) => b.messages.len(),
            _ => 0,
        };
        self.sent.push(Sent {
            at: self.now,
            from,
            lane: t.lane,
            len: t.frame.len(),
            msgs,
        });
        let q = match from {
            Side::Client => &mut self.to_server,
            Side::Server => &mut self.to_client,
        };
        q.push_back((self.now + self.latency, t.lane, t.frame));
    }

    fn on_event(&mut self, side: Side, ev: Event) {
        let (link, node) = match side {
            Side::Client => (&mut self.client, &mut self.edge),
            Side::Server => (&mut self.server, &mut self.cloud),
        };
        match ev {
            Event::Hello(h) => {
                assert_eq!(side, Side::Server);
                assert_eq!(h.gateway_id, "gw-1");
                match &self.refuse {
                    Some(reason) => link.refuse(reason),
                    None => link.accept(&node.delivered, self.now),
                }
            }
            Event::Opened => self.opened += 1,
            Event::Deliver {
                class,
                messages,
                up_to,
            } => {
                node.pending
                    .push_back((class, messages.iter().map(label).collect(), up_to));
            }
            Event::Acked { class, up_to } => {
                let c = usize::from(class);
                node.acked[c] = node.acked[c].max(up_to);
                node.out[c].retain(|seq, _| *seq > up_to);
            }
            Event::Closed(e) => self.closed.push((side, e)),
        }
    }

    /// Runs until `until` (virtual), or until nothing is left to do.
    fn run_until(&mut self, until: Instant) {
        let mut idle_spins = 0;
        loop {
            self.step();
            let next = [
                self.to_server.front().map(|f| f.0),
                self.to_client.front().map(|f| f.0),
                self.client.poll_timeout(),
                self.server.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return;
            };
            if next > until {
                self.now = until;
                return;
            }
            if next <= self.now {
                idle_spins += 1;
                assert!(idle_spins < 1000, "link spins at {:?}", self.elapsed());
            } else {
                idle_spins = 0;
                self.now = next;
            }
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
    }

    fn run(&mut self) {
        let until = self.now + Duration::from_secs(3600);
        self.run_until(until);
        assert!(self.now < until, "did not settle within an hour");
    }

    fn publish_edge(&mut self, class: u8, n: u64) {
        self.edge.publish(class, n);
        self.client.handle_outbound_ready();
    }

    fn publish_cloud(&mut self, class: u8, n: u64) {
        self.cloud.publish(class, n);
        self.server.handle_outbound_ready();
    }

    /// Every message published on either side arrived once, in order, and was
    /// acknowledged (removed from its queue).
    fn assert_exactly_once(&self) {
        for class in 0..CLASSES as u8 {
            let c = usize::from(class);
            assert_eq!(self.cloud.inbox[c], self.edge.expected(class), "up {class}");
            assert_eq!(
                self.edge.inbox[c],
                self.cloud.expected(class),
                "down {class}"
            );
            assert!(self.edge.out[c].is_empty(), "edge queue {class} not acked");
            assert!(
                self.cloud.out[c].is_empty(),
                "cloud queue {class} not acked"
            );
        }
    }
}

fn limits() -> Limits {
    Limits {
        batch_msgs: 50,
        ..Limits::default()
    }
}

#[test]
fn steady_flow_both_ways() {
    for compress in [false, true] {
        let mut p = Pair::new(Limits {
            compress,
            ..limits()
        });
        p.publish_edge(0, 10);
        p.publish_edge(1, 500);
        p.publish_edge(2, 1200);
        p.publish_cloud(0, 300);
        p.publish_cloud(2, 40);
        p.run();
        assert_eq!(p.opened, 2);
        assert!(p.closed.is_empty(), "{:?}", p.closed);
        p.assert_exactly_once();
        // More traffic on the same connection.
        p.publish_edge(1, 77);
        p.publish_cloud(1, 33);
        p.run();
        p.assert_exactly_once();
        assert_eq!(p.client.stats(1).acked_seq, p.edge.next_seq[1]);
        assert_eq!(p.server.stats(1).acked_seq, p.cloud.next_seq[1]);
        assert_eq!(p.client.stats(1).delivered_seq, p.cloud.next_seq[1]);
        assert_eq!(p.server.stats(2).msgs_received, 1200);
    }
}

#[test]
fn connection_loss_mid_transfer_resumes_without_loss_or_duplicate() {
    // Cut at many points of the transfer (paced so it lasts about a second): in the
    // handshake, with frames in flight, with deliveries not yet durable, between
    // durability and ack; each cut is followed by a fresh pair of machines over the
    // same stores, and new messages join the queues in between.
    let (mut lost_frames, mut lost_deliveries) = (0, 0);
    for cut_ms in (0..1_200).step_by(11) {
        let mut p = Pair::new(Limits {
            rate_bytes_per_sec: 40_000,
            ..limits()
        });
        p.publish_edge(1, 600);
        p.publish_edge(2, 300);
        p.publish_cloud(0, 400);
        let mut at = p.now + Duration::from_millis(cut_ms);
        for round in 0..3 {
            p.run_until(at);
            lost_frames += p.to_server.len() + p.to_client.len();
            lost_deliveries += p.edge.pending.len() + p.cloud.pending.len();
            // Deliveries are held back (not durable) for a while before some cuts.
            p.cloud.durable = round != 1;
            p.reconnect();
            at = p.now + Duration::from_millis(cut_ms / 2 + 15);
            p.publish_edge(1, 5);
            p.publish_cloud(0, 5);
        }
        p.cloud.durable = true;
        p.run();
        assert!(p.closed.is_empty(), "cut {cut_ms}: {:?}", p.closed);
        p.assert_exactly_once();
    }
    assert!(lost_frames > 50, "{lost_frames}");
    assert!(lost_deliveries > 10, "{lost_deliveries}");
}

#[test]
fn acks_lost_with_the_connection_are_recovered_at_handshake() {
    let mut p = Pair::new(limits());
    p.publish_edge(0, 20);
    // Run until the cloud has everything durable but before the ack reaches the edge.
    while p.cloud.inbox[0].len() < 20 {
        let t = p.now + Duration::from_millis(1);
        p.run_until(t);
    }
    assert!(!p.edge.out[0].is_empty(), "ack arrived already");
    p.reconnect();
    p.run();
    p.assert_exactly_once();
    // Nothing was sent again: the Welcome's cursor acknowledged it.
    let resent: usize = p
        .sent
        .iter()
        .filter(|s| s.from == Side::Client && s.lane == 1)
        .map(|s| s.msgs)
        .sum();
    assert_eq!(resent, 20);
}

/// A server link opened by a Hello with every cursor at 0.
fn open_server() -> Link {
    let now = Instant::now();
    let mut s = Link::server(limits(), now);
    s.handle_frame(0, Frame::Hello(hello(&[0, 0, 0])), now);
    assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
    s.accept(&[0, 0, 0], now);
    assert_eq!(s.poll_event(), Some(Event::Opened));
    s
}

fn batch(class: u8, seqs: impl IntoIterator<Item = u64>) -> Frame {
    Frame::Batch(Batch {
        class,
        messages: seqs
            .into_iter()
            .map(|s| (s, message(class, s, 0)))
            .collect(),
    })
}

fn drain(link: &mut Link) -> Vec<Frame> {
    let mut none = Node::new();
    let mut out = Vec::new();
    while let Some(t) = link.poll_transmit(Instant::now(), &mut none) {
        out.push(frame::decode(t.frame).unwrap());
    }
    out
}

#[test]
fn resent_batches_are_deduplicated() {
    let now = Instant::now();
    let mut s = open_server();
    drain(&mut s);
    s.handle_frame(2, batch(1, 1..=10), now);
    let Some(Event::Deliver {
        up_to: 10,
        messages,
        ..
    }) = s.poll_event()
    else {
        panic!("no delivery")
    };
    assert_eq!(messages.len(), 10);
    // The same batch again before it is durable: nothing new, no ack yet.
    s.handle_frame(2, batch(1, 1..=10), now);
    assert_eq!(s.poll_event(), None);
    assert!(drain(&mut s).is_empty());
    // Overlapping: only 11..=15 is new.
    s.handle_frame(2, batch(1, 5..=15), now);
    let Some(Event::Deliver {
        up_to: 15,
        messages,
        ..
    }) = s.poll_event()
    else {
        panic!("no delivery")
    };
    assert_eq!(
        messages.iter().map(label).collect::<Vec<_>>(),
        (11..=15).map(|n| format!("c1-{n}")).collect::<Vec<_>>()
    );
    s.handle_delivered(1, 10);
    assert_eq!(
        drain(&mut s),
        vec![Frame::Ack {
            class: 1,
            up_to: 10
        }]
    );
    s.handle_delivered(1, 15);
    // A durable-already resend is answered with the ack again.
    s.handle_frame(2, batch(1, 3..=15), now);
    assert_eq!(s.poll_event(), None);
    assert_eq!(
        drain(&mut s),
        vec![Frame::Ack {
            class: 1,
            up_to: 15
        }]
    );
    // A cursor beyond what was handed over is ignored.
    s.handle_delivered(1, 99);
    assert!(drain(&mut s).is_empty());
    assert!(s.is_open());
}

#[test]
fn window_limits_unacked_messages_and_bytes() {
    let mut p = Pair::new(Limits {
        window_msgs: 25,
        batch_msgs: 10,
        ..Limits::default()
    });
    p.cloud.durable = false;
    p.publish_edge(1, 100);
    p.run();
    let sent = |p: &Pair| -> usize {
        p.sent
            .iter()
            .filter(|s| s.from == Side::Client)
            .map(|s| s.msgs)
            .sum()
    };
    assert_eq!(sent(&p), 25);
    assert_eq!(p.client.stats(1).inflight_msgs, 25);
    p.cloud.durable = true;
    p.run();
    assert_eq!(sent(&p), 100);
    p.assert_exactly_once();

    // Bytes: 1,000-byte payloads against a 4,500-byte window → 5 in flight (the
    // window is soft by at most one message).
    let mut p = Pair::new(Limits {
        window_bytes: 4_500,
        ..Limits::default()
    });
    p.edge.size = 1_000;
    p.cloud.durable = false;
    p.publish_edge(2, 50);
    p.run();
    assert_eq!(p.client.stats(2).inflight_msgs, 5);
    p.cloud.durable = true;
    p.run();
    p.assert_exactly_once();
}

#[test]
fn higher_class_overtakes_a_lower_class_backlog() {
    let mut p = Pair::new(Limits {
        rate_bytes_per_sec: 50_000,
        ..limits()
    });
    p.edge.size = 100;
    p.publish_edge(2, 5_000);
    p.run_until(p.t0 + Duration::from_secs(1));
    assert!(p.cloud.inbox[2].len() < 1_000);
    p.publish_edge(0, 1);
    let alarm_at = p.now;
    p.run();
    p.assert_exactly_once();
    let arrival = |class: u8| {
        p.arrivals
            .iter()
            .filter(|a| a.1 == class)
            .map(|a| a.0)
            .max()
            .unwrap()
    };
    let alarm = arrival(0) - alarm_at;
    let backlog = arrival(2) - p.t0;
    assert!(alarm < Duration::from_millis(400), "alarm took {alarm:?}");
    assert!(backlog > Duration::from_secs(8), "backlog took {backlog:?}");
}

#[test]
fn higher_class_goes_first_when_both_wait() {
    let mut p = Pair::new(limits());
    p.edge.publish(2, 100);
    p.edge.publish(1, 100);
    p.edge.publish(0, 100);
    p.run();
    let lanes: Vec<u8> = p
        .sent
        .iter()
        .filter(|s| s.from == Side::Client && s.msgs > 0)
        .map(|s| s.lane)
        .collect();
    let mut sorted = lanes.clone();
    sorted.sort_unstable();
    assert_eq!(lanes, sorted);
    p.assert_exactly_once();
}

#[test]
fn byte_rate_is_respected_on_virtual_time() {
    let rate = 20_000u64;
    let mut p = Pair::new(Limits {
        rate_bytes_per_sec: rate,
        ..limits()
    });
    p.edge.size = 200;
    p.publish_edge(1, 1_000);
    p.publish_edge(2, 500);
    p.run();
    p.assert_exactly_once();
    let burst = rate / 4;
    let mut total = 0u64;
    let mut largest = 0u64;
    for s in p.sent.iter().filter(|s| s.from == Side::Client) {
        let t = (s.at - p.t0).as_secs_f64();
        let allowed = burst as f64 + rate as f64 * t + largest as f64;
        assert!(
            total as f64 <= allowed,
            "{total} bytes by {t:.3}s > {allowed}"
        );
        total += s.len as u64;
        largest = largest.max(s.len as u64);
    }
    let took = p.sent.iter().map(|s| s.at).max().unwrap() - p.t0;
    let ideal = Duration::from_secs_f64((total - burst) as f64 / rate as f64);
    assert!(took >= ideal.mul_f64(0.9), "{took:?} < {ideal:?}");
    assert!(took <= ideal.mul_f64(1.2), "{took:?} > {ideal:?}");
}

#[test]
fn replay_is_paced_and_live_traffic_after_it_is_not() {
    let rate = 100u64;
    let mut p = Pair::new(Limits {
        replay_msgs_per_sec: rate,
        ..limits()
    });
    p.edge.publish(2, 1_000);
    p.edge.publish(0, 30);
    p.run();
    p.assert_exactly_once();
    let mut total = 0u64;
    for s in p.sent.iter().filter(|s| s.from == Side::Client) {
        let t = (s.at - p.t0).as_secs_f64();
        total += s.msgs as u64;
        let allowed = (rate / 10) as f64 + rate as f64 * t;
        assert!(total as f64 <= allowed, "{total} msgs by {t:.3}s");
    }
    let took = p.now - p.t0;
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert!(took <= Duration::from_secs(12), "{took:?}");
    // The queue drained: live messages are no longer paced.
    let before = p.now;
    p.publish_edge(1, 500);
    p.run();
    assert!(p.now - before < Duration::from_millis(100));
    p.assert_exactly_once();
}

#[test]
fn refused_gateway_closes_both_ends() {
    let mut p = Pair::new(limits());
    p.refuse = Some("gateway id gw-1 does not match certificate gw-2".into());
    p.publish_edge(0, 5);
    p.run();
    assert_eq!(p.opened, 0);
    assert_eq!(
        p.closed,
        vec![
            (
                Side::Server,
                LinkError::RefusedPeer("gateway id gw-1 does not match certificate gw-2".into())
            ),
            (
                Side::Client,
                LinkError::Refused("gateway id gw-1 does not match certificate gw-2".into())
            ),
        ]
    );
    assert!(p.client.is_closed() && p.server.is_closed());
    assert_eq!(p.cloud.inbox[0].len(), 0);
}

#[test]
fn invalid_or_newer_hello_is_refused_with_a_reason() {
    let now = Instant::now();
    let mut h = hello(&[0, 0]);
    let mut s = Link::server(limits(), now);
    s.handle_frame(0, Frame::Hello(h.clone()), now);
    let [Frame::Refuse { reason }] = &drain(&mut s)[..] else {
        panic!("no refusal")
    };
    assert!(
        reason.contains("2 delivered cursors for 3 classes"),
        "{reason}"
    );

    h.delivered = vec![0, 0, 0];
    h.downstream.push(("x/#".into(), 7));
    let mut s = Link::server(limits(), now);
    s.handle_frame(0, Frame::Hello(h), now);
    let [Frame::Refuse { reason }] = &drain(&mut s)[..] else {
        panic!("no refusal")
    };
    assert!(reason.contains("names class 7"), "{reason}");

    let mut s = Link::server(limits(), now);
    s.handle_bytes(0, Bytes::from_static(b"\x01\x00\x02rest"), now);
    let [Frame::Refuse { reason }] = &drain(&mut s)[..] else {
        panic!("no refusal")
    };
    assert!(reason.contains("version 2"), "{reason}");
}

#[test]
fn handshake_times_out() {
    let mut p = Pair::new(limits());
    // The server never answers (its Hello is lost).
    p.latency = Duration::from_secs(3600);
    p.run_until(p.t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(1));
    assert!(p.closed.is_empty());
    p.run_until(p.t0 + HANDSHAKE_TIMEOUT);
    assert!(p
        .closed
        .iter()
        .any(|c| c == &(Side::Client, LinkError::HandshakeTimeout)));
    assert!(p.client.is_closed());
}

#[test]
fn protocol_violations_close_the_link() {
    let now = Instant::now();
    let mut s = open_server();
    s.handle_frame(1, Frame::Ack { class: 0, up_to: 1 }, now);
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed(LinkError::AckBeyondSent {
            class: 0,
            up_to: 1,
            sent: 0
        }))
    );
    let mut s = open_server();
    s.handle_frame(9, batch(5, [1]), now);
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed(LinkError::UnknownClass {
            class: 5,
            classes: 3
        }))
    );
    let mut s = open_server();
    s.handle_frame(2, batch(1, [4, 2]), now);
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed(LinkError::BatchOrder(1)))
    );
    let mut s = open_server();
    s.handle_bytes(2, Bytes::from_static(b"\xee"), now);
    assert!(matches!(
        s.poll_event(),
        Some(Event::Closed(LinkError::Frame(_)))
    ));
    let mut c = Link::client(hello(&[0, 0, 0]), limits(), now);
    c.handle_frame(0, Frame::Ack { class: 0, up_to: 1 }, now);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Closed(LinkError::Unexpected { frame: "Ack", .. }))
    ));
    let mut c = Link::client(hello(&[0, 0, 0]), limits(), now);
    c.handle_frame(0, Frame::Welcome(Welcome { delivered: vec![1] }), now);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Closed(LinkError::WelcomeClasses { got: 1, want: 3 }))
    ));
    // Once closed, input is ignored.
    c.handle_frame(0, Frame::Ack { class: 0, up_to: 1 }, now);
    assert_eq!(c.poll_event(), None);
}

#[test]
fn a_misbehaving_queue_cannot_make_the_link_resend() {
    struct Liar;
    impl Outbound for Liar {
        fn peek(&mut self, class: u8, after: u64, _: usize, _: usize) -> Vec<(u64, StoredMessage)> {
            // Returns old sequences and a repeat.
            vec![
                (after, message(class, 0, 0)),
                (after + 1, message(class, 1, 0)),
            ]
        }
    }
    let now = Instant::now();
    let mut s = open_server();
    s.handle_outbound_ready();
    while s.poll_transmit(now, &mut Liar).is_some() {}
    assert_eq!(s.stats(0).msgs_sent, 0);
}

#[test]
fn batches_that_overtake_the_welcome_are_kept() {
    let now = Instant::now();
    let mut c = Link::client(hello(&[0, 4, 0]), limits(), now);
    c.handle_frame(2, batch(1, [3, 5, 6]), now);
    c.handle_frame(2, batch(1, [7]), now);
    assert_eq!(c.poll_event(), None);
    c.handle_frame(
        0,
        Frame::Welcome(Welcome {
            delivered: vec![0, 0, 0],
        }),
        now,
    );
    assert_eq!(c.poll_event(), Some(Event::Opened));
    let Some(Event::Deliver {
        class: 1,
        messages,
        up_to: 6,
    }) = c.poll_event()
    else {
        panic!("early batch not delivered")
    };
    assert_eq!(messages.len(), 2, "3 was delivered before");
    assert!(matches!(
        c.poll_event(),
        Some(Event::Deliver { up_to: 7, .. })
    ));

    // Beyond the limit, the client gives up.
    let mut c = Link::client(hello(&[0, 0, 0]), limits(), now);
    for i in 0..=MAX_EARLY_FRAMES as u64 {
        c.handle_frame(2, batch(1, [i + 1]), now);
    }
    assert!(matches!(
        c.poll_event(),
        Some(Event::Closed(LinkError::Unexpected { frame: "Batch", .. }))
    ));
}
