//! The broker machine driven directly: packets and instants in, packets out. No
//! sockets, no clock; every MQTT behaviour the edge promises has a case here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Broker, BrokerConfig, ConnId, Output};
use crate::message::QoS;
use crate::mqtt::codec;
use crate::mqtt::packet::*;
use crate::mqtt::reason;
use crate::store::{MemoryStore, Store};

use ProtocolVersion::{V311, V5};

/// Drives one broker on virtual time and sorts its output per connection. With a
/// store, every batch the broker issues is applied and committed at once.
pub(super) struct Harness {
    pub(super) broker: Broker,
    pub(super) now: Instant,
    pub(super) store: Option<MemoryStore>,
    inbox: HashMap<ConnId, Vec<Packet>>,
    closed: Vec<ConnId>,
    /// `Output::Injected` seen, as `(token, durable)`.
    pub(super) injected: Vec<(u64, bool)>,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with(BrokerConfig {
            sys_interval: 0,
            ..BrokerConfig::default()
        })
    }

    pub(super) fn with(config: BrokerConfig) -> Self {
        let now = Instant::now();
        Harness {
            broker: Broker::new(config, now),
            now,
            store: None,
            inbox: HashMap::new(),
            closed: Vec::new(),
            injected: Vec::new(),
        }
    }

    /// A broker restored from `store` (as after a restart), committing into it.
    pub(super) fn persistent(store: MemoryStore, now: Instant) -> Self {
        let config = BrokerConfig {
            sys_interval: 0,
            ..BrokerConfig::default()
        };
        let mut broker = Broker::new(config, now);
        let snapshot = store.load().expect("load");
        broker.restore(snapshot, now, 1_000_000);
        Harness {
            broker,
            now,
            store: Some(store),
            inbox: HashMap::new(),
            closed: Vec::new(),
            injected: Vec::new(),
        }
    }

    /// Applies the open store batch and reports it committed, without draining outputs;
    /// returns its ops.
    pub(super) fn commit_batch(&mut self) -> Vec<crate::store::StoreOp> {
        let batch = self.broker.poll_store_batch().expect("an open store batch");
        let store = self.store.as_mut().expect("persistent harness");
        store.apply(&batch.ops).expect("batch applies");
        self.broker.handle_store_committed(batch.id);
        batch.ops
    }

    pub(super) fn drain(&mut self) {
        if let Some(store) = &mut self.store {
            while let Some(batch) = self.broker.poll_store_batch() {
                store.apply(&batch.ops).expect("batch applies");
                self.broker.handle_store_committed(batch.id);
            }
        }
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Send(c, p) => {
                    assert!(!self.closed.contains(&c), "packet {p:?} sent after close");
                    self.inbox.entry(c).or_default().push(p)
                }
                Output::Close(c) => self.closed.push(c),
                Output::Authenticate(c, _) => panic!("authentication asked for {c:?}"),
                Output::Injected { token, durable, .. } => self.injected.push((token, durable)),
            }
        }
    }

    /// Everything sent to `c` since the last call.
    pub(super) fn take(&mut self, c: ConnId) -> Vec<Packet> {
        self.drain();
        self.inbox.remove(&c).unwrap_or_default()
    }

    pub(super) fn is_closed(&mut self, c: ConnId) -> bool {
        self.drain();
        self.closed.contains(&c)
    }

    pub(super) fn send(&mut self, c: ConnId, p: Packet) {
        self.broker.handle_packet(c, p, self.now);
    }

    /// Advances virtual time in small steps, firing timers as the I/O layer would.
    pub(super) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(100)).min(end);
            if self.broker.poll_timeout().is_some_and(|t| t <= self.now) {
                self.broker.handle_timeout(self.now);
            }
        }
        self.drain();
    }

    /// Socket closed from the client side (or after our Close).
    pub(super) fn drop_conn(&mut self, c: ConnId) {
        self.broker.handle_closed(c, self.now);
        self.drain();
    }

    pub(super) fn connect_with(&mut self, connect: Connect) -> (ConnId, ConnAck) {
        let c = self.broker.handle_open(self.now);
        self.send(c, Packet::Connect(Box::new(connect)));
        let mut out = self.take(c);
        let ack = match out.first() {
            Some(Packet::ConnAck(ack)) => ack.clone(),
            other => panic!("expected CONNACK, got {other:?}"),
        };
        // What follows the CONNACK (resent and queued messages) stays for `take`.
        out.remove(0);
        self.inbox.insert(c, out);
        (c, ack)
    }

    pub(super) fn connect(&mut self, id: &str, version: ProtocolVersion, clean: bool) -> ConnId {
        let (c, ack) = self.connect_with(connect(id, version, clean));
        assert_eq!(ack.reason_code, 0);
        c
    }

    pub(super) fn subscribe(&mut self, c: ConnId, filter: &str, qos: QoS) -> Vec<u8> {
        self.subscribe_opts(c, filter, SubscriptionOptions::new(qos), None)
    }

    pub(super) fn subscribe_opts(
        &mut self,
        c: ConnId,
        filter: &str,
        opts: SubscriptionOptions,
        id: Option<u32>,
    ) -> Vec<u8> {
        self.send(
            c,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                subscription_identifier: id,
                user_properties: vec![],
                filters: vec![(filter.into(), opts)],
            }),
        );
        let mut out = self.take(c);
        let codes = match out.first() {
            Some(Packet::SubAck(ack)) => ack.reason_codes.clone(),
            other => panic!("expected SUBACK, got {other:?}"),
        };
        // Retained messages follow the SUBACK; they stay for `take`.
        out.remove(0);
        self.inbox.insert(c, out);
        codes
    }

    pub(super) fn publish(
        &mut self,
        c: ConnId,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
    ) {
        let packet_id = (qos != QoS::AtMostOnce).then_some(7);
        self.send(
            c,
            Packet::Publish(publish(topic, payload, qos, retain, packet_id)),
        );
    }
}

