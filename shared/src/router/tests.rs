//! Router tests: routing semantics, `$share` round-robin, pruning, and a randomized
//! cross-check against the reference matcher [`matches`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Route, Router, Subscription};
use crate::message::QoS;
use crate::mqtt::packet::SubscriptionOptions;
use crate::mqtt::topic::{matches, valid_topic_filter, valid_topic_name};

fn sub(id: u32) -> Subscription {
    Subscription {
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
        identifier: Some(id),
    }
}

fn route(router: &mut Router<u32>, topic: &str) -> Vec<Route<u32>> {
    let mut out = Vec::new();
    router.route(topic, &mut out);
    out
}

/// `(subscriber, identifier)` of every route, sorted.
fn routed(router: &mut Router<u32>, topic: &str) -> Vec<(u32, u32)> {
    let mut v: Vec<_> = route(router, topic)
        .iter()
        .map(|r| (r.subscriber, r.subscription.identifier.unwrap_or(0)))
        .collect();
    v.sort_unstable();
    v
}

/// A router where subscriber `i` holds `filters[i]` with identifier `i`.
fn router_with(filters: &[&str]) -> Router<u32> {
    let mut router = Router::default();
    for (i, filter) in filters.iter().enumerate() {
        let i = i as u32;
        assert!(router.subscribe(filter, i, sub(i)), "{filter}");
    }
    router
}

/// Subscribers (by index into `filters`) that receive `topic`.
fn receivers(router: &mut Router<u32>, topic: &str) -> Vec<u32> {
    routed(router, topic).into_iter().map(|(k, _)| k).collect()
}

#[test]
fn exact_plus_and_hash_matches() {
    let filters = ["a/b", "a/+", "a/#", "#", "+/b", "a/b/c", "+", "b/#"];
    let mut router = router_with(&filters);
    assert_eq!(receivers(&mut router, "a/b"), [0, 1, 2, 3, 4]);
    assert_eq!(receivers(&mut router, "a"), [2, 3, 6]);
    assert_eq!(receivers(&mut router, "a/c"), [1, 2, 3]);
    assert_eq!(receivers(&mut router, "a/b/c"), [2, 3, 5]);
    assert_eq!(receivers(&mut router, "a/"), [1, 2, 3]);
    assert_eq!(receivers(&mut router, "b"), [3, 6, 7]);
    assert_eq!(receivers(&mut router, "x/y/z"), [3]);
    assert_eq!(router.len(), filters.len());
}

#[test]
fn spec_examples_and_empty_levels() {
    let filters = [
        "sport/tennis/player1/#",
        "sport/+",
        "+/+",
        "/+",
        "+",
        "a//b",
        "a/+/b",
    ];
    let mut router = router_with(&filters);
    assert_eq!(receivers(&mut router, "sport/tennis/player1"), [0]);
    assert_eq!(receivers(&mut router, "sport/tennis/player1/ranking"), [0]);
    assert_eq!(receivers(&mut router, "sport"), [4]);
    assert_eq!(receivers(&mut router, "sport/"), [1, 2]);
    assert_eq!(receivers(&mut router, "/finance"), [2, 3]);
    assert_eq!(receivers(&mut router, "a//b"), [5, 6]);
    assert_eq!(receivers(&mut router, "a/x/b"), [6]);
}

#[test]
fn dollar_topics_skip_leading_wildcards() {
    let filters = ["#", "+/x", "$SYS/#", "$SYS/+", "+", "$SYS/x", "+/#", "a/#"];
    let mut router = router_with(&filters);
    assert_eq!(receivers(&mut router, "$SYS/x"), [2, 3, 5]);
    assert_eq!(receivers(&mut router, "$SYS"), [2]);
    assert_eq!(receivers(&mut router, "$other"), Vec::<u32>::new());
    assert_eq!(receivers(&mut router, "a/$x"), [0, 6, 7]);
    assert_eq!(receivers(&mut router, "x$/x"), [0, 1, 6]);
}

