//! The MQTT broker as a sans-IO state machine.
//!
//! The I/O layer reports what happened (`handle_open`, `handle_packet`,
//! `handle_decode_error`, `handle_closed`, `handle_timeout`) with the current time,
//! then drains [`Output`]s with `poll_output` and asks `poll_timeout` when to call
//! `handle_timeout` next. Nothing here reads a clock or touches a socket, so every
//! behaviour is tested by feeding packets and instants (see `tests`).
//!
//! The work is split by concern: `connect` (CONNECT, takeover, session resume,
//! DISCONNECT, close), `publish` (inbound PUBLISH, routing, outbound delivery and the
//! QoS 1/2 flows), `subscribe` (SUBSCRIBE/UNSUBSCRIBE, retained on subscribe),
//! `will` (wills and their delay), `sys` (`$SYS/broker/...`).

mod access;
#[cfg(test)]
mod access_tests;
mod bridge;
#[cfg(test)]
mod bridge_tests;
mod config;
mod connect;
mod connection;
mod outbox;
mod persist;
#[cfg(test)]
mod persist_tests;
mod publish;
mod session;
mod subscribe;
mod sys;
#[cfg(test)]
mod tests;
mod will;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytestring::ByteString;

pub use bridge::{Backlog, BridgeQueue, PeekLimits, BRIDGE_CLIENT_PREFIX};
pub use config::BrokerConfig;
pub use connection::ConnId;
pub use outbox::StoreBatch;
pub use sys::{Counts, Stats};

use self::connection::{ConnPhase, Connection};
use self::outbox::Outbox;
use self::persist::Persistence;
use self::session::{Session, SessionId};
use self::will::PendingWill;
use crate::auth::acl::Acl;
use crate::auth::AuthRequest;
use crate::mqtt::codec::DecodeError;
use crate::mqtt::packet::{Disconnect, Packet};
use crate::mqtt::reason;
use crate::retained::RetainedStore;
use crate::router::{Route, Router};

/// How often connections and sessions are scanned for keep-alive and expiry. A scan
/// per second keeps `poll_timeout` O(1) with tens of thousands of connections, at the
/// price of enforcing timeouts up to this much late.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a backed-up subscriber may go without acknowledging anything before it
/// stops slowing its publishers down (see `Broker::is_congested`).
const STALL_AFTER: Duration = Duration::from_secs(1);

/// What the I/O layer must do next.
// Boxing the packet would cost an allocation per delivered message; outputs are
// moved once from the queue to the I/O layer, so the size difference is cheap.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Encode and write `Packet` to the connection (in order of output).
    Send(ConnId, Packet),
    /// Check these credentials, then call `Broker::handle_authenticated` for `ConnId`.
    Authenticate(ConnId, AuthRequest),
    /// Flush what was sent so far, then close the connection. No further input for
    /// this connection is expected except `handle_closed`.
    Close(ConnId),
    /// The messages of `Broker::inject` call `token` are routed and `cursor` is set,
    /// durably if `durable`; if not, nothing of it may be acknowledged to the peer.
    Injected {
        /// The caller's token.
        token: u64,
        /// The cursor the call set (name, value).
        cursor: (ByteString, u64),
        /// False when the store batch failed.
        durable: bool,
    },
}

/// The broker: sessions, router, retained messages, will timers and `$SYS` counters.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    started_at: Instant,
    next_conn: u64,
    next_session: u64,
    conns: HashMap<ConnId, Connection>,
    sessions: HashMap<SessionId, Session>,
    by_client_id: HashMap<ByteString, SessionId>,
    router: Router<SessionId>,
    retained: RetainedStore,
    wills: Vec<PendingWill>,
    outbox: Outbox,
    persistence: Persistence,
    next_scan: Instant,
    next_sys: Option<Instant>,
    stats: Stats,
    /// Access rules; `None`: everything is allowed.
    acl: Option<Acl>,
    /// CONNECTs wait for `handle_authenticated`.
    require_auth: bool,
    /// The store is close to its budget: QoS 1/2 PUBLISHes are refused up front.
    store_nearly_full: bool,
    /// Online sessions whose queue passed its high-water mark: publishers should be
    /// slowed down (see `is_congested`).
    congested: std::collections::HashSet<SessionId>,
    /// Scratch space for `Router::route`, kept to avoid an allocation per message.
    route_buf: Vec<Route<SessionId>>,
    /// Named cursors as last made durable (bridge sequences and inbound positions).
    cursors: HashMap<ByteString, u64>,
    /// Sessions that are bridge queues.
    bridge_queues: Vec<SessionId>,
    /// Some bridge queue gained visible messages (see `take_bridge_ready`).
    bridge_ready: bool,
}

