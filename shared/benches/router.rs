//! Router and retained-store benchmarks at edge-gateway scale: 100,000 subscriptions
//! (exact, `+`, `#` and `$share` filters) and 100,000 retained topics.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use tern_core::message::{Message, QoS};
use tern_core::mqtt::packet::SubscriptionOptions;
use tern_core::retained::RetainedStore;
use tern_core::router::{Route, Router, Subscription};

const SUBSCRIPTIONS: u32 = 100_000;
const RETAINED: u32 = 100_000;
const SITES: u32 = 100;
const METRICS: [&str; 4] = ["temp", "humidity", "power", "status"];

fn subscription(id: u32) -> Subscription {
    Subscription {
        options: SubscriptionOptions::new(QoS::AtLeastOnce),
        identifier: Some(id),
    }
}

/// The `i`-th filter of the mix: 70 % exact, 15 % `+`, 10 % `#`, 5 % `$share`. Kind and
/// metric come from a multiplicative hash so that every site gets every kind.
fn filter(i: u32) -> String {
    let site = i % SITES;
    let device = i / SITES;
    let h = i.wrapping_mul(0x9E37_79B1);
    let metric = METRICS[(h >> 28) as usize % METRICS.len()];
    match (h >> 16) % 20 {
        0..=13 => format!("site/{site}/device/{device}/{metric}"),
        14..=15 => format!("site/{site}/device/+/{metric}"),
        16 => format!("site/+/device/{device}/{metric}"),
        17..=18 => format!("site/{site}/device/{device}/#"),
        _ => format!("$share/g{}/site/{site}/device/+/{metric}", device % 8),
    }
}

fn router() -> Router<u32> {
    let mut router = Router::default();
    for i in 0..SUBSCRIPTIONS {
        router.subscribe(&filter(i), i, subscription(i));
    }
    router
}

fn bench_route(c: &mut Criterion) {
    let mut router = router();
    let mut out: Vec<Route<u32>> = Vec::with_capacity(1024);
    let mut group = c.benchmark_group("router/route_100k");

    // A topic that some exact filter names, so every kind of filter contributes.
    let topic = (42_000..SUBSCRIPTIONS)
        .map(filter)
        .find(|f| f.starts_with("site/42/") && !f.contains(['+', '#']))
        .unwrap_or_default();
    let topic = topic.as_str();
    out.clear();
    router.route(topic, &mut out);
    eprintln!("{topic} matches {} subscriptions", out.len());
    group.bench_function("matching", |b| {
        b.iter(|| {
            out.clear();
            router.route(black_box(topic), &mut out);
            black_box(out.len())
        })
    });

    let miss = "site/42/device/420/unknown";
    group.bench_function("non_matching_deep", |b| {
        b.iter(|| {
            out.clear();
            router.route(black_box(miss), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("non_matching_root", |b| {
        b.iter(|| {
            out.clear();
            router.route(black_box("factory/line/7"), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn bench_churn(c: &mut Criterion) {
    let mut router = router();
    // Filters not in the router, so each iteration creates and prunes trie nodes.
    let churn: Vec<String> = (SUBSCRIPTIONS..SUBSCRIPTIONS + 1024).map(filter).collect();
    let mut i = 0usize;
    c.bench_function("router/subscribe_unsubscribe_100k", |b| {
        b.iter(|| {
            let f = &churn[i % churn.len()];
            i += 1;
            let key = i as u32;
            black_box(router.subscribe(f, key, subscription(key)));
            black_box(router.unsubscribe(f, key))
        })
    });
}

fn retained() -> RetainedStore {
    let now = Instant::now();
    let mut store = RetainedStore::default();
    for i in 0..RETAINED {
        let (site, device, metric) = (i % SITES, i / SITES / 4, METRICS[(i / SITES % 4) as usize]);
        store.set(Arc::new(Message {
            topic: format!("site/{site}/device/{device}/{metric}").into(),
            payload: Bytes::from_static(b"21.5"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expiry_interval: None,
            received_at: now,
            origin: "bench".into(),
        }));
    }
    assert_eq!(store.len(), RETAINED as usize);
    store
}

fn bench_retained(c: &mut Criterion) {
    let store = retained();
    let mut out = Vec::with_capacity(1024);
    let mut group = c.benchmark_group("retained/matching_100k");
    for (name, filter) in [
        ("exact", "site/42/device/42/temp"),
        ("plus", "site/42/device/+/temp"),
        ("hash_site", "site/42/#"),
    ] {
        out.clear();
        store.matching(filter, &mut out);
        eprintln!("{filter} matches {} retained messages", out.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                store.matching(black_box(filter), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_route, bench_churn, bench_retained);
criterion_main!(benches);
