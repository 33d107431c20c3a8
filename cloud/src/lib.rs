//! `tern-cloud`: the cloud node (MQTT, Kafka, AMQP, bridge acceptor, streams, Raft).
//!
//! Not implemented yet (see the bridge issue for its first version). This crate is an
//! empty placeholder so the workspace has its fixed shape; it exports nothing.
