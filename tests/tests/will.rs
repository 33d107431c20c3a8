//! Will messages, 3.1.1 and 5.0: published when the connection closes abnormally (the
//! socket is dropped without DISCONNECT), not published after a normal DISCONNECT,
//! published after a v5 DISCONNECT with reason 0x04, retained when the will says so, and
//! the v5 Will Delay Interval: the will is held back for the delay, cancelled when the
//! client resumes the session within the delay, and sent at once when the session ends
//! before the delay does.

mod common;

use std::time::{Duration, Instant};

use common::*;
use raw::{prop, Props, Will};

fn will(topic: &str, payload: &[u8], props: Props) -> Will {
    Will {
        topic: topic.to_string(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
        props,
    }
}

async fn watcher(broker: &Broker, topic: &str) -> v4::Client {
    let mut w = v4::client(broker, "will-watch").await;
    w.subscribe(topic, v4::QoS::AtLeastOnce).await;
    w
}

async fn will_on_abnormal_close(version: u8) {
    let broker = Broker::start();
    let topic = unique("will/abn");
    let mut w = watcher(&broker, &topic).await;
    let connect =
        raw::Connect::new(version, &unique("will-abn")).will(will(&topic, b"gone", Props::new()));
    let (c, ack) = RawClient::connect(&broker.addr(), &connect).await;
    assert_eq!(ack.code, 0);
    w.expect_no_publish(Duration::from_millis(300)).await;
    c.abort().await;
    let m = w
        .recv_publish(WAIT)
        .await
        .expect("will after abnormal close");
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        (topic.as_str(), &b"gone"[..], v4::QoS::AtLeastOnce)
    );
    w.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_will_sent_on_abnormal_close() {
    will_on_abnormal_close(raw::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_sent_on_abnormal_close() {
    will_on_abnormal_close(raw::V5).await;
}

async fn no_will_on_disconnect(version: u8) {
    let broker = Broker::start();
    let topic = unique("will/norm");
    let mut w = watcher(&broker, &topic).await;
    let connect =
        raw::Connect::new(version, &unique("will-norm")).will(will(&topic, b"gone", Props::new()));
    let (mut c, _) = RawClient::connect(&broker.addr(), &connect).await;
    c.send(&raw::disconnect(version, 0, &Props::new()))
        .await
        .unwrap();
    assert!(
        c.wait_closed(WAIT).await.is_ok(),
        "broker closes after DISCONNECT"
    );
    w.expect_no_publish(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_no_will_after_normal_disconnect() {
    no_will_on_disconnect(raw::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_will_after_normal_disconnect() {
    no_will_on_disconnect(raw::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_sent_after_disconnect_with_will_0x04() {
    let broker = Broker::start();
    let topic = unique("will/04");
    let mut w = watcher(&broker, &topic).await;
    let (mut c, _) = RawClient::connect(
        &broker.addr(),
        &raw_v5("will-04").will(will(&topic, b"asked", Props::new())),
    )
    .await;
    c.send(&raw::disconnect(raw::V5, 0x04, &Props::new()))
        .await
        .unwrap();
    let m = w
        .recv_publish(WAIT)
        .await
        .expect("will after DISCONNECT 0x04");
    assert_eq!(&m.payload[..], b"asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_will_retained() {
    let broker = Broker::start();
    let topic = unique("will/ret");
    let mut wl = will(&topic, b"last words", Props::new());
    wl.retain = true;
    let (c, _) = RawClient::connect(&broker.addr(), &raw_v4("will-ret").will(wl)).await;
    c.abort().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = v4::client(&broker, "will-late").await;
    late.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let m = late.recv_publish(WAIT).await.expect("retained will");
    assert_eq!((&m.payload[..], m.retain), (&b"last words"[..], true));
    late.publish(&topic, v4::QoS::AtLeastOnce, true, b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_interval() {
    let broker = Broker::start();
    let topic = unique("will/delay");
    let mut w = watcher(&broker, &topic).await;
    let connect = raw_v5("will-delay")
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 30))
        .will(will(
            &topic,
            b"late",
            Props::new().u32(prop::WILL_DELAY_INTERVAL, 2),
        ));
    let (c, _) = RawClient::connect(&broker.addr(), &connect).await;
    let t0 = Instant::now();
    c.abort().await;
    w.expect_no_publish(Duration::from_millis(1300)).await;
    let m = w.recv_publish(WAIT).await.expect("will after the delay");
    let elapsed = t0.elapsed();
    assert_eq!(&m.payload[..], b"late");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_millis(5500),
        "will delay 2 s, sent after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_cancelled_by_reconnect() {
    let broker = Broker::start();
    let topic = unique("will/cancel");
    let mut w = watcher(&broker, &topic).await;
    let id = unique("will-cancel");
    let connect = raw::Connect::new(raw::V5, &id)
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 30))
        .will(will(
            &topic,
            b"should not",
            Props::new().u32(prop::WILL_DELAY_INTERVAL, 2),
        ));
    let (c, _) = RawClient::connect(&broker.addr(), &connect).await;
    c.abort().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Resume the session (clean start 0) within the delay, without a will this time.
    let resume = raw::Connect::new(raw::V5, &id)
        .clean(false)
        .props(Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, 30));
    let (_c2, ack) = RawClient::connect(&broker.addr(), &resume).await;
    assert!(ack.session_present, "session resumed");
    w.expect_no_publish(Duration::from_millis(3500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_sent_when_session_ends_before_delay() {
    let broker = Broker::start();
    let topic = unique("will/sess");
    let mut w = watcher(&broker, &topic).await;
    // Session expiry 0: the session ends with the connection, before the 30 s delay.
    let connect = raw_v5("will-sess").will(will(
        &topic,
        b"session over",
        Props::new().u32(prop::WILL_DELAY_INTERVAL, 30),
    ));
    let (c, _) = RawClient::connect(&broker.addr(), &connect).await;
    c.abort().await;
    let m = w
        .recv_publish(Duration::from_secs(3))
        .await
        .expect("will published when the session ends");
    assert_eq!(&m.payload[..], b"session over");
}