pub(super) fn connect(id: &str, version: ProtocolVersion, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        last_will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub(super) fn publish(
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    packet_id: Option<u16>,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

pub(super) fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

pub(super) fn payloads(packets: &[Packet]) -> Vec<String> {
    publishes(packets)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

pub(super) fn will(topic: &str, payload: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default(),
        will_delay_interval: delay,
    }
}

#[test]
fn connect_clean_session_has_no_session_present() {
    let mut h = Harness::new();
    for v in [V311, V5] {
        let (_, ack) = h.connect_with(connect("a", v, true));
        assert!(!ack.session_present);
        assert_eq!(ack.reason_code, 0);
    }
}

#[test]
fn persistent_session_is_resumed_with_queued_messages() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "t/#", QoS::AtLeastOnce);
    h.send(sub, Packet::Disconnect(Disconnect::default()));
    h.drop_conn(sub);
    let publisher = h.connect("pub", V311, true);
    h.publish(publisher, "t/1", "queued", QoS::AtLeastOnce, false);
    assert!(matches!(h.take(publisher)[..], [Packet::PubAck(_)]));
    let (sub2, ack) = h.connect_with(connect("sub", V311, false));
    assert!(ack.session_present);
    assert_eq!(payloads(&h.take(sub2)), ["queued"]);
    // A clean connect discards it.
    h.drop_conn(sub2);
    let (_, ack) = h.connect_with(connect("sub", V311, true));
    assert!(!ack.session_present);
}

#[test]
fn v5_empty_client_id_is_assigned() {
    let mut h = Harness::new();
    let (_, ack) = h.connect_with(connect("", V5, true));
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id.is_empty());
    let (_, ack2) = h.connect_with(connect("", V5, true));
    assert_ne!(Some(id), ack2.properties.assigned_client_identifier);
}

#[test]
fn v311_empty_client_id_needs_clean_session() {
    let mut h = Harness::new();
    let (c, ack) = h.connect_with(connect("", V311, false));
    assert_eq!(ack.reason_code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    assert!(h.is_closed(c));
    let (c, ack) = h.connect_with(connect("", V311, true));
    assert_eq!(ack.reason_code, 0);
    assert!(!h.is_closed(c));
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let mut h = Harness::new();
    let mut c = connect("ka", V5, true);
    c.keep_alive = 2;
    let (conn, _) = h.connect_with(c);
    h.advance(Duration::from_millis(2900));
    assert!(!h.is_closed(conn), "closed before 1.5 × keep-alive");
    h.send(conn, Packet::PingReq);
    assert_eq!(h.take(conn), [Packet::PingResp]);
    h.advance(Duration::from_millis(2900));
    assert!(
        !h.is_closed(conn),
        "activity must reset the keep-alive clock"
    );
    h.advance(Duration::from_secs(2));
    assert!(h.is_closed(conn));
    assert_eq!(
        h.take(conn),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::KEEP_ALIVE_TIMEOUT
        ))]
    );
}

#[test]
fn server_keep_alive_caps_v5_clients() {
    let mut h = Harness::with(BrokerConfig {
        max_keep_alive: 30,
        sys_interval: 0,
        ..Default::default()
    });
    let mut c = connect("ka", V5, true);
    c.keep_alive = 0;
    let (_, ack) = h.connect_with(c);
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}