#[test]
fn overlapping_filters_route_once_each() {
    let mut router = Router::default();
    for (i, filter) in ["a/b", "a/+", "a/#", "#", "+/+"].iter().enumerate() {
        assert!(router.subscribe(filter, 7, sub(i as u32)));
    }
    assert_eq!(router.len(), 5);
    assert_eq!(
        routed(&mut router, "a/b"),
        [(7, 0), (7, 1), (7, 2), (7, 3), (7, 4)]
    );
    assert!(route(&mut router, "a/b").iter().all(|r| !r.shared));
}

#[test]
fn resubscribe_replaces_options() {
    let mut router = Router::default();
    assert!(router.subscribe("a/+", 1, sub(1)));
    assert!(!router.subscribe("a/+", 1, sub(2)));
    assert_eq!(router.len(), 1);
    assert_eq!(routed(&mut router, "a/b"), [(1, 2)]);
    assert!(router.subscribe("$share/g/a/+", 1, sub(3)));
    assert!(!router.subscribe("$share/g/a/+", 1, sub(4)));
    assert_eq!(router.len(), 2);
    assert_eq!(routed(&mut router, "a/b"), [(1, 2), (1, 4)]);
}

#[test]
fn unsubscribe_removes_only_that_subscription() {
    let mut router = router_with(&["a/+", "a/#", "a/b"]);
    assert!(router.subscribe("a/+", 9, sub(9)));
    assert!(!router.unsubscribe("a/+", 5));
    assert!(!router.unsubscribe("a/c", 0));
    assert!(!router.unsubscribe("x/y/z", 0));
    assert!(!router.unsubscribe("a/#", 0));
    assert!(router.unsubscribe("a/+", 0));
    assert!(!router.unsubscribe("a/+", 0));
    assert_eq!(router.len(), 3);
    assert_eq!(receivers(&mut router, "a/b"), [1, 2, 9]);
    assert!(router.unsubscribe("a/#", 1));
    assert!(router.unsubscribe("a/b", 2));
    assert!(router.unsubscribe("a/+", 9));
    assert!(router.is_empty());
    assert!(route(&mut router, "a/b").is_empty());
    assert_eq!(router.root.node_count(), 0);
}

#[test]
fn shared_round_robin_is_even_and_exclusive() {
    let mut router = Router::default();
    for k in [11, 22, 33] {
        assert!(router.subscribe("$share/workers/jobs/+", k, sub(k)));
    }
    assert_eq!(router.len(), 3);
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for n in 0..300 {
        let routes = route(&mut router, &format!("jobs/{n}"));
        assert_eq!(routes.len(), 1, "one member per group per message");
        assert!(routes[0].shared);
        *counts.entry(routes[0].subscriber).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([(11, 100), (22, 100), (33, 100)]));
    assert!(route(&mut router, "other/1").is_empty());
}

#[test]
fn each_group_and_filter_delivers_once() {
    let mut router = Router::default();
    router.subscribe("$share/g/a/+", 1, sub(1));
    router.subscribe("$share/g/a/+", 2, sub(2));
    router.subscribe("$share/h/a/+", 3, sub(3));
    router.subscribe("$share/h/a/+", 4, sub(4));
    // Same group name, different filter: a separate shared subscription (§4.8.2).
    router.subscribe("$share/g/a/#", 5, sub(5));
    for _ in 0..10 {
        let routes = routed(&mut router, "a/b");
        assert_eq!(routes.len(), 3, "{routes:?}");
        let members: BTreeSet<u32> = routes.iter().map(|r| r.0).collect();
        assert_eq!(members.len(), 3);
        assert!(members.contains(&5));
        assert!(members.contains(&1) ^ members.contains(&2));
        assert!(members.contains(&3) ^ members.contains(&4));
    }
}

