//! Access control over the wire: `[acl]` rules from a `--config` file, applied to
//! publishes (v5 reason 0x87, v3.1.1 dropped), subscriptions (SUBACK 0x87 / 0x80),
//! `%u` / `%c` substitution, retained messages and wills. Each test starts its own
//! tern-edge with a password file (skipped under an external broker).

mod common;
mod security;

use std::time::Duration;

use security::{login_as, password_file, path, WAIT};
use tern_tests::{raw, unique, Broker, RawClient, Recv};

/// How long to watch for a message that must not arrive.
const QUIET: Duration = Duration::from_millis(700);

const PW: &str = "secret";

const ACL: &str = r##"
[acl]
no_match = "deny"

# admin may do anything (outside $SYS).
[[acl.rules]]
permission = "allow"
user = "admin"
topic = "#"

# Every user owns users/<name>/...
[[acl.rules]]
permission = "allow"
topic = "users/%u/#"

# Every client owns clients/<client id>/...
[[acl.rules]]
permission = "allow"
topic = "clients/%c/#"

# public/... is readable by all except public/private/..., writable by admin only.
[[acl.rules]]
permission = "deny"
action = "subscribe"
topic = "public/private/#"

[[acl.rules]]
permission = "allow"
action = "subscribe"
topic = "public/#"
"##;

fn broker() -> Option<Broker> {
    let file = password_file(&[("alice", PW), ("bob", PW), ("admin", PW)]);
    let file = path(&file);
    let env = [
        ("TERN_AUTH__ALLOW_ANONYMOUS", "false"),
        ("TERN_AUTH__PASSWORD_FILE", file.as_str()),
        ("TERN_AUTH__MAX_LOGIN_FAILURES", "0"),
    ];
    Broker::start_with_config_file(&env, ACL, "ACL in a config file")
}

async fn user(b: &Broker, version: u8, name: &str) -> RawClient {
    login_as(&b.addr(), version, &unique(name), name, PW, None).await
}

/// Publishes at QoS 1 and returns the PUBACK reason (0 for v3.1.1, which has none).
async fn publish(c: &mut RawClient, pid: u16, topic: &str, retain: bool) -> u8 {
    let p = raw::PublishOut::new(topic, b"payload")
        .qos(1, pid)
        .retain(retain)
        .encode(c.version);
    c.send(&p).await.expect("send PUBLISH");
    let ack = c.expect(WAIT, "PUBACK").await;
    assert_eq!(ack.kind, raw::kind::PUBACK, "{ack:?}");
    let (got, reason) = ack.ack().expect("PUBACK");
    assert_eq!(got, pid);
    reason
}

async fn subscribe(c: &mut RawClient, pid: u16, filter: &str) -> u8 {
    c.subscribe(pid, &[(filter, 1)], &raw::Props::new()).await[0]
}

async fn expect_topic(c: &mut RawClient, topic: &str) {
    let p = c.expect_publish(WAIT).await;
    assert_eq!(p.topic, topic);
}

