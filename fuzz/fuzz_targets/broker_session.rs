//! Fuzzes the sans-IO broker with sequences of events on several connections.
//!
//! The input is a little program: each step picks a connection slot and an event
//! (open, a packet decoded from the following bytes, a decode error, a socket close,
//! time passing, store batches committed or failed). Packets come out of our own
//! decoder, so the fuzzer explores every packet the codec can produce, in any order
//! and state. Besides "no panic", it checks what the I/O layer relies on: nothing is
//! sent to a connection after the broker closed it or after its socket closed, and
//! every store batch is valid for the store while all earlier ones were applied.

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_core::broker::{Broker, BrokerConfig, ConnId, Output};
use tern_core::mqtt::codec::decode;
use tern_core::mqtt::packet::{Packet, ProtocolVersion};
use tern_core::store::{MemoryStore, Snapshot, Store, StoreLimits};

const SLOTS: usize = 4;

struct Slot {
    conn: ConnId,
    version: Option<ProtocolVersion>,
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let config = BrokerConfig {
        receive_maximum: 4,
        max_inflight: 4,
        max_queued_messages: 8,
        max_subscriptions: 8,
        sys_interval: 3,
        ..BrokerConfig::default()
    };
    let mut broker = Broker::new(config, now);
    let persistent = data.first().is_some_and(|b| b & 1 == 1);
    let mut store = MemoryStore::new(StoreLimits {
        max_bytes: Some(4096),
    });
    if persistent {
        broker.restore(Snapshot::empty(), now, 1_000_000);
    }
    let mut slots: Vec<Option<Slot>> = (0..SLOTS).map(|_| None).collect();
    let mut closed: HashSet<ConnId> = HashSet::new();
    let mut gone: HashSet<ConnId> = HashSet::new();
    let mut diverged = false;
    let mut rest = data.get(1..).unwrap_or_default();

    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let slot = usize::from(op >> 5) % SLOTS;
        match op & 0x07 {
            0 => {
                if slots[slot].is_none() {
                    let conn = broker.handle_open(now);
                    slots[slot] = Some(Slot {
                        conn,
                        version: None,
                    });
                }
            }
            1 | 2 | 3 => {
                // A length byte, then that many bytes to decode as packets.
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let take = usize::from(len).min(tail.len());
                let (bytes, tail) = tail.split_at(take);
                rest = tail;
                let Some(s) = slots[slot].as_mut() else {
                    continue;
                };
                let mut buf = BytesMut::from(bytes);
                loop {
                    match decode(&mut buf, s.version, 1 << 16) {
                        Ok(Some(packet)) => {
                            if let Packet::Connect(c) = &packet {
                                s.version.get_or_insert(c.protocol);
                            }
                            broker.handle_packet(s.conn, packet, now);
                        }
                        Ok(None) => break,
                        Err(error) => {
                            broker.handle_decode_error(s.conn, &error, now);
                            break;
                        }
                    }
                }
            }
            4 => {
                if let Some(s) = slots[slot].take() {
                    broker.handle_closed(s.conn, now);
                    gone.insert(s.conn);
                }
            }
            5 => {
                now += Duration::from_millis(u64::from(op >> 3) * 250);
                if broker.poll_timeout().is_some_and(|t| t <= now) {
                    broker.handle_timeout(now);
                }
            }
            _ => {
                while let Some(batch) = broker.poll_store_batch() {
                    match store.apply(&batch.ops) {
                        Ok(()) => broker.handle_store_committed(batch.id),
                        Err(tern_core::store::StoreError::Full { .. }) => {
                            // From here the broker keeps state the store refused.
                            diverged = true;
                            broker.handle_store_failed(batch.id, true, now);
                        }
                        Err(e) => {
                            // The broker's op stream must always be valid for the
                            // store, as long as every earlier batch was applied.
                            assert!(diverged, "broker issued an invalid batch: {e}");
                            broker.handle_store_failed(batch.id, false, now);
                        }
                    }
                }
            }
        }
        while let Some(out) = broker.poll_output() {
            match out {
                Output::Send(conn, _) => {
                    assert!(!closed.contains(&conn), "send after Close to {conn:?}");
                    assert!(
                        !gone.contains(&conn),
                        "send after the socket closed to {conn:?}"
                    );
                }
                Output::Close(conn) => {
                    closed.insert(conn);
                }
                Output::Authenticate(..) => unreachable!("authentication is not required here"),
                Output::Injected { .. } => unreachable!("nothing is injected here"),
            }
        }
    }
});