#[test]
fn connack_advertises_limits() {
    let config = BrokerConfig {
        sys_interval: 0,
        ..Default::default()
    };
    let mut h = Harness::with(config.clone());
    let (_, ack) = h.connect_with(connect("c", V5, true));
    let p = ack.properties;
    assert_eq!(p.receive_maximum, Some(config.receive_maximum));
    assert_eq!(p.maximum_packet_size, Some(config.max_packet_size));
    assert_eq!(p.topic_alias_maximum, Some(config.topic_alias_maximum));
    assert_eq!(p.wildcard_subscription_available, Some(true));
    assert_eq!(p.shared_subscription_available, Some(true));
    assert_eq!(p.subscription_identifiers_available, Some(true));
    assert_eq!(p.retain_available, Some(true));
}

#[test]
fn session_takeover_disconnects_the_first_connection() {
    let mut h = Harness::new();
    let first = h.connect("same", V5, true);
    let second = h.connect("same", V5, true);
    assert!(h.is_closed(first));
    assert_eq!(
        h.take(first),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::SESSION_TAKEN_OVER
        ))]
    );
    assert!(!h.is_closed(second));
    // The I/O layer reports the old socket closed later; the new session must survive.
    h.drop_conn(first);
    h.subscribe(second, "x", QoS::AtMostOnce);
    let p = h.connect("p", V5, true);
    h.publish(p, "x", "still here", QoS::AtMostOnce, false);
    assert_eq!(payloads(&h.take(second)), ["still here"]);
}

#[test]
fn inbound_qos_flows() {
    let mut h = Harness::new();
    let c = h.connect("c", V5, true);
    h.publish(c, "a", "0", QoS::AtMostOnce, false);
    assert!(h.take(c).is_empty());
    h.publish(c, "a", "1", QoS::AtLeastOnce, false);
    assert_eq!(h.take(c), [Packet::PubAck(PubResponse::new(7))]);
    h.publish(c, "a", "2", QoS::ExactlyOnce, false);
    assert_eq!(h.take(c), [Packet::PubRec(PubResponse::new(7))]);
    h.send(c, Packet::PubRel(PubResponse::new(7)));
    assert_eq!(h.take(c), [Packet::PubComp(PubResponse::new(7))]);
    h.send(c, Packet::PubRel(PubResponse::new(9)));
    assert_eq!(
        h.take(c),
        [Packet::PubComp(PubResponse::with_reason(
            9,
            reason::PACKET_IDENTIFIER_NOT_FOUND
        ))]
    );
}

#[test]
fn qos2_resend_before_pubrel_is_routed_once() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V311, true);
    h.subscribe(sub, "a", QoS::ExactlyOnce);
    let c = h.connect("c", V311, true);
    h.publish(c, "a", "once", QoS::ExactlyOnce, false);
    let mut dup = publish("a", "once", QoS::ExactlyOnce, false, Some(7));
    dup.dup = true;
    h.send(c, Packet::Publish(dup));
    assert_eq!(
        h.take(c),
        [
            Packet::PubRec(PubResponse::new(7)),
            Packet::PubRec(PubResponse::new(7))
        ]
    );
    assert_eq!(payloads(&h.take(sub)), ["once"]);
}

#[test]
fn outbound_qos1_and_qos2_flows() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V5, true);
    h.subscribe(sub, "a", QoS::ExactlyOnce);
    let p = h.connect("p", V5, true);
    h.publish(p, "a", "q1", QoS::AtLeastOnce, false);
    let got = h.take(sub);
    let q1 = publishes(&got)[0].clone();
    assert_eq!(q1.qos, QoS::AtLeastOnce);
    let id1 = q1.packet_id.expect("packet id");
    h.send(sub, Packet::PubAck(PubResponse::new(id1)));
    h.publish(p, "a", "q2", QoS::ExactlyOnce, false);
    let got = h.take(sub);
    let q2 = publishes(&got)[0].clone();
    assert_eq!(q2.qos, QoS::ExactlyOnce);
    let id2 = q2.packet_id.expect("packet id");
    assert_ne!(id1, id2);
    h.send(sub, Packet::PubRec(PubResponse::new(id2)));
    assert_eq!(h.take(sub), [Packet::PubRel(PubResponse::new(id2))]);
    h.send(sub, Packet::PubComp(PubResponse::new(id2)));
    assert!(h.take(sub).is_empty());
}

#[test]
fn unacked_messages_are_resent_with_dup_on_resume() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "a", QoS::AtLeastOnce);
    let p = h.connect("p", V311, true);
    h.publish(p, "a", "m", QoS::AtLeastOnce, false);
    let first = publishes(&h.take(sub))[0].clone();
    assert!(!first.dup);
    h.drop_conn(sub);
    let sub = h.connect("sub", V311, false);
    let again = publishes(&h.take(sub))[0].clone();
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload, first.payload);
}

