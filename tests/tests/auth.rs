//! Authentication over the wire: the password file (argon2id, managed with
//! `tern-edge passwd`), anonymous access, and the per-address limit on failed logins.
//! Every test starts its own tern-edge (skipped under an external broker).

mod common;
mod security;

use std::time::Duration;

use common::v4;
use security::{login, login_code, passwd, password_file, path, read_packet, WAIT};
use tern_tests::{raw, unique, Broker};
use tokio::io::AsyncWriteExt;

const OK: u8 = 0x00;
const BAD_CREDENTIALS_V5: u8 = 0x86;
const BAD_CREDENTIALS_V4: u8 = 4;
const NOT_AUTHORIZED_V5: u8 = 0x87;
const NOT_AUTHORIZED_V4: u8 = 5;
const RATE_EXCEEDED_V5: u8 = 0x9F;

/// A broker that requires a password from `users`; `extra` environment on top.
fn broker(users: &[(&str, &str)], extra: &[(&str, &str)]) -> Option<(Broker, std::path::PathBuf)> {
    let file = password_file(users);
    let file_s = path(&file);
    let mut env = vec![
        ("TERN_AUTH__ALLOW_ANONYMOUS", "false"),
        ("TERN_AUTH__PASSWORD_FILE", file_s.as_str()),
    ];
    env.extend_from_slice(extra);
    Broker::start_configured(&env, "password file").map(|b| (b, file))
}

#[tokio::test]
async fn each_login_path_gets_its_connack_code() {
    let Some((b, _)) = broker(
        &[("alice", "wonderland")],
        &[("TERN_AUTH__MAX_LOGIN_FAILURES", "100")],
    ) else {
        return;
    };
    let addr = b.addr();
    let (v4, v5) = (raw::V4, raw::V5);
    assert_eq!(
        login_code(&addr, v5, Some("alice"), Some("wonderland")).await,
        OK
    );
    assert_eq!(
        login_code(&addr, v4, Some("alice"), Some("wonderland")).await,
        OK
    );
    assert_eq!(
        login_code(&addr, v5, Some("alice"), Some("wrong")).await,
        BAD_CREDENTIALS_V5
    );
    assert_eq!(
        login_code(&addr, v4, Some("alice"), Some("wrong")).await,
        BAD_CREDENTIALS_V4
    );
    assert_eq!(
        login_code(&addr, v5, Some("mallory"), Some("wonderland")).await,
        BAD_CREDENTIALS_V5,
        "unknown user"
    );
    assert_eq!(
        login_code(&addr, v5, Some("alice"), None).await,
        BAD_CREDENTIALS_V5,
        "user name without a password"
    );
    assert_eq!(
        login_code(&addr, v5, None, None).await,
        NOT_AUTHORIZED_V5,
        "anonymous"
    );
    assert_eq!(
        login_code(&addr, v4, None, None).await,
        NOT_AUTHORIZED_V4,
        "anonymous v3.1.1"
    );
    // The password never reaches the log; the failure does.
    let log = b.log();
    assert!(log.contains("login failed"), "{log}");
    assert!(
        !log.contains("wonderland") && !log.contains("wrong"),
        "{log}"
    );
}

#[tokio::test]
async fn a_logged_in_client_works_and_a_refused_one_is_closed() {
    let Some((b, _)) = broker(&[("alice", "wonderland")], &[]) else {
        return;
    };
    let mut o = v4::options(&b, &unique("alice"));
    o.set_credentials("alice", "wonderland");
    let mut c = v4::connect(o).await;
    let topic = unique("auth/ok");
    c.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    c.publish(&topic, v4::QoS::AtLeastOnce, false, b"hi").await;
    let p = c.recv_publish(WAIT).await.expect("own message");
    assert_eq!(&p.payload[..], b"hi");
    c.disconnect().await;

    let (mut refused, code) = login(&b.addr(), raw::V5, Some("alice"), Some("nope"))
        .await
        .expect("CONNACK");
    assert_eq!(code, BAD_CREDENTIALS_V5);
    assert!(
        refused.wait_closed(WAIT).await.is_ok(),
        "closed after the refusal"
    );
}

#[tokio::test]
async fn failed_logins_are_limited_per_address() {
    let Some((b, _)) = broker(&[("alice", "wonderland")], &[]) else {
        return;
    };
    let addr = b.addr();
    for i in 0..5 {
        assert_eq!(
            login_code(&addr, raw::V5, Some("alice"), Some(&format!("guess-{i}"))).await,
            BAD_CREDENTIALS_V5,
            "guess {i}"
        );
    }
    // The address used up its allowance: even the right password is not checked now.
    assert_eq!(
        login_code(&addr, raw::V5, Some("alice"), Some("wonderland")).await,
        RATE_EXCEEDED_V5
    );
    assert_eq!(
        login_code(&addr, raw::V4, Some("alice"), Some("wonderland")).await,
        NOT_AUTHORIZED_V4,
        "v3.1.1 has no 0x9F: return code 5"
    );
    // Another address is not affected (127.0.0.2 is loopback too).
    let code = login_from("127.0.0.2", &addr, "alice", "wonderland").await;
    assert_eq!(code, Some(OK), "another address");
    let log = b.log();
    assert!(log.contains("too many failed logins"), "{log}");
    assert!(!log.contains("guess-"), "passwords are never logged: {log}");
}