#[test]
fn shared_and_plain_subscriptions_coexist() {
    let mut router = Router::default();
    assert!(router.subscribe("a/+", 1, sub(10)));
    assert!(router.subscribe("$share/g/a/+", 1, sub(20)));
    assert!(router.subscribe("$share/g/a/+", 2, sub(30)));
    assert_eq!(router.len(), 3);

    let mut first = route(&mut router, "a/x");
    first.sort_by_key(|r| (r.shared, r.subscriber));
    assert_eq!(first.len(), 2);
    assert_eq!(
        first[0],
        Route {
            subscriber: 1,
            subscription: sub(10),
            shared: false
        }
    );
    assert!(first[1].shared);

    // Removing the membership leaves the plain subscription, and vice versa.
    assert!(router.unsubscribe("$share/g/a/+", 1));
    assert!(!router.unsubscribe("$share/g/a/+", 1));
    assert!(!router.unsubscribe("$share/h/a/+", 2));
    for _ in 0..3 {
        assert_eq!(routed(&mut router, "a/x"), [(1, 10), (2, 30)]);
    }
    assert!(router.unsubscribe("a/+", 1));
    assert_eq!(
        route(&mut router, "a/x"),
        [Route {
            subscriber: 2,
            subscription: sub(30),
            shared: true
        }]
    );
    assert!(router.unsubscribe("$share/g/a/+", 2));
    assert!(router.is_empty());
    assert_eq!(router.root.node_count(), 0);
}

#[test]
fn shared_filters_follow_dollar_rule() {
    let mut router = Router::default();
    router.subscribe("$share/g/#", 1, sub(1));
    router.subscribe("$share/g/$SYS/#", 2, sub(2));
    assert_eq!(receivers(&mut router, "$SYS/load"), [2]);
    assert_eq!(receivers(&mut router, "load"), [1]);
}

#[test]
fn pruning_keeps_what_is_still_used() {
    let mut router = router_with(&["a/b/c/d", "a/b", "a/+/c", "x/#"]);
    // a, a/b, a/b/c, a/b/c/d, a/+, a/+/c, x
    assert_eq!(router.root.node_count(), 7);
    assert!(router.unsubscribe("a/b/c/d", 0));
    assert_eq!(router.root.node_count(), 5);
    assert!(router.unsubscribe("a/+/c", 2));
    assert_eq!(router.root.node_count(), 3);
    assert!(router.unsubscribe("x/#", 3));
    assert_eq!(router.root.node_count(), 2);
    assert_eq!(receivers(&mut router, "a/b"), [1]);
    assert!(router.unsubscribe("a/b", 1));
    assert_eq!(router.root.node_count(), 0);
    assert!(router.root.is_empty());
}

#[test]
fn churn_leaves_no_nodes() {
    let mut rng = XorShift::new(0xC0FFEE);
    let mut router = Router::default();
    let mut held = Vec::new();
    for i in 0..10_000u32 {
        let filter = random_filter(&mut rng, 6);
        let shared = rng.below(4) == 0;
        let filter = if shared {
            format!("$share/g{}/{filter}", rng.below(3))
        } else {
            filter
        };
        let key = rng.below(50) as u32;
        if router.subscribe(&filter, key, sub(i)) {
            held.push((filter, key));
        }
    }
    assert_eq!(router.len(), held.len());
    assert!(router.root.node_count() > 0);
    // Unsubscribe in an order unrelated to insertion.
    while !held.is_empty() {
        let (filter, key) = held.swap_remove(rng.below(held.len()));
        assert!(router.unsubscribe(&filter, key), "{filter} {key}");
    }
    assert!(router.is_empty());
    assert_eq!(router.root.node_count(), 0);
    assert!(router.root.is_empty());
}

#[test]
fn many_subscribers_on_one_filter() {
    let mut router = Router::default();
    for k in 0..1000 {
        assert!(router.subscribe("bcast/#", k, sub(k)));
    }
    assert!(!router.subscribe("bcast/#", 500, sub(5000)));
    assert_eq!(route(&mut router, "bcast/x").len(), 1000);
    for k in (0..1000).step_by(2) {
        assert!(router.unsubscribe("bcast/#", k));
    }
    let mut got = receivers(&mut router, "bcast");
    got.dedup();
    assert_eq!(got, (1..1000).step_by(2).collect::<Vec<_>>());
    assert_eq!(router.len(), 500);
}

