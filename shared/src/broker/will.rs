//! Will messages: published when a connection ends without a normal DISCONNECT,
//! after the v5 will delay (bounded by the session expiry), unless the session is
//! resumed first.

use std::time::{Duration, Instant};

use super::Broker;
use crate::auth::Identity;
use crate::message::Message;
use crate::mqtt::packet::LastWill;

/// A will waiting for its delay to pass.
#[derive(Debug)]
pub(super) struct PendingWill {
    pub(super) at: Instant,
    owner: Identity,
    will: LastWill,
}

impl Broker {
    /// Publishes `will` now, or after its delay when the session outlives the
    /// connection (the delay is capped by the session expiry interval).
    pub(super) fn schedule_will(
        &mut self,
        will: LastWill,
        owner: Identity,
        session_expiry: u32,
        now: Instant,
    ) {
        let delay = will.will_delay_interval.unwrap_or(0).min(session_expiry);
        if delay == 0 {
            return self.publish_will(will, owner, now);
        }
        let at = now + Duration::from_secs(u64::from(delay));
        self.wills.push(PendingWill { at, owner, will });
    }

    /// Drops the pending will of `client_id`: its session was resumed in time.
    pub(super) fn cancel_will(&mut self, client_id: &str) {
        self.wills.retain(|w| w.owner.client_id != client_id);
    }

    /// Publishes the pending will of `client_id` now, if any (its session ended).
    pub(super) fn fire_will_now(&mut self, client_id: &str, now: Instant) {
        if let Some(pos) = self
            .wills
            .iter()
            .position(|w| w.owner.client_id == client_id)
        {
            let w = self.wills.swap_remove(pos);
            self.publish_will(w.will, w.owner, now);
        }
    }

    /// Publishes every will whose delay has passed.
    pub(super) fn fire_wills(&mut self, now: Instant) {
        while let Some(pos) = self.wills.iter().position(|w| w.at <= now) {
            let w = self.wills.swap_remove(pos);
            self.publish_will(w.will, w.owner, now);
        }
    }

    /// Publishes a will like any message of its owner: the ACL applies to it too.
    fn publish_will(&mut self, will: LastWill, owner: Identity, now: Instant) {
        if !self.may_publish(&owner, &will.topic) {
            tracing::info!(client_id = %owner.client_id, topic = %will.topic, "will denied by the ACL");
            return;
        }
        tracing::debug!(client_id = %owner.client_id, topic = %will.topic, "publishing will");
        let mut properties = will.properties;
        let expiry_interval = properties.message_expiry_interval.take();
        let msg = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            expiry_interval,
            received_at: now,
            origin: owner.client_id,
        };
        self.stats.messages_received += 1;
        self.publish_message(msg, now);
    }
}
