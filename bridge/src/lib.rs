//! `tern-bridge`: the store-and-forward link between a gateway (`tern-edge`) and the
//! cloud (`tern-cloud`).
//!
//! Layers, bottom up:
//! - [`transport`]: QUIC (quinn, rustls/ring, ALPN `tern-bridge/1`, mutual TLS) with a
//!   TLS-over-TCP fallback; moves length-delimited frames on numbered lanes, one QUIC
//!   stream per lane so a bulk backlog never blocks an alarm.
//! - [`frame`]: the frames of the link protocol and their binary encoding.
//! - [`link`]: the sans-IO protocol state of one connection (handshake, batches,
//!   cumulative acks, dedup by sequence, windows, pacing), tested without sockets.
//! - [`driver`]: the tokio tasks that run a link over a transport against a [`Port`],
//!   the local broker as the bridge sees it.
//! - [`certs`] (feature `server`): the CA, server and gateway certificates (rcgen).

pub mod driver;
pub mod frame;
pub mod link;
pub mod port;
pub mod transport;

#[cfg(feature = "server")]
pub mod certs;

pub use port::{DeliverError, Port, PortFactory};
