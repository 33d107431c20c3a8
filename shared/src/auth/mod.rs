//! Authentication and authorization seams of the broker machine.
//!
//! Verifying a password is slow on purpose (argon2id) and so is not done inside the
//! sans-IO broker: when authentication is required, the broker parks a CONNECT and
//! asks the I/O layer with [`crate::broker::Output::Authenticate`]; the answer comes
//! back through `Broker::handle_authenticated`. Authorization ([`acl`]) is a cheap
//! match and is decided inside the broker.

pub mod acl;

use bytes::Bytes;
use bytestring::ByteString;

/// Who a connection is, for access control.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User name given in CONNECT (or taken from the client certificate).
    pub username: Option<ByteString>,
    /// Client identifier.
    pub client_id: ByteString,
    /// Identity of the TLS client certificate (CN or SAN), if one was presented.
    pub certificate: Option<ByteString>,
}

/// What the I/O layer needs to decide whether a CONNECT may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// Client identifier from CONNECT.
    pub client_id: ByteString,
    /// User name from CONNECT.
    pub username: Option<ByteString>,
    /// Password from CONNECT (never logged).
    pub password: Option<Bytes>,
    /// Identity of the TLS client certificate, if any.
    pub certificate: Option<ByteString>,
}
