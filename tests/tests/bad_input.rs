//! Bad input on raw TCP connections: truncated packets (a stream that ends mid-packet, a
//! remaining length too short for the fields), an oversized announced length, an invalid
//! remaining-length encoding, random garbage before and after CONNECT, a PUBLISH before
//! CONNECT and a second CONNECT (3.1.1 and 5.0). Each must close only the offending
//! connection, while a normal rumqttc subscriber on another connection keeps receiving every
//! message published during the abuse, a will of an abused session is still published, the
//! broker accepts new clients afterwards, and (tern-edge only) the broker logged the bad
//! input and is still running.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use raw::{kind, PublishOut, Will};

/// Deterministic pseudo-random bytes (xorshift64*).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What one abuse case observed: `Ok` if the connection was closed as required.
type Outcome = Result<(), String>;

async fn closed_after(c: &mut RawClient, what: &str) -> Outcome {
    match c.wait_closed(WAIT).await {
        Ok(_) => Ok(()),
        Err(seen) => Err(format!(
            "{what}: connection still open after {WAIT:?} (got {seen:?})"
        )),
    }
}

async fn send_then_closed(addr: &str, version: u8, bytes: Vec<u8>, what: &str) -> Outcome {
    let mut c = RawClient::tcp(addr, version).await;
    let _ = c.send(&bytes).await;
    closed_after(&mut c, what).await
}

async fn connected(addr: &str, version: u8, name: &str) -> RawClient {
    RawClient::connect(addr, &raw::Connect::new(version, &unique(name)))
        .await
        .0
}

async fn truncated_connect_then_eof(addr: String) -> Outcome {
    let full = raw::Connect::new(raw::V4, &unique("trunc")).encode();
    let mut c = RawClient::tcp(&addr, raw::V4).await;
    let _ = c.send(&full[..full.len() / 2]).await;
    c.shutdown_write().await;
    closed_after(&mut c, "CONNECT cut in half, then EOF").await
}

async fn connect_length_too_short(addr: String) -> Outcome {
    // Remaining length 5: the protocol name is cut off inside the packet.
    send_then_closed(
        &addr,
        raw::V4,
        vec![0x10, 0x05, 0x00, 0x04, b'M', b'Q', b'T'],
        "CONNECT with a remaining length too short for its fields",
    )
    .await
}

async fn truncated_publish_in_session(addr: String, will_topic: String) -> Outcome {
    let connect = raw::Connect::new(raw::V4, &unique("trunc-pub")).will(Will {
        topic: will_topic,
        payload: b"truncated".to_vec(),
        qos: 1,
        retain: false,
        props: raw::Props::new(),
    });
    let (mut c, _) = RawClient::connect(&addr, &connect).await;
    let full = PublishOut::new("some/topic", &[7u8; 100]).encode(raw::V4);
    let _ = c.send(&full[..12]).await;
    c.shutdown_write().await;
    closed_after(&mut c, "PUBLISH cut short, then EOF").await
}

async fn oversized_announced_length(addr: String) -> Outcome {
    let mut c = connected(&addr, raw::V4, "huge").await;
    // PUBLISH announcing 268,435,455 bytes (the largest remaining length), then a trickle.
    let _ = c
        .send(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, b't'])
        .await;
    closed_after(&mut c, "PUBLISH announcing 256 MiB").await
}

async fn invalid_remaining_length(addr: String) -> Outcome {
    let mut c = connected(&addr, raw::V4, "varint").await;
    // Five continuation bytes: not a valid variable byte integer.
    let _ = c.send(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00]).await;
    closed_after(&mut c, "remaining length longer than 4 bytes").await
}

async fn garbage_before_connect(addr: String) -> Outcome {
    let mut g = garbage(0x5EED, 4096);
    g[0] = 0x00; // packet type 0 is reserved
    send_then_closed(&addr, raw::V4, g, "4 KiB of garbage instead of CONNECT").await
}

async fn garbage_after_connect(addr: String) -> Outcome {
    let mut c = connected(&addr, raw::V5, "garbage5").await;
    let mut g = garbage(0xBAD, 2048);
    g[0] = 0x00;
    let _ = c.send(&g).await;
    closed_after(&mut c, "garbage after a v5 CONNECT").await
}

async fn publish_before_connect(addr: String, topic: String) -> Outcome {
    let p = PublishOut::new(&topic, b"sneaky").encode(raw::V4);
    send_then_closed(&addr, raw::V4, p, "PUBLISH before CONNECT").await
}

