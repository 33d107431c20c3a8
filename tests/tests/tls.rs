//! MQTT over TLS (`[listeners.tls]`) with real clients: rumqttc (v3.1.1 and v5) on
//! rustls, client certificates accepted from the configured CA and refused from
//! another one, the certificate identity as user name and in ACL rules, and start-up
//! errors that name the key. Certificates are generated at test time (rcgen).
//! Every test starts its own tern-edge (skipped under an external broker).

mod common;
mod security;

use std::time::Duration;

use common::{v4, v5};
use rumqttc::{TlsConfiguration, Transport};
use security::{connect_bytes, env_refs, read_packet, tls_handshake, Pki, CLIENT_CN, WAIT};
use tern_tests::{free_port, raw, unique, Broker};
use tokio::io::AsyncWriteExt;

fn tls_broker(pki: &Pki, port: u16, client_ca: bool, extra: &[(&str, &str)]) -> Option<Broker> {
    let env = pki.tls_env(port, client_ca);
    let mut env = env_refs(&env);
    env.extend_from_slice(extra);
    Broker::start_configured(&env, "TLS listener")
}

fn v4_tls(port: u16, config: std::sync::Arc<rustls::ClientConfig>) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(unique("tls4"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    o
}

/// Sends a CONNECT over a fresh TLS connection made with `config`; the CONNACK code,
/// or `None` if the handshake failed or the connection closed without one.
async fn tls_login(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    user: Option<&str>,
    password: Option<&str>,
) -> Option<u8> {
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut stream = tls_handshake(addr, config).await.ok()?;
    let connect = connect_bytes(raw::V5, &unique("tls"), user, password);
    // With TLS 1.3 the server checks the client certificate after the client thinks
    // the handshake is done: the refusal shows up on the first write or read.
    stream.write_all(&connect).await.ok()?;
    let mut buf = Vec::new();
    let p = read_packet(&mut stream, &mut buf).await?;
    Some(p.connack(raw::V5).expect("CONNACK").code)
}

#[tokio::test]
async fn rumqttc_over_tls_v311_and_v5() {
    let pki = Pki::generate();
    let port = free_port();
    let Some(b) = tls_broker(&pki, port, false, &[]) else {
        return;
    };
    let topic = unique("tls/t");
    let mut sub = v4::connect(v4_tls(port, pki.client_config(None))).await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;

    let mut o = rumqttc::v5::MqttOptions::new(unique("tls5"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        pki.client_config(None),
    )));
    let mut publisher = v5::connect(o).await;
    for i in 0..20u8 {
        publisher
            .publish(&topic, v5::QoS::AtLeastOnce, false, &[i; 300])
            .await;
    }
    let got = sub.recv_publishes(20).await;
    for (i, p) in got.iter().enumerate() {
        assert_eq!(&p.payload[..], &[i as u8; 300][..]);
    }
    // A plain-TCP client and a TLS client share the same broker.
    let mut plain = v4::client(&b, "plain").await;
    plain
        .publish(&topic, v4::QoS::AtLeastOnce, false, b"plain")
        .await;
    let p = sub.recv_publish(WAIT).await.expect("from the TCP client");
    assert_eq!(&p.payload[..], b"plain");
    assert!(
        b.log().contains("listening on mqtts://127.0.0.1:"),
        "{}",
        b.log()
    );
}

#[tokio::test]
async fn client_certificate_accepted_and_wrong_ones_refused() {
    let pki = Pki::generate();
    let port = free_port();
    let Some(_b) = tls_broker(
        &pki,
        port,
        true,
        &[("TERN_LISTENERS__TLS__REQUIRE_CLIENT_CERT", "true")],
    ) else {
        return;
    };
    // The certificate from our CA: accepted (rumqttc and raw).
    let mut c = v4::connect(v4_tls(port, pki.client_config(Some(&pki.client)))).await;
    let topic = unique("tls/cert");
    c.subscribe(&topic, v4::QoS::AtMostOnce).await;
    assert_eq!(
        tls_login(port, pki.client_config(Some(&pki.client)), None, None).await,
        Some(0)
    );
    // Same CN, another CA: refused in the handshake, no CONNACK.
    assert_eq!(
        tls_login(port, pki.client_config(Some(&pki.rogue)), None, None).await,
        None,
        "certificate from an unknown CA"
    );
    // No certificate at all while one is required: refused too.
    assert_eq!(
        tls_login(port, pki.client_config(None), None, None).await,
        None,
        "no certificate"
    );
    // A client that does not trust our server certificate gives up by itself.
    let other = Pki::generate();
    assert_eq!(
        tls_login(port, other.client_config(None), None, None).await,
        None,
        "untrusted server"
    );
}

