//! `tern-edge`: the gateway broker (work in progress).
