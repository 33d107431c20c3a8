#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) on top of the
# committed seed corpus, so regressions in the decoder or the broker machine surface in
# CI. Needs a nightly toolchain (for the sanitizer flags) and cargo-fuzz, which it
# installs when missing. A crash fails the run and leaves its input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain on this machine; skipped (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked --quiet
fi

passed=0
for target in $(cargo +nightly fuzz list); do
  work="$(mktemp -d)"
  echo "fuzz: $target for ${seconds}s"
  status=0
  cargo +nightly fuzz run "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$work.log" 2>&1 || status=$?
  grep -E 'stat::number_of_executed_units|panicked|SUMMARY' "$work.log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$work.log" >&2
  fi
  rm -f "$work.log"
  rm -rf "$work"
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target found a crash (see fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
