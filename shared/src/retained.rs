//! The retained-message store: the last retained message per topic, looked up by filter.
//!
//! Topics are kept in a trie of levels so that `matching` visits only the branches a
//! filter can reach: a literal level is one hash lookup, `+` iterates one node's
//! children, `#` collects one subtree.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;
use crate::mqtt::topic::split_level;

/// One topic level; the store's root is the node of the empty prefix.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Retained message of the topic that ends here.
    message: Option<Arc<Message>>,
}

impl Node {
    fn get_or_insert_child(&mut self, level: &str) -> &mut Node {
        // `entry` would allocate the key even when the child exists, which is the
        // common case for a republished topic.
        if !self.children.contains_key(level) {
            self.children.insert(level.into(), Node::default());
        }
        self.children.get_mut(level).expect("inserted above")
    }

    /// True if something other than the one path through this node keeps it needed.
    fn keeps_path_alive(&self) -> bool {
        self.message.is_some() || self.children.len() > 1
    }

    fn remove_child(&mut self, level: &str) {
        self.children.remove(level);
        // Churned levels (`devices/<id>`) would otherwise keep their peak table.
        if self.children.capacity() > 64 && self.children.len() * 4 < self.children.capacity() {
            self.children.shrink_to_fit();
        }
    }
}

impl Drop for Node {
    /// Tears the subtree down iteratively: the derived drop would recurse once per
    /// level, and topic depth is publisher-controlled when the level limit is off.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// Retained messages indexed by topic level, so a filter lookup visits only what can match.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    /// Kept alongside the trie so that `len` does not walk it.
    len: usize,
}

impl RetainedStore {
    /// Stores `msg` as the retained message of its topic, replacing any previous one; an
    /// empty payload clears the topic instead. Returns the replaced message, if any.
    pub fn set(&mut self, msg: Arc<Message>) -> Option<Arc<Message>> {
        if msg.payload.is_empty() {
            let old = self.remove(&msg.topic);
            self.len -= usize::from(old.is_some());
            return old;
        }
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.get_or_insert_child(level);
        }
        let old = node.message.replace(msg);
        self.len += usize::from(old.is_none());
        old
    }

    /// Appends to `out` every retained message whose topic matches (non-shared) `filter`.
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        // Explicit stacks rather than recursion: filters like `+/+/…` and deep `#`
        // subtrees would otherwise recurse once per level. `rest` is the part of the
        // filter still to match below `node`, `None` once the filter ends there.
        let mut pending: Vec<(&Node, Option<&str>)> = Vec::new();
        let mut subtrees: Vec<&Node> = Vec::new();
        // §4.7.2: wildcards in the first level never match `$` topics.
        let (first, rest) = split_level(filter);
        match first {
            "#" => subtrees.extend(visible_children(&self.root)),
            "+" => pending.extend(visible_children(&self.root).map(|child| (child, rest))),
            level => pending.extend(self.root.children.get(level).map(|child| (child, rest))),
        }
        while let Some((node, rest)) = pending.pop() {
            let Some(remaining) = rest else {
                out.extend(node.message.iter().cloned());
                continue;
            };
            let (level, tail) = split_level(remaining);
            match level {
                // `a/#` also matches `a` itself.
                "#" => subtrees.push(node),
                "+" => pending.extend(node.children.values().map(|child| (child, tail))),
                _ => pending.extend(node.children.get(level).map(|child| (child, tail))),
            }
        }
        while let Some(node) = subtrees.pop() {
            out.extend(node.message.iter().cloned());
            subtrees.extend(node.children.values());
        }
    }

    /// Number of retained topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the message of `topic` out and prunes the nodes left empty.
    fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        // Remember the deepest node that stays needed, then walk again to cut below
        // it: no recursion, whatever the topic depth.
        let mut cut: Option<(usize, &str)> = None;
        let mut node = &mut self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth == 0 || node.keeps_path_alive() {
                cut = Some((depth, level));
            }
            node = node.children.get_mut(level)?;
        }
        let old = node.message.take()?;
        if node.children.is_empty() {
            if let Some((cut_depth, cut_level)) = cut {
                let mut node = &mut self.root;
                for level in topic.split('/').take(cut_depth) {
                    // The first walk went through these very levels.
                    node = node.children.get_mut(level).expect("path walked above");
                }
                node.remove_child(cut_level);
            }
        }
        Some(old)
    }

    /// Nodes below the root.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += node.children.len();
            stack.extend(node.children.values());
        }
        count
    }
}

