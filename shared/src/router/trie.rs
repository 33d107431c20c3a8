//! The subscription trie: one node per filter level, so routing a topic visits only the
//! nodes of filters that can still match it.
//!
//! A node stands for a filter prefix. Its subscribers are split by how the filter goes
//! on: `exact` filters end at the node, `multi` filters continue with a final `#` (which
//! also matches the node's own topic: `a/#` matches `a`). `+` has its own child so that
//! routing never has to scan the exact children.

use std::collections::HashMap;
use std::hash::Hash;

use super::shared::SharedGroups;
use super::subscribers::SubscriberMap;
use super::{Route, Subscription};
use crate::mqtt::topic::split_level;

/// Subscriptions whose filter ends at one place of the trie, plain and shared.
#[derive(Debug)]
pub(crate) struct Subscribers<K> {
    plain: SubscriberMap<K>,
    shared: SharedGroups<K>,
}

impl<K> Default for Subscribers<K> {
    fn default() -> Self {
        Subscribers {
            plain: SubscriberMap::default(),
            shared: SharedGroups::default(),
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> Subscribers<K> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }

    /// Adds or replaces; `group` is the `$share` group name, if any. `true` if new.
    fn insert(&mut self, group: Option<&str>, key: K, sub: Subscription) -> bool {
        match group {
            None => self.plain.insert(key, sub).is_none(),
            Some(name) => self.shared.insert(name, key, sub),
        }
    }

    /// `true` if the subscription existed.
    fn remove(&mut self, group: Option<&str>, key: K) -> bool {
        match group {
            None => self.plain.remove(key).is_some(),
            Some(name) => self.shared.remove(name, key),
        }
    }

    #[inline]
    fn route(&mut self, out: &mut Vec<Route<K>>) {
        self.plain.for_each(|subscriber, subscription| {
            out.push(Route {
                subscriber,
                subscription,
                shared: false,
            });
        });
        self.shared.route(out);
    }
}

/// One trie node; the router's root is the node of the empty prefix.
#[derive(Debug)]
pub(crate) struct Node<K> {
    /// Children for literal levels.
    children: HashMap<Box<str>, Node<K>>,
    /// Child for a `+` level.
    plus: Option<Box<Node<K>>>,
    /// Filters that end here.
    exact: Subscribers<K>,
    /// Filters that end here with a further `/#` (or, at the root, are `#`).
    multi: Subscribers<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            exact: Subscribers::default(),
            multi: Subscribers::default(),
        }
    }
}

/// Splits a non-shared filter into the levels that name its node and whether it ends
/// in `#`: `a/+/#` → (`a/+`, true), `#` → (none, true), `a/b` → (`a/b`, false).
fn node_path(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(prefix) = filter.strip_suffix("/#") {
        (Some(prefix), true)
    } else {
        (Some(filter), false)
    }
}

fn levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|p| p.split('/'))
}