#[test]
fn very_deep_filters_do_not_overflow_the_stack() {
    // With the level limit off, filter depth is client-controlled; routing, pruning
    // and dropping must not recurse per level.
    let depth = 60_000;
    let deep = vec!["a"; depth].join("/");
    let deep_plus = vec!["+"; depth].join("/");
    let mut router = Router::default();
    assert!(router.subscribe(&deep, 1, sub(1)));
    assert!(router.subscribe(&deep_plus, 2, sub(2)));
    assert!(router.subscribe(&format!("{deep}/#"), 3, sub(3)));
    assert_eq!(receivers(&mut router, &deep), [1, 2, 3]);
    assert!(router.unsubscribe(&deep_plus, 2));
    assert!(router.unsubscribe(&deep, 1));
    assert_eq!(router.root.node_count(), depth);
    drop(router);

    let mut router = Router::default();
    assert!(router.subscribe(&deep_plus, 2, sub(2)));
    assert_eq!(receivers(&mut router, &deep), [2]);
    drop(router);
}

#[test]
fn lookups_see_stored_options() {
    let mut router = Router::default();
    router.subscribe("a/#", 1, sub(1));
    router.subscribe("$share/g/a/#", 1, sub(2));
    assert_eq!(router.root.get("a/#", None, 1), Some(sub(1)));
    assert_eq!(router.root.get("a/#", Some("g"), 1), Some(sub(2)));
    assert_eq!(router.root.get("a", None, 1), None);
    assert_eq!(router.root.get("a/#", Some("h"), 1), None);
}

/// Deterministic xorshift64 generator, so failures reproduce without extra crates.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Few distinct words so that random filters and topics collide often.
const WORDS: &[&str] = &["a", "b", "c", "", "$SYS"];

pub(crate) fn random_topic(rng: &mut XorShift, max_levels: usize) -> String {
    let n = 1 + rng.below(max_levels);
    let levels: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len())]).collect();
    non_empty(levels.join("/"))
}

/// One empty level is the empty string, which is neither a name nor a filter.
fn non_empty(s: String) -> String {
    if s.is_empty() {
        "/".to_owned()
    } else {
        s
    }
}

pub(crate) fn random_filter(rng: &mut XorShift, max_levels: usize) -> String {
    let n = 1 + rng.below(max_levels);
    let mut levels: Vec<&str> = (0..n)
        .map(|_| {
            if rng.below(4) == 0 {
                "+"
            } else {
                WORDS[rng.below(WORDS.len())]
            }
        })
        .collect();
    if rng.below(4) == 0 {
        levels.push("#");
    }
    non_empty(levels.join("/"))
}

#[test]
fn random_generators_produce_valid_input() {
    let mut rng = XorShift::new(7);
    for _ in 0..1000 {
        let topic = random_topic(&mut rng, 5);
        assert!(valid_topic_name(&topic, 0), "{topic:?}");
        let filter = random_filter(&mut rng, 5);
        assert!(valid_topic_filter(&filter, 0), "{filter:?}");
    }
}

/// One held subscription of the model: `(group, filter, subscriber)`.
type ModelKey = (Option<String>, String, u32);