#[test]
fn pubrel_is_resent_on_resume() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "a", QoS::ExactlyOnce);
    let p = h.connect("p", V311, true);
    h.publish(p, "a", "m", QoS::ExactlyOnce, false);
    let id = publishes(&h.take(sub))[0].packet_id.expect("id");
    h.send(sub, Packet::PubRec(PubResponse::new(id)));
    assert_eq!(h.take(sub), [Packet::PubRel(PubResponse::new(id))]);
    h.drop_conn(sub);
    let sub = h.connect("sub", V311, false);
    assert_eq!(h.take(sub), [Packet::PubRel(PubResponse::new(id))]);
}

#[test]
fn inflight_window_honours_receive_maximum() {
    let mut h = Harness::new();
    let mut c = connect("sub", V5, true);
    c.properties.receive_maximum = Some(2);
    let (sub, _) = h.connect_with(c);
    h.subscribe(sub, "a", QoS::AtLeastOnce);
    let p = h.connect("p", V5, true);
    for i in 0..5 {
        h.publish(p, "a", &i.to_string(), QoS::AtLeastOnce, false);
    }
    let got = h.take(sub);
    assert_eq!(payloads(&got), ["0", "1"]);
    let id = publishes(&got)[0].packet_id.expect("id");
    h.send(sub, Packet::PubAck(PubResponse::new(id)));
    assert_eq!(payloads(&h.take(sub)), ["2"]);
}

#[test]
fn qos_is_downgraded_to_the_subscription_maximum() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V311, true);
    h.subscribe(sub, "a", QoS::AtMostOnce);
    let p = h.connect("p", V311, true);
    h.publish(p, "a", "m", QoS::ExactlyOnce, false);
    let got = h.take(sub);
    let m = publishes(&got)[0];
    assert_eq!(m.qos, QoS::AtMostOnce);
    assert_eq!(m.packet_id, None);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V5, true);
    h.subscribe_opts(
        sub,
        "a/+",
        SubscriptionOptions::new(QoS::AtMostOnce),
        Some(3),
    );
    h.subscribe_opts(
        sub,
        "a/#",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        Some(4),
    );
    h.subscribe_opts(sub, "a/b", SubscriptionOptions::new(QoS::AtMostOnce), None);
    let p = h.connect("p", V5, true);
    h.publish(p, "a/b", "m", QoS::ExactlyOnce, false);
    let got = h.take(sub);
    let ps = publishes(&got);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].qos, QoS::AtLeastOnce);
    let mut ids = ps[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [3, 4]);
}

#[test]
fn subscribe_reason_codes_per_filter() {
    let mut h = Harness::new();
    let c = h.connect("c", V5, true);
    h.send(
        c,
        Packet::Subscribe(Subscribe {
            packet_id: 5,
            subscription_identifier: None,
            user_properties: vec![],
            filters: vec![
                ("ok/+".into(), SubscriptionOptions::new(QoS::ExactlyOnce)),
                ("bad/#/x".into(), SubscriptionOptions::new(QoS::AtMostOnce)),
                ("a+".into(), SubscriptionOptions::new(QoS::AtMostOnce)),
                (
                    "$share/g/s".into(),
                    SubscriptionOptions::new(QoS::AtLeastOnce),
                ),
            ],
        }),
    );
    let expected = vec![
        2,
        reason::TOPIC_FILTER_INVALID,
        reason::TOPIC_FILTER_INVALID,
        1,
    ];
    assert_eq!(
        h.take(c),
        [Packet::SubAck(SubAck {
            packet_id: 5,
            reason_string: None,
            reason_codes: expected
        })]
    );
    h.send(
        c,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            user_properties: vec![],
            filters: vec!["ok/+".into(), "never".into()],
        }),
    );
    assert_eq!(
        h.take(c),
        [Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            reason_string: None,
            reason_codes: vec![0, reason::NO_SUBSCRIPTION_EXISTED]
        })]
    );
}

#[test]
fn no_local_suppresses_own_messages() {
    let mut h = Harness::new();
    let c = h.connect("c", V5, true);
    let mut opts = SubscriptionOptions::new(QoS::AtMostOnce);
    opts.no_local = true;
    h.subscribe_opts(c, "a", opts, None);
    let other = h.connect("o", V5, true);
    h.subscribe(other, "a", QoS::AtMostOnce);
    h.publish(c, "a", "mine", QoS::AtMostOnce, false);
    assert!(h.take(c).is_empty());
    assert_eq!(payloads(&h.take(other)), ["mine"]);
}