impl<K: Copy + Eq + Hash + Ord> Node<K> {
    /// Adds or replaces `key`'s subscription to non-shared `filter`, in `$share` group
    /// `group` if given. `true` if the subscription is new.
    pub(crate) fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        key: K,
        sub: Subscription,
    ) -> bool {
        let (path, multi) = node_path(filter);
        let mut node = self;
        for level in levels(path) {
            node = node.child_or_insert(level);
        }
        node.subscribers(multi).insert(group, key, sub)
    }

    /// Removes `key`'s subscription to `filter` (in `group`) and prunes the nodes left
    /// empty. `true` if the subscription existed.
    pub(crate) fn remove(&mut self, filter: &str, group: Option<&str>, key: K) -> bool {
        let (path, multi) = node_path(filter);
        // Pruning needs the deepest node on the path that keeps something else alive;
        // everything below it is a chain that the removal may leave empty. Remembering
        // it on the way down and walking again avoids recursion (filter depth is
        // client-controlled when the level limit is off).
        let mut cut: Option<(usize, &str)> = None;
        let mut node = &mut *self;
        for (depth, level) in levels(path).enumerate() {
            if depth == 0 || node.keeps_path_alive() {
                cut = Some((depth, level));
            }
            node = match node.child_mut(level) {
                Some(child) => child,
                None => return false,
            };
        }
        if !node.subscribers(multi).remove(group, key) {
            return false;
        }
        if !node.is_empty() {
            return true;
        }
        if let Some((cut_depth, cut_level)) = cut {
            let mut node = &mut *self;
            for level in levels(path).take(cut_depth) {
                // The first walk went through these very levels, and nothing has been
                // removed above the target since.
                node = node.child_mut(level).expect("path walked above");
            }
            node.remove_child(cut_level);
        }
        true
    }

    /// Routes `topic` from this node, which must be the root.
    pub(crate) fn route(&mut self, topic: &str, out: &mut Vec<Route<K>>) {
        let (first, rest) = split_level(topic);
        let Node {
            children,
            plus,
            multi,
            ..
        } = self;
        // §4.7.2: wildcards in the first level never match `$` topics.
        if !topic.starts_with('$') {
            multi.route(out);
            if let Some(plus) = plus {
                plus.walk(rest, out);
            }
        }
        if let Some(child) = children.get_mut(first) {
            child.walk(rest, out);
        }
    }

    /// Routes the remaining levels `rest` (`None` once the topic ends at this node).
    ///
    /// Loops down while only one child matches and recurses only where both the exact
    /// and the `+` child match, so stack depth stays at the number of such forks
    /// rather than the topic depth.
    fn walk(&mut self, mut rest: Option<&str>, out: &mut Vec<Route<K>>) {
        let mut node = self;
        loop {
            let Node {
                children,
                plus,
                exact,
                multi,
            } = node;
            multi.route(out);
            let Some(remaining) = rest else {
                exact.route(out);
                return;
            };
            let (level, tail) = split_level(remaining);
            rest = tail;
            node = match (children.get_mut(level), plus.as_deref_mut()) {
                (Some(child), Some(plus)) => {
                    plus.walk(tail, out);
                    child
                }
                (Some(next), None) | (None, Some(next)) => next,
                (None, None) => return,
            };
        }
    }

    fn subscribers(&mut self, multi: bool) -> &mut Subscribers<K> {
        if multi {
            &mut self.multi
        } else {
            &mut self.exact
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K> {
        if level == "+" {
            return self.plus.get_or_insert_with(Box::default);
        }
        // `entry` would allocate the key even when the child exists, which is the
        // common case.
        if !self.children.contains_key(level) {
            self.children.insert(level.into(), Node::default());
        }
        self.children.get_mut(level).expect("inserted above")
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(level);
            // A node that once had many children (a churned `devices/<id>` level)
            // would otherwise keep its peak table forever.
            if self.children.capacity() > 64 && self.children.len() * 4 < self.children.capacity() {
                self.children.shrink_to_fit();
            }
        }
    }

    /// True if something other than the one path through this node keeps it needed.
    fn keeps_path_alive(&self) -> bool {
        !self.exact.is_empty()
            || !self.multi.is_empty()
            || self.children.len() + usize::from(self.plus.is_some()) > 1
    }

    /// True without subscribers and children.
    pub(crate) fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }

    /// Nodes below this one.
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            count += node.children.len() + usize::from(node.plus.is_some());
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }

    /// Looks up one subscription, bypassing routing.
    #[cfg(test)]
    pub(crate) fn get(
        &mut self,
        filter: &str,
        group: Option<&str>,
        key: K,
    ) -> Option<Subscription> {
        let (path, multi) = node_path(filter);
        let mut node = self;
        for level in levels(path) {
            node = node.child_mut(level)?;
        }
        let subs = node.subscribers(multi);
        match group {
            None => subs.plain.get(key),
            Some(name) => subs.shared.get(name, key),
        }
    }
}

impl<K> Node<K> {
    fn detach_children(&mut self, into: &mut Vec<Node<K>>) {
        into.extend(self.children.drain().map(|(_, child)| child));
        if let Some(plus) = self.plus.take() {
            into.push(*plus);
        }
    }
}

impl<K> Drop for Node<K> {
    /// Tears the subtree down iteratively: the derived drop would recurse once per
    /// level, and a filter with tens of thousands of levels would overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.detach_children(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.detach_children(&mut pending);
        }
    }
}
