//! The MQTT broker as a sans-IO state machine.
//!
//! The I/O layer reports what happened (`handle_open`, `handle_packet`,
//! `handle_decode_error`, `handle_closed`, `handle_timeout`) with the current time,
//! then drains [`Output`]s with `poll_output` and asks `poll_timeout` when to call
//! `handle_timeout` next. Nothing here reads a clock or touches a socket, so every
//! behaviour is tested by feeding packets and instants.
//! (CONTRACT — implementation in progress.)

mod config;

use std::time::Instant;

pub use config::BrokerConfig;

use crate::mqtt::codec::DecodeError;
use crate::mqtt::packet::Packet;

/// Identifies one network connection for its whole life (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the I/O layer must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Encode and write `Packet` to the connection (in order of output).
    Send(ConnId, Packet),
    /// Flush what was sent so far, then close the connection. No further input for
    /// this connection is expected except `handle_closed`.
    Close(ConnId),
}

/// The broker: sessions, router, retained messages, will timers and `$SYS` counters.
#[derive(Debug)]
pub struct Broker {
    _config: BrokerConfig,
}

impl Broker {
    /// A broker with `config`, started at `now` (for `$SYS/broker/uptime`).
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let _ = now;
        Broker { _config: config }
    }

    /// A connection was accepted. The client must send CONNECT before the connect
    /// timeout, or it is closed.
    pub fn handle_open(&mut self, now: Instant) -> ConnId {
        let _ = now;
        todo!()
    }

    /// A packet was decoded from `conn`.
    pub fn handle_packet(&mut self, conn: ConnId, packet: Packet, now: Instant) {
        let _ = (conn, packet, now);
        todo!()
    }

    /// The bytes from `conn` could not be decoded: answer with the protocol's error
    /// (v5 DISCONNECT / CONNACK with the reason code where possible) and close.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: &DecodeError, now: Instant) {
        let _ = (conn, error, now);
        todo!()
    }

    /// The socket of `conn` closed (EOF, error, or after an `Output::Close`).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        let _ = (conn, now);
        todo!()
    }

    /// Time has passed: enforce keep-alives, send delayed wills, expire sessions and
    /// messages, publish `$SYS` counters.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    /// The next thing for the I/O layer to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        todo!()
    }

    /// When `handle_timeout` should be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
}