#[test]
fn retain_as_published_and_retain_handling() {
    let mut h = Harness::new();
    let p = h.connect("p", V5, true);
    h.publish(p, "r", "kept", QoS::AtMostOnce, true);
    // Handling 0: retained on every subscribe, with RETAIN set.
    let c = h.connect("c", V5, true);
    h.subscribe(c, "r", QoS::AtMostOnce);
    let got = h.take(c);
    assert!(publishes(&got)[0].retain);
    h.subscribe(c, "r", QoS::AtMostOnce);
    assert_eq!(payloads(&h.take(c)), ["kept"]);
    // Handling 1: only when the subscription is new.
    let mut opts = SubscriptionOptions::new(QoS::AtMostOnce);
    opts.retain_handling = RetainHandling::SendIfNew;
    let c1 = h.connect("c1", V5, true);
    h.subscribe_opts(c1, "r", opts, None);
    assert_eq!(payloads(&h.take(c1)), ["kept"]);
    h.subscribe_opts(c1, "r", opts, None);
    assert!(h.take(c1).is_empty());
    // Handling 2: never.
    opts.retain_handling = RetainHandling::DoNotSend;
    let c2 = h.connect("c2", V5, true);
    h.subscribe_opts(c2, "r", opts, None);
    assert!(h.take(c2).is_empty());
    // Live messages: RETAIN cleared unless retain-as-published.
    let mut rap = SubscriptionOptions::new(QoS::AtMostOnce);
    rap.retain_as_published = true;
    rap.retain_handling = RetainHandling::DoNotSend;
    let c3 = h.connect("c3", V5, true);
    h.subscribe_opts(c3, "r", rap, None);
    h.take(c);
    h.publish(p, "r", "new", QoS::AtMostOnce, true);
    assert!(!publishes(&h.take(c))[0].retain);
    assert!(publishes(&h.take(c3))[0].retain);
}

#[test]
fn retained_set_replace_clear() {
    let mut h = Harness::new();
    let p = h.connect("p", V311, true);
    h.publish(p, "r/1", "one", QoS::AtLeastOnce, true);
    h.publish(p, "r/2", "two", QoS::AtMostOnce, true);
    h.publish(p, "r/1", "uno", QoS::AtMostOnce, true);
    let c = h.connect("c", V311, true);
    h.subscribe(c, "r/+", QoS::AtLeastOnce);
    let mut got = payloads(&h.take(c));
    got.sort();
    assert_eq!(got, ["two", "uno"]);
    h.publish(p, "r/2", "", QoS::AtMostOnce, true);
    let c2 = h.connect("c2", V311, true);
    h.subscribe(c2, "r/+", QoS::AtLeastOnce);
    assert_eq!(payloads(&h.take(c2)), ["uno"]);
}

#[test]
fn will_is_sent_on_abnormal_close_only() {
    let mut h = Harness::new();
    let watcher = h.connect("w", V311, true);
    h.subscribe(watcher, "will/#", QoS::AtLeastOnce);
    let mut c = connect("dies", V311, true);
    c.last_will = Some(will("will/dies", "gone", None));
    let (conn, _) = h.connect_with(c);
    h.drop_conn(conn);
    assert_eq!(payloads(&h.take(watcher)), ["gone"]);

    let mut c = connect("polite", V311, true);
    c.last_will = Some(will("will/polite", "gone", None));
    let (conn, _) = h.connect_with(c);
    h.send(conn, Packet::Disconnect(Disconnect::default()));
    h.drop_conn(conn);
    assert!(h.take(watcher).is_empty());
}

#[test]
fn v5_disconnect_with_will_message_sends_it() {
    let mut h = Harness::new();
    let watcher = h.connect("w", V5, true);
    h.subscribe(watcher, "will", QoS::AtMostOnce);
    let mut c = connect("x", V5, true);
    c.last_will = Some(will("will", "asked", None));
    let (conn, _) = h.connect_with(c);
    h.send(
        conn,
        Packet::Disconnect(Disconnect::with_reason(reason::DISCONNECT_WITH_WILL)),
    );
    h.drop_conn(conn);
    assert_eq!(payloads(&h.take(watcher)), ["asked"]);
}

#[test]
fn will_delay_and_cancel_on_resume() {
    let mut h = Harness::new();
    let watcher = h.connect("w", V5, true);
    h.subscribe(watcher, "will", QoS::AtMostOnce);
    let delayed = |h: &mut Harness| {
        let mut c = connect("d", V5, false);
        c.properties.session_expiry_interval = Some(60);
        c.last_will = Some(will("will", "late", Some(5)));
        h.connect_with(c).0
    };
    let conn = delayed(&mut h);
    h.drop_conn(conn);
    h.advance(Duration::from_secs(3));
    assert!(h.take(watcher).is_empty(), "will before its delay");
    h.advance(Duration::from_secs(3));
    assert_eq!(payloads(&h.take(watcher)), ["late"]);

    let conn = delayed(&mut h);
    h.drop_conn(conn);
    h.advance(Duration::from_secs(2));
    let _resumed = delayed(&mut h);
    h.advance(Duration::from_secs(10));
    assert!(
        h.take(watcher).is_empty(),
        "will sent although the session resumed"
    );
}