#[test]
fn routes_agree_with_brute_force_matching() {
    for seed in 1..=12u64 {
        let mut rng = XorShift::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut router: Router<u32> = Router::default();
        let mut model: BTreeMap<ModelKey, Subscription> = BTreeMap::new();
        let mut next_id = 0u32;

        for _ in 0..3000 {
            match rng.below(10) {
                0..=4 => {
                    let filter = random_filter(&mut rng, 4);
                    let group = (rng.below(3) == 0).then(|| format!("g{}", rng.below(2)));
                    let key = rng.below(6) as u32;
                    next_id += 1;
                    let mut subscription = sub(next_id);
                    subscription.options.qos = QoS::from_u8(rng.below(3) as u8).unwrap_or_default();
                    let full = match &group {
                        Some(g) => format!("$share/{g}/{filter}"),
                        None => filter.clone(),
                    };
                    let new = router.subscribe(&full, key, subscription);
                    assert_eq!(
                        new,
                        model.insert((group, filter, key), subscription).is_none()
                    );
                }
                5..=6 if !model.is_empty() => {
                    let victim = rng.below(model.len());
                    let Some(entry) = model.keys().nth(victim).cloned() else {
                        continue;
                    };
                    let full = match &entry.0 {
                        Some(g) => format!("$share/{g}/{}", entry.1),
                        None => entry.1.clone(),
                    };
                    assert!(router.unsubscribe(&full, entry.2));
                    model.remove(&entry);
                }
                7 => {
                    // Usually absent: a random filter/subscriber pair.
                    let filter = random_filter(&mut rng, 4);
                    let key = rng.below(6) as u32;
                    let existed = model.remove(&(None, filter.clone(), key)).is_some();
                    assert_eq!(router.unsubscribe(&filter, key), existed);
                }
                _ => {
                    let topic = random_topic(&mut rng, 5);
                    check_route(&mut router, &model, &topic);
                }
            }
            assert_eq!(router.len(), model.len());
        }

        let keys: Vec<_> = model.keys().cloned().collect();
        for (group, filter, key) in keys {
            let full = match group {
                Some(g) => format!("$share/{g}/{filter}"),
                None => filter,
            };
            assert!(router.unsubscribe(&full, key));
        }
        assert!(router.is_empty());
        assert_eq!(router.root.node_count(), 0, "seed {seed}");
    }
}

/// Checks one `route` call against the model: every matching plain subscription exactly
/// once, and exactly one member of every matching `(group, filter)`.
fn check_route(router: &mut Router<u32>, model: &BTreeMap<ModelKey, Subscription>, topic: &str) {
    let mut out = Vec::new();
    router.route(topic, &mut out);

    let mut expected_plain: Vec<(u32, Subscription)> = model
        .iter()
        .filter(|((group, filter, _), _)| group.is_none() && matches(filter, topic))
        .map(|((_, _, key), s)| (*key, *s))
        .collect();
    let expected_groups: BTreeSet<(&str, &str)> = model
        .keys()
        .filter(|(group, filter, _)| group.is_some() && matches(filter, topic))
        .filter_map(|(group, filter, _)| Some((group.as_deref()?, filter.as_str())))
        .collect();

    let mut got_plain: Vec<(u32, Subscription)> = out
        .iter()
        .filter(|r| !r.shared)
        .map(|r| (r.subscriber, r.subscription))
        .collect();
    expected_plain.sort_by_key(|(k, s)| (*k, s.identifier));
    got_plain.sort_by_key(|(k, s)| (*k, s.identifier));
    assert_eq!(got_plain, expected_plain, "plain routes for {topic:?}");

    // Identifiers are unique per subscribe call, so they name the model entry.
    let by_id: HashMap<u32, &ModelKey> = model
        .iter()
        .filter_map(|(key, s)| Some((s.identifier?, key)))
        .collect();
    let mut got_groups = BTreeSet::new();
    for r in out.iter().filter(|r| r.shared) {
        let id = r.subscription.identifier.unwrap_or(0);
        let Some((Some(group), filter, key)) = by_id.get(&id).copied() else {
            panic!("shared route {r:?} for {topic:?} is not a shared subscription");
        };
        assert_eq!(*key, r.subscriber);
        assert_eq!(
            model[&(Some(group.clone()), filter.clone(), *key)],
            r.subscription
        );
        assert!(
            got_groups.insert((group.as_str(), filter.as_str())),
            "two members of {group}/{filter} got {topic:?}"
        );
    }
    assert_eq!(got_groups, expected_groups, "shared routes for {topic:?}");
}
