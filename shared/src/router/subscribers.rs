//! The per-node `subscriber -> subscription` map of the trie.
//!
//! Almost every filter has one or a handful of subscribers, so a sorted `Vec` is the
//! smallest and fastest representation; a few filters (`$SYS/#`, broadcast topics) have
//! thousands, where `Vec` insertion turns quadratic, so the map switches to a `HashMap`
//! past a threshold and back (with hysteresis, so churn at the boundary does not flip).

use std::collections::HashMap;
use std::hash::Hash;

use super::Subscription;

/// Above this many entries the map becomes a `HashMap`.
const PROMOTE_ABOVE: usize = 64;
/// At or below this many entries a `HashMap` goes back to a sorted `Vec`.
const DEMOTE_AT: usize = 16;

/// Subscribers of one filter at one trie node.
#[derive(Debug)]
pub(crate) enum SubscriberMap<K> {
    /// Sorted by subscriber.
    Small(Vec<(K, Subscription)>),
    /// For filters with many subscribers.
    Large(HashMap<K, Subscription>),
}

impl<K> Default for SubscriberMap<K> {
    fn default() -> Self {
        SubscriberMap::Small(Vec::new())
    }
}

impl<K: Copy + Eq + Hash + Ord> SubscriberMap<K> {
    /// Number of subscribers.
    pub(crate) fn len(&self) -> usize {
        match self {
            SubscriberMap::Small(v) => v.len(),
            SubscriberMap::Large(m) => m.len(),
        }
    }

    /// True without subscribers.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts or replaces; returns the replaced subscription.
    pub(crate) fn insert(&mut self, key: K, sub: Subscription) -> Option<Subscription> {
        match self {
            SubscriberMap::Small(v) => match v.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, sub)),
                Err(i) => {
                    v.insert(i, (key, sub));
                    if v.len() > PROMOTE_ABOVE {
                        *self = SubscriberMap::Large(v.drain(..).collect());
                    }
                    None
                }
            },
            SubscriberMap::Large(m) => m.insert(key, sub),
        }
    }

    /// Removes `key`; returns its subscription.
    pub(crate) fn remove(&mut self, key: K) -> Option<Subscription> {
        match self {
            SubscriberMap::Small(v) => {
                let i = v.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
                let (_, sub) = v.remove(i);
                if v.is_empty() {
                    // An emptied node may stay in the trie (it has children), so give
                    // the buffer back rather than keep the high-water mark.
                    *v = Vec::new();
                }
                Some(sub)
            }
            SubscriberMap::Large(m) => {
                let sub = m.remove(&key)?;
                if m.len() <= DEMOTE_AT {
                    let mut v: Vec<_> = m.drain().collect();
                    v.sort_unstable_by_key(|e| e.0);
                    *self = SubscriberMap::Small(v);
                }
                Some(sub)
            }
        }
    }

    /// Looks up `key`'s subscription.
    #[cfg(test)]
    pub(crate) fn get(&self, key: K) -> Option<Subscription> {
        match self {
            SubscriberMap::Small(v) => {
                let i = v.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
                Some(v[i].1)
            }
            SubscriberMap::Large(m) => m.get(&key).copied(),
        }
    }

    /// Calls `f` for every entry, in no particular order.
    #[inline]
    pub(crate) fn for_each(&self, mut f: impl FnMut(K, Subscription)) {
        match self {
            SubscriberMap::Small(v) => v.iter().for_each(|&(k, s)| f(k, s)),
            SubscriberMap::Large(m) => m.iter().for_each(|(&k, &s)| f(k, s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;
    use crate::mqtt::packet::SubscriptionOptions;

    fn sub(id: u32) -> Subscription {
        Subscription {
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
            identifier: Some(id),
        }
    }

    #[test]
    fn router_subscriber_map_promotes_and_demotes() {
        let mut map = SubscriberMap::default();
        for k in (0..200u32).rev() {
            assert_eq!(map.insert(k, sub(k)), None);
        }
        assert!(matches!(map, SubscriberMap::Large(_)));
        assert_eq!(map.len(), 200);
        assert_eq!(map.insert(7, sub(70)), Some(sub(7)));
        assert_eq!(map.get(7), Some(sub(70)));
        for k in 0..190u32 {
            assert!(map.remove(k).is_some());
        }
        assert!(matches!(map, SubscriberMap::Small(_)));
        assert_eq!(map.len(), 10);
        assert_eq!(map.remove(5), None);
        assert_eq!(map.get(195), Some(sub(195)));
        let mut seen = Vec::new();
        map.for_each(|k, _| seen.push(k));
        assert_eq!(seen, (190..200).collect::<Vec<_>>());
        for k in 190..200u32 {
            assert!(map.remove(k).is_some());
        }
        assert!(map.is_empty());
    }
}
