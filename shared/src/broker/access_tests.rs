//! Authentication hand-off and ACL decisions of the broker machine, and the per-session
//! limits on subscriptions and topic length.

use super::tests::{connect, payloads, publish, will, Harness};
use super::{BrokerConfig, Output};
use crate::auth::acl::{Acl, AclRule, Permission, RuleAction};
use crate::auth::AuthRequest;
use crate::message::QoS;
use crate::mqtt::packet::ProtocolVersion::{V311, V5};
use crate::mqtt::packet::*;
use crate::mqtt::reason;

fn rule(permission: Permission, action: RuleAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        user: None,
        client: None,
        certificate: None,
        topic: topic.into(),
    }
}

/// Allow everything on `open/#` and `devices/%c/#`, deny the rest.
fn acl() -> Acl {
    Acl {
        rules: vec![
            rule(Permission::Deny, RuleAction::Subscribe, "open/secret"),
            rule(Permission::Allow, RuleAction::All, "open/#"),
            rule(Permission::Allow, RuleAction::All, "devices/%c/#"),
        ],
        no_match: Permission::Deny,
    }
}

#[test]
fn connect_waits_for_authentication_and_keeps_pipelined_packets() {
    let mut h = Harness::new();
    h.broker.require_authentication(true);
    let c = h.broker.handle_open(h.now);
    let mut con = connect("dev", V5, true);
    con.username = Some("alice".into());
    con.password = Some(bytes::Bytes::from_static(b"pw"));
    h.send(c, Packet::Connect(Box::new(con)));
    h.send(c, Packet::PingReq);
    match h.broker.poll_output() {
        Some(Output::Authenticate(
            conn,
            AuthRequest {
                username, password, ..
            },
        )) => {
            assert_eq!(conn, c);
            assert_eq!(username.as_deref(), Some("alice"));
            assert_eq!(password.as_deref(), Some(&b"pw"[..]));
        }
        other => panic!("expected an authentication request, got {other:?}"),
    }
    assert!(
        h.take(c).is_empty(),
        "nothing before the credentials are checked"
    );
    h.broker.handle_authenticated(c, Ok(None), h.now);
    let got = h.take(c);
    assert!(matches!(&got[0], Packet::ConnAck(a) if a.reason_code == 0));
    assert_eq!(got[1], Packet::PingResp);
}

#[test]
fn refused_credentials_get_the_reason_in_connack() {
    let mut h = Harness::new();
    h.broker.require_authentication(true);
    for (version, expected) in [
        (V5, reason::BAD_USERNAME_OR_PASSWORD),
        (V311, reason::BAD_USERNAME_OR_PASSWORD),
    ] {
        let c = h.broker.handle_open(h.now);
        h.send(c, Packet::Connect(Box::new(connect("x", version, true))));
        while h.broker.poll_output().is_some() {}
        h.broker
            .handle_authenticated(c, Err(reason::BAD_USERNAME_OR_PASSWORD), h.now);
        let got = h.take(c);
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason_code == expected),
            "{got:?}"
        );
        assert!(h.is_closed(c));
    }
}

