//! SUBSCRIBE and UNSUBSCRIBE: per-filter validation and reason codes, v5 options and
//! subscription identifiers, and the retained messages a new subscription receives.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::connect::own_copy;
use super::connection::ConnId;
use super::session::{Delivery, SessionId};
use super::Broker;
use crate::mqtt::packet::{Packet, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::mqtt::reason;
use crate::mqtt::topic::{parse_shared, valid_topic_filter};
use crate::router::Subscription;

impl Broker {
    pub(super) fn handle_subscribe(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        sub: Subscribe,
        now: Instant,
    ) {
        if sub.subscription_identifier.is_some() && !self.config.subscription_identifiers_available
        {
            return self.close(
                conn,
                Some(reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED),
                now,
            );
        }
        let v5 = self.conns.get(&conn).is_some_and(|c| c.version.is_v5());
        let mut reason_codes = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(ByteString, Subscription)> = Vec::new();
        for (filter, options) in sub.filters {
            if filter.len() > self.config.max_topic_length
                || !valid_topic_filter(&filter, self.config.max_topic_levels)
            {
                tracing::info!(?conn, %filter, "invalid topic filter");
                reason_codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            if !self.may_subscribe(conn, &filter) {
                tracing::info!(?conn, %filter, "subscription denied by the ACL");
                reason_codes.push(reason::NOT_AUTHORIZED);
                continue;
            }
            let shared = parse_shared(&filter).is_some();
            if shared && !self.config.shared_subscription_available {
                reason_codes.push(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
                continue;
            }
            if shared && options.no_local && v5 {
                // MQTT 5 §3.8.3.1: No Local on a shared subscription is a protocol error.
                return self.close(conn, Some(reason::PROTOCOL_ERROR), now);
            }
            if !self.config.wildcard_subscription_available && filter.contains(['+', '#']) {
                reason_codes.push(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
                continue;
            }
            let at_quota = self.config.max_subscriptions > 0
                && self.sessions.get(&sid).is_some_and(|s| {
                    s.subscriptions.len() >= self.config.max_subscriptions
                        && !s.subscriptions.contains_key(&filter)
                });
            if at_quota {
                tracing::info!(?conn, %filter, "subscription limit reached");
                reason_codes.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            let subscription = Subscription {
                options,
                identifier: sub.subscription_identifier,
            };
            let is_new = self.router.subscribe(&filter, sid, subscription);
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            session
                .subscriptions
                .insert(own_copy(&filter), subscription);
            reason_codes.push(options.qos as u8);
            let wants_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => is_new,
                RetainHandling::DoNotSend => false,
            };
            if wants_retained && !shared && self.config.retain_available {
                retained_for.push((filter, subscription));
            }
        }
        self.persist_session(sid, false, now);
        self.send(
            conn,
            Packet::SubAck(SubAck {
                packet_id: sub.packet_id,
                reason_string: None,
                reason_codes,
            }),
        );
        let mut matches = Vec::new();
        for (filter, subscription) in retained_for {
            matches.clear();
            self.retained.matching(&filter, &mut matches);
            for msg in matches.drain(..) {
                if !self.may_read(sid, &msg.topic) {
                    continue;
                }
                self.persistence.start_message();
                let qos = subscription.options.qos.min(msg.qos);
                let subscription_ids = subscription.identifier.into_iter().collect();
                self.deliver(
                    sid,
                    Delivery {
                        seq: 0,
                        msg: Arc::clone(&msg),
                        qos,
                        retain: true,
                        subscription_ids,
                    },
                    now,
                );
            }
        }
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        unsub: Unsubscribe,
        now: Instant,
    ) {
        let mut reason_codes = Vec::with_capacity(unsub.filters.len());
        for filter in unsub.filters {
            let existed = self.router.unsubscribe(&filter, sid);
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.subscriptions.remove(&filter);
            }
            reason_codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.persist_session(sid, false, now);
        self.send(
            conn,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsub.packet_id,
                reason_string: None,
                reason_codes,
            }),
        );
    }
}