#[test]
fn session_expiry_interval() {
    let mut h = Harness::new();
    let mut c = connect("s", V5, false);
    c.properties.session_expiry_interval = Some(2);
    let (conn, _) = h.connect_with(c.clone());
    h.drop_conn(conn);
    h.advance(Duration::from_secs(1));
    let (conn, ack) = h.connect_with(c.clone());
    assert!(ack.session_present);
    h.drop_conn(conn);
    h.advance(Duration::from_secs(4));
    let (_, ack) = h.connect_with(c);
    assert!(!ack.session_present);
}

#[test]
fn message_expiry_drops_and_counts_down() {
    let mut h = Harness::new();
    let mut c = connect("sub", V5, false);
    c.properties.session_expiry_interval = Some(600);
    let (sub, _) = h.connect_with(c.clone());
    h.subscribe(sub, "e/#", QoS::AtLeastOnce);
    h.drop_conn(sub);
    let p = h.connect("p", V5, true);
    for (topic, expiry) in [("e/short", 2), ("e/long", 100)] {
        let mut m = publish(topic, topic, QoS::AtLeastOnce, false, Some(1));
        m.properties.message_expiry_interval = Some(expiry);
        h.send(p, Packet::Publish(m));
    }
    h.advance(Duration::from_secs(5));
    let (sub, _) = h.connect_with(c);
    let got = h.take(sub);
    let ps = publishes(&got);
    assert_eq!(ps.len(), 1, "expired message delivered: {ps:?}");
    assert_eq!(ps[0].topic, "e/long");
    let remaining = ps[0]
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!((94..=95).contains(&remaining), "remaining {remaining}");
}

#[test]
fn properties_pass_through() {
    let mut h = Harness::new();
    let sub = h.connect("sub", V5, true);
    h.subscribe(sub, "p", QoS::AtMostOnce);
    let p = h.connect("p", V5, true);
    let mut m = publish("p", "{}", QoS::AtMostOnce, false, None);
    m.properties = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let expected = m.properties.clone();
    h.send(p, Packet::Publish(m));
    let got = h.take(sub);
    assert_eq!(publishes(&got)[0].properties, expected);
}

#[test]
fn topic_aliases_in_both_directions() {
    let mut h = Harness::new();
    let mut c = connect("sub", V5, true);
    c.properties.topic_alias_maximum = Some(1);
    let (sub, _) = h.connect_with(c);
    h.subscribe(sub, "#", QoS::AtMostOnce);
    let p = h.connect("p", V5, true);
    let mut first = publish("long/topic", "1", QoS::AtMostOnce, false, None);
    first.properties.topic_alias = Some(3);
    h.send(p, Packet::Publish(first));
    let mut second = publish("", "2", QoS::AtMostOnce, false, None);
    second.properties.topic_alias = Some(3);
    h.send(p, Packet::Publish(second));
    h.publish(p, "other", "3", QoS::AtMostOnce, false);
    let got = h.take(sub);
    let ps = publishes(&got);
    assert_eq!(
        (ps[0].topic.as_ref(), ps[0].properties.topic_alias),
        ("long/topic", Some(1))
    );
    assert_eq!(
        (ps[1].topic.as_ref(), ps[1].properties.topic_alias),
        ("", Some(1))
    );
    assert_eq!(
        (ps[2].topic.as_ref(), ps[2].properties.topic_alias),
        ("other", None)
    );
    // An alias never set up, and one out of range, are errors.
    let mut bad = publish("", "x", QoS::AtMostOnce, false, None);
    bad.properties.topic_alias = Some(4);
    h.send(p, Packet::Publish(bad));
    assert_eq!(
        h.take(p),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::PROTOCOL_ERROR
        ))]
    );
    let p2 = h.connect("p2", V5, true);
    let mut out_of_range = publish("t", "x", QoS::AtMostOnce, false, None);
    out_of_range.properties.topic_alias = Some(u16::MAX);
    h.send(p2, Packet::Publish(out_of_range));
    assert_eq!(
        h.take(p2),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::TOPIC_ALIAS_INVALID
        ))]
    );
}

#[test]
fn messages_over_the_clients_maximum_packet_size_are_skipped() {
    let mut h = Harness::new();
    let mut c = connect("small", V5, true);
    c.properties.maximum_packet_size = Some(64);
    let (sub, _) = h.connect_with(c);
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    let p = h.connect("p", V5, true);
    h.publish(p, "t", &"x".repeat(200), QoS::AtLeastOnce, false);
    h.publish(p, "t", "fits", QoS::AtLeastOnce, false);
    assert_eq!(payloads(&h.take(sub)), ["fits"]);
}

