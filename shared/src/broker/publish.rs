//! PUBLISH in and out: topic aliases, validation, the inbound QoS 1/2 handshakes,
//! routing to subscribers (one delivery per session at the highest matching QoS),
//! the outbound in-flight window, the bounded per-session queue, and acknowledgements.

use std::sync::Arc;
use std::time::Instant;

use super::connection::{ConnId, Connection};
use super::persist::{remove_entry, update_entry};
use super::session::{Awaiting, Delivery, Inflight, SessionId};
use super::{Broker, Output};
use crate::message::{Message, QoS};
use crate::mqtt::codec::publish_len;
use crate::mqtt::packet::{Packet, PubResponse, Publish, PublishProperties};
use crate::mqtt::reason;
use crate::mqtt::topic::valid_topic_name;
use crate::store::{EntryState, StoreOp};

impl Broker {
    pub(super) fn handle_publish(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        mut publish: Publish,
        now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > self.config.topic_alias_maximum {
                tracing::info!(?conn, alias, "topic alias out of range");
                return self.close(conn, Some(reason::TOPIC_ALIAS_INVALID), now);
            }
            if publish.topic.is_empty() {
                match c.inbound_aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        tracing::info!(?conn, alias, "unknown topic alias");
                        return self.close(conn, Some(reason::PROTOCOL_ERROR), now);
                    }
                }
            } else {
                c.inbound_aliases.insert(alias, publish.topic.clone());
            }
        }
        if publish.topic.len() > self.config.max_topic_length
            || !valid_topic_name(&publish.topic, self.config.max_topic_levels)
        {
            tracing::info!(?conn, topic = %publish.topic, "invalid topic name in PUBLISH");
            return self.close(conn, Some(reason::TOPIC_NAME_INVALID), now);
        }
        if publish.retain && !self.config.retain_available {
            return self.close(conn, Some(0x9A), now);
        }
        let packet_id = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => 0,
            (_, Some(id)) => id,
            (_, None) => return self.close(conn, Some(reason::PROTOCOL_ERROR), now),
        };
        let allowed = self
            .conns
            .get(&conn)
            .is_some_and(|c| self.may_publish(&c.identity, &publish.topic));
        if !allowed {
            tracing::info!(?conn, topic = %publish.topic, "publish denied by the ACL");
            // v5 says why; v3.1.1 has no way to, so the message is acknowledged and dropped.
            let v5 = self.conns.get(&conn).is_some_and(|c| c.version.is_v5());
            let code = if v5 {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            match publish.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(
                    conn,
                    Packet::PubAck(PubResponse::with_reason(packet_id, code)),
                ),
                QoS::ExactlyOnce => self.send(
                    conn,
                    Packet::PubRec(PubResponse::with_reason(packet_id, code)),
                ),
            }
            return;
        }
        if self.store_nearly_full && publish.qos != QoS::AtMostOnce {
            let v5 = self.conns.get(&conn).is_some_and(|c| c.version.is_v5());
            let known_qos2 = publish.qos == QoS::ExactlyOnce
                && self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.incoming_qos2.contains(&packet_id));
            if !known_qos2 && self.would_store(sid, &publish) {
                tracing::debug!(?conn, "store nearly full; QoS 1/2 publish refused");
                if !v5 {
                    return self.close(conn, None, now);
                }
                let refusal = PubResponse::with_reason(packet_id, reason::QUOTA_EXCEEDED);
                let packet = match publish.qos {
                    QoS::ExactlyOnce => Packet::PubRec(refusal),
                    _ => Packet::PubAck(refusal),
                };
                return self.send(conn, packet);
            }
        }
        if publish.qos == QoS::ExactlyOnce {
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            if session.incoming_qos2.contains(&packet_id) {
                // A resend of a message we already routed: acknowledge again, route never twice.
                return self.send(conn, Packet::PubRec(PubResponse::new(packet_id)));
            }
            if session.incoming_qos2.len() >= usize::from(self.config.receive_maximum) {
                tracing::info!(?conn, "client exceeded our receive maximum");
                return self.close(conn, Some(reason::RECEIVE_MAXIMUM_EXCEEDED), now);
            }
            session.incoming_qos2.insert(packet_id);
            if session.persisted {
                let client_id = session.client_id.clone();
                self.outbox.op(StoreOp::AddIncomingQos2 {
                    client_id,
                    packet_id,
                });
            }
        }
        let origin = match self.sessions.get(&sid) {
            Some(s) => s.client_id.clone(),
            None => return,
        };
        let qos = publish.qos;
        let msg = message_from_publish(publish, origin, now);
        self.stats.messages_received += 1;
        let dropped_before = self.stats.messages_dropped;
        self.publish_message(msg, now);
        // A full session queue dropped this message for someone: a QoS 1 publisher must
        // not get a success for it, or an acknowledged message is lost. v5 is told with
        // 0x97; v3.1.1 has no reason codes, so its connection is closed unacknowledged
        // (it resends after reconnecting). QoS 2 keeps its PUBREC: refusing it would
        // make the publisher resend and deliver twice to everyone who did take it.
        let quota = self.stats.messages_dropped != dropped_before;
        let v5 = self.conns.get(&conn).is_some_and(|c| c.version.is_v5());
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce if quota && v5 => self.send(
                conn,
                Packet::PubAck(PubResponse::with_reason(packet_id, reason::QUOTA_EXCEEDED)),
            ),
            QoS::AtLeastOnce if quota => self.close(conn, None, now),
            QoS::AtLeastOnce => self.send(conn, Packet::PubAck(PubResponse::new(packet_id))),
            QoS::ExactlyOnce => self.send(conn, Packet::PubRec(PubResponse::new(packet_id))),
        }
    }

    /// Would accepting `publish` from session `sid` write to the store? (Checked only
    /// while the store is nearly full, so that traffic the store never sees flows on.)
    fn would_store(&mut self, sid: SessionId, publish: &Publish) -> bool {
        if publish.retain {
            return true;
        }
        let publisher_persisted = self.sessions.get(&sid).is_some_and(|s| s.persisted);
        if publish.qos == QoS::ExactlyOnce && publisher_persisted {
            return true;
        }
        let mut routes = std::mem::take(&mut self.route_buf);
        routes.clear();
        self.router.route(&publish.topic, &mut routes);
        // Bridge queues store whatever they forward, QoS 0 included.
        let stores = routes.iter().any(|r| {
            self.sessions.get(&r.subscriber).is_some_and(|s| {
                s.persisted && (r.subscription.options.qos != QoS::AtMostOnce || s.bridge.is_some())
            })
        });
        self.route_buf = routes;
        stores
    }

    /// Stores `msg` as retained if flagged, then routes it.
    pub(super) fn publish_message(&mut self, msg: Message, now: Instant) {
        let msg = Arc::new(msg);
        if msg.retain && self.config.retain_available {
            self.retained.set(Arc::clone(&msg));
            self.persist_retained(&msg, now);
        }
        self.route_message(&msg, now);
    }

    /// Delivers `msg` to every matching session once, at the highest QoS of its
    /// matching subscriptions, with all their subscription identifiers.
    fn route_message(&mut self, msg: &Arc<Message>, now: Instant) {
        let mut routes = std::mem::take(&mut self.route_buf);
        routes.clear();
        self.persistence.start_message();
        self.router.route(&msg.topic, &mut routes);
        if routes.len() > 1 {
            routes.sort_unstable_by_key(|r| r.subscriber);
        }
        let mut i = 0;
        while i < routes.len() {
            let sid = routes[i].subscriber;
            let mut qos = None;
            let mut retain = false;
            let mut subscription_ids = Vec::new();
            if !self.may_read(sid, &msg.topic) {
                while i < routes.len() && routes[i].subscriber == sid {
                    i += 1;
                }
                continue;
            }
            while i < routes.len() && routes[i].subscriber == sid {
                let sub = routes[i].subscription;
                i += 1;
                if sub.options.no_local
                    && self
                        .sessions
                        .get(&sid)
                        .is_some_and(|s| s.client_id == msg.origin)
                {
                    continue;
                }
                qos = qos.max(Some(sub.options.qos.min(msg.qos)));
                retain |= sub.options.retain_as_published && msg.retain;
                subscription_ids.extend(sub.identifier);
            }
            if let Some(qos) = qos {
                self.deliver(
                    sid,
                    Delivery {
                        seq: 0,
                        msg: Arc::clone(msg),
                        qos,
                        retain,
                        subscription_ids,
                    },
                    now,
                );
            }
        }
        self.route_buf = routes;
    }

    /// Sends `d` now if the session is online and its window allows, else queues it
    /// (QoS 0 is not queued for offline sessions, as in Mosquitto's default). A QoS 1/2
    /// delivery to a persisted session is stored in the same batch.
    pub(super) fn deliver(&mut self, sid: SessionId, mut d: Delivery, now: Instant) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.bridge.is_some() {
            return self.enqueue_bridge(sid, d, now);
        }
        let conn = session
            .conn
            .and_then(|id| Some((id, self.conns.get_mut(&id)?)));
        if d.qos == QoS::AtMostOnce {
            if let Some((conn, c)) = conn {
                if let Some(p) = publish_packet(c, &d, None, false, now) {
                    self.stats.messages_sent += 1;
                    self.outbox.push(Output::Send(conn, Packet::Publish(p)));
                }
            }
            return;
        }
        d.seq = session.take_seq();
        let window_open = conn.as_ref().is_some_and(|(_, c)| {
            session.inflight.len() < usize::from(c.send_window) && session.queue.is_empty()
        });
        if !window_open {
            if session.queue.len() >= self.config.max_queued_messages {
                self.stats.messages_dropped += 1;
                // Logged at 1, 2, 4, 8, ... drops: a full queue does not flood the log.
                if self.stats.messages_dropped.is_power_of_two() {
                    tracing::warn!(client_id = %session.client_id, dropped = self.stats.messages_dropped, "session queue full; dropping messages");
                }
                return;
            }
            if session.persisted {
                let op = self.persistence.enqueue(
                    &mut self.outbox,
                    session,
                    &d,
                    EntryState::Queued,
                    now,
                );
                self.outbox.op(op);
            }
            session.queue.push_back(d);
            if session.conn.is_some() && session.queue.len() >= self.config.max_queued_messages / 2
            {
                self.congested.insert(sid);
            }
            return;
        }
        let Some((conn, c)) = conn else {
            return;
        };
        let packet_id = session.allocate_packet_id();
        // Invariant: packets are built for QoS 1/2 only past the QoS 0 branch above.
        let Some(p) = publish_packet(c, &d, Some(packet_id), false, now) else {
            return; // Expired or too large for this client: counts as delivered.
        };
        let awaiting = Awaiting::first(d.qos);
        if session.persisted {
            let op = self.persistence.enqueue(
                &mut self.outbox,
                session,
                &d,
                awaiting.entry_state(packet_id),
                now,
            );
            self.outbox.op(op);
        }
        session.inflight.push_back(Inflight {
            packet_id,
            state: awaiting,
            delivery: d,
        });
        self.stats.messages_sent += 1;
        self.outbox.push_delivery(conn, p);
    }

    /// Moves queued deliveries into the in-flight window while it has room.
    pub(super) fn pump(&mut self, sid: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(conn) = session.conn else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while session.inflight.len() < usize::from(c.send_window) {
            let Some(d) = session.queue.pop_front() else {
                break;
            };
            let packet_id = session.allocate_packet_id();
            let Some(p) = publish_packet(c, &d, Some(packet_id), false, now) else {
                if session.persisted {
                    self.outbox.op(remove_entry(session, d.seq));
                }
                continue;
            };
            let awaiting = Awaiting::first(d.qos);
            if session.persisted {
                self.outbox.op(update_entry(
                    session,
                    d.seq,
                    awaiting.entry_state(packet_id),
                ));
            }
            session.inflight.push_back(Inflight {
                packet_id,
                state: awaiting,
                delivery: d,
            });
            self.stats.messages_sent += 1;
            self.outbox.push_delivery(conn, p);
        }
        if session.queue.len() <= self.config.max_queued_messages / 4 {
            self.congested.remove(&sid);
        }
    }

    pub(super) fn handle_puback(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        packet_id: u16,
        now: Instant,
    ) {
        self.complete(conn, sid, packet_id, Awaiting::Ack, now);
    }

    pub(super) fn handle_pubcomp(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        packet_id: u16,
        now: Instant,
    ) {
        self.complete(conn, sid, packet_id, Awaiting::Comp, now);
    }

    fn complete(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        packet_id: u16,
        state: Awaiting,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        match session.find_inflight(packet_id, state) {
            Some(pos) => {
                session.last_progress = Some(now);
                if let Some(done) = session.inflight.remove(pos) {
                    if session.persisted {
                        self.outbox.op(remove_entry(session, done.delivery.seq));
                    }
                }
                self.pump(sid, now);
            }
            None => tracing::debug!(?conn, packet_id, "acknowledgement for an unknown packet id"),
        }
    }

    pub(super) fn handle_pubrec(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        rec: PubResponse,
        now: Instant,
    ) {
        let v5 = self.conns.get(&conn).is_some_and(|c| c.version.is_v5());
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let id = rec.packet_id;
        if let Some(pos) = session.find_inflight(id, Awaiting::Rec) {
            let seq = session.inflight[pos].delivery.seq;
            if rec.reason_code >= 0x80 {
                // The client refused the message: the flow ends here (MQTT 5 §4.3.3).
                session.inflight.remove(pos);
                if session.persisted {
                    self.outbox.op(remove_entry(session, seq));
                }
                return self.pump(sid, now);
            }
            session.inflight[pos].state = Awaiting::Comp;
            if session.persisted {
                self.outbox
                    .op(update_entry(session, seq, Awaiting::Comp.entry_state(id)));
            }
            return self.send(conn, Packet::PubRel(PubResponse::new(id)));
        }
        let code = if session.find_inflight(id, Awaiting::Comp).is_some() || !v5 {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(conn, Packet::PubRel(PubResponse::with_reason(id, code)));
    }

    pub(super) fn handle_pubrel(&mut self, conn: ConnId, sid: SessionId, packet_id: u16) {
        let v5 = self.conns.get(&conn).is_some_and(|c| c.version.is_v5());
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let known = session.incoming_qos2.remove(&packet_id);
        if known && session.persisted {
            let client_id = session.client_id.clone();
            self.outbox.op(StoreOp::RemoveIncomingQos2 {
                client_id,
                packet_id,
            });
        }
        let code = if known || !v5 {
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.send(
            conn,
            Packet::PubComp(PubResponse::with_reason(packet_id, code)),
        );
    }
}

/// The routed form of an inbound PUBLISH: per-hop properties (alias, subscription
/// ids) dropped, the expiry interval lifted out so it can count down.
pub(super) fn message_from_publish(
    publish: Publish,
    origin: bytestring::ByteString,
    now: Instant,
) -> Message {
    let mut properties = publish.properties;
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    let expiry_interval = properties.message_expiry_interval.take();
    Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties,
        expiry_interval,
        received_at: now,
        origin,
    }
}

