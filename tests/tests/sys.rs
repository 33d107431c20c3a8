//! `$SYS/broker/...` topics: with `sys_interval = 1` a subscriber to `$SYS/broker/#` sees
//! `clients/connected`, `messages/received`, `messages/sent` and `uptime` with numeric
//! values, and the message counters move when traffic flows. A subscription to `#` (or
//! `+/...`) never receives `$SYS` topics [MQTT-4.7.2-1]. Against an external broker the
//! tests run as they are (configure it with `sys_interval 1`).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const SYS_ENV: &[(&str, &str)] = &[("TERN_MQTT__SYS_INTERVAL", "1")];

/// The leading unsigned integer of a `$SYS` value ("42", "42 seconds").
fn leading_number(payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    let digits: String = s
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Collects the latest `$SYS` values until every topic in `want` was seen and `clients/connected`
/// counts at least one client (a retained value may predate us), or `timeout`.
async fn collect_sys(
    c: &mut v4::Client,
    want: &[&str],
    timeout: Duration,
) -> HashMap<String, Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    let done = |seen: &HashMap<String, Vec<u8>>| {
        want.iter().all(|t| seen.contains_key(*t))
            && seen
                .get("$SYS/broker/clients/connected")
                .and_then(|v| leading_number(v))
                .is_some_and(|n| n >= 1)
    };
    while Instant::now() < deadline && !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(p) = c.recv_publish(left).await {
            seen.insert(p.topic.clone(), p.payload.to_vec());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_broker_counters_published() {
    let broker = Broker::start_with(SYS_ENV);
    let want = [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/uptime",
    ];
    let mut c = v4::client(&broker, "sys").await;
    c.subscribe("$SYS/broker/#", v4::QoS::AtMostOnce).await;
    let seen = collect_sys(&mut c, &want, Duration::from_secs(4)).await;
    for t in want {
        let v = seen
            .get(t)
            .unwrap_or_else(|| panic!("{t} not published within 4 s; saw {:?}", seen.keys()));
        assert!(
            leading_number(v).is_some(),
            "{t} = {:?} is not a number",
            String::from_utf8_lossy(v)
        );
    }
    let connected = leading_number(&seen["$SYS/broker/clients/connected"]).unwrap();
    assert!(
        connected >= 1,
        "at least this client is connected, got {connected}"
    );
    let received0 = leading_number(&seen["$SYS/broker/messages/received"]).unwrap();
    let sent0 = leading_number(&seen["$SYS/broker/messages/sent"]).unwrap();

    // Traffic moves the counters.
    let topic = unique("sys/traffic");
    let mut sub = v4::client(&broker, "sys-sub").await;
    sub.subscribe(&topic, v4::QoS::AtMostOnce).await;
    let mut publ = v4::client(&broker, "sys-pub").await;
    for i in 0..10 {
        publ.publish(
            &topic,
            v4::QoS::AtMostOnce,
            false,
            format!("{i}").as_bytes(),
        )
        .await;
    }
    sub.recv_publishes(10).await;
    let deadline = Instant::now() + Duration::from_secs(4);
    let (mut received, mut sent) = (received0, sent0);
    while Instant::now() < deadline && (received < received0 + 10 || sent < sent0 + 10) {
        if let Some(p) = c.recv_publish(Duration::from_millis(500)).await {
            match p.topic.as_str() {
                "$SYS/broker/messages/received" => received = leading_number(&p.payload).unwrap(),
                "$SYS/broker/messages/sent" => sent = leading_number(&p.payload).unwrap(),
                _ => {}
            }
        }
    }
    assert!(
        received >= received0 + 10,
        "messages/received {received0} -> {received} after 10 PUBLISHes in"
    );
    assert!(
        sent >= sent0 + 10,
        "messages/sent {sent0} -> {sent} after 10 PUBLISHes out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_wildcard_does_not_match_sys() {
    let broker = Broker::start_with(SYS_ENV);
    // Control: $SYS is being published during the observation window.
    let mut sys = v4::client(&broker, "sys-ctl").await;
    sys.subscribe("$SYS/broker/uptime", v4::QoS::AtMostOnce)
        .await;

    let mut all = v4::client(&broker, "sys-all").await;
    all.subscribe("#", v4::QoS::AtMostOnce).await;
    all.subscribe("+/broker/#", v4::QoS::AtMostOnce).await;
    let mut sys_seen = 0;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        if let Some(p) = all.recv_publish(Duration::from_millis(100)).await {
            assert!(
                !p.topic.starts_with('$'),
                "`#` / `+/broker/#` must not match {}",
                p.topic
            );
        }
        while let Some(p) = sys.recv_publish(Duration::from_millis(1)).await {
            assert_eq!(p.topic, "$SYS/broker/uptime");
            sys_seen += 1;
        }
    }
    assert!(
        sys_seen >= 1,
        "control subscriber saw no $SYS/broker/uptime in 2.5 s"
    );
}