async fn expect_nothing(c: &mut RawClient) {
    match c.recv(QUIET).await {
        Recv::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_is_allowed_or_denied_per_user() {
    let Some(b) = broker() else { return };
    let mut bob = user(&b, raw::V5, "bob").await;
    assert_eq!(subscribe(&mut bob, 1, "users/bob/#").await, 1);

    let mut alice = user(&b, raw::V5, "alice").await;
    assert_eq!(
        publish(&mut alice, 1, "users/alice/t", false).await,
        0,
        "own topic"
    );
    assert_eq!(
        publish(&mut alice, 2, "users/bob/t", false).await,
        0x87,
        "another user's topic"
    );
    assert_eq!(
        publish(&mut alice, 3, "elsewhere", false).await,
        0x87,
        "no_match"
    );
    expect_nothing(&mut bob).await;

    // v3.1.1 has no reason code: the PUBACK comes, the message is dropped.
    let mut alice4 = user(&b, raw::V4, "alice").await;
    assert_eq!(publish(&mut alice4, 4, "users/bob/t", false).await, 0);
    expect_nothing(&mut bob).await;

    // The owner's own publish goes through.
    let mut bob_pub = user(&b, raw::V5, "bob").await;
    assert_eq!(publish(&mut bob_pub, 5, "users/bob/t", false).await, 0);
    expect_topic(&mut bob, "users/bob/t").await;
}

#[tokio::test]
async fn subscribe_is_allowed_or_denied_v5_and_v311() {
    let Some(b) = broker() else { return };
    let mut alice = user(&b, raw::V5, "alice").await;
    assert_eq!(subscribe(&mut alice, 1, "users/alice/#").await, 1);
    assert_eq!(subscribe(&mut alice, 2, "users/bob/#").await, 0x87);
    assert_eq!(
        subscribe(&mut alice, 3, "#").await,
        0x87,
        "wider than allowed"
    );
    assert_eq!(subscribe(&mut alice, 4, "public/#").await, 1);
    let mut alice4 = user(&b, raw::V4, "alice").await;
    assert_eq!(subscribe(&mut alice4, 1, "users/bob/#").await, 0x80);
    assert_eq!(subscribe(&mut alice4, 2, "users/alice/+").await, 1);
}

#[tokio::test]
async fn client_id_substitution() {
    let Some(b) = broker() else { return };
    let addr = b.addr();
    let id = unique("dev");
    let mut dev = login_as(&addr, raw::V5, &id, "bob", PW, None).await;
    assert_eq!(subscribe(&mut dev, 1, &format!("clients/{id}/#")).await, 1);
    // Its own message comes back; the PUBLISH and the PUBACK may come in either order.
    let topic = format!("clients/{id}/status");
    let p = raw::PublishOut::new(&topic, b"up")
        .qos(1, 2)
        .encode(raw::V5);
    dev.send(&p).await.expect("send PUBLISH");
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let p = dev.expect(WAIT, "PUBACK and PUBLISH").await;
        match p.kind {
            raw::kind::PUBACK => assert_eq!(p.ack().expect("PUBACK"), (2, 0)),
            raw::kind::PUBLISH => assert_eq!(p.publish(raw::V5).expect("PUBLISH").topic, topic),
            other => panic!("unexpected packet type {other}"),
        }
        kinds.push(p.kind);
    }
    kinds.sort();
    assert_eq!(kinds, [raw::kind::PUBLISH, raw::kind::PUBACK]);
    assert_eq!(
        publish(&mut dev, 3, &format!("clients/{id}-other/status"), false).await,
        0x87
    );
    assert_eq!(
        subscribe(&mut dev, 4, &format!("clients/{id}-other/#")).await,
        0x87
    );
}

#[tokio::test]
async fn retained_messages_obey_read_rules() {
    let Some(b) = broker() else { return };
    let prefix = unique("r");
    let mut admin = user(&b, raw::V5, "admin").await;
    let news = format!("public/{prefix}/news");
    let private = format!("public/private/{prefix}");
    assert_eq!(publish(&mut admin, 1, &news, true).await, 0);
    assert_eq!(publish(&mut admin, 2, &private, true).await, 0);
    // alice may not write public/: her retained message is refused and not stored.
    let mut alice = user(&b, raw::V5, "alice").await;
    let forged = format!("public/{prefix}/forged");
    assert_eq!(publish(&mut alice, 1, &forged, true).await, 0x87);

    // public/# is allowed, but the retained message under public/private/ is held back.
    assert_eq!(subscribe(&mut alice, 2, "public/#").await, 1);
    expect_topic(&mut alice, &news).await;
    expect_nothing(&mut alice).await;

    // admin sees both stored retained messages, and nothing forged.
    assert_eq!(subscribe(&mut admin, 3, "public/#").await, 1);
    let mut seen = vec![
        admin.expect_publish(WAIT).await.topic,
        admin.expect_publish(WAIT).await.topic,
    ];
    seen.sort();
    let mut want = vec![news.clone(), private.clone()];
    want.sort();
    assert_eq!(seen, want);
    expect_nothing(&mut admin).await;
}

#[tokio::test]
async fn wills_obey_publish_rules() {
    let Some(b) = broker() else { return };
    let addr = b.addr();
    let mut admin = user(&b, raw::V5, "admin").await;
    assert_eq!(subscribe(&mut admin, 1, "users/#").await, 1);

    let allowed = login_as(
        &addr,
        raw::V5,
        &unique("w1"),
        "alice",
        PW,
        Some(("users/alice/will", b"gone", 1, false)),
    )
    .await;
    let denied = login_as(
        &addr,
        raw::V4,
        &unique("w2"),
        "alice",
        PW,
        Some(("users/bob/will", b"forged", 1, false)),
    )
    .await;
    denied.abort().await;
    allowed.abort().await;
    let p = admin.expect_publish(WAIT).await;
    assert_eq!(p.topic, "users/alice/will");
    assert_eq!(p.payload, b"gone");
    expect_nothing(&mut admin).await;
}
