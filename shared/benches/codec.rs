//! Placeholder: the benchmark lands with its module.

fn main() {}
