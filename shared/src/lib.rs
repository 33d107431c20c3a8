//! `tern-core`: the protocol core that both `tern-edge` and `tern-cloud` compile.
//!
//! Everything here is sans-IO: decoders turn bytes into packets, the broker machine
//! turns packets and time into packets to send, and nothing touches a socket or a
//! clock of its own. The binaries only move bytes between sockets and these machines.

pub mod auth;
pub mod broker;
pub mod message;
pub mod mqtt;
pub mod retained;
pub mod router;
pub mod store;
