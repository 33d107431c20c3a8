//! rumqttc wrappers shared by the integration tests: a client whose event loop runs in a
//! task and hands incoming packets to the test through a channel, so every receive can
//! have a timeout and a test failure can never hang. One module per protocol version
//! (`v4` = MQTT 3.1.1, `v5` = MQTT 5.0), with the same shape.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

pub use tern_tests::raw;
pub use tern_tests::{unique, Broker, RawClient, Recv};

/// Default timeout for anything that is expected to arrive.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(700);

/// Incoming events of the task running a rumqttc event loop.
type Inbox<P> = tokio::sync::mpsc::UnboundedReceiver<Result<P, String>>;

/// MQTT 3.1.1 through rumqttc's v4 client.
pub mod v4 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, Publish,
        QoS, SubscribeFilter, SubscribeReasonCode,
    };
    use std::collections::VecDeque;

    /// Options for `broker` with client id `id`: clean session, 30 s keep alive, 2 MiB
    /// packets both ways.
    pub fn options(broker: &Broker, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, broker.host(), broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        o
    }

    /// A connected rumqttc v4 client.
    pub struct Client {
        /// The rumqttc handle, for publish/subscribe requests.
        pub client: AsyncClient,
        /// The CONNACK received.
        pub connack: ConnAck,
        inbox: Inbox<Packet>,
        backlog: VecDeque<Packet>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Connects with `opts` and waits for a successful CONNACK.
    pub async fn connect(opts: MqttOptions) -> Client {
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let connack = match tokio::time::timeout(WAIT, inbox.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(a)))) => a,
            other => panic!("v4 connect: expected CONNACK, got {other:?}"),
        };
        assert_eq!(
            connack.code,
            ConnectReturnCode::Success,
            "CONNACK return code"
        );
        Client {
            client,
            connack,
            inbox,
            backlog: VecDeque::new(),
            task,
        }
    }

    impl Client {
        /// Next incoming packet (PINGRESP skipped) within `timeout`; `None` on timeout,
        /// `Some(Err)` when the connection failed.
        pub async fn next(&mut self, timeout: Duration) -> Option<Result<Packet, String>> {
            if let Some(p) = self.backlog.pop_front() {
                return Some(Ok(p));
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                    Err(_) => return None,
                    Ok(None) => return Some(Err("event loop ended".into())),
                    Ok(Some(Ok(Packet::PingResp))) => continue,
                    Ok(Some(r)) => return Some(r),
                }
            }
        }

        /// Waits for a packet matching `pred`; others are kept for later `next` calls.
        pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Packet) -> bool) -> Packet {
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut skipped = VecDeque::new();
            let found = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, self.inbox.recv()).await {
                    Ok(Some(Ok(p))) if pred(&p) => break p,
                    Ok(Some(Ok(Packet::PingResp))) => {}
                    Ok(Some(Ok(p))) => skipped.push_back(p),
                    other => panic!("waiting for {what}: got {other:?} (skipped {skipped:?})"),
                }
            };
            self.backlog.extend(skipped);
            found
        }

        /// Subscribes to one filter and returns the SUBACK codes.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("subscribe request");
            match self
                .wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_)))
                .await
            {
                Packet::SubAck(s) => s.return_codes,
                _ => unreachable!(),
            }
        }

        /// Subscribes to several filters in one SUBSCRIBE and returns the SUBACK codes.
        pub async fn subscribe_many(
            &mut self,
            filters: &[(&str, QoS)],
        ) -> Vec<SubscribeReasonCode> {
            let f: Vec<_> = filters
                .iter()
                .map(|(f, q)| SubscribeFilter::new(f.to_string(), *q))
                .collect();
            self.client
                .subscribe_many(f)
                .await
                .expect("subscribe request");
            match self
                .wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_)))
                .await
            {
                Packet::SubAck(s) => s.return_codes,
                _ => unreachable!(),
            }
        }

        /// Publishes; for QoS 1/2 waits until the broker acknowledged (PUBACK/PUBCOMP).
        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
            self.client
                .publish(topic, qos, retain, payload.to_vec())
                .await
                .expect("publish request");
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_)))
                        .await;
                }
                QoS::ExactlyOnce => {
                    self.wait_for("PUBCOMP", |p| matches!(p, Packet::PubComp(_)))
                        .await;
                }
            }
        }

        /// Next PUBLISH within `timeout`, other packets skipped.
        pub async fn recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.next(left).await? {
                    Ok(Packet::Publish(p)) => return Some(p),
                    Ok(_) => {}
                    Err(e) => panic!("connection failed while waiting for PUBLISH: {e}"),
                }
            }
        }

        /// Exactly `n` PUBLISHes, each within [`WAIT`]; panics if fewer arrive.
        pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
            let mut out = Vec::new();
            for i in 0..n {
                match self.recv_publish(WAIT).await {
                    Some(p) => out.push(p),
                    None => panic!("expected {n} PUBLISHes, got {i}: {out:?}"),
                }
            }
            out
        }

        /// Panics if a PUBLISH arrives within `quiet`.
        pub async fn expect_no_publish(&mut self, quiet: Duration) {
            if let Some(p) = self.recv_publish(quiet).await {
                panic!("expected no PUBLISH, got {p:?}");
            }
        }

        /// Sends DISCONNECT and waits briefly for it to go out.
        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = self.inbox.recv().await {}
            })
            .await;
        }

        /// Waits until the connection fails (e.g. the broker closed it); returns the error.
        pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, self.inbox.recv()).await {
                    Err(_) => return None,
                    Ok(None) => return Some("event loop ended".into()),
                    Ok(Some(Err(e))) => return Some(e),
                    Ok(Some(Ok(p))) => self.backlog.push_back(p),
                }
            }
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            // Dropping the event loop drops the socket without DISCONNECT.
            self.task.abort();
        }
    }

    /// Connects a clean client with a fresh id.
    pub async fn client(broker: &Broker, name: &str) -> Client {
        connect(options(broker, &unique(name))).await
    }
}

