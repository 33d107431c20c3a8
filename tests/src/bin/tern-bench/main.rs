//! `tern-bench` (work in progress).

fn main() {}
