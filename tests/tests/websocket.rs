//! MQTT over WebSocket (`[listeners.ws]`, path `/mqtt`, subprotocol `mqtt`) and over
//! WebSocket over TLS (`[listeners.wss]`): rumqttc clients both ways, and a raw
//! WebSocket client for what rumqttc never does: packets split across messages,
//! several packets in one message, a wrong path, a wrong subprotocol, a text message.
//! Every test starts its own tern-edge (skipped under an external broker).

mod common;
mod security;

use std::time::Duration;

use common::{v4, v5};
use futures_util::{SinkExt, StreamExt};
use rumqttc::{TlsConfiguration, Transport};
use security::{connect_bytes, Pki, WAIT};
use tern_tests::{free_port, raw, unique, Broker};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

fn ws_broker(port: u16) -> Option<Broker> {
    let bind = format!("127.0.0.1:{port}");
    Broker::start_configured(
        &[
            ("TERN_LISTENERS__WS__ENABLED", "true"),
            ("TERN_LISTENERS__WS__BIND", bind.as_str()),
        ],
        "WebSocket listener",
    )
}

fn ws_options(port: u16) -> v4::MqttOptions {
    let url = format!("ws://127.0.0.1:{port}/mqtt");
    let mut o = v4::MqttOptions::new(unique("ws"), url, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    o.set_transport(Transport::Ws);
    o
}

/// A raw WebSocket connection to `path`, offering `protocol` (if any).
async fn raw_ws(
    port: u16,
    path: &str,
    protocol: Option<&str>,
) -> Result<(WebSocketStream<TcpStream>, Option<String>), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, chosen))
}

/// The next whole MQTT packet from binary messages; `None` on close or timeout.
async fn next_packet(
    ws: &mut WebSocketStream<TcpStream>,
    buf: &mut Vec<u8>,
) -> Option<raw::Packet> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(p)) = raw::split_packet(buf) {
            return Some(p);
        }
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => buf.extend_from_slice(&data),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            _ => return None,
        }
    }
}

#[tokio::test]
async fn rumqttc_over_websocket_talks_to_tcp_clients() {
    let port = free_port();
    let Some(b) = ws_broker(port) else { return };
    let topic = unique("ws/t");
    let mut ws_sub = v4::connect(ws_options(port)).await;
    ws_sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut tcp_pub = v4::client(&b, "tcp").await;
    // Sizes from tiny to several WebSocket-message-sized writes.
    let sizes = [1usize, 100, 5_000, 70_000, 200_000];
    for (i, size) in sizes.iter().enumerate() {
        tcp_pub
            .publish(&topic, v4::QoS::AtLeastOnce, false, &vec![i as u8; *size])
            .await;
    }
    for (i, size) in sizes.iter().enumerate() {
        let p = ws_sub.recv_publish(WAIT).await.expect("over WebSocket");
        assert_eq!(p.payload.len(), *size);
        assert!(p.payload.iter().all(|&b| b == i as u8));
    }
    // And the other way round, v5 over WebSocket.
    let mut tcp_sub = v4::client(&b, "tcp-sub").await;
    tcp_sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let url = format!("ws://127.0.0.1:{port}/mqtt");
    let mut o = rumqttc::v5::MqttOptions::new(unique("ws5"), url, port);
    o.set_transport(Transport::Ws);
    let mut ws_pub = v5::connect(o).await;
    ws_pub
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"from ws")
        .await;
    let p = tcp_sub.recv_publish(WAIT).await.expect("from WebSocket");
    assert_eq!(&p.payload[..], b"from ws");
    assert!(
        b.log().contains("listening on ws://127.0.0.1:"),
        "{}",
        b.log()
    );
}

