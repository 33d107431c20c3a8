#!/usr/bin/env bash
# tests/bench/bridge.sh — issue 6 benchmarks: the store-and-forward bridge, edge → cloud.
#
# A real tern-edge (profile dev, store redb, plus a --config file with the [bridge]
# section of tests/tests/bridge.rs: gateway gw1, forward `sensors/#` → `site/gw1/...`,
# class telemetry) bridged over QUIC on loopback to a real tern-cloud (profile
# cloud-single, anonymous MQTT clients allowed), certificates made with `tern-cloud certs`.
# tern-bench publishes on the edge and verifies on the cloud (--sub-port, and
# --sub-topic-prefix site/gw1/): exact counts, per-publisher order, no duplicate, no
# corruption; a run that loses or duplicates a QoS 1 message is marked FAIL.
#
# (a) Sustained throughput, 100-byte payloads: `fan-in -p 4` (4 publishers on the edge, 1
#     subscriber on the cloud) for D seconds: QoS 1 (--strict) as fast as the edge
#     acknowledges, with 256 and with 1024 in flight per publisher; QoS 0 offered at
#     200,000 msg/s. Delivered msg/s counts until the last delivery, so a backlog left on
#     the edge is paid for. Goal of issue 6: >= 200,000 msg/s.
# (b) Drain: 1,000,000 QoS 1 messages of 100 bytes are published into the edge (4
#     publishers, as fast as it takes them) while its link is down; edge RSS and store size
#     with the backlog; then the link comes back; time until the cloud subscriber has every
#     message (from the link's return, and from the bridge's reconnection). Twice: the
#     cloud stopped (SIGTERM) and started again, with a persistent subscriber session made
#     before; and a link outage (tern-relay, no impairment, stopped and started again)
#     with the cloud and a clean-session subscriber up throughout.
# (c) Impaired link: the same bridge through tern-relay (UDP, QUIC only): 200 ms round
#     trip, 2 % loss each way, 1 Mbit/s each way. One QoS 1 publisher offers more than the
#     link carries (--rate) for about 10 s; delivered msg/s and bytes/s until the last
#     delivery (about 30 s or more of a saturated link), and the relay's own byte counts.
#
# Everything runs on 127.0.0.1 with free ports, in temporary data directories; every
# process this script starts is stopped by its PID on exit. It installs nothing: cargo
# builds tern-edge, tern-cloud, tern-bench and tern-relay (release); python3 writes the
# report.
#
# Usage: tests/bench/bridge.sh [--quick] [--no-build] [--write] [--out FILE]
#                              [--only a|b|c] [--label TEXT] [--report RESULTS_DIR]
#   --quick     small counts and durations (a smoke run of the pipeline, not benchmarks)
#   --no-build  use the release binaries already in $CARGO_TARGET_DIR/release
#   --write     put the section "## Bridge (issue 6)" into BENCHMARKS.md (replaced if
#               present, appended otherwise; nothing else in the file is touched)
#   --out FILE  write the section into FILE instead (implies --write)
#   --only X    run only part a, b or c (the report shows what ran)
#   --label T   what was measured, for the report (default: the commit, or the binary date)
#   --report D  only print (and with --write, write) the report of an earlier run's D
#   --also D    add the headline figures of an earlier run's results directory D to a
#               table of repeat runs (repeatable), to show how much the figures vary
# Environment: CARGO_TARGET_DIR (default <repo>/target), BRIDGE_BENCH_SECONDS (part a
# duration, default 20), BRIDGE_BENCH_BACKLOG (part b, default 1000000),
# BRIDGE_BENCH_PUBS (publishers in parts a and b, default 4), BRIDGE_BENCH_INFLIGHT (QoS 1
# messages in flight per publisher, default 256; tern-edge grants up to 1024).

set -euo pipefail

QUICK=0
BUILD=1
WRITE=0
OUT=""
ONLY="abc"
LABEL=""
REPORT_ONLY=""
ALSO=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --write) WRITE=1 ;;
        --out) OUT="$2"; WRITE=1; shift ;;
        --only) ONLY="$2"; shift ;;
        --label) LABEL="$2"; shift ;;
        --report) REPORT_ONLY="$2"; shift ;;
        --also) ALSO+=("$2"); shift ;;
        -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
        *) echo "bridge.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
EDGE="$BIN/tern-edge"
CLOUD="$BIN/tern-cloud"
BENCH="$BIN/tern-bench"
RELAY="$BIN/tern-relay"
OUT="${OUT:-$ROOT/BENCHMARKS.md}"

if [ "$QUICK" = 1 ]; then
    SECS=3; BACKLOG=20000; IMP_SECS=3; IMP_RATE=1500
else
    SECS="${BRIDGE_BENCH_SECONDS:-20}"; BACKLOG="${BRIDGE_BENCH_BACKLOG:-1000000}"
    IMP_SECS=10; IMP_RATE=3000
fi
PUBS="${BRIDGE_BENCH_PUBS:-4}"
QOS0_RATE=200000
INFLIGHT="${BRIDGE_BENCH_INFLIGHT:-256}"
PER_PUB=$((BACKLOG / PUBS))
BACKLOG=$((PER_PUB * PUBS))

