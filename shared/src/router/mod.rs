//! The subscription router: one per node, a trie over `/`-separated levels with `+`,
//! `#`, `$share/<group>/` (round-robin) and `$`-topics kept from leading wildcards.
//!
//! [`Router`] keeps the public contract and the subscription count; the trie lives in
//! `trie`, the `$share` groups in `shared`, the per-filter subscriber maps in
//! `subscribers`.

mod shared;
mod subscribers;
#[cfg(test)]
pub(crate) mod tests;
mod trie;

use std::hash::Hash;

use crate::mqtt::packet::SubscriptionOptions;
use crate::mqtt::topic::parse_shared;

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
    root: trie::Node<K>,
    /// Kept alongside the trie so that `len` does not walk it.
    len: usize,
}

impl<K: Copy + Eq + Hash + Ord> Default for Router<K> {
    fn default() -> Self {
        Router {
            root: trie::Node::default(),
            len: 0,
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Router<K> {
    /// Adds or replaces `subscriber`'s subscription to `filter` (which may be a
    /// `$share/<group>/…` filter; the caller has validated it). Returns `true` if the
    /// subscription is new, `false` if it replaced an existing one.
    pub fn subscribe(&mut self, filter: &str, subscriber: K, subscription: Subscription) -> bool {
        let (group, filter) = split_shared(filter);
        let new = self.root.insert(filter, group, subscriber, subscription);
        self.len += usize::from(new);
        new
    }

    /// Removes `subscriber`'s subscription to `filter`; `true` if one existed.
    pub fn unsubscribe(&mut self, filter: &str, subscriber: K) -> bool {
        let (group, filter) = split_shared(filter);
        let removed = self.root.remove(filter, group, subscriber);
        self.len -= usize::from(removed);
        removed
    }

    /// Appends to `out` one [`Route`] per matching non-shared (subscriber, filter) pair
    /// and, for each matching `$share` group, one member chosen round-robin. The same
    /// subscriber may appear several times (overlapping filters); the caller merges.
    pub fn route(&mut self, topic: &str, out: &mut Vec<Route<K>>) {
        self.root.route(topic, out);
    }

    /// Number of (subscriber, filter) subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `(group, filter)` of a possibly shared filter.
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    }
}