#[test]
fn sys_topics_are_published_and_hidden_from_hash() {
    let mut h = Harness::with(BrokerConfig {
        sys_interval: 1,
        ..Default::default()
    });
    let all = h.connect("all", V311, true);
    h.subscribe(all, "#", QoS::AtMostOnce);
    let sys = h.connect("sys", V311, true);
    h.subscribe(sys, "$SYS/broker/#", QoS::AtMostOnce);
    h.advance(Duration::from_millis(1500));
    let got = h.take(sys);
    let topics: Vec<&str> = publishes(&got).iter().map(|p| p.topic.as_ref()).collect();
    for t in [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/uptime",
    ] {
        assert!(topics.contains(&t), "{t} missing from {topics:?}");
    }
    assert!(h.take(all).is_empty());
}

#[test]
fn shared_subscriptions_round_robin() {
    let mut h = Harness::new();
    let a = h.connect("a", V5, true);
    let b = h.connect("b", V5, true);
    h.subscribe(a, "$share/g/jobs", QoS::AtMostOnce);
    h.subscribe(b, "$share/g/jobs", QoS::AtMostOnce);
    let p = h.connect("p", V5, true);
    for i in 0..10 {
        h.publish(p, "jobs", &i.to_string(), QoS::AtMostOnce, false);
    }
    let (ga, gb) = (payloads(&h.take(a)), payloads(&h.take(b)));
    assert_eq!((ga.len(), gb.len()), (5, 5));
}

#[test]
fn bad_input_closes_with_the_right_reason() {
    let mut h = Harness::new();
    let c = h.connect("c", V5, true);
    h.broker
        .handle_decode_error(c, &codec::DecodeError::Malformed("test"), h.now);
    assert_eq!(
        h.take(c),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::MALFORMED_PACKET
        ))]
    );
    assert!(h.is_closed(c));
    let c = h.connect("c2", V5, true);
    h.broker.handle_decode_error(
        c,
        &codec::DecodeError::PacketTooLarge { size: 10, max: 5 },
        h.now,
    );
    assert_eq!(
        h.take(c),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::PACKET_TOO_LARGE
        ))]
    );
    // v3.1.1 has no server DISCONNECT: just close.
    let c = h.connect("c3", V311, true);
    h.broker
        .handle_decode_error(c, &codec::DecodeError::Malformed("test"), h.now);
    assert!(h.take(c).is_empty());
    assert!(h.is_closed(c));
}

#[test]
fn publish_before_connect_and_second_connect_close() {
    let mut h = Harness::new();
    let c = h.broker.handle_open(h.now);
    h.publish(c, "a", "x", QoS::AtMostOnce, false);
    assert!(h.is_closed(c));
    let c = h.connect("c", V5, true);
    h.send(c, Packet::Connect(Box::new(connect("c", V5, true))));
    assert_eq!(
        h.take(c),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::PROTOCOL_ERROR
        ))]
    );
    assert!(h.is_closed(c));
}

#[test]
fn connect_timeout_closes_silent_sockets() {
    let mut h = Harness::with(BrokerConfig {
        connect_timeout: 2,
        sys_interval: 0,
        ..Default::default()
    });
    let c = h.broker.handle_open(h.now);
    h.advance(Duration::from_secs(4));
    assert!(h.is_closed(c));
}

#[test]
fn full_queue_drops_and_counts() {
    let mut h = Harness::with(BrokerConfig {
        max_queued_messages: 3,
        sys_interval: 0,
        ..Default::default()
    });
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "q", QoS::AtLeastOnce);
    h.drop_conn(sub);
    let p = h.connect("p", V311, true);
    for i in 0..4 {
        h.publish(p, "q", &i.to_string(), QoS::AtLeastOnce, false);
    }
    assert_eq!(h.broker.stats().messages_dropped, 1);
    // v3.1.1 cannot be told "quota exceeded": the dropped message gets no PUBACK and
    // the connection is closed, so the publisher still holds it.
    assert_eq!(h.take(p).len(), 3, "a PUBACK for each stored message only");
    assert!(h.is_closed(p));
    let sub = h.connect("sub", V311, false);
    assert_eq!(payloads(&h.take(sub)), ["0", "1", "2"]);
}