/// The PUBLISH that carries `d` on connection `c`, or `None` when the message has
/// expired or exceeds the client's maximum packet size (both count as delivered:
/// MQTT 5 §3.3.2.3.3 and §3.1.2.11.4). Assigns an outbound topic alias when the
/// client allows one; a resend (`dup`) always carries the full topic.
pub(super) fn publish_packet(
    c: &mut Connection,
    d: &Delivery,
    packet_id: Option<u16>,
    dup: bool,
    now: Instant,
) -> Option<Publish> {
    let msg = &d.msg;
    let remaining = msg.remaining_expiry(now);
    if remaining == Some(0) {
        return None;
    }
    let properties = if c.version.is_v5() {
        let mut p = msg.properties.clone();
        p.message_expiry_interval = remaining;
        p.subscription_identifiers.clone_from(&d.subscription_ids);
        p
    } else {
        PublishProperties::default()
    };
    let mut publish = Publish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic: msg.topic.clone(),
        packet_id,
        properties,
        payload: msg.payload.clone(),
    };
    if c.client_max_packet_size != u32::MAX
        && publish_len(&publish, c.version) > c.client_max_packet_size as usize
    {
        return None;
    }
    if c.client_topic_alias_max > 0 && !dup {
        if let Some(&alias) = c.outbound_aliases.get(&publish.topic) {
            publish.properties.topic_alias = Some(alias);
            publish.topic = bytestring::ByteString::new();
        } else if c.outbound_aliases.len() < usize::from(c.client_topic_alias_max) {
            // Invariant: len < client_topic_alias_max ≤ u16::MAX, so len + 1 fits.
            let alias = (c.outbound_aliases.len() + 1) as u16;
            c.outbound_aliases.insert(publish.topic.clone(), alias);
            publish.properties.topic_alias = Some(alias);
        }
    }
    Some(publish)
}