log() { printf '[bridge-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v python3 >/dev/null || { echo "bridge.sh: python3 is needed for the report" >&2; exit 2; }

if [ -n "$REPORT_ONLY" ]; then
    RES="$REPORT_ONLY"
    [ -d "$RES" ] || { echo "bridge.sh: no results directory $RES" >&2; exit 2; }
else
RUN_DIR="$CARGO_TARGET_DIR/bench-bridge/run-$(date +%Y%m%d-%H%M%S)"
RES="$RUN_DIR/results"
mkdir -p "$RES"

# --- processes: every PID this script starts, stopped on exit ---------------------------
CLOUD_PID=""
EDGE_PID=""
RELAY_PID=""
BENCH_PID=""

stop_pid() { # pid signal → waits up to 10 s, then SIGKILL
    local pid=$1 sig=${2:-TERM} i
    [ -n "$pid" ] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    { wait "$pid"; } 2>/dev/null || true
}
stop_cloud() { stop_pid "$CLOUD_PID" "${1:-TERM}"; CLOUD_PID=""; }
stop_edge() { stop_pid "$EDGE_PID" "${1:-TERM}"; EDGE_PID=""; }
stop_relay() { stop_pid "$RELAY_PID" INT; RELAY_PID=""; }
cleanup() {
    stop_pid "$BENCH_PID" KILL
    stop_relay
    stop_edge KILL
    stop_cloud KILL
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    log "building tern-edge, tern-cloud, tern-bench, tern-relay (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -p tern-edge -p tern-cloud -p tern-tests \
        --bin tern-edge --bin tern-cloud --bin tern-bench --bin tern-relay)
fi
for b in "$EDGE" "$CLOUD" "$BENCH" "$RELAY"; do
    [ -x "$b" ] || { echo "bridge.sh: $b missing (build without --no-build)" >&2; exit 2; }
done
if [ -z "$LABEL" ]; then
    if [ "$BUILD" = 1 ]; then
        LABEL="commit \`$(git -C "$ROOT" rev-parse --short HEAD)\`"
        if [ -n "$(git -C "$ROOT" status --porcelain -- shared edge cloud bridge 2>/dev/null)" ]; then
            LABEL="$LABEL plus uncommitted changes in shared/, edge/, cloud/ or bridge/"
        fi
    else
        LABEL="release binaries built $(date -r "$EDGE" '+%Y-%m-%d %H:%M') (--no-build; HEAD \`$(git -C "$ROOT" rev-parse --short HEAD)\` at the run)"
    fi
fi

# --- machine -----------------------------------------------------------------------------
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "label=$LABEL"
    echo "nproc=$(nproc)"
    echo "mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "quick=$QUICK"
    echo "edge_version=$("$EDGE" --version 2>/dev/null || echo '?')"
    echo "cloud_version=$("$CLOUD" --version 2>/dev/null || echo '?')"
    echo "rustc=$(rustc --version 2>/dev/null || echo '?')"
} >"$RES/machine.txt"

# --- helpers -----------------------------------------------------------------------------
# A port free for both TCP and UDP on 127.0.0.1 (the acceptor and the relay use both).
free_port() {
    python3 - <<'PY'
import socket
for _ in range(100):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        continue
    u.close()
    t.close()
    print(port)
    break
PY
}

wait_port() { # port seconds → 0 once it accepts TCP connections
    local i
    for ((i = 0; i < $2 * 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.01
    done
    return 1
}

# count_lines FILE PATTERN: lines of FILE matching PATTERN (0 when FILE is missing).
count_lines() { grep -c -- "$2" "$1" 2>/dev/null || true; }

# wait_connected LOG BEFORE SECONDS: waits until LOG has more "bridge: connected" lines
# than BEFORE; prints the time it saw it.
wait_connected() {
    local i n
    for ((i = 0; i < $3 * 20; i++)); do
        n=$(count_lines "$1" "bridge: connected")
        if [ "${n:-0}" -gt "$2" ]; then now; return 0; fi
        sleep 0.05
    done
    return 1
}

# log_time FILE PATTERN N: the time (epoch seconds) of the Nth line of FILE matching
# PATTERN, from the timestamp tern-edge puts first on each log line; empty if none.
log_time() {
    local line
    line=$(grep -- "$2" "$1" 2>/dev/null | sed -n "${3}p")
    [ -n "$line" ] || return 0
    date -d "${line%% *}" +%s.%N 2>/dev/null || true
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
TICKS=$(getconf CLK_TCK)

CERTS="$RUN_DIR/certs"
log "certificates: tern-cloud certs init / issue-gateway gw1 in $CERTS"
"$CLOUD" certs init --dir "$CERTS" --name localhost --name 127.0.0.1 >"$RES/certs.log" 2>&1
"$CLOUD" certs issue-gateway gw1 --dir "$CERTS" >>"$RES/certs.log" 2>&1
echo "tern-cloud certs init --dir CERTS --name localhost --name 127.0.0.1" >"$RES/cmd-certs.txt"
echo "tern-cloud certs issue-gateway gw1 --dir CERTS" >>"$RES/cmd-certs.txt"

# write_edge_config FILE ENDPOINT TRANSPORT: the [bridge] section of tests/tests/bridge.rs
# (edge_config), with a larger per-class queue for the 1,000,000-message backlog.
write_edge_config() {
    cat >"$1" <<EOF
[bridge]
enabled = true
gateway_id = "gw1"
endpoints = ["$2"]
transport = "$3"
ca = "$CERTS/ca.pem"
cert = "$CERTS/gateways/gw1.pem"
key = "$CERTS/gateways/gw1.key"
classes = ["alarm", "telemetry", "bulk"]
max_queued_messages = 2000000

[[bridge.forward]]
topic = "alarms/#"
remote_prefix = "site/{gateway_id}/"
qos = 1
class = "alarm"

[[bridge.forward]]
topic = "sensors/#"
remote_prefix = "site/{gateway_id}/"
qos = 1
class = "telemetry"

[[bridge.forward]]
topic = "bulk/#"
remote_prefix = "site/{gateway_id}/"
qos = 1
class = "bulk"

[[bridge.subscribe]]
topic = "commands/{gateway_id}/#"
class = "alarm"

[bridge.link]
connect_timeout_ms = 2000
backoff_initial_ms = 100
backoff_max_ms = 1000
EOF
}

# The cloud's environment (as tests/tests/bridge.rs `cloud()`), plus a session queue large
# enough for the whole backlog (cloud-single keeps 10,000 per session and drops beyond).
CLOUD_QUEUE=2000000
cloud_env() { # data_dir mqtt_port acceptor_port
    echo TERN_LISTENERS__TCP__BIND="127.0.0.1:$2" TERN_NODE__DATA_DIR="$1" \
        TERN_AUTH__ALLOW_ANONYMOUS=true TERN_ACCEPTOR__BIND="127.0.0.1:$3" \
        TERN_ACCEPTOR__CA="$CERTS/ca.pem" TERN_ACCEPTOR__CERT="$CERTS/server.pem" \
        TERN_ACCEPTOR__KEY="$CERTS/server.key" TERN_ACCEPTOR__CRL="$CERTS/crl.pem" \
        TERN_MQTT__MAX_QUEUED_MESSAGES=$CLOUD_QUEUE TERN_ADMIN__BIND=127.0.0.1:0 TERN_LOG__LEVEL=info
}

start_cloud() { # data_dir mqtt_port acceptor_port log
    mkdir -p "$1"
    # shellcheck disable=SC2046 # cloud_env prints NAME=VALUE words without spaces
    env $(cloud_env "$1" "$2" "$3") "$CLOUD" >>"$4" 2>&1 &
    CLOUD_PID=$!
    wait_port "$2" 30 || { log "tern-cloud did not start (log: $4)"; tail -20 "$4" >&2; exit 1; }
}

start_edge() { # data_dir mqtt_port config log
    mkdir -p "$1"
    env TERN_LISTENERS__TCP__BIND="127.0.0.1:$2" TERN_NODE__DATA_DIR="$1" TERN_LOG__LEVEL=info \
        "$EDGE" --profile dev --config "$3" >>"$4" 2>&1 &
    EDGE_PID=$!
    wait_port "$2" 30 || { log "tern-edge did not start (log: $4)"; tail -20 "$4" >&2; exit 1; }
}

# start_relay OUT ARGS...: tern-relay from RELAY_PORT to the acceptor with ARGS (impairment
# options); its output (counters at the end) goes to OUT.
start_relay() {
    local out=$1
    shift
    local i
    "$RELAY" --listen "127.0.0.1:$RELAY_PORT" --upstream "127.0.0.1:$ACCEPTOR" --udp "$@" >"$out" 2>&1 &
    RELAY_PID=$!
    for ((i = 0; i < 500; i++)); do
        grep -q '^listening on' "$out" 2>/dev/null && return 0
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.01
    done
    log "tern-relay did not start"; cat "$out" >&2; exit 1
}

# site NAME [RELAY_OUT RELAY_ARGS...]: a fresh cloud and edge for one part. Without
# relay arguments the edge dials the acceptor (transport auto); with them, a tern-relay
# (UDP only) is started in front of the acceptor and the edge dials it (transport quic).
site() {
    local name=$1 endpoint transport before t0 t1
    shift
    SITE="$RUN_DIR/$name"
    mkdir -p "$SITE"
    CLOUD_MQTT=$(free_port); ACCEPTOR=$(free_port); EDGE_MQTT=$(free_port)
    if [ $# -gt 0 ]; then
        RELAY_PORT=$(free_port)
        endpoint="127.0.0.1:$RELAY_PORT"; transport=quic
    else
        endpoint="127.0.0.1:$ACCEPTOR"; transport=auto
    fi
    write_edge_config "$SITE/edge.toml" "$endpoint" "$transport"
    start_cloud "$SITE/cloud-data" "$CLOUD_MQTT" "$ACCEPTOR" "$SITE/cloud.log"
    [ $# -gt 0 ] && start_relay "$@"
    before=$(count_lines "$SITE/edge.log" "bridge: connected")
    t0=$(now)
    start_edge "$SITE/edge-data" "$EDGE_MQTT" "$SITE/edge.toml" "$SITE/edge.log"
    if ! t1=$(wait_connected "$SITE/edge.log" "${before:-0}" 120); then
        log "the bridge did not connect (logs in $SITE)"
        tail -20 "$SITE/edge.log" >&2
        exit 1
    fi
    CONNECT_SECS=$(echo "$t1 - $t0" | bc)
    log "$name: cloud mqtt $CLOUD_MQTT (pid $CLOUD_PID), acceptor $ACCEPTOR, edge mqtt $EDGE_MQTT (pid $EDGE_PID), bridge connected in ${CONNECT_SECS} s (transport $transport${RELAY_PID:+ via tern-relay})"
}

teardown() {
    stop_relay
    stop_edge
    stop_cloud
}

# bench OUT ARGS...: runs tern-bench with ARGS (JSON to OUT.json), records the command, the
# CPU seconds of edge and cloud over the run and the load average; never fails the script.
bench() {
    local out=$1 e0 c0 rc=0 t0 t1
    shift
    echo "tern-bench $*" | sed -e "s/--port $EDGE_MQTT/--port EDGE/" \
        -e "s/--sub-port $CLOUD_MQTT/--sub-port CLOUD/" \
        -e "s/--broker-pid $EDGE_PID/--broker-pid EDGE_PID/" \
        -e "s#$RES/#RESULTS/#g" >"$out.cmd"
    e0=$(cpu_ticks "$EDGE_PID"); c0=$(cpu_ticks "$CLOUD_PID"); t0=$(now)
    "$BENCH" "$@" >"$out.json" 2>"$out.err" || rc=$?
    t1=$(now)
    {
        echo "rc=$rc"
        echo "wall=$(echo "$t1 - $t0" | bc)"
        echo "edge_cpu=$(echo "($(cpu_ticks "$EDGE_PID") - $e0) / $TICKS" | bc -l)"
        echo "cloud_cpu=$(echo "($(cpu_ticks "$CLOUD_PID") - $c0) / $TICKS" | bc -l)"
        echo "edge_rss_kib=$(rss_kib "$EDGE_PID")"
        echo "edge_hwm_kib=$(hwm_kib "$EDGE_PID")"
        echo "cloud_hwm_kib=$(hwm_kib "$CLOUD_PID")"
        echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$out.env"
    return 0
}
command -v bc >/dev/null || { echo "bridge.sh: bc is needed" >&2; exit 2; }

BRIDGE_ARGS=(--sub-topic-prefix site/gw1/ --quiet --json)

# --- (a) sustained throughput ------------------------------------------------------------
if [[ "$ONLY" == *a* ]]; then
    # name:qos:in-flight:rate — QoS 1 with tern-bench's default window and with the edge's
    # receive maximum (1024); QoS 0 offered at the goal rate (unpaced QoS 0 publishers
    # outrun any bridge, and the edge drops QoS 0 beyond its queue).
    for variant in "q1:1:$INFLIGHT:" "q1w:1:1024:" "q0:0:$INFLIGHT:$QOS0_RATE"; do
        IFS=: read -r name qos inflight qrate <<<"$variant"
        site "a-$name"
        strict=()
        [ "$qos" = 1 ] && strict=(--strict)
        [ -n "$qrate" ] && strict=(--rate "$qrate")
        log "(a) fan-in -p $PUBS -q $qos --inflight $inflight ${qrate:+--rate $qrate }, 100-byte payloads, ${SECS} s: publishers on the edge, subscriber on the cloud"
        bench "$RES/a-$name" --port "$EDGE_MQTT" --sub-port "$CLOUD_MQTT" --broker-pid "$EDGE_PID" \
            "${BRIDGE_ARGS[@]}" fan-in -p "$PUBS" -q "$qos" -s 100 -d "$SECS" --inflight "$inflight" \
            --topic-prefix sensors --drain-timeout 300 --idle-timeout 20 "${strict[@]}"
        cp "$SITE/edge.toml" "$RES/edge.toml"
        grep -E 'WARN|ERROR' "$SITE/edge.log" "$SITE/cloud.log" | tail -20 >"$RES/a-$name.warnings" || true
        teardown
    done
fi

# --- (b) drain a backlog -----------------------------------------------------------------
# drain NAME MODE: MODE "restart" stops the cloud (SIGTERM) and starts it again, with a
# persistent subscriber session on the cloud; MODE "outage" keeps the cloud and a
# clean-session subscriber up and cuts the link instead: the edge dials the cloud through
# tern-relay (no impairment), which is stopped before the backlog is published and started
# again after.
drain() {
    local name=$1 mode=$2 B="$RES/$1" persistent=() before lost_before n r rc=0 i
    local t_go t_noticed="" t_published t_up t_up_ready t_connected="" t_done e0 c0
    local edge_rss_idle edge_rss_backlog edge_hwm_fill edge_rss_peak edge_rss_after store_bytes
    if [ "$mode" = outage ]; then
        site "$name" "$B.relay.out"
    else
        site "$name"
        persistent=(--sub-persistent)
    fi
    rm -f "$B.ready" "$B.go" "$B.published"
    log "(b/$mode) $BACKLOG QoS 1 messages into the edge while the link is down"
    echo "tern-bench --port EDGE --sub-port CLOUD --sub-topic-prefix site/gw1/ --json fan-in -p $PUBS -q 1 -s 100 -n $PER_PUB --inflight $INFLIGHT --topic-prefix sensors --strict ${persistent[*]} --ready-file READY --go-file GO --published-file PUBLISHED --idle-timeout 600 --drain-timeout 1200" >"$B.cmd"
    "$BENCH" --port "$EDGE_MQTT" --sub-port "$CLOUD_MQTT" --sub-topic-prefix site/gw1/ --json \
        fan-in -p "$PUBS" -q 1 -s 100 -n "$PER_PUB" --inflight "$INFLIGHT" --topic-prefix sensors --strict \
        "${persistent[@]}" --ready-file "$B.ready" --go-file "$B.go" --published-file "$B.published" \
        --idle-timeout 600 --drain-timeout 1200 >"$B.json" 2>"$B.err" &
    BENCH_PID=$!
    for ((i = 0; i < 3000; i++)); do
        [ -f "$B.ready" ] && break
        kill -0 "$BENCH_PID" 2>/dev/null || break
        sleep 0.01
    done
    [ -f "$B.ready" ] || { log "tern-bench did not get ready"; cat "$B.err" "$B.json" >&2; exit 1; }
    edge_rss_idle=$(rss_kib "$EDGE_PID")
    lost_before=$(count_lines "$SITE/edge.log" "bridge: disconnected")
    if [ "$mode" = outage ]; then stop_relay; else stop_cloud TERM; fi
    t_go=$(now)
    touch "$B.go"
    while [ ! -f "$B.published" ] && kill -0 "$BENCH_PID" 2>/dev/null; do
        if [ -z "$t_noticed" ]; then
            n=$(count_lines "$SITE/edge.log" "bridge: disconnected")
            [ "${n:-0}" -gt "${lost_before:-0}" ] && t_noticed=$(now)
        fi
        sleep 0.05
    done
    t_published=$(now)
    # Restart the link only once the edge has seen it go (QUIC idle timeout), so that the
    # drain starts with a fresh connection.
    for ((i = 0; i < 600 && ${#t_noticed} == 0; i++)); do
        n=$(count_lines "$SITE/edge.log" "bridge: disconnected")
        [ "${n:-0}" -gt "${lost_before:-0}" ] && t_noticed=$(now)
        [ -n "$t_noticed" ] || sleep 0.05
    done
    edge_rss_backlog=$(rss_kib "$EDGE_PID")
    edge_hwm_fill=$(hwm_kib "$EDGE_PID")
    store_bytes=$(du -sb "$SITE/edge-data" | cut -f1)
    before=$(count_lines "$SITE/edge.log" "bridge: connected")
    e0=$(cpu_ticks "$EDGE_PID")
    t_up=$(now)
    if [ "$mode" = outage ]; then
        c0=$(cpu_ticks "$CLOUD_PID")
        start_relay "$B.relay2.out"
    else
        c0=0
        start_cloud "$SITE/cloud-data" "$CLOUD_MQTT" "$ACCEPTOR" "$SITE/cloud.log"
    fi
    t_up_ready=$(now)
    edge_rss_peak=$edge_rss_backlog
    while kill -0 "$BENCH_PID" 2>/dev/null; do
        if [ -z "$t_connected" ]; then
            n=$(count_lines "$SITE/edge.log" "bridge: connected")
            [ "${n:-0}" -gt "${before:-0}" ] && t_connected=$(now)
        fi
        r=$(rss_kib "$EDGE_PID")
        [ "${r:-0}" -gt "$edge_rss_peak" ] && edge_rss_peak=$r
        sleep 0.05
    done
    t_done=$(now)
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    sleep 2 # the backlog is gone: what does the edge keep?
    edge_rss_after=$(rss_kib "$EDGE_PID")
    # The edge's own timestamps are more precise than the polling above.
    r=$(log_time "$SITE/edge.log" "bridge: disconnected" $((lost_before + 1)))
    [ -z "$r" ] || t_noticed=$r
    r=$(log_time "$SITE/edge.log" "bridge: connected" $((before + 1)))
    [ -z "$r" ] || t_connected=$r
    {
        echo "mode=$mode"
        echo "rc=$rc"
        echo "backlog=$BACKLOG"
        echo "publish_secs=$(echo "$t_published - $t_go" | bc)"
        echo "stop_to_noticed=$( [ -n "$t_noticed" ] && echo "$t_noticed - $t_go" | bc)"
        echo "up_to_ready=$(echo "$t_up_ready - $t_up" | bc)"
        echo "up_to_connected=$( [ -n "$t_connected" ] && echo "$t_connected - $t_up" | bc)"
        echo "connected_to_done=$( [ -n "$t_connected" ] && echo "$t_done - $t_connected" | bc)"
        echo "up_to_done=$(echo "$t_done - $t_up" | bc)"
        echo "edge_rss_idle_kib=$edge_rss_idle"
        echo "edge_rss_backlog_kib=$edge_rss_backlog"
        echo "edge_hwm_fill_kib=$edge_hwm_fill"
        echo "edge_rss_peak_drain_kib=$edge_rss_peak"
        echo "edge_rss_after_kib=$edge_rss_after"
        echo "edge_hwm_kib=$(hwm_kib "$EDGE_PID")"
        echo "edge_store_bytes=$store_bytes"
        echo "edge_cpu_drain=$(echo "($(cpu_ticks "$EDGE_PID") - $e0) / $TICKS" | bc -l)"
        echo "cloud_cpu_drain=$(echo "($(cpu_ticks "$CLOUD_PID") - $c0) / $TICKS" | bc -l)"
        echo "cloud_hwm_kib=$(hwm_kib "$CLOUD_PID")"
        echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$B.env"
    grep -E 'WARN|ERROR' "$SITE/edge.log" "$SITE/cloud.log" | tail -20 >"$B.warnings" || true
    teardown
}

if [[ "$ONLY" == *b* ]]; then
    drain b restart
    drain b-outage outage
fi

# --- (c) impaired link -------------------------------------------------------------------
if [[ "$ONLY" == *c* ]]; then
    C="$RES/c"
    relay_args=(--delay-ms 100 --loss 0.02 --rate-bits 1000000 --seed 7)
    echo "tern-relay --listen 127.0.0.1:RELAY --upstream 127.0.0.1:ACCEPTOR --udp ${relay_args[*]}" >"$C.relay.cmd"
    site c "$C.relay.out" "${relay_args[@]}"
    echo "connect_secs=$CONNECT_SECS" >"$C.connect"
    log "(c) impaired link: 200 ms RTT, 2 % loss, 1 Mbit/s; fan-in -p 1 -q 1 --rate $IMP_RATE for $IMP_SECS s"
    bench "$C" --port "$EDGE_MQTT" --sub-port "$CLOUD_MQTT" --broker-pid "$EDGE_PID" \
        "${BRIDGE_ARGS[@]}" fan-in -p 1 -q 1 -s 100 -d "$IMP_SECS" --rate "$IMP_RATE" \
        --topic-prefix sensors --strict --drain-timeout 600 --idle-timeout 60
    stop_relay
    cat "$C.connect" >>"$C.env"
    grep -E 'WARN|ERROR' "$SITE/edge.log" "$SITE/cloud.log" | tail -20 >"$C.warnings" || true
    cp "$SITE/edge.toml" "$RES/edge-relay.toml"
    teardown
fi
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RES/machine.txt"
fi # not REPORT_ONLY

# --- report ------------------------------------------------------------------------------
python3 - "$RES" "$OUT" "$WRITE" "${ALSO[@]}" <<'PY'
import json, os, re, sys

res, out, write = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
also = sys.argv[4:]

def kv(path):
    d = {}
    try:
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                d[k] = v
    except OSError:
        pass
    return d

def load_json(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return ""

def num(v, default=0.0):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default

def rate(x):
    return f"{x:,.0f}"

def mib(kib):
    if kib in (None, ""):
        return "–"
    return f"{num(kib) / 1024:,.0f} MiB"

def verdict(r):
    if r is None:
        return "no result"
    if r.get("ok"):
        return "ok"
    return "FAIL: " + "; ".join(r.get("failures", []))

m = kv(os.path.join(res, "machine.txt"))
L = []
L.append("## Bridge (issue 6)")
L.append("")
quick = " **Quick run (--quick): tiny counts, not benchmark figures.**" if m.get("quick") == "1" else ""
L.append(f"Written by `tests/bench/bridge.sh` on {m.get('date', '?')}, {m.get('label', '?')}.{quick} "
         "A real `tern-edge` (profile `dev`: redb store, `fsync = \"batch\"`; plus a `--config` file with the "
         "`[bridge]` section of `tests/tests/bridge.rs`: gateway `gw1`, forward `sensors/#` → `site/gw1/…`, "
         "class `telemetry`, QoS 1) bridged over QUIC on loopback to a real `tern-cloud` (profile `cloud-single`, "
         "`TERN_AUTH__ALLOW_ANONYMOUS=true`), certificates from `tern-cloud certs`. `tern-bench` publishes on the "
         "edge and verifies on the cloud under the remote prefix (`--sub-port CLOUD --sub-topic-prefix site/gw1/`): "
         "every message counted, per-publisher order, duplicates, corruption. Fresh data directories for every part.")
L.append("")
L.append("| cores | memory | kernel | CPU | load average at start / end |")
L.append("|---|---|---|---|---|")
L.append(f"| {m.get('nproc', '?')} | {num(m.get('mem_kib')) / 1048576:.1f} GiB | {m.get('kernel', '?')} | "
         f"{m.get('cpu', '?')} | {m.get('load_start', '?')} / {m.get('load_end', '?')} |")
L.append("")
L.append(f"Versions: {m.get('edge_version', '?')}, {m.get('cloud_version', '?')}, {m.get('rustc', '?')}. "
         "The edge, the cloud and tern-bench share the 2 cores; the CPU columns show the split.")
L.append("")

# (a)
rows = []
for name in ("q1", "q1w", "q0"):
    r = load_json(os.path.join(res, f"a-{name}.json"))
    e = kv(os.path.join(res, f"a-{name}.env"))
    if r is None and not e:
        continue
    p = (r or {}).get("params") or {}
    rows.append((str(p.get("qos", "?")), r, e, p))
if rows:
    L.append("### Sustained throughput, edge → cloud, loopback, 100-byte payloads")
    L.append("")
    pubs = rows[0][3].get("publishers", "?")
    L.append(f"{pubs} publishers on the edge → 1 subscriber on the cloud (`fan-in -p {pubs}`), publishers as fast as the edge "
             "acknowledges (QoS 1: a window of unacknowledged messages per publisher, shown per row; tern-edge grants "
             "at most 1024). Delivered msg/s = distinct verified deliveries at the cloud "
             "divided by the time from the first publish to the last delivery, so a backlog left on the edge when "
             "publishing stops is paid for. Goal of issue 6: at least 200,000 msg/s sustained.")
    L.append("")
    L.append("| QoS | in flight per publisher / offered rate | published msg/s (edge acks) | **delivered msg/s (cloud)** | delivered / sent | lost | duplicates | reordered | publish s / last delivery s | CPU s edge / cloud / tern-bench | edge RSS peak | load avg after | verdict |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|")
    best = 0.0
    for qos, r, e, p in rows:
        t = (r or {}).get("throughput") or {}
        res_ = (r or {}).get("resources") or {}
        bench_cpu = num(res_.get("client_cpu_s"))
        dr = num(t.get("delivered_rate"))
        if qos == "1" and (r or {}).get("ok"):
            best = max(best, dr)
        infl = p.get("inflight", "?") if qos != "0" else (f"{rate(num(p.get('rate')))} msg/s" if p.get("rate") else "unpaced")
        L.append(f"| {qos} | {infl} | {rate(num(t.get('publish_rate')))} | **{rate(dr)}** | "
                 f"{t.get('delivered', 0):,} / {t.get('sent', 0):,} | {t.get('lost', 0):,} | {t.get('duplicates', 0):,} | "
                 f"{t.get('reordered', 0):,} | {num(t.get('publish_secs')):.1f} / {num(t.get('delivery_secs')):.1f} | "
                 f"{num(e.get('edge_cpu')):.1f} / {num(e.get('cloud_cpu')):.1f} / {bench_cpu:.1f} | "
                 f"{mib(e.get('edge_hwm_kib'))} | {e.get('load', '?')} | {verdict(r)} |")
    L.append("")
    if any(q == "1" for q, *_ in rows):
        met = "met" if best >= 200000 else "**not met**"
        L.append(f"Goal ≥ 200,000 msg/s edge → cloud (QoS 1, verified, best row): {met} — {rate(best)} msg/s, "
                 f"{best / 200000:.2f}× the goal.")
        L.append("")
    L.append("CPU per delivered message (CPU seconds over the run / messages delivered), and the rate the 2 cores "
             "would allow at that cost if nothing else ran and every thread could use them:")
    L.append("")
    L.append("| QoS | in flight / rate | edge µs | cloud µs | tern-bench µs | total µs | ceiling at this cost, msg/s |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for qos, r, e, p in rows:
        t = (r or {}).get("throughput") or {}
        d = num(t.get("delivered"))
        if not d:
            continue
        eu = num(e.get("edge_cpu")) / d * 1e6
        cu = num(e.get("cloud_cpu")) / d * 1e6
        bu = num(((r or {}).get("resources") or {}).get("client_cpu_s")) / d * 1e6
        tot = eu + cu + bu
        infl = p.get("inflight", "?") if qos != "0" else f"{rate(num(p.get('rate')))} msg/s"
        L.append(f"| {qos} | {infl} | {eu:.1f} | {cu:.1f} | {bu:.1f} | {tot:.1f} | "
                 f"{rate(num(m.get('nproc'), 2) * 1e6 / tot) if tot else '?'} |")
    L.append("")
    for qos, r, e, p in rows:
        notes = [n for n in (r or {}).get("notes") or [] if not n.startswith("latency")]
        if notes:
            L.append(f"QoS {qos} (in flight {p.get('inflight', '?')}) notes from tern-bench: " + "; ".join(notes) + ".")
            L.append("")

# (b)
drains = [(nm, kv(os.path.join(res, f"{nm}.env"))) for nm in ("b", "b-outage")]
drains = [(nm, d) for nm, d in drains if d]
if drains:
    n = int(num(drains[0][1].get("backlog")))
    r0 = load_json(os.path.join(res, f"{drains[0][0]}.json"))
    pb = ((r0 or {}).get("params") or {})
    np_ = int(num(pb.get("publishers"), 4)) or 4
    L.append(f"### Draining a backlog of {n:,} messages")
    L.append("")
    L.append(f"{np_} publishers put the backlog into the edge at QoS 1 while its link is down ({n // np_:,} each, "
             f"{pb.get('inflight', '?')} in flight each, 100-byte payloads, as fast as the edge acknowledges); then "
             "the link comes back and the time until tern-bench has verified every message at the cloud is measured. "
             "Two ways to take the link down:")
    L.append("")
    L.append("- **cloud restart**: the cloud subscriber's persistent session (clean session off, QoS 1) is made "
             "first; the cloud is stopped (SIGTERM) and later started again on its data directory; the subscriber "
             "reconnects by itself every 100 ms. The cloud stores every bridged message in that session before "
             "delivering it (the subscriber could be away), so this includes the cloud's durable session path.")
    L.append("- **link outage**: the cloud and a clean-session subscriber stay up; the edge dials the cloud through "
             "`tern-relay` (UDP, no impairment), which is stopped before the backlog is published and started again "
             "after. This is the bridge's own replay rate (plus the relay's copying).")
    L.append("")
    L.append("In both, the link is restored only once the edge has noticed the loss (QUIC idle timeout), so that the "
             "drain starts with a fresh connection; the edge's bridge reconnects with its backoff (100 ms doubling to "
             "1 s). The edge's per-class queue is raised to 2,000,000 (`bridge.max_queued_messages`), the cloud's "
             "per-session queue to 2,000,000 (`TERN_MQTT__MAX_QUEUED_MESSAGES`).")
    L.append("")
    L.append("| step | " + " | ".join({"b": "cloud restart", "b-outage": "link outage"}[nm] for nm, _ in drains) + " |")
    L.append("|---|" + "---|" * len(drains))
    def row(label, f):
        L.append(f"| {label} | " + " | ".join(f(d, load_json(os.path.join(res, f'{nm}.json'))) for nm, d in drains) + " |")
    def backlog_in(d, r):
        pub = num(d.get("publish_secs"))
        return f"{n:,} in {pub:.1f} s ({rate(n / pub if pub else 0)} msg/s)"
    row("backlog into the edge, acknowledged", backlog_in)
    row("edge RSS: before / with the backlog / peak during the drain / 2 s after it",
        lambda d, r: f"{mib(d.get('edge_rss_idle_kib'))} / {mib(d.get('edge_rss_backlog_kib'))} / "
                     f"{mib(d.get('edge_rss_peak_drain_kib'))} / {mib(d.get('edge_rss_after_kib'))}")
    row("edge data directory with the backlog", lambda d, r: f"{num(d.get('edge_store_bytes')) / 1048576:,.0f} MiB")
    row("link down → the edge's bridge notices (edge log)",
        lambda d, r: f"{num(d.get('stop_to_noticed')):.1f} s" if d.get("stop_to_noticed") else "not seen")
    row("link restored (cloud started / relay started) → bridge connected",
        lambda d, r: f"{num(d.get('up_to_connected')):.2f} s")
    def drain_(d, r):
        t = num(d.get("connected_to_done"))
        return f"**{t:.1f} s ({rate(n / t if t else 0)} msg/s)**"
    row(f"**bridge connected → all {n:,} verified at the cloud**", drain_)
    row("link restored → all verified", lambda d, r: f"{num(d.get('up_to_done')):.1f} s")
    row("CPU s during the drain: edge / cloud",
        lambda d, r: f"{num(d.get('edge_cpu_drain')):.1f} / {num(d.get('cloud_cpu_drain')):.1f}")
    def ver(d, r):
        t = (r or {}).get("throughput") or {}
        return (f"{t.get('delivered', 0):,} of {t.get('expected', 0):,} distinct, lost {t.get('lost', 0):,}, "
                f"duplicates {t.get('duplicates', 0):,}, reordered {t.get('reordered', 0):,}: {verdict(r)}")
    row("verification", ver)
    row("load average after", lambda d, r: d.get("load", "?"))
    L.append("")

# (c)
c = kv(os.path.join(res, "c.env"))
if c:
    r = load_json(os.path.join(res, "c.json"))
    t = (r or {}).get("throughput") or {}
    relay = kv(os.path.join(res, "c.relay.out"))
    up, down = {}, {}
    for line in read(os.path.join(res, "c.relay.out")).splitlines():
        parts = line.split()
        if parts and parts[0] in ("to_upstream", "to_client", "stopped"):
            d = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            {"to_upstream": up, "to_client": down, "stopped": relay}[parts[0]].update(d)
    secs = num(relay.get("secs"))
    dsecs = num(t.get("delivery_secs"))
    delivered = int(num(t.get("delivered")))
    L.append("### Impaired link: 200 ms round trip, 2 % loss, 1 Mbit/s")
    L.append("")
    L.append("The same bridge through `tern-relay` (UDP only, so QUIC; `transport = \"quic\"`): 100 ms delay each "
             "way, 2 % of datagrams lost each way (seeded), each direction capped at 1,000,000 bit/s with a 256 KiB "
             "queue. One QoS 1 publisher offers more than the link carries "
             f"(`--rate {int(num(((r or {}).get('params') or {}).get('rate')))}` for "
             f"{num(((r or {}).get('params') or {}).get('duration_s')):.0f} s), so the link stays saturated until the "
             "last delivery; the edge keeps the rest as backlog.")
    L.append("")
    L.append("| figure | value |")
    L.append("|---|---|")
    L.append(f"| bridge connect through the relay (edge start → connected) | {num(c.get('connect_secs')):.1f} s |")
    L.append(f"| **delivered msg/s (cloud)** | **{rate(num(t.get('delivered_rate')))}** ({delivered:,} in {dsecs:.1f} s) |")
    L.append(f"| payload bytes/s delivered (100 B each) | {rate(num(t.get('delivered_rate')) * 100)} B/s "
             f"({num(t.get('delivered_rate')) * 800 / 1e6:.2f} Mbit/s of the 1 Mbit/s) |")
    if up:
        fb = num(up.get("forwarded_bytes"))
        L.append(f"| link bytes/s edge → cloud (relay, whole relay lifetime {secs:.0f} s) | {rate(fb / secs if secs else 0)} B/s "
                 f"({fb * 8 / secs / 1e6 if secs else 0:.2f} Mbit/s) |")
        if delivered:
            L.append(f"| link bytes per delivered message, edge → cloud (QUIC, TLS, framing, retransmissions) | {fb / delivered:,.0f} |")
        L.append(f"| datagrams edge → cloud: received / lost (random) / dropped at the full 1 Mbit/s queue | "
                 f"{int(num(up.get('received'))):,} / {int(num(up.get('dropped_loss'))):,} / {int(num(up.get('dropped_queue'))):,} |")
        L.append(f"| datagrams cloud → edge: received / lost / queue-dropped | "
                 f"{int(num(down.get('received'))):,} / {int(num(down.get('dropped_loss'))):,} / {int(num(down.get('dropped_queue'))):,} |")
    L.append(f"| verification | {t.get('delivered', 0):,} of {t.get('expected', 0):,} distinct, lost {t.get('lost', 0):,}, "
             f"duplicates {t.get('duplicates', 0):,}, reordered {t.get('reordered', 0):,}: {verdict(r)} |")
    L.append(f"| CPU s: edge / cloud | {num(c.get('edge_cpu')):.1f} / {num(c.get('cloud_cpu')):.1f} |")
    L.append("")

# repeat runs
if also:
    L.append("### Repeat runs")
    L.append("")
    L.append("The same script on the same machine at other times (other work was running: see the load). The "
             "per-message CPU cost stays about the same; the throughput follows the CPU left for the three processes.")
    L.append("")
    L.append("| run (UTC) | load average at start | QoS 1, 256 in flight, msg/s | QoS 1, 1024 in flight, msg/s | "
             "drain after cloud restart | drain after link outage | impaired link, msg/s | verdicts |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|")
    for d in [res] + also:
        mm = kv(os.path.join(d, "machine.txt"))
        def a_rate(name):
            r = load_json(os.path.join(d, f"a-{name}.json"))
            return num(((r or {}).get("throughput") or {}).get("delivered_rate")), r
        def drain_s(name):
            e = kv(os.path.join(d, f"{name}.env"))
            t = num(e.get("connected_to_done"))
            return f"{t:.1f} s" if t else "–", load_json(os.path.join(d, f"{name}.json"))
        q1, r1 = a_rate("q1")
        q1w, r2 = a_rate("q1w")
        br, r3 = drain_s("b")
        bo, r4 = drain_s("b-outage")
        rc_ = load_json(os.path.join(d, "c.json"))
        cr = num(((rc_ or {}).get("throughput") or {}).get("delivered_rate"))
        oks = [r for r in (r1, r2, r3, r4, rc_) if r is not None]
        v = "all ok" if oks and all(r.get("ok") for r in oks) else "see run"
        mark = " (this section)" if d == res else ""
        L.append(f"| {mm.get('date', '?')}{mark} | {mm.get('load_start', '?')} | {rate(q1)} | {rate(q1w)} | "
                 f"{br} | {bo} | {rate(cr)} | {v} |")
    L.append("")

# commands
L.append("<details><summary>Commands and the edge's bridge configuration</summary>")
L.append("")
L.append("```")
L.append(read(os.path.join(res, "cmd-certs.txt")))
L.append("# cloud (each part): TERN_LISTENERS__TCP__BIND=127.0.0.1:CLOUD TERN_NODE__DATA_DIR=DIR TERN_AUTH__ALLOW_ANONYMOUS=true \\")
L.append("#   TERN_ACCEPTOR__BIND=127.0.0.1:ACCEPTOR TERN_ACCEPTOR__CA=CERTS/ca.pem TERN_ACCEPTOR__CERT=CERTS/server.pem \\")
L.append("#   TERN_ACCEPTOR__KEY=CERTS/server.key TERN_ACCEPTOR__CRL=CERTS/crl.pem TERN_MQTT__MAX_QUEUED_MESSAGES=2000000 \\")
L.append("#   TERN_ADMIN__BIND=127.0.0.1:0 \\")
L.append("#   TERN_LOG__LEVEL=info tern-cloud")
L.append("# edge (each part): TERN_LISTENERS__TCP__BIND=127.0.0.1:EDGE TERN_NODE__DATA_DIR=DIR TERN_LOG__LEVEL=info \\")
L.append("#   tern-edge --profile dev --config edge.toml")
for f in ("a-q1.cmd", "a-q1w.cmd", "a-q0.cmd", "b.cmd", "b-outage.cmd", "c.relay.cmd", "c.cmd"):
    s = read(os.path.join(res, f))
    if s:
        L.append(s)
L.append("```")
L.append("")
cfg = read(os.path.join(res, "edge.toml"))
if cfg:
    L.append("edge.toml (part c: `endpoints = [\"127.0.0.1:RELAY\"]`, `transport = \"quic\"`):")
    L.append("")
    L.append("```toml")
    L.append(re.sub(r'"/[^"]*/certs/', '"CERTS/', cfg))
    L.append("```")
    L.append("")
L.append("</details>")
L.append("")
section = "\n".join(L)
print(section)
if write:
    # Re-read just before writing: other scripts write this file too. Only this section
    # is replaced; every other section stays byte for byte.
    try:
        text = open(out).read()
    except OSError:
        text = ""
    m_ = re.search(r"^## Bridge \(issue 6\)\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if m_:
        text = text[:m_.start()] + section + "\n" + text[m_.end():].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(f"[bridge-bench] section written to {out}", file=sys.stderr)
PY
[ -n "$REPORT_ONLY" ] || log "raw results in $RES"