/// The packets that broke mqttbytes (DESIGN.md), decoded by our codec and fed to the
/// machine: each must have its specified effect.
#[test]
fn regression_packets_through_codec_and_machine() {
    let mut h = Harness::new();
    let watcher = h.connect("w", V5, true);
    h.subscribe(watcher, "will", QoS::AtMostOnce);
    let decode = |bytes: &[u8]| codec::decode(&mut BytesMut::from(bytes), Some(V5), 1 << 20);

    // Bare DISCONNECT (remaining length 0): normal disconnection, no will.
    let mut c = connect("a", V5, true);
    c.last_will = Some(will("will", "a", None));
    let (conn, _) = h.connect_with(c);
    let p = decode(&[0xE0, 0x00])
        .expect("bare DISCONNECT decodes")
        .expect("complete");
    h.send(conn, p);
    h.drop_conn(conn);
    assert!(h.take(watcher).is_empty());

    // Reason-code-only DISCONNECT (what mosquitto sends), here 0x04: with will.
    let mut c = connect("b", V5, true);
    c.last_will = Some(will("will", "b", None));
    let (conn, _) = h.connect_with(c);
    let p = decode(&[0xE0, 0x01, 0x04])
        .expect("reason-only DISCONNECT decodes")
        .expect("complete");
    h.send(conn, p);
    h.drop_conn(conn);
    assert_eq!(payloads(&h.take(watcher)), ["b"]);

    // AUTH decodes; out of sequence it is a protocol error, not a crash.
    let conn = h.connect("c", V5, true);
    let p = decode(&[0xF0, 0x00])
        .expect("AUTH decodes")
        .expect("complete");
    h.send(conn, p);
    assert_eq!(
        h.take(conn),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::PROTOCOL_ERROR
        ))]
    );

    // A duplicated property (two Session Expiry Intervals in DISCONNECT) is refused.
    let conn = h.connect("d", V5, true);
    let err = decode(&[0xE0, 0x0C, 0x00, 0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2])
        .expect_err("duplicate property");
    h.broker.handle_decode_error(conn, &err, h.now);
    assert_eq!(
        h.take(conn),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::PROTOCOL_ERROR
        ))]
    );
    assert_eq!(err.reason_code(), reason::PROTOCOL_ERROR);
}

#[test]
fn a_backed_up_online_subscriber_signals_congestion_until_it_drains() {
    let mut h = Harness::with(BrokerConfig {
        max_queued_messages: 8,
        sys_interval: 0,
        ..Default::default()
    });
    let mut c = connect("slow", V5, true);
    c.properties.receive_maximum = Some(1);
    let (sub, _) = h.connect_with(c);
    h.subscribe(sub, "t", QoS::AtLeastOnce);
    let p = h.connect("p", V5, true);
    for i in 0..5 {
        h.publish(p, "t", &i.to_string(), QoS::AtLeastOnce, false);
    }
    // One in flight, four queued: half of the limit.
    assert!(h.broker.is_congested(h.now));
    for _ in 0..3 {
        let id = publishes(&h.take(sub))
            .last()
            .and_then(|p| p.packet_id)
            .expect("in flight");
        h.send(sub, Packet::PubAck(PubResponse::new(id)));
    }
    assert!(
        !h.broker.is_congested(h.now),
        "back under a quarter of the limit"
    );
    for i in 5..12 {
        h.publish(p, "t", &i.to_string(), QoS::AtLeastOnce, false);
    }
    assert!(h.broker.is_congested(h.now));
    // A subscriber that stopped acknowledging no longer holds publishers back.
    h.advance(Duration::from_secs(2));
    assert!(
        !h.broker.is_congested(h.now),
        "a stalled subscriber still throttles"
    );
    // An offline session's queue never throttles publishers.
    h.drop_conn(sub);
    let off = h.connect("off", V311, false);
    h.subscribe(off, "t", QoS::AtLeastOnce);
    h.drop_conn(off);
    for i in 0..8 {
        h.publish(p, "t", &i.to_string(), QoS::AtLeastOnce, false);
    }
    assert!(!h.broker.is_congested(h.now));
}

#[test]
fn a_message_dropped_by_a_full_queue_is_not_acknowledged_as_success() {
    let mut h = Harness::with(BrokerConfig {
        max_queued_messages: 2,
        sys_interval: 0,
        ..Default::default()
    });
    let sub = h.connect("sub", V311, false);
    h.subscribe(sub, "q", QoS::AtLeastOnce);
    h.drop_conn(sub);
    let p = h.connect("p", V5, true);
    let mut acks = Vec::new();
    for i in 0..3 {
        h.publish(p, "q", &i.to_string(), QoS::AtLeastOnce, false);
        acks.extend(h.take(p));
    }
    let codes: Vec<u8> = acks
        .iter()
        .map(|a| match a {
            Packet::PubAck(r) => r.reason_code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, [0, 0, reason::QUOTA_EXCEEDED]);
}

#[test]
fn a_session_past_its_expiry_is_not_resumed() {
    let mut h = Harness::new();
    let mut c = connect("s", V5, false);
    c.properties.session_expiry_interval = Some(1);
    let (conn, _) = h.connect_with(c.clone());
    h.drop_conn(conn);
    // No timer ran (as when the broker was down): the CONNECT itself must notice.
    h.now += Duration::from_secs(5);
    let (_, ack) = h.connect_with(c);
    assert!(!ack.session_present);
}