#[tokio::test]
async fn packets_split_and_joined_across_messages() {
    let port = free_port();
    let Some(_b) = ws_broker(port) else { return };
    let (mut ws, chosen) = raw_ws(port, "/mqtt", Some("mqtt")).await.expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqtt"), "subprotocol negotiated");
    // CONNECT in three messages, cut inside the header and inside the client id.
    let connect = connect_bytes(raw::V4, &unique("split"), None, None);
    for part in [&connect[..1], &connect[1..7], &connect[7..]] {
        ws.send(Message::binary(part.to_vec())).await.expect("send");
    }
    let mut buf = Vec::new();
    let p = next_packet(&mut ws, &mut buf).await.expect("CONNACK");
    assert_eq!(p.connack(raw::V4).expect("CONNACK").code, 0);
    // SUBSCRIBE, PUBLISH (to itself) and PINGREQ in one message.
    let topic = unique("ws/joined");
    let mut joined = raw::subscribe(raw::V4, 1, &[(&topic, 0)], &raw::Props::new());
    joined.extend(raw::PublishOut::new(&topic, b"joined").encode(raw::V4));
    joined.extend(raw::pingreq());
    ws.send(Message::binary(joined)).await.expect("send");
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let p = next_packet(&mut ws, &mut buf).await.expect("packet");
        if p.kind == raw::kind::PUBLISH {
            assert_eq!(p.publish(raw::V4).expect("PUBLISH").payload, b"joined");
        }
        kinds.push(p.kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [raw::kind::PUBLISH, raw::kind::SUBACK, raw::kind::PINGRESP]
    );
}

#[tokio::test]
async fn wrong_path_subprotocol_or_text_is_refused() {
    let port = free_port();
    let Some(b) = ws_broker(port) else { return };
    let Err(err) = raw_ws(port, "/other", Some("mqtt")).await else {
        panic!("wrong path accepted");
    };
    assert!(err.contains("404"), "{err}");
    let Err(err) = raw_ws(port, "/mqtt", Some("chat")).await else {
        panic!("wrong subprotocol accepted");
    };
    assert!(err.contains("400"), "{err}");
    // mqttv3.1 (old clients) is accepted too.
    let (_, chosen) = raw_ws(port, "/mqtt", Some("mqttv3.1"))
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqttv3.1"));
    // MQTT over WebSocket is binary: a text message ends the connection.
    let (mut ws, _) = raw_ws(port, "/mqtt", Some("mqtt")).await.expect("upgrade");
    ws.send(Message::text("hello")).await.expect("send");
    let mut buf = Vec::new();
    assert!(next_packet(&mut ws, &mut buf).await.is_none(), "closed");
    // The broker still serves others.
    let mut c = v4::client(&b, "after").await;
    c.subscribe(&unique("ok"), v4::QoS::AtMostOnce).await;
}

#[tokio::test]
async fn rumqttc_over_secure_websocket() {
    let pki = Pki::generate();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let (cert, key) = (
        security::path(&pki.server.cert),
        security::path(&pki.server.key),
    );
    let ca = security::path(&pki.ca);
    let env = [
        ("TERN_LISTENERS__WSS__ENABLED", "true"),
        ("TERN_LISTENERS__WSS__BIND", bind.as_str()),
        // The files come from [listeners.tls] (not enabled itself).
        ("TERN_LISTENERS__TLS__CERT", cert.as_str()),
        ("TERN_LISTENERS__TLS__KEY", key.as_str()),
        ("TERN_LISTENERS__TLS__CLIENT_CA", ca.as_str()),
    ];
    let Some(b) = Broker::start_configured(&env, "WSS listener") else {
        return;
    };
    let url = format!("wss://127.0.0.1:{port}/mqtt");
    let mut o = v4::MqttOptions::new(unique("wss"), url, port);
    o.set_transport(Transport::wss_with_config(TlsConfiguration::Rustls(
        pki.client_config(Some(&pki.client)),
    )));
    let mut wss = v4::connect(o).await;
    let topic = unique("wss/t");
    wss.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut tcp = v4::client(&b, "tcp").await;
    tcp.publish(&topic, v4::QoS::AtLeastOnce, false, b"secure")
        .await;
    let p = wss.recv_publish(WAIT).await.expect("over WSS");
    assert_eq!(&p.payload[..], b"secure");
    assert!(
        b.log().contains("listening on wss://127.0.0.1:"),
        "{}",
        b.log()
    );
}
