//! Access control in the broker: parking a CONNECT while the I/O layer checks its
//! credentials, and the ACL checks on publish, subscribe, delivery and wills.

use std::time::Instant;

use bytestring::ByteString;

use super::connection::{ConnId, ConnPhase};
use super::session::SessionId;
use super::{Broker, Output};
use crate::auth::acl::{Acl, Action};
use crate::auth::{AuthRequest, Identity};
use crate::mqtt::packet::{Connect, Packet};

/// Packets a client may pipeline behind its CONNECT while it is being authenticated.
const MAX_PARKED_PACKETS: usize = 64;

impl Broker {
    /// From now on every CONNECT waits for `handle_authenticated` (see
    /// [`Output::Authenticate`]).
    pub fn require_authentication(&mut self, required: bool) {
        self.require_auth = required;
    }

    /// Sets the access rules (`None`: everything allowed). Applies to later actions.
    pub fn set_acl(&mut self, acl: Option<Acl>) {
        self.acl = acl;
    }

    /// Records the identity of the TLS client certificate of `conn` (CN or SAN), for
    /// authentication and ACL rules. Call right after `handle_open`.
    pub fn set_certificate_identity(&mut self, conn: ConnId, identity: ByteString) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.identity.certificate = Some(identity);
        }
    }

    pub(super) fn start_authentication(&mut self, conn: ConnId, connect: Box<Connect>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.version = connect.protocol;
        c.phase = ConnPhase::Authenticating;
        let request = AuthRequest {
            client_id: connect.client_id.clone(),
            username: connect.username.clone(),
            password: connect.password.clone(),
            certificate: c.identity.certificate.clone(),
        };
        c.parked = Some((connect, Vec::new()));
        self.outbox.push(Output::Authenticate(conn, request));
    }

    /// Keeps a packet pipelined behind a CONNECT that is being authenticated.
    pub(super) fn park(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match &mut c.parked {
            Some((_, packets)) if packets.len() < MAX_PARKED_PACKETS => packets.push(packet),
            _ => {
                tracing::info!(?conn, "too many packets before CONNACK; closing");
                self.close(conn, None, now);
            }
        }
    }

    /// The answer to an [`Output::Authenticate`]: `Ok` with the user name to use (the
    /// one from CONNECT, or one the authenticator derived, e.g. from a certificate),
    /// or `Err` with the CONNACK reason code (0x86 bad user name or password, 0x87 not
    /// authorized, 0x8A banned, 0x9F connection rate exceeded).
    pub fn handle_authenticated(
        &mut self,
        conn: ConnId,
        result: Result<Option<ByteString>, u8>,
        now: Instant,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.phase != ConnPhase::Authenticating {
            return;
        }
        let Some((mut connect, pipelined)) = c.parked.take() else {
            return;
        };
        c.phase = ConnPhase::AwaitingConnect;
        match result {
            Ok(username) => {
                if username.is_some() {
                    connect.username = username;
                }
                self.handle_connect(conn, *connect, now);
                for packet in pipelined {
                    self.handle_packet(conn, packet, now);
                }
            }
            Err(code) => {
                tracing::info!(?conn, client_id = %connect.client_id, username = ?connect.username.as_deref(), code, "authentication refused");
                self.refuse(conn, code, now);
            }
        }
    }

    /// May `identity` publish to `topic`?
    pub(super) fn may_publish(&self, identity: &Identity, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.allows(identity, Action::Publish, topic))
    }

    /// May the session subscribe with `filter`?
    pub(super) fn may_subscribe(&self, conn: ConnId, filter: &str) -> bool {
        let Some(acl) = &self.acl else {
            return true;
        };
        self.conns
            .get(&conn)
            .is_some_and(|c| acl.allows(&c.identity, Action::Subscribe, filter))
    }

    /// May a message on `topic` be delivered to session `sid`?
    pub(super) fn may_read(&self, sid: SessionId, topic: &str) -> bool {
        match &self.acl {
            None => true,
            Some(acl) if acl.reads_unrestricted() => true,
            Some(acl) => self
                .sessions
                .get(&sid)
                .is_some_and(|s| acl.allows_read(&s.identity, topic)),
        }
    }
}
