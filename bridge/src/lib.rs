//! `tern-bridge`: the QUIC store-and-forward link between a gateway and the cloud.
//!
//! Not implemented yet (see the bridge issue). This crate is an empty placeholder so the
//! workspace has its fixed shape; it exports nothing and nothing depends on it.