/// A v5 login from local address `from`; the CONNACK code, if one came.
async fn login_from(from: &str, addr: &str, user: &str, password: &str) -> Option<u8> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    let mut stream = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let connect = security::connect_bytes(raw::V5, &unique("from"), Some(user), Some(password));
    stream.write_all(&connect).await.expect("send");
    let mut buf = Vec::new();
    let p = read_packet(&mut stream, &mut buf).await?;
    Some(p.connack(raw::V5).expect("CONNACK").code)
}

#[tokio::test]
async fn password_file_changes_apply_without_restart() {
    let Some((b, file)) = broker(
        &[("alice", "wonderland")],
        &[("TERN_AUTH__MAX_LOGIN_FAILURES", "100")],
    ) else {
        return;
    };
    let addr = b.addr();
    assert_eq!(
        login_code(&addr, raw::V5, Some("bob"), Some("builder")).await,
        BAD_CREDENTIALS_V5
    );
    let (ok, _, err) = passwd(&["add", &path(&file), "bob"], "builder\n");
    assert!(ok, "{err}");
    assert_eq!(
        login_code(&addr, raw::V5, Some("bob"), Some("builder")).await,
        OK
    );
    let (ok, _, err) = passwd(&["remove", &path(&file), "bob"], "");
    assert!(ok, "{err}");
    assert_eq!(
        login_code(&addr, raw::V5, Some("bob"), Some("builder")).await,
        BAD_CREDENTIALS_V5
    );
    assert_eq!(
        login_code(&addr, raw::V5, Some("alice"), Some("wonderland")).await,
        OK
    );
}

#[tokio::test]
async fn anonymous_allowed_still_checks_given_passwords() {
    let Some((b, _)) = broker(
        &[("alice", "wonderland")],
        &[("TERN_AUTH__ALLOW_ANONYMOUS", "true")],
    ) else {
        return;
    };
    let addr = b.addr();
    assert_eq!(login_code(&addr, raw::V5, None, None).await, OK);
    assert_eq!(
        login_code(&addr, raw::V5, Some("alice"), Some("wonderland")).await,
        OK
    );
    assert_eq!(
        login_code(&addr, raw::V5, Some("alice"), Some("nope")).await,
        BAD_CREDENTIALS_V5
    );
}

#[tokio::test]
async fn many_logins_at_once_all_get_their_answer() {
    let Some((b, _)) = broker(&[("alice", "wonderland")], &[]) else {
        return;
    };
    let addr = b.addr();
    let started = std::time::Instant::now();
    let logins: Vec<_> = (0..24)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                login_code(&addr, raw::V5, Some("alice"), Some("wonderland")).await
            })
        })
        .collect();
    for l in logins {
        assert_eq!(l.await.expect("task"), OK);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn passwd_command_manages_the_file() {
    let dir = std::env::temp_dir().join(unique("tern-passwd-cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    let f = path(&file);
    let (ok, out, err) = passwd(&["add", &f, "alice"], "wonderland\n");
    assert!(ok, "{err}");
    assert!(out.contains("added"), "{out}");
    let (ok, _, err) = passwd(&["add", &f, "bob"], "builder\n");
    assert!(ok, "{err}");
    let (ok, out, _) = passwd(&["add", &f, "bob"], "other\n");
    assert!(ok && out.contains("updated"), "{out}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(
        text.lines().all(|l| l.contains(":$argon2id$v=19$")),
        "{text}"
    );
    assert!(
        !text.contains("wonderland") && !text.contains("builder"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let (ok, out, _) = passwd(&["list", &f], "");
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["alice", "bob"]);
    let (ok, _, _) = passwd(&["remove", &f, "alice"], "");
    assert!(ok);
    let (ok, _, err) = passwd(&["remove", &f, "alice"], "");
    assert!(!ok && err.contains("no user"), "{err}");
    let (ok, _, err) = passwd(&["add", &f, "carol"], "\n");
    assert!(!ok && err.contains("empty password"), "{err}");
    let (ok, _, err) = passwd(&["add", &f, "a:b"], "x\n");
    assert!(!ok && err.contains("`:`"), "{err}");
    let (ok, out, _) = passwd(&["list", &f], "");
    assert!(ok);
    assert_eq!(out.trim(), "bob");
}

#[test]
fn broker_refuses_to_start_with_a_broken_password_file() {
    if tern_tests::external_broker().is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("tern-passwd-bad"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("passwd");
    std::fs::write(&file, "alice:plaintext-secret\n").expect("write");
    let f = path(&file);
    let mut b = Broker::configured_stopped(&[("TERN_AUTH__PASSWORD_FILE", f.as_str())], "bad file")
        .expect("spawned broker");
    let failure = b
        .try_start(Duration::from_secs(10))
        .expect_err("must not start");
    assert!(failure.status.is_some(), "exited by itself");
    assert!(
        failure.log.contains("auth.password_file"),
        "{}",
        failure.log
    );
    assert!(!failure.log.contains("plaintext-secret"), "{}", failure.log);
}