impl Broker {
    /// A broker with `config`, started at `now` (for `$SYS/broker/uptime`).
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let next_sys = (config.sys_interval > 0).then_some(now);
        Broker {
            config,
            started_at: now,
            next_conn: 0,
            next_session: 0,
            conns: HashMap::new(),
            sessions: HashMap::new(),
            by_client_id: HashMap::new(),
            router: Router::default(),
            retained: RetainedStore::default(),
            wills: Vec::new(),
            outbox: Outbox::new(),
            persistence: Persistence::default(),
            next_scan: now + SCAN_INTERVAL,
            next_sys,
            stats: Stats::default(),
            acl: None,
            require_auth: false,
            store_nearly_full: false,
            congested: std::collections::HashSet::new(),
            route_buf: Vec::new(),
            cursors: HashMap::new(),
            bridge_queues: Vec::new(),
            bridge_ready: false,
        }
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A connection was accepted. The client must send CONNECT before the connect
    /// timeout, or it is closed.
    pub fn handle_open(&mut self, now: Instant) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns.insert(id, Connection::new(now));
        id
    }

    /// A packet was decoded from `conn`.
    pub fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_activity = now;
        match c.phase {
            ConnPhase::Closing => {}
            ConnPhase::Authenticating => self.park(conn, packet, now),
            ConnPhase::AwaitingConnect => match packet {
                Packet::Connect(connect) if self.require_auth => {
                    self.start_authentication(conn, connect)
                }
                Packet::Connect(connect) => self.handle_connect(conn, *connect, now),
                other => {
                    tracing::info!(?conn, packet = other.name(), "first packet is not CONNECT");
                    self.close(conn, None, now);
                }
            },
            ConnPhase::Connected(sid) => self.handle_connected_packet(conn, sid, packet, now),
        }
    }

    fn handle_connected_packet(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        packet: Packet,
        now: Instant,
    ) {
        match packet {
            Packet::Publish(publish) => self.handle_publish(conn, sid, publish, now),
            Packet::PubAck(ack) => self.handle_puback(conn, sid, ack.packet_id, now),
            Packet::PubRec(rec) => self.handle_pubrec(conn, sid, rec, now),
            Packet::PubRel(rel) => self.handle_pubrel(conn, sid, rel.packet_id),
            Packet::PubComp(comp) => self.handle_pubcomp(conn, sid, comp.packet_id, now),
            Packet::Subscribe(sub) => self.handle_subscribe(conn, sid, sub, now),
            Packet::Unsubscribe(unsub) => self.handle_unsubscribe(conn, sid, unsub, now),
            Packet::PingReq => self.send(conn, Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(conn, sid, d, now),
            Packet::Connect(_) => {
                tracing::info!(?conn, "second CONNECT on a connection");
                self.close(conn, Some(reason::PROTOCOL_ERROR), now);
            }
            Packet::Auth(_) => {
                // Enhanced authentication is not offered (no method is ever accepted at
                // CONNECT), so any AUTH is out of sequence.
                tracing::info!(?conn, "AUTH without an authentication method");
                self.close(conn, Some(reason::PROTOCOL_ERROR), now);
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                tracing::info!(
                    ?conn,
                    packet = other.name(),
                    "server-only packet from a client"
                );
                self.close(conn, Some(reason::PROTOCOL_ERROR), now);
            }
        }
    }

    /// The bytes from `conn` could not be decoded: answer with the protocol's error
    /// (v5 DISCONNECT / CONNACK with the reason code where possible) and close.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: &DecodeError, now: Instant) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        tracing::info!(?conn, %error, "bad packet; closing the connection");
        match (c.phase, error) {
            (ConnPhase::AwaitingConnect, DecodeError::UnsupportedProtocol(_)) => {
                // A 3.1.1-shaped CONNACK is what any client version can read.
                let ack = crate::mqtt::packet::ConnAck {
                    reason_code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                    ..Default::default()
                };
                self.send(conn, Packet::ConnAck(ack));
                self.close(conn, None, now);
            }
            _ => self.close(conn, Some(error.reason_code()), now),
        }
    }

    /// Sends DISCONNECT 0x8B (server shutting down) to v5 clients and closes every
    /// connection. Wills are published as for any connection the server closes.
    pub fn handle_shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            self.close(conn, Some(0x8B), now);
        }
    }

    /// Time has passed: enforce keep-alives, send delayed wills, expire sessions and
    /// messages, publish `$SYS` counters.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_scan {
            self.next_scan = now + SCAN_INTERVAL;
            self.scan_connections(now);
            self.expire_sessions(now);
        }
        self.fire_wills(now);
        if let Some(at) = self.next_sys {
            if now >= at {
                self.publish_sys(now);
                self.next_sys =
                    Some(now + Duration::from_secs(u64::from(self.config.sys_interval)));
            }
        }
    }

    /// True while some connected subscriber that is still acknowledging has more
    /// queued than half of `max_queued_messages` (until it is back under a quarter).
    /// The I/O layer should then pause reading from publishers, so TCP pushes back on
    /// them, instead of letting the queue fill: a full queue drops messages. A
    /// subscriber that acknowledged nothing for `STALL_AFTER` no longer counts, so a
    /// stuck client cannot stop its publishers; its queue fills and drops instead.
    pub fn is_congested(&self, now: Instant) -> bool {
        self.congested.iter().any(|sid| {
            self.sessions
                .get(sid)
                .and_then(|s| s.last_progress)
                .is_some_and(|t| now.saturating_duration_since(t) < STALL_AFTER)
        })
    }

    /// The next thing for the I/O layer to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            let output = self.outbox.poll_output()?;
            // An output held for durability may outlive its socket: drop it then.
            match &output {
                Output::Send(conn, _) | Output::Authenticate(conn, _)
                    if !self.conns.contains_key(conn) => {}
                _ => {
                    self.injected(&output);
                    return Some(output);
                }
            }
        }
    }

    /// When `handle_timeout` should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_scan;
        if let Some(sys) = self.next_sys {
            next = next.min(sys);
        }
        if let Some(will) = self.wills.iter().map(|w| w.at).min() {
            next = next.min(will);
        }
        Some(next)
    }

    fn scan_connections(&mut self, now: Instant) {
        let connect_timeout = Duration::from_secs(u64::from(self.config.connect_timeout));
        let mut expired = Vec::new();
        for (id, c) in &self.conns {
            match c.phase {
                ConnPhase::AwaitingConnect | ConnPhase::Authenticating
                    if now.duration_since(c.opened_at) >= connect_timeout =>
                {
                    expired.push((*id, None));
                }
                ConnPhase::Connected(_) => {
                    if let Some(timeout) = c.keep_alive_timeout {
                        if now.duration_since(c.last_activity) >= timeout {
                            expired.push((*id, Some(reason::KEEP_ALIVE_TIMEOUT)));
                        }
                    }
                }
                _ => {}
            }
        }
        for (id, reason_code) in expired {
            tracing::info!(conn = ?id, "no packet within the keep-alive or connect timeout; closing");
            self.close(id, reason_code, now);
        }
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        self.outbox.push(Output::Send(conn, packet));
    }

    /// Closes `conn` from our side: a v5 DISCONNECT with `reason_code` first when the
    /// client is connected with v5. The will is kept: a server-side close is abnormal.
    fn close(&mut self, conn: ConnId, reason_code: Option<u8>, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let was_connected = matches!(c.phase, ConnPhase::Connected(_));
        if c.phase == ConnPhase::Closing {
            return;
        }
        let v5 = c.version.is_v5();
        // Detach now so nothing more is delivered to a socket that is going away.
        self.detach(conn, now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = ConnPhase::Closing;
        }
        if let (true, true, Some(code)) = (was_connected, v5, reason_code) {
            self.send(conn, Packet::Disconnect(Disconnect::with_reason(code)));
        }
        self.outbox.push(Output::Close(conn));
    }
}