#[test]
fn acl_decides_publish_subscribe_and_delivery() {
    let mut h = Harness::new();
    h.broker.set_acl(Some(acl()));
    let sub = h.connect("sub", V5, true);
    let mut s = Subscribe {
        packet_id: 3,
        subscription_identifier: None,
        user_properties: vec![],
        filters: vec![],
    };
    for f in ["open/#", "closed/x", "devices/sub/+", "devices/other/+"] {
        s.filters
            .push((f.into(), SubscriptionOptions::new(QoS::AtLeastOnce)));
    }
    h.send(sub, Packet::Subscribe(s));
    let got = h.take(sub);
    let Packet::SubAck(ack) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        ack.reason_codes,
        [1, reason::NOT_AUTHORIZED, 1, reason::NOT_AUTHORIZED]
    );

    let p5 = h.connect("p5", V5, true);
    h.publish(p5, "closed/x", "no", QoS::AtLeastOnce, false);
    assert_eq!(
        h.take(p5),
        [Packet::PubAck(PubResponse::with_reason(
            7,
            reason::NOT_AUTHORIZED
        ))]
    );
    h.publish(p5, "open/a", "yes", QoS::AtLeastOnce, false);
    assert_eq!(h.take(p5), [Packet::PubAck(PubResponse::new(7))]);
    // v3.1.1 cannot say no: acknowledged, dropped.
    let p3 = h.connect("p3", V311, true);
    h.publish(p3, "closed/x", "no", QoS::AtLeastOnce, false);
    assert_eq!(h.take(p3), [Packet::PubAck(PubResponse::new(7))]);
    // %c: a client may publish under its own id only.
    let dev = h.connect("dev9", V5, true);
    h.publish(dev, "devices/dev9/up", "mine", QoS::AtMostOnce, false);
    h.publish(dev, "devices/sub/x", "not mine", QoS::AtLeastOnce, false);
    assert_eq!(
        h.take(dev),
        [Packet::PubAck(PubResponse::with_reason(
            7,
            reason::NOT_AUTHORIZED
        ))]
    );
    // A deny narrower than the granted filter still holds back that topic.
    h.publish(p5, "open/secret", "hidden", QoS::AtMostOnce, false);
    assert_eq!(payloads(&h.take(sub)), ["yes"]);
}

#[test]
fn acl_applies_to_retained_and_wills() {
    let mut h = Harness::new();
    h.broker.set_acl(Some(acl()));
    let p = h.connect("p", V5, true);
    h.publish(p, "open/secret", "r", QoS::AtMostOnce, true);
    h.publish(p, "open/public", "r", QoS::AtMostOnce, true);
    let sub = h.connect("sub", V5, true);
    h.subscribe(sub, "open/#", QoS::AtMostOnce);
    let got = h.take(sub);
    assert_eq!(got.len(), 1, "only the readable retained message: {got:?}");
    let mut c = connect("w", V5, true);
    c.last_will = Some(will("closed/will", "denied", None));
    let (w, _) = h.connect_with(c);
    let mut c = connect("w2", V5, true);
    c.last_will = Some(will("open/will", "allowed", None));
    let (w2, _) = h.connect_with(c);
    let watcher = h.connect("watch", V5, true);
    h.subscribe(watcher, "open/#", QoS::AtLeastOnce);
    h.take(watcher);
    h.drop_conn(w);
    h.drop_conn(w2);
    assert_eq!(payloads(&h.take(watcher)), ["allowed"]);
}

#[test]
fn subscription_quota_and_topic_length() {
    let mut h = Harness::with(BrokerConfig {
        max_subscriptions: 2,
        max_topic_length: 10,
        sys_interval: 0,
        ..Default::default()
    });
    let c = h.connect("c", V5, true);
    assert_eq!(h.subscribe(c, "a", QoS::AtMostOnce), [0]);
    assert_eq!(h.subscribe(c, "b", QoS::AtMostOnce), [0]);
    assert_eq!(
        h.subscribe(c, "c", QoS::AtMostOnce),
        [reason::QUOTA_EXCEEDED]
    );
    // Replacing an existing subscription is not a new one.
    assert_eq!(h.subscribe(c, "a", QoS::AtLeastOnce), [1]);
    assert_eq!(
        h.subscribe(c, "this/is/too/long", QoS::AtMostOnce),
        [reason::TOPIC_FILTER_INVALID]
    );
    h.send(
        c,
        Packet::Publish(publish(
            "this/is/too/long",
            "x",
            QoS::AtMostOnce,
            false,
            None,
        )),
    );
    assert_eq!(
        h.take(c),
        [Packet::Disconnect(Disconnect::with_reason(
            reason::TOPIC_NAME_INVALID
        ))]
    );
}
