//! CONNECT and the life of a session around connections: accept or refuse, assign a
//! client id, take over an existing connection, resume or discard the session, and the
//! way out (DISCONNECT, socket closed, session expiry).

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use super::connection::{ConnId, ConnPhase};
use super::persist::remove_entry;
use super::session::{Awaiting, Session, SessionId};
use super::Broker;
use crate::mqtt::packet::{
    ConnAck, ConnAckProperties, Connect, Disconnect, LastWill, Packet, PubResponse,
    PublishProperties,
};
use crate::mqtt::reason;
use crate::mqtt::topic::valid_topic_name;

impl Broker {
    pub(super) fn handle_connect(&mut self, conn: ConnId, connect: Connect, now: Instant) {
        let v5 = connect.protocol.is_v5();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.version = connect.protocol;
        }
        if v5 && connect.properties.authentication_method.is_some() {
            // Seam for enhanced authentication: no method is offered yet.
            tracing::info!(?conn, "CONNECT asks for enhanced authentication; refused");
            return self.refuse(conn, reason::BAD_AUTHENTICATION_METHOD, now);
        }
        if let Some(will) = &connect.last_will {
            if !valid_topic_name(&will.topic, self.config.max_topic_levels) {
                tracing::info!(?conn, topic = %will.topic, "invalid will topic");
                return self.refuse(conn, reason::TOPIC_NAME_INVALID, now);
            }
        }
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            if !v5 && !connect.clean_start {
                // 3.1.1 §3.1.3-8: an empty id needs clean session.
                return self.refuse(conn, reason::CLIENT_IDENTIFIER_NOT_VALID, now);
            }
            let id = self.assign_client_id();
            assigned = Some(id.clone());
            id
        } else {
            own_copy(&connect.client_id)
        };
        if super::bridge::is_bridge_client_id(&client_id) {
            tracing::info!(?conn, %client_id, "client id reserved for bridge queues");
            return self.refuse(conn, reason::CLIENT_IDENTIFIER_NOT_VALID, now);
        }

        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        let max_ka = self.config.max_keep_alive;
        if v5 && max_ka > 0 && (keep_alive == 0 || keep_alive > max_ka) {
            keep_alive = max_ka;
            server_keep_alive = Some(max_ka);
        }
        let requested_expiry = match (v5, connect.clean_start) {
            (true, _) => connect.properties.session_expiry_interval.unwrap_or(0),
            (false, true) => 0,
            (false, false) => u32::MAX,
        };
        let expiry = requested_expiry.min(self.config.max_session_expiry);

        // Takeover: the old connection goes first, so its will and session end (if its
        // session expires with it) are settled before we look the session up.
        if let Some(old_conn) = self
            .by_client_id
            .get(&client_id)
            .and_then(|sid| self.sessions.get(sid))
            .and_then(|s| s.conn)
        {
            tracing::info!(client_id = %client_id, old = ?old_conn, new = ?conn, "session taken over");
            self.close(old_conn, Some(reason::SESSION_TAKEN_OVER), now);
        }
        // A session whose expiry passed (e.g. while the broker was down) is gone, even
        // if the periodic scan has not removed it yet.
        if let Some(&sid) = self.by_client_id.get(&client_id) {
            let expired = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.conn.is_none() && s.expires_at.is_some_and(|at| at <= now));
            if expired {
                self.end_session(sid, now);
            }
        }
        let existing = self.by_client_id.get(&client_id).copied();
        let (sid, session_present) = match existing {
            Some(sid) if !connect.clean_start => {
                self.cancel_will(&client_id);
                (sid, true)
            }
            Some(sid) => {
                self.end_session(sid, now);
                (
                    self.create_session(client_id.clone(), connect.protocol),
                    false,
                )
            }
            None => (
                self.create_session(client_id.clone(), connect.protocol),
                false,
            ),
        };

        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.phase = ConnPhase::Connected(sid);
        c.keep_alive_timeout =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        c.client_max_packet_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        c.send_window = connect
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(self.config.max_inflight)
            .max(1);
        c.client_topic_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);
        c.will = connect.last_will.map(|will| Box::new(own_will(will)));
        c.identity.username = connect.username.as_ref().map(own_copy);
        c.identity.client_id = client_id.clone();
        let identity = c.identity.clone();
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.conn = Some(conn);
            s.version = connect.protocol;
            s.expiry_interval = expiry;
            s.expires_at = None;
            s.last_progress = Some(now);
            s.identity = identity;
        }
        self.persist_session(sid, false, now);
        self.stats.clients_connected += 1;
        tracing::debug!(?conn, client_id = %client_id, session_present, "client connected");

        let properties = if v5 {
            ConnAckProperties {
                session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
                receive_maximum: Some(self.config.receive_maximum),
                maximum_packet_size: Some(self.config.max_packet_size),
                assigned_client_identifier: assigned,
                topic_alias_maximum: Some(self.config.topic_alias_maximum),
                retain_available: Some(self.config.retain_available),
                wildcard_subscription_available: Some(self.config.wildcard_subscription_available),
                subscription_identifiers_available: Some(
                    self.config.subscription_identifiers_available,
                ),
                shared_subscription_available: Some(self.config.shared_subscription_available),
                server_keep_alive,
                ..ConnAckProperties::default()
            }
        } else {
            ConnAckProperties::default()
        };
        self.send(
            conn,
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code: reason::SUCCESS,
                properties,
            }),
        );
        if session_present {
            self.resend_inflight(conn, sid, now);
        }
        self.pump(sid, now);
    }

    /// Refuses a CONNECT with a CONNACK carrying `code`, then closes.
    pub(super) fn refuse(&mut self, conn: ConnId, code: u8, now: Instant) {
        self.send(
            conn,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties: ConnAckProperties::default(),
            }),
        );
        self.close(conn, None, now);
    }

    /// A client id for a client that sent an empty one: random per broker process so an
    /// id assigned before a restart is never handed to someone else after it.
    fn assign_client_id(&mut self) -> ByteString {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        ByteString::from(format!("tern-{seed:016x}"))
    }

    fn create_session(
        &mut self,
        client_id: ByteString,
        version: crate::mqtt::packet::ProtocolVersion,
    ) -> SessionId {
        self.next_session += 1;
        let sid = SessionId(self.next_session);
        self.by_client_id.insert(client_id.clone(), sid);
        self.sessions.insert(sid, Session::new(client_id, version));
        sid
    }

    /// On session resume: every unacknowledged PUBLISH again with DUP set and the same
    /// packet id, every PUBREL again (MQTT 5 §4.4 allows resending only here).
    fn resend_inflight(&mut self, conn: ConnId, sid: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut i = 0;
        while i < session.inflight.len() {
            let f = &session.inflight[i];
            match f.state {
                Awaiting::Comp => {
                    self.outbox.push(super::Output::Send(
                        conn,
                        Packet::PubRel(PubResponse::new(f.packet_id)),
                    ));
                    i += 1;
                }
                Awaiting::Ack | Awaiting::Rec => {
                    match super::publish::publish_packet(
                        c,
                        &f.delivery,
                        Some(f.packet_id),
                        true,
                        now,
                    ) {
                        Some(p) => {
                            self.stats.messages_sent += 1;
                            self.outbox
                                .push(super::Output::Send(conn, Packet::Publish(p)));
                            i += 1;
                        }
                        None => {
                            // Expired, or too large for this client: it counts as delivered.
                            if let Some(done) = session.inflight.remove(i) {
                                if session.persisted {
                                    self.outbox.op(remove_entry(session, done.delivery.seq));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub(super) fn handle_disconnect(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        d: Disconnect,
        now: Instant,
    ) {
        if let Some(new_expiry) = d.session_expiry_interval {
            let current = self.sessions.get(&sid).map_or(0, |s| s.expiry_interval);
            if current == 0 && new_expiry > 0 {
                // MQTT 5 §3.14.2.2.2: a session that ends with the connection cannot be revived here.
                return self.close(conn, Some(reason::PROTOCOL_ERROR), now);
            }
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expiry_interval = new_expiry.min(self.config.max_session_expiry);
            }
        }
        if d.reason_code != reason::DISCONNECT_WITH_WILL {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.will = None;
            }
        }
        tracing::debug!(?conn, reason = d.reason_code, "client disconnected");
        self.close(conn, None, now);
    }

    /// The socket of `conn` closed (EOF, error, or after an `Output::Close`).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.detach(conn, now);
        self.conns.remove(&conn);
    }

    /// Unbinds `conn` from its session: publishes or schedules its will, and ends the
    /// session or starts its expiry clock. Idempotent.
    pub(super) fn detach(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(sid) = c.session() else {
            return;
        };
        c.phase = ConnPhase::Closing;
        let will = c.will.take().map(|will| *will);
        let identity = c.identity.clone();
        self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.conn != Some(conn) {
            return;
        }
        session.conn = None;
        // An offline session's queue fills by design; it must not slow publishers.
        self.congested.remove(&sid);
        let expiry = session.expiry_interval;
        if let Some(will) = will {
            self.schedule_will(will, identity, expiry, now);
        }
        if expiry == 0 {
            self.end_session(sid, now);
        } else if let Some(session) = self.sessions.get_mut(&sid) {
            session.expires_at = now.checked_add(Duration::from_secs(u64::from(expiry)));
            self.persist_session(sid, true, now);
        }
    }

    /// Removes a session and its subscriptions; a will still waiting for its delay is
    /// published now (MQTT 5 §3.1.3.2.2: the session ending ends the delay).
    pub(super) fn end_session(&mut self, sid: SessionId, now: Instant) {
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        self.congested.remove(&sid);
        for filter in session.subscriptions.keys() {
            self.router.unsubscribe(filter, sid);
        }
        if self.by_client_id.get(&session.client_id) == Some(&sid) {
            self.by_client_id.remove(&session.client_id);
        }
        self.forget_session(&session.client_id, session.persisted);
        self.fire_will_now(&session.client_id, now);
    }

    pub(super) fn expire_sessions(&mut self, now: Instant) {
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.conn.is_none() && s.expires_at.is_some_and(|at| at <= now))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in expired {
            self.end_session(sid, now);
        }
    }
}

/// A copy of `s` in an allocation of its own, for what outlives its packet (the
/// session's client id, user name, subscription filters). A decoded string shares the
/// read buffer it came from, and would keep all of that buffer allocated for as long as
/// the session lives.
pub(super) fn own_copy(s: &ByteString) -> ByteString {
    ByteString::from(&**s)
}

/// `will` with every string and byte field in allocations of its own (see `own_copy`):
/// a will is kept for the whole connection. Copied once per CONNECT, never per message.
fn own_will(will: LastWill) -> LastWill {
    let own_bytes = |b: &Bytes| Bytes::copy_from_slice(b);
    let p = will.properties;
    LastWill {
        topic: own_copy(&will.topic),
        payload: own_bytes(&will.payload),
        properties: PublishProperties {
            response_topic: p.response_topic.as_ref().map(own_copy),
            correlation_data: p.correlation_data.as_ref().map(own_bytes),
            user_properties: p
                .user_properties
                .iter()
                .map(|(name, value)| (own_copy(name), own_copy(value)))
                .collect(),
            content_type: p.content_type.as_ref().map(own_copy),
            ..p
        },
        ..will
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;

    /// True if `a` and `b` are views of one allocation.
    fn shared(a: &[u8], b: &[u8]) -> bool {
        let a = a.as_ptr_range();
        let b = b.as_ptr_range();
        a.start < b.end && b.start < a.end
    }

    #[test]
    fn what_a_session_keeps_does_not_pin_the_read_buffer() {
        // As the codec decodes: every field a view of one received buffer.
        let read = Bytes::from_static(b"client-1topicpayloadresponsecorrelationtypenamevalue");
        let text = |from, to| ByteString::try_from(read.slice(from..to)).expect("utf-8");
        let will = LastWill {
            topic: text(8, 13),
            payload: read.slice(13..20),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties {
                response_topic: Some(text(20, 28)),
                correlation_data: Some(read.slice(28..39)),
                content_type: Some(text(39, 43)),
                user_properties: vec![(text(43, 47), text(47, 52))],
                message_expiry_interval: Some(7),
                ..PublishProperties::default()
            },
            will_delay_interval: Some(3),
        };

        let id = own_copy(&text(0, 8));
        assert_eq!(id, "client-1");
        assert!(!shared(id.as_bytes(), &read));

        let own = own_will(will.clone());
        assert_eq!(own, will);
        let p = &own.properties;
        let (name, value) = &p.user_properties[0];
        for field in [
            own.topic.as_bytes(),
            &own.payload,
            p.response_topic.as_ref().expect("set").as_bytes(),
            p.correlation_data.as_ref().expect("set"),
            p.content_type.as_ref().expect("set").as_bytes(),
            name.as_bytes(),
            value.as_bytes(),
        ] {
            assert!(!shared(field, &read), "{field:?} still shares the buffer");
        }
    }
}
