#!/usr/bin/env bash
# The whole test suite, as README.md names it and .ci/run runs it, on a fresh machine
# that has only the Rust toolchain, Python 3.11 and gcc: it installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "edge links no cloud-only crates"
if cargo tree -p tern-edge -e normal --prefix none | grep -E '^(kafka-protocol|amq-protocol|openraft|object_store) '; then
  echo "tern-edge depends on a cloud-only crate" >&2
  exit 1
fi

step "build"
cargo build --workspace --locked

step "rust tests"
cargo test --workspace --locked

step "python interop tests (paho-mqtt)"
bash tests/run-python.sh

step "tern-bench smoke run"
bash tests/bench/smoke.sh

step "firmware: aarch64 build under qemu, driven by a real MQTT client"
bash firmware-targets/test-qemu.sh

step "fuzzing (bounded)"
bash tests/fuzz.sh "${FUZZ_SECONDS:-60}"