/// Children of the root that a leading wildcard may match: all but the `$` topics.
fn visible_children(root: &Node) -> impl Iterator<Item = &Node> {
    root.children
        .iter()
        .filter(|(level, _)| !level.starts_with('$'))
        .map(|(_, child)| child)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::message::QoS;
    use crate::mqtt::topic::matches;
    use crate::router::tests::{random_filter, random_topic, XorShift};

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expiry_interval: None,
            received_at: Instant::now(),
            origin: "client".into(),
        })
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut v: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn set_replace_and_clear() {
        let mut store = RetainedStore::default();
        assert!(store.is_empty());
        assert_eq!(store.set(msg("a/b", "1")), None);
        assert_eq!(store.len(), 1);
        let old = store.set(msg("a/b", "2")).map(|m| m.payload.clone());
        assert_eq!(old, Some(Bytes::from_static(b"1")));
        assert_eq!(store.len(), 1);
        let mut out = Vec::new();
        store.matching("a/b", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, Bytes::from_static(b"2"));

        let cleared = store.set(msg("a/b", "")).map(|m| m.payload.clone());
        assert_eq!(cleared, Some(Bytes::from_static(b"2")));
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
        // Clearing what is not retained is a no-op.
        assert_eq!(store.set(msg("a/b", "")), None);
        assert_eq!(store.set(msg("x/y/z", "")), None);
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    #[test]
    fn clearing_prunes_only_unused_levels() {
        let mut store = RetainedStore::default();
        for topic in ["a", "a/b/c/d", "a/b/x", "q/r"] {
            store.set(msg(topic, "p"));
        }
        // a, a/b, a/b/c, a/b/c/d, a/b/x, q, q/r
        assert_eq!(store.node_count(), 7);
        store.set(msg("a/b/c/d", ""));
        assert_eq!(store.node_count(), 5);
        // `a/b` has a child left, so clearing a non-existent `a/b` changes nothing.
        assert_eq!(store.set(msg("a/b", "")), None);
        assert_eq!(store.node_count(), 5);
        store.set(msg("a", ""));
        assert_eq!(store.node_count(), 5);
        assert_eq!(topics(&store, "#"), ["a/b/x", "q/r"]);
        store.set(msg("a/b/x", ""));
        store.set(msg("q/r", ""));
        assert_eq!(store.node_count(), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn matching_with_wildcards() {
        let mut store = RetainedStore::default();
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player2",
            "sport",
            "sport/",
            "/finance",
            "a//b",
        ] {
            store.set(msg(topic, "p"));
        }
        assert_eq!(
            topics(&store, "sport/tennis/player1/#"),
            ["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            topics(&store, "sport/tennis/+"),
            ["sport/tennis/player1", "sport/tennis/player2"]
        );
        assert_eq!(topics(&store, "sport/+"), ["sport/"]);
        assert_eq!(topics(&store, "sport/#").len(), 5);
        assert_eq!(topics(&store, "+"), ["sport"]);
        assert_eq!(topics(&store, "+/+"), ["/finance", "sport/"]);
        assert_eq!(topics(&store, "/+"), ["/finance"]);
        assert_eq!(topics(&store, "a/+/b"), ["a//b"]);
        assert_eq!(topics(&store, "sport/tennis"), Vec::<String>::new());
        assert_eq!(topics(&store, "nothing/#"), Vec::<String>::new());
        assert_eq!(topics(&store, "#").len(), 7);
    }

    #[test]
    fn matching_follows_dollar_rule() {
        let mut store = RetainedStore::default();
        for topic in ["$SYS/uptime", "$SYS", "a/$x", "plain"] {
            store.set(msg(topic, "p"));
        }
        assert_eq!(topics(&store, "#"), ["a/$x", "plain"]);
        assert_eq!(topics(&store, "+"), ["plain"]);
        assert_eq!(topics(&store, "+/uptime"), Vec::<String>::new());
        assert_eq!(topics(&store, "$SYS/#"), ["$SYS", "$SYS/uptime"]);
        assert_eq!(topics(&store, "$SYS/+"), ["$SYS/uptime"]);
        assert_eq!(topics(&store, "a/+"), ["a/$x"]);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["a"; 60_000].join("/");
        let mut store = RetainedStore::default();
        store.set(msg(&deep, "p"));
        assert_eq!(topics(&store, "#").len(), 1);
        assert_eq!(topics(&store, &vec!["+"; 60_000].join("/")).len(), 1);
        store.set(msg("a", "p"));
        assert!(store.set(msg(&deep, "")).is_some());
        assert_eq!(store.node_count(), 1);
        store.set(msg(&deep, "p"));
        drop(store);
    }

    #[test]
    fn matching_agrees_with_brute_force() {
        for seed in 1..=8u64 {
            let mut rng = XorShift::new(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let mut store = RetainedStore::default();
            let mut model: std::collections::BTreeSet<String> = Default::default();
            for _ in 0..2000 {
                let topic = random_topic(&mut rng, 5);
                if rng.below(3) == 0 {
                    let old = store.set(msg(&topic, ""));
                    assert_eq!(old.is_some(), model.remove(&topic));
                } else {
                    let old = store.set(msg(&topic, "p"));
                    assert_eq!(old.is_none(), model.insert(topic));
                }
                assert_eq!(store.len(), model.len());

                let filter = random_filter(&mut rng, 5);
                let expected: Vec<String> = model
                    .iter()
                    .filter(|t| matches(&filter, t))
                    .cloned()
                    .collect();
                assert_eq!(topics(&store, &filter), expected, "filter {filter:?}");
            }
            for topic in std::mem::take(&mut model) {
                assert!(store.set(msg(&topic, "")).is_some());
            }
            assert!(store.is_empty());
            assert_eq!(store.node_count(), 0);
        }
    }
}
