//! The broker as a bridge [`Port`]: outbound classes are bridge queues of the broker,
//! inbound deliveries are `Broker::inject` calls acknowledged when durable.
//!
//! The same port serves the gateway (its upstream queues) and the cloud (one port per
//! gateway, over that gateway's downstream queues).

use std::sync::Arc;

use bytestring::ByteString;
use tern_bridge::{DeliverError, Port};
use tern_core::broker::{Backlog, BridgeQueue, PeekLimits};
use tern_core::message::QoS;
use tern_core::mqtt::topic;
use tern_core::store::StoredMessage;
use tokio::sync::{oneshot, Notify};

use crate::server::Server;

/// A forwarding rule of one outbound class.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRule {
    /// Local topic filter.
    pub filter: String,
    /// Highest QoS taken for forwarding.
    pub qos: QoS,
    /// Prepended to the topic on the far side.
    pub remote_prefix: String,
}

/// Which bridge queues and cursors a port uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PortSpec {
    /// Queue of outbound class `c` is `$bridge/<queue_prefix><c>`.
    pub queue_prefix: String,
    /// Rules per outbound class (index = class).
    pub outbound: Vec<Vec<OutboundRule>>,
    /// Most messages per outbound queue.
    pub max_queued_messages: usize,
    /// Origin of delivered messages; messages with it are never sent back.
    pub origin: String,
    /// Cursor of inbound class `c` is `<cursor_prefix><c>`.
    pub cursor_prefix: String,
}

/// A [`Port`] over the shared broker.
pub struct BrokerPort {
    server: Server,
    queues: Vec<BridgeQueue>,
    rules: Vec<Vec<OutboundRule>>,
    origin: ByteString,
    cursor_prefix: String,
    ready: Arc<Notify>,
}

impl BrokerPort {
    /// Opens (or resumes) the queues of `spec` in the broker of `server`.
    pub(crate) fn open(server: &Server, spec: PortSpec) -> Self {
        let origin = ByteString::from(spec.origin);
        let queues = server.with_broker(|broker, now| {
            spec.outbound
                .iter()
                .enumerate()
                .map(|(class, rules)| {
                    let filters: Vec<(ByteString, QoS)> = rules
                        .iter()
                        .map(|r| (ByteString::from(r.filter.as_str()), r.qos))
                        .collect();
                    let name = format!("{}{class}", spec.queue_prefix);
                    broker.open_bridge_queue(
                        &name,
                        &filters,
                        spec.max_queued_messages,
                        origin.clone(),
                        now,
                    )
                })
                .collect()
        });
        let ready = Arc::new(Notify::new());
        server.add_bridge_waker(Arc::clone(&ready));
        // Whatever was restored is ready to go.
        ready.notify_one();
        BrokerPort {
            server: server.clone(),
            queues,
            rules: spec.outbound,
            origin,
            cursor_prefix: spec.cursor_prefix,
            ready,
        }
    }

    /// What waits in each outbound queue, by class.
    pub fn backlog(&self) -> Vec<Backlog> {
        self.server.with_broker(|broker, now| {
            self.queues
                .iter()
                .map(|q| broker.bridge_backlog(*q, now))
                .collect()
        })
    }

    fn cursor_name(&self, class: u8) -> ByteString {
        ByteString::from(format!("{}{class}", self.cursor_prefix))
    }

    /// The topic `stored` gets on the far side: the remote prefix of the first rule of
    /// `class` that matches it.
    fn remote_topic(&self, class: u8, stored: &mut StoredMessage) {
        let Some(rules) = self.rules.get(usize::from(class)) else {
            return;
        };
        let prefix = rules
            .iter()
            .find(|r| topic::matches(&r.filter, &stored.topic))
            .map(|r| r.remote_prefix.as_str())
            .unwrap_or_default();
        if !prefix.is_empty() {
            stored.topic = ByteString::from(format!("{prefix}{}", stored.topic));
        }
    }
}

impl Port for BrokerPort {
    fn peek(
        &self,
        class: u8,
        after: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Vec<(u64, StoredMessage)> {
        let Some(queue) = self.queues.get(usize::from(class)).copied() else {
            return Vec::new();
        };
        let limits = PeekLimits {
            messages: max_msgs,
            bytes: max_bytes,
        };
        let mut out = Vec::new();
        let unix_ms = crate::group_commit::unix_ms_now();
        self.server.with_broker(|broker, now| {
            broker.bridge_peek(queue, after, limits, now, unix_ms, &mut out)
        });
        for (_, stored) in &mut out {
            self.remote_topic(class, stored);
        }
        out
    }

    fn acked(&self, class: u8, up_to: u64) {
        if let Some(queue) = self.queues.get(usize::from(class)).copied() {
            self.server
                .with_broker(|broker, _| broker.bridge_ack(queue, up_to));
        }
    }

    fn outbound_ready(&self) -> Arc<Notify> {
        Arc::clone(&self.ready)
    }

    fn deliver(
        &self,
        class: u8,
        messages: Vec<StoredMessage>,
        up_to: u64,
    ) -> oneshot::Receiver<Result<(), DeliverError>> {
        self.server
            .inject(messages, &self.origin, (self.cursor_name(class), up_to))
    }

    fn delivered(&self, class: u8) -> u64 {
        let name = self.cursor_name(class);
        self.server
            .with_broker(|broker, _| broker.cursor(&name).unwrap_or(0))
    }
}