/// MQTT 5.0 through rumqttc's v5 client.
pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter,
        LastWill, Packet, Publish, PublishProperties, RetainForwardRule, SubscribeProperties,
        SubscribeReasonCode, UnsubAckReason,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use std::collections::VecDeque;

    /// Options for `broker` with client id `id`: clean start, 30 s keep alive, 2 MiB
    /// incoming packets.
    pub fn options(broker: &Broker, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, broker.host(), broker.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(2 * 1024 * 1024));
        o
    }

    /// A connected rumqttc v5 client.
    pub struct Client {
        /// The rumqttc handle, for publish/subscribe requests.
        pub client: AsyncClient,
        /// The CONNACK received.
        pub connack: ConnAck,
        inbox: Inbox<Packet>,
        backlog: VecDeque<Packet>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Connects with `opts` and waits for a successful CONNACK.
    pub async fn connect(opts: MqttOptions) -> Client {
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, mut inbox) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let connack = match tokio::time::timeout(WAIT, inbox.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(a)))) => a,
            other => panic!("v5 connect: expected CONNACK, got {other:?}"),
        };
        assert_eq!(
            connack.code,
            ConnectReturnCode::Success,
            "CONNACK reason code"
        );
        Client {
            client,
            connack,
            inbox,
            backlog: VecDeque::new(),
            task,
        }
    }

    impl Client {
        /// Next incoming packet (PINGRESP skipped) within `timeout`; `None` on timeout,
        /// `Some(Err)` when the connection failed.
        pub async fn next(&mut self, timeout: Duration) -> Option<Result<Packet, String>> {
            if let Some(p) = self.backlog.pop_front() {
                return Some(Ok(p));
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                    Err(_) => return None,
                    Ok(None) => return Some(Err("event loop ended".into())),
                    Ok(Some(Ok(Packet::PingResp(_)))) => continue,
                    Ok(Some(r)) => return Some(r),
                }
            }
        }

        /// Waits for a packet matching `pred`; others are kept for later `next` calls.
        pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Packet) -> bool) -> Packet {
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut skipped = VecDeque::new();
            let found = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, self.inbox.recv()).await {
                    Ok(Some(Ok(p))) if pred(&p) => break p,
                    Ok(Some(Ok(Packet::PingResp(_)))) => {}
                    Ok(Some(Ok(p))) => skipped.push_back(p),
                    other => panic!("waiting for {what}: got {other:?} (skipped {skipped:?})"),
                }
            };
            self.backlog.extend(skipped);
            found
        }

        /// Subscribes with full options (and an optional subscription identifier) and
        /// returns the SUBACK codes.
        pub async fn subscribe_filters(
            &mut self,
            filters: Vec<Filter>,
            id: Option<usize>,
        ) -> Vec<SubscribeReasonCode> {
            let props = SubscribeProperties {
                id,
                user_properties: vec![],
            };
            self.client
                .subscribe_many_with_properties(filters, props)
                .await
                .expect("subscribe request");
            match self
                .wait_for("SUBACK", |p| matches!(p, Packet::SubAck(_)))
                .await
            {
                Packet::SubAck(s) => s.return_codes,
                _ => unreachable!(),
            }
        }

        /// Subscribes to one filter and returns the SUBACK codes.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.subscribe_filters(vec![Filter::new(filter, qos)], None)
                .await
        }

        /// Publishes with properties; for QoS 1/2 waits for PUBACK/PUBCOMP.
        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: &[u8],
            props: PublishProperties,
        ) {
            self.client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), props)
                .await
                .expect("publish request");
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.wait_for("PUBACK", |p| matches!(p, Packet::PubAck(_)))
                        .await;
                }
                QoS::ExactlyOnce => {
                    self.wait_for("PUBCOMP", |p| matches!(p, Packet::PubComp(_)))
                        .await;
                }
            }
        }

        /// Publishes without properties; for QoS 1/2 waits for PUBACK/PUBCOMP.
        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
            self.publish_with(topic, qos, retain, payload, PublishProperties::default())
                .await
        }

        /// Next PUBLISH within `timeout`, other packets skipped.
        pub async fn recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.next(left).await? {
                    Ok(Packet::Publish(p)) => return Some(p),
                    Ok(_) => {}
                    Err(e) => panic!("connection failed while waiting for PUBLISH: {e}"),
                }
            }
        }

        /// Exactly `n` PUBLISHes, each within [`WAIT`]; panics if fewer arrive.
        pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
            let mut out = Vec::new();
            for i in 0..n {
                match self.recv_publish(WAIT).await {
                    Some(p) => out.push(p),
                    None => panic!("expected {n} PUBLISHes, got {i}: {out:?}"),
                }
            }
            out
        }

        /// Panics if a PUBLISH arrives within `quiet`.
        pub async fn expect_no_publish(&mut self, quiet: Duration) {
            if let Some(p) = self.recv_publish(quiet).await {
                panic!("expected no PUBLISH, got {p:?}");
            }
        }

        /// Sends DISCONNECT and waits briefly for it to go out.
        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = self.inbox.recv().await {}
            })
            .await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Connects a clean client with a fresh id.
    pub async fn client(broker: &Broker, name: &str) -> Client {
        connect(options(broker, &unique(name))).await
    }

    /// The topic of a received PUBLISH as a string.
    pub fn topic(p: &Publish) -> String {
        String::from_utf8_lossy(&p.topic).into_owned()
    }
}

/// A v5 CONNECT (raw) with a fresh client id derived from `name`.
pub fn raw_v5(name: &str) -> raw::Connect {
    raw::Connect::new(raw::V5, &unique(name))
}

/// A v4 CONNECT (raw) with a fresh client id derived from `name`.
pub fn raw_v4(name: &str) -> raw::Connect {
    raw::Connect::new(raw::V4, &unique(name))
}