#[tokio::test]
async fn certificate_identity_is_the_user_name() {
    let pki = Pki::generate();
    let port = free_port();
    let env = pki.tls_env(port, true);
    let mut env = env_refs(&env);
    env.extend_from_slice(&[
        ("TERN_LISTENERS__TLS__USE_IDENTITY_AS_USERNAME", "true"),
        ("TERN_AUTH__ALLOW_ANONYMOUS", "false"),
    ]);
    let acl = r##"
[acl]
no_match = "deny"
[[acl.rules]]
permission = "allow"
topic = "users/%u/#"
[[acl.rules]]
permission = "allow"
certificate = "device-1"
action = "subscribe"
topic = "fleet/#"
"##;
    let Some(b) = Broker::start_with_config_file(&env, acl, "TLS identity and ACL") else {
        return;
    };
    // With its certificate, a client needs no password; its user name is the CN.
    let own = format!("users/{CLIENT_CN}/state");
    let mut c = v5::connect({
        let mut o = rumqttc::v5::MqttOptions::new(unique("dev"), "127.0.0.1", port);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            pki.client_config(Some(&pki.client)),
        )));
        o
    })
    .await;
    let codes = c.subscribe(&own, v5::QoS::AtLeastOnce).await;
    assert!(
        matches!(
            codes[0],
            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
        ),
        "{codes:?}"
    );
    c.publish(&own, v5::QoS::AtLeastOnce, false, b"up").await;
    assert_eq!(
        &c.recv_publish(WAIT).await.expect("own topic").payload[..],
        b"up"
    );
    let codes = c.subscribe("fleet/#", v5::QoS::AtLeastOnce).await;
    assert!(
        matches!(
            codes[0],
            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
        ),
        "certificate rule: {codes:?}"
    );
    let codes = c
        .subscribe("users/someone-else/#", v5::QoS::AtLeastOnce)
        .await;
    assert!(
        matches!(
            codes[0],
            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized
        ),
        "{codes:?}"
    );
    // A user name in CONNECT does not override the certificate's.
    assert_eq!(
        tls_login(
            port,
            pki.client_config(Some(&pki.client)),
            Some("admin"),
            Some("x")
        )
        .await,
        Some(0)
    );
    // Without a certificate, or over plain TCP, nobody gets in anonymously.
    assert_eq!(
        tls_login(port, pki.client_config(None), None, None).await,
        Some(0x87)
    );
    assert_eq!(
        security::login_code(&b.addr(), raw::V5, None, None).await,
        0x87
    );
}

#[test]
fn bad_tls_files_stop_the_start_naming_the_key() {
    if tern_tests::external_broker().is_some() {
        return;
    }
    let pki = Pki::generate();
    let port = free_port();
    let mut env = pki.tls_env(port, false);
    env[2].1 = "/nonexistent/server.pem".to_owned();
    let mut b = Broker::configured_stopped(&env_refs(&env), "bad TLS file").expect("broker");
    let failure = b
        .try_start(Duration::from_secs(10))
        .expect_err("must not start");
    assert!(
        failure.log.contains("listeners.tls.cert"),
        "{}",
        failure.log
    );

    // A key that does not belong to the certificate.
    let mut env = pki.tls_env(port, false);
    env[3].1 = security::path(&pki.client.key);
    let mut b = Broker::configured_stopped(&env_refs(&env), "bad TLS key").expect("broker");
    let failure = b
        .try_start(Duration::from_secs(10))
        .expect_err("must not start");
    assert!(failure.log.contains("listeners.tls"), "{}", failure.log);
}
