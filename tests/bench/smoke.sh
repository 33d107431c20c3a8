#!/usr/bin/env bash
# tests/bench/smoke.sh — a short tern-bench run against tern-edge, for CI.
#
# Starts tern-edge on a free loopback port (port 0, read back from its log), runs
# fan-in at QoS 1 for 2 seconds — 4 publishers, 1 wildcard subscriber — with full
# verification (every message delivered once, in order, intact; every PUBLISH
# acknowledged), then stops tern-edge by PID. Exits non-zero on any loss or failure.
#
# It asserts no timing: the rate is held low (2,000 msg/s in total) so that even a
# debug build on a busy machine keeps up, and the figures it prints are not benchmarks
# (tests/bench/compare.sh is).
#
# Usage: tests/bench/smoke.sh [--release]   (default: the debug build)

set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
PROFILE=debug
FLAGS=()
if [ "${1:-}" = "--release" ]; then
    PROFILE=release
    FLAGS=(--release)
fi

(cd "$ROOT" && cargo build --locked "${FLAGS[@]}" -p tern-edge -p tern-tests --bins)
EDGE="$TARGET/$PROFILE/tern-edge"
BENCH="$TARGET/$PROFILE/tern-bench"

WORK="$(mktemp -d /tmp/tern-bench-smoke.XXXXXX)"
EDGE_PID=""
cleanup() {
    if [ -n "$EDGE_PID" ]; then
        kill "$EDGE_PID" 2>/dev/null || true
        wait "$EDGE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

TERN_LISTENERS__TCP__BIND=127.0.0.1:0 TERN_NODE__DATA_DIR="$WORK/data" TERN_AUTH__ALLOW_ANONYMOUS=true TERN_ADMIN__BIND=127.0.0.1:0 \
    "$EDGE" --profile edge-gateway >"$WORK/edge.log" 2>&1 &
EDGE_PID=$!

# tern-edge logs the address it bound ("listening on mqtt://127.0.0.1:PORT").
PORT=""
for _ in $(seq 1 200); do
    PORT="$(sed -n 's#.*listening on mqtt://127\.0\.0\.1:\([0-9][0-9]*\).*#\1#p' "$WORK/edge.log" | head -1)"
    [ -n "$PORT" ] && break
    if ! kill -0 "$EDGE_PID" 2>/dev/null; then
        echo "tern-edge exited at start:" >&2
        cat "$WORK/edge.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$PORT" ]; then
    echo "tern-edge did not report a listening port within 20 s:" >&2
    cat "$WORK/edge.log" >&2
    exit 1
fi

rc=0
"$BENCH" --host 127.0.0.1 --port "$PORT" --broker-pid "$EDGE_PID" --quiet --label smoke \
    fan-in -p 4 -S 1 -q 1 -s 100 --rate 2000 -d 2 --drain-timeout 30 || rc=$?
if ! kill -0 "$EDGE_PID" 2>/dev/null; then
    echo "tern-edge died during the smoke run:" >&2
    tail -20 "$WORK/edge.log" >&2
    rc=1
fi
if [ "$rc" -ne 0 ]; then
    echo "tern-bench smoke run FAILED (exit $rc); tern-edge log:" >&2
    tail -20 "$WORK/edge.log" >&2
    exit "$rc"
fi
echo "tern-bench smoke run passed"
