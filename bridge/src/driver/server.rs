//! The cloud's bridge acceptor: one task per gateway connection.
//!
//! A connection first waits for the Hello. Its gateway id must equal the identity of
//! the client certificate (its CN), or the gateway is refused with a log line on both
//! sides. A gateway that connects again while its previous connection is still up
//! replaces it: the old one is closed and its pending deliveries settle before the new
//! one reads the port's durable cursors, so the resend after the new Welcome is
//! deduplicated against everything the old connection delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::conn::{flush_control, Conn, End};
use super::{now, stopped, Limits, Status, StatusSnapshot};
use crate::frame::Hello;
use crate::link::{Event, Link};
use crate::port::PortFactory;
use crate::transport::{Acceptor, Channel};

/// Status of every gateway that connected since start, by gateway id.
#[derive(Debug, Default)]
pub struct ServerStatus {
    gateways: Mutex<BTreeMap<String, Arc<Status>>>,
}

impl ServerStatus {
    /// A copy of every gateway's status.
    pub fn snapshot(&self) -> BTreeMap<String, StatusSnapshot> {
        self.lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.snapshot()))
            .collect()
    }

    /// The status of `gateway_id`, if it ever connected.
    pub fn gateway(&self, gateway_id: &str) -> Option<StatusSnapshot> {
        self.lock().get(gateway_id).map(|s| s.snapshot())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Status>>> {
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, gateway_id: &str) -> Arc<Status> {
        Arc::clone(self.lock().entry(gateway_id.to_string()).or_default())
    }
}

/// The live connection of a gateway.
struct Registered {
    id: u64,
    replace: Arc<Notify>,
    done: watch::Receiver<bool>,
}

/// Live connections by gateway id.
#[derive(Default)]
struct Registry {
    next_id: u64,
    live: HashMap<String, Registered>,
}

/// Accepts gateways on `acceptor` until `shutdown` becomes true (or its sender is
/// dropped), then closes their connections and returns once they have ended.
pub async fn run_server(
    acceptor: Acceptor,
    factory: Arc<dyn PortFactory>,
    limits: Limits,
    status: Arc<ServerStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = acceptor.accept() => match accepted {
                None => break,
                // Handshake failures are logged by the transport.
                Some(Err(e)) => tracing::debug!(error = %e, "bridge: gateway handshake failed"),
                Some(Ok(channel)) => {
                    tasks.spawn(serve(
                        channel,
                        Arc::clone(&factory),
                        limits.clone(),
                        Arc::clone(&status),
                        Arc::clone(&registry),
                        shutdown.clone(),
                    ));
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    // Tell the gateways now, not after their idle timeout, so they reconnect as soon
    // as the cloud is back.
    acceptor.shutdown("cloud shutting down").await;
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

/// One gateway connection, from Hello to close.
async fn serve(
    channel: Channel,
    factory: Arc<dyn PortFactory>,
    limits: Limits,
    status: Arc<ServerStatus>,
    registry: Arc<Mutex<Registry>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Channel {
        peer,
        sender,
        mut receiver,
    } = channel;
    let remote = peer.remote;
    let mut link = Link::server(limits, now());

    // The Hello (or why there is none).
    let hello: Hello = loop {
        let mut hello = None;
        let mut ended = None;
        while let Some(event) = link.poll_event() {
            match event {
                Event::Hello(h) => hello = Some(h),
                Event::Closed(e) => ended = Some(e.to_string()),
                _ => {}
            }
        }
        if let Some(reason) = ended {
            tracing::warn!(%remote, %reason, "bridge: gateway connection ended before its hello");
            flush_control(&mut link, &sender).await;
            sender.close(&reason);
            return;
        }
        if let Some(h) = hello {
            break h;
        }
        let deadline = link.poll_timeout();
        tokio::select! {
            _ = stopped(&mut shutdown) => {
                sender.close("shutting down");
                return;
            }
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            } => link.handle_timeout(now()),
            r = receiver.recv() => match r {
                Ok((lane, frame)) => link.handle_bytes(lane, frame, now()),
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "bridge: gateway left before its hello");
                    return;
                }
            },
        }
    };
    let gateway = hello.gateway_id.clone();

    let refuse = |link: &mut Link, reason: String| {
        tracing::warn!(%remote, gateway_id = %gateway, %reason, "bridge: refused gateway");
        link.refuse(&reason);
        reason
    };
    match peer.identity.as_deref() {
        Some(id) if id == gateway => {}
        identity => {
            let reason = match identity {
                Some(id) => format!(
                    "gateway id {gateway:?} does not match the certificate's identity {id:?}"
                ),
                None => format!("gateway id {gateway:?}: the certificate carries no identity"),
            };
            let reason = refuse(&mut link, reason);
            flush_control(&mut link, &sender).await;
            sender.close(&reason);
            return;
        }
    }

    // Take over from a previous connection of this gateway.
    let replace = Arc::new(Notify::new());
    let (done_tx, done_rx) = watch::channel(false);
    let (id, previous) = {
        let mut reg = lock(&registry);
        reg.next_id += 1;
        let id = reg.next_id;
        let previous = reg.live.insert(
            gateway.clone(),
            Registered {
                id,
                replace: Arc::clone(&replace),
                done: done_rx,
            },
        );
        (id, previous)
    };
    if let Some(mut old) = previous {
        tracing::info!(%remote, gateway_id = %gateway, "bridge: gateway reconnected; closing its previous connection");
        old.replace.notify_one();
        while !*old.done.borrow_and_update() {
            if old.done.changed().await.is_err() {
                break;
            }
        }
    }

    let classes = u8::try_from(hello.classes.len()).unwrap_or(u8::MAX);
    let (end, opened) = match factory.open(&gateway, classes, &hello.downstream) {
        Err(reason) => {
            let reason = refuse(&mut link, reason);
            flush_control(&mut link, &sender).await;
            sender.close(&reason);
            (None, false)
        }
        Ok(port) => {
            let delivered: Vec<u64> = (0..classes).map(|c| port.delivered(c)).collect();
            let gw_status = status.entry(&gateway);
            gw_status.set_classes(&hello.classes);
            gw_status.update(|s| {
                s.endpoint = Some(remote.to_string());
                s.transport = Some(peer.kind);
            });
            link.accept(&delivered, now());
            let label = format!("gateway {gateway} at {remote}");
            let conn = Conn::new(link, port, sender, receiver, gw_status, label);
            let (end, opened) = conn.run(&mut shutdown, Some(&replace)).await;
            (Some(end), opened)
        }
    };
    if let Some(end) = &end {
        match end {
            End::Shutdown | End::Replaced => {
                tracing::info!(%remote, gateway_id = %gateway, reason = %end, "bridge: gateway disconnected");
            }
            _ if opened => {
                tracing::info!(%remote, gateway_id = %gateway, reason = %end, "bridge: gateway disconnected");
            }
            _ => {
                tracing::warn!(%remote, gateway_id = %gateway, reason = %end, "bridge: gateway connection failed");
            }
        }
    }
    let _ = done_tx.send(true);
    let mut reg = lock(&registry);
    if reg.live.get(&gateway).is_some_and(|r| r.id == id) {
        reg.live.remove(&gateway);
    }
}