async fn second_connect(addr: String, version: u8) -> Outcome {
    let mut c = connected(&addr, version, "second").await;
    let _ = c
        .send(&raw::Connect::new(version, &unique("second-again")).encode())
        .await;
    match c.wait_closed(WAIT).await {
        Err(seen) => Err(format!("v{version} second CONNECT: still open ({seen:?})")),
        Ok(seen) if version == raw::V4 && !seen.is_empty() => {
            Err(format!("v4 second CONNECT: unexpected packets {seen:?}"))
        }
        Ok(seen) => {
            for p in &seen {
                if p.kind != kind::DISCONNECT || p.disconnect().map(|d| d.0) != Ok(0x82) {
                    return Err(format!(
                        "v5 second CONNECT: expected only DISCONNECT 0x82, got {p:?}"
                    ));
                }
            }
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_connection() {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let base = unique("abuse");
    let traffic_topic = format!("{base}/traffic");
    let will_topic = format!("{base}/will");
    let sneaky_topic = format!("{base}/sneaky");

    let mut watcher = v4::client(&broker, "abuse-watch").await;
    watcher
        .subscribe(&format!("{base}/#"), v4::QoS::AtLeastOnce)
        .await;

    // A publisher that keeps publishing numbered QoS 1 messages during the abuse.
    let stop = Arc::new(AtomicBool::new(false));
    let mut publ = v4::client(&broker, "abuse-pub").await;
    let publisher = {
        let stop = stop.clone();
        let topic = traffic_topic.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                publ.publish(
                    &topic,
                    v4::QoS::AtLeastOnce,
                    false,
                    n.to_string().as_bytes(),
                )
                .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };

    let cases: Vec<(&str, tokio::task::JoinHandle<Outcome>)> = vec![
        (
            "truncated CONNECT + EOF",
            tokio::spawn(truncated_connect_then_eof(addr.clone())),
        ),
        (
            "CONNECT length too short",
            tokio::spawn(connect_length_too_short(addr.clone())),
        ),
        (
            "truncated PUBLISH in session",
            tokio::spawn(truncated_publish_in_session(
                addr.clone(),
                will_topic.clone(),
            )),
        ),
        (
            "oversized announced length",
            tokio::spawn(oversized_announced_length(addr.clone())),
        ),
        (
            "invalid remaining length",
            tokio::spawn(invalid_remaining_length(addr.clone())),
        ),
        (
            "garbage before CONNECT",
            tokio::spawn(garbage_before_connect(addr.clone())),
        ),
        (
            "garbage after CONNECT",
            tokio::spawn(garbage_after_connect(addr.clone())),
        ),
        (
            "PUBLISH before CONNECT",
            tokio::spawn(publish_before_connect(addr.clone(), sneaky_topic.clone())),
        ),
        (
            "second CONNECT v4",
            tokio::spawn(second_connect(addr.clone(), raw::V4)),
        ),
        (
            "second CONNECT v5",
            tokio::spawn(second_connect(addr.clone(), raw::V5)),
        ),
    ];
    let mut failures = vec![];
    for (name, h) in cases {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(e) => failures.push(format!("{name}: task failed: {e}")),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.expect("publisher task");
    assert!(published > 0);

    // The watcher got every traffic message in order, the will, and nothing sneaky.
    let mut traffic = vec![];
    let mut wills = vec![];
    while let Some(p) = watcher.recv_publish(Duration::from_millis(700)).await {
        if p.topic == traffic_topic {
            traffic.push(String::from_utf8_lossy(&p.payload).into_owned());
        } else if p.topic == will_topic {
            wills.push(p.payload.to_vec());
        } else {
            panic!("unexpected message {p:?}");
        }
    }
    let want: Vec<String> = (0..published).map(|n| n.to_string()).collect();
    assert_eq!(
        traffic, want,
        "every message published during the abuse, in order"
    );
    assert_eq!(
        wills,
        vec![b"truncated".to_vec()],
        "will of the truncated session"
    );
    assert!(
        failures.is_empty(),
        "abuse cases not handled:\n{}",
        failures.join("\n")
    );

    // New clients are still accepted.
    let mut fresh = v5::client(&broker, "abuse-after").await;
    let t = format!("{base}/after");
    fresh.subscribe(&t, v5::QoS::AtLeastOnce).await;
    fresh.publish(&t, v5::QoS::AtLeastOnce, false, b"ok").await;
    let m = fresh
        .recv_publish(WAIT)
        .await
        .expect("round trip after the abuse");
    assert_eq!(&m.payload[..], b"ok");

    if broker.is_external() {
        eprintln!("external broker: log checks skipped");
        return;
    }
    assert!(
        broker.is_running(),
        "tern-edge exited; log:\n{}",
        broker.log()
    );
    let line = broker.wait_log_line(&["malformed", "decode"], Duration::from_secs(2));
    assert!(
        line.is_some(),
        "no log line mentioning the malformed input; log:\n{}",
        broker.log()
    );
    assert!(
        !broker.log().contains("panicked"),
        "tern-edge panicked:\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_garbage_connections_do_not_disturb_a_session() {
    let broker = Broker::start();
    let topic = unique("garbage-many");
    let mut sub = v5::client(&broker, "gm-sub").await;
    sub.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    let mut tasks = vec![];
    for seed in 1..=20u64 {
        let addr = broker.addr();
        tasks.push(tokio::spawn(async move {
            let mut g = garbage(seed, 512);
            // A complete "CONNECT" of 20..=119 bytes whose fields are nonsense.
            g[0] = 0x10;
            g[1] = 20 + (seed * 37 % 100) as u8;
            send_then_closed(&addr, raw::V4, g, &format!("garbage seed {seed}")).await
        }));
    }
    let mut publ = v5::client(&broker, "gm-pub").await;
    for i in 0..20 {
        publ.publish(
            &topic,
            v5::QoS::AtLeastOnce,
            false,
            format!("{i}").as_bytes(),
        )
        .await;
    }
    for t in tasks {
        t.await.expect("task").expect("garbage connection closed");
    }
    let got: Vec<String> = sub
        .recv_publishes(20)
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
}
