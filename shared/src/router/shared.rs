//! `$share/<group>/<filter>` groups: the members of one group for one filter, and the
//! round-robin choice of the member that receives each message (MQTT 5 §4.8.2).

use super::{Route, Subscription};

/// One shared subscription: group `name` on the filter of the node that holds it.
#[derive(Debug)]
pub(crate) struct SharedGroup<K> {
    name: Box<str>,
    /// Sorted by subscriber so membership changes are a binary search and the
    /// round-robin order is stable.
    members: Vec<(K, Subscription)>,
    /// Index of the member that receives the next message.
    next: usize,
}

impl<K: Copy + Ord> SharedGroup<K> {
    fn new(name: &str) -> Self {
        SharedGroup {
            name: name.into(),
            members: Vec::new(),
            next: 0,
        }
    }

    /// Picks the member for one message and advances the cursor.
    #[inline]
    fn pick(&mut self) -> Option<(K, Subscription)> {
        let len = self.members.len();
        if len == 0 {
            return None;
        }
        // Membership changes can leave the cursor past the end; wrap instead of
        // fixing it up on every change.
        let i = if self.next < len { self.next } else { 0 };
        self.next = i + 1;
        Some(self.members[i])
    }

    fn position(&self, key: K) -> Result<usize, usize> {
        self.members.binary_search_by(|(k, _)| k.cmp(&key))
    }
}

/// All `$share` groups on one filter, sorted by group name.
#[derive(Debug)]
pub(crate) struct SharedGroups<K> {
    groups: Vec<SharedGroup<K>>,
}

impl<K> Default for SharedGroups<K> {
    fn default() -> Self {
        SharedGroups { groups: Vec::new() }
    }
}

impl<K: Copy + Ord> SharedGroups<K> {
    /// True when no group has members (empty groups are never kept).
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.groups.binary_search_by(|g| (*g.name).cmp(name))
    }

    /// Adds or replaces `key` in group `name`; `true` if the membership is new.
    pub(crate) fn insert(&mut self, name: &str, key: K, sub: Subscription) -> bool {
        let gi = match self.find(name) {
            Ok(gi) => gi,
            Err(gi) => {
                self.groups.insert(gi, SharedGroup::new(name));
                gi
            }
        };
        let group = &mut self.groups[gi];
        match group.position(key) {
            Ok(i) => {
                group.members[i].1 = sub;
                false
            }
            Err(i) => {
                group.members.insert(i, (key, sub));
                // Keep the cursor on the same member so a join does not make the
                // member after the insertion point wait a whole extra round.
                if i < group.next {
                    group.next += 1;
                }
                true
            }
        }
    }

    /// Removes `key` from group `name`, dropping the group once empty; `true` if it was a
    /// member.
    pub(crate) fn remove(&mut self, name: &str, key: K) -> bool {
        let Ok(gi) = self.find(name) else {
            return false;
        };
        let group = &mut self.groups[gi];
        let Ok(i) = group.position(key) else {
            return false;
        };
        group.members.remove(i);
        if i < group.next {
            group.next -= 1;
        }
        if group.members.is_empty() {
            self.groups.remove(gi);
            if self.groups.is_empty() {
                self.groups = Vec::new();
            }
        }
        true
    }

    /// Pushes one route per group, each to that group's next member.
    #[inline]
    pub(crate) fn route(&mut self, out: &mut Vec<Route<K>>) {
        for group in &mut self.groups {
            if let Some((subscriber, subscription)) = group.pick() {
                out.push(Route {
                    subscriber,
                    subscription,
                    shared: true,
                });
            }
        }
    }

    /// Looks up a member's subscription.
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str, key: K) -> Option<Subscription> {
        let group = &self.groups[self.find(name).ok()?];
        Some(group.members[group.position(key).ok()?].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;
    use crate::mqtt::packet::SubscriptionOptions;

    fn sub(id: u32) -> Subscription {
        Subscription {
            options: SubscriptionOptions::new(QoS::AtMostOnce),
            identifier: Some(id),
        }
    }

    fn next_member(groups: &mut SharedGroups<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        groups.route(&mut out);
        out.iter().map(|r| r.subscriber).collect()
    }

    #[test]
    fn router_shared_groups_cycle_members() {
        let mut groups = SharedGroups::default();
        assert!(groups.insert("g", 3, sub(0)));
        assert!(groups.insert("g", 1, sub(0)));
        assert!(groups.insert("g", 2, sub(0)));
        assert!(!groups.insert("g", 2, sub(9)));
        assert_eq!(groups.get("g", 2), Some(sub(9)));
        let picks: Vec<_> = (0..6).flat_map(|_| next_member(&mut groups)).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn router_shared_groups_membership_changes_keep_cursor() {
        let mut groups = SharedGroups::default();
        for k in [10, 20, 30] {
            groups.insert("g", k, sub(0));
        }
        assert_eq!(next_member(&mut groups), [10]);
        assert_eq!(next_member(&mut groups), [20]);
        // 30 is next; a member joining before it must not delay it.
        groups.insert("g", 5, sub(0));
        assert_eq!(next_member(&mut groups), [30]);
        assert_eq!(next_member(&mut groups), [5]);
        // 10 is next; removing an earlier member must not skip it.
        assert!(groups.remove("g", 5));
        assert_eq!(next_member(&mut groups), [10]);
        assert_eq!(next_member(&mut groups), [20]);
        // Removing the member under the cursor, at the end, wraps around.
        assert!(groups.remove("g", 30));
        assert_eq!(next_member(&mut groups), [10]);
        assert_eq!(next_member(&mut groups), [20]);
        assert!(!groups.remove("g", 30));
        assert!(!groups.remove("h", 10));
        assert!(groups.remove("g", 10));
        assert!(groups.remove("g", 20));
        assert!(groups.is_empty());
        assert!(next_member(&mut groups).is_empty());
    }

    #[test]
    fn router_shared_groups_are_independent() {
        let mut groups = SharedGroups::default();
        groups.insert("b", 1, sub(0));
        groups.insert("a", 1, sub(0));
        groups.insert("a", 2, sub(0));
        assert_eq!(next_member(&mut groups), [1, 1]);
        assert_eq!(next_member(&mut groups), [2, 1]);
        assert!(groups.remove("b", 1));
        assert_eq!(next_member(&mut groups), [1]);
        assert_eq!(groups.get("b", 1), None);
    }
}
