//! The subscription router: one per node, a trie over `/`-separated levels with `+`,
//! `#`, `$share/<group>/` (round-robin) and `$`-topics kept from leading wildcards.
//! (CONTRACT — implementation in progress.)

use std::hash::Hash;

use crate::mqtt::packet::SubscriptionOptions;

/// What one subscriber asked for with one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// v5 subscription identifier, if given.
    pub identifier: Option<u32>,
}

/// One delivery decision of [`Router::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<K> {
    /// Who receives the message.
    pub subscriber: K,
    /// The matching subscription.
    pub subscription: Subscription,
    /// True when the match came through a `$share` group.
    pub shared: bool,
}

/// Subscription trie keyed by subscriber id `K`.
#[derive(Debug)]
pub struct Router<K> {
    _k: std::marker::PhantomData<K>,
}

impl<K: Copy + Eq + Hash + Ord> Default for Router<K> {
    fn default() -> Self {
        Router { _k: std::marker::PhantomData }
    }
}

impl<K: Copy + Eq + Hash + Ord> Router<K> {
    /// Adds or replaces `subscriber`'s subscription to `filter` (which may be a
    /// `$share/<group>/…` filter; the caller has validated it). Returns `true` if the
    /// subscription is new, `false` if it replaced an existing one.
    pub fn subscribe(&mut self, filter: &str, subscriber: K, subscription: Subscription) -> bool {
        let _ = (filter, subscriber, subscription);
        todo!()
    }

    /// Removes `subscriber`'s subscription to `filter`; `true` if one existed.
    pub fn unsubscribe(&mut self, filter: &str, subscriber: K) -> bool {
        let _ = (filter, subscriber);
        todo!()
    }

    /// Appends to `out` one [`Route`] per matching non-shared (subscriber, filter) pair
    /// and, for each matching `$share` group, one member chosen round-robin. The same
    /// subscriber may appear several times (overlapping filters); the caller merges.
    pub fn route(&mut self, topic: &str, out: &mut Vec<Route<K>>) {
        let _ = (topic, out);
        todo!()
    }

    /// Number of (subscriber, filter) subscriptions held.
    pub fn len(&self) -> usize {
        todo!()
    }

    /// True when no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
