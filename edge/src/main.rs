//! The `tern-edge` binary (work in progress).

fn main() {}
