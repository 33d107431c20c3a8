#!/usr/bin/env bash
# Proves the gateway build runs on ARM: builds tern-edge for aarch64-unknown-linux-musl
# (firmware-targets/build.sh), runs it under qemu-aarch64 (user-mode emulation) with
# the `dev` profile on a free loopback port, and drives it from the host with the
# mosquitto clients: connect, subscribe (MQTT 5), publish at QoS 1 (MQTT 3.1.1),
# receive; then a retained QoS 1 message, SIGTERM (expects exit code 0), a restart on
# the same data directory, and the retained message must come back from the store.
# Measures the binary's size and the emulated process's RSS.
#
# Installs qemu-user and mosquitto-clients with apt-get when missing (root or sudo),
# and whatever build.sh needs. Exits non-zero on any failure; the last line is
# "firmware: N passed, N failed". Set FW_SKIP_BUILD=1 with FW_BIN=path to test a
# binary built elsewhere.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=aarch64-unknown-linux-musl
started=$SECONDS

passed=0
failed=0
pass() {
	passed=$((passed + 1))
	printf 'ok   %s\n' "$*"
}
fail() {
	failed=$((failed + 1))
	printf 'FAIL %s\n' "$*"
}

work="$(mktemp -d "${TMPDIR:-/tmp}/tern-fw-qemu.XXXXXX")"
qemu_pid=""
sub_pid=""
finish() {
	local code=$?
	[ -z "$sub_pid" ] || kill "$sub_pid" 2>/dev/null || true
	if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -KILL "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	if [ "$failed" -gt 0 ] || [ "$code" -ne 0 ]; then
		for log in "$work"/*.log; do
			[ -f "$log" ] || continue
			echo "--- $(basename "$log") (last 30 lines)"
			tail -n 30 "$log"
		done
		[ "$failed" -gt 0 ] || failed=1
	fi
	rm -rf "$work"
	printf 'firmware: total %ss\n' "$((SECONDS - started))"
	printf 'firmware: %s passed, %s failed\n' "$passed" "$failed"
	if [ "$failed" -gt 0 ]; then
		exit 1
	fi
	exit "$code"
}
trap finish EXIT

# --- tools -----------------------------------------------------------------------------

apt_install() {
	local sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || {
			echo "test-qemu.sh: need root or sudo to install $*" >&2
			return 1
		}
		sudo="sudo"
	fi
	echo "== apt-get install $*" >&2
	export DEBIAN_FRONTEND=noninteractive
	# The package lists may be missing or stale on a fresh machine: update and retry.
	$sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
		{ $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

qemu="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
missing=()
[ -n "$qemu" ] || missing+=(qemu-user)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
if [ "${#missing[@]}" -gt 0 ]; then
	apt_install "${missing[@]}"
	qemu="$(command -v qemu-aarch64 || command -v qemu-aarch64-static)"
fi

# --- build -----------------------------------------------------------------------------

if [ "${FW_SKIP_BUILD:-0}" = 1 ]; then
	bin="${FW_BIN:?FW_BIN must name the binary when FW_SKIP_BUILD=1}"
else
	build_started=$SECONDS
	bin="$("$here/build.sh" "$target" | tail -n 1)"
	printf 'firmware: build %ss\n' "$((SECONDS - build_started))"
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
size="$(stat -c %s "$bin")"
if readelf -h "$bin" 2>/dev/null | grep -q AArch64 && ! readelf -l "$bin" | grep -q INTERP; then
	pass "static aarch64 binary, $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1048576 }') MiB)"
else
	fail "$bin is not a static aarch64 binary"
	exit 1
fi

# --- run under qemu ---------------------------------------------------------------------

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
	echo $((20000 + $$ % 20000)))"
cd "$work"
# Every TERN_* variable is a configuration key: pass only ours to tern-edge.
unset_tern=()
for var in $(compgen -e); do
	case "$var" in TERN_*) unset_tern+=(-u "$var") ;; esac
done

# start_broker LOG: runs tern-edge under qemu (store in $work/data) until it listens.
start_broker() {
	env "${unset_tern[@]}" -u RUST_LOG TERN_LISTENERS__TCP__BIND="127.0.0.1:$port" \
		TERN_NODE__DATA_DIR="$work/data" "$qemu" "$bin" --profile dev >"$work/$1" 2>&1 &
	qemu_pid=$!
	local _
	for _ in $(seq 1 300); do
		kill -0 "$qemu_pid" 2>/dev/null || return 1
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# stop_broker: SIGTERM, then expects exit code 0 within 15 s.
stop_broker() {
	local _ code=0
	kill -TERM "$qemu_pid"
	for _ in $(seq 1 150); do
		if ! kill -0 "$qemu_pid" 2>/dev/null; then
			wait "$qemu_pid" || code=$?
			qemu_pid=""
			return "$code"
		fi
		sleep 0.1
	done
	return 124
}

# subscribe NAME FILTER: mosquitto_sub (MQTT 5, QoS 1) for one message, in the
# background; returns once the SUBACK is in. Line-buffered, so its debug output shows
# up while it runs.
subscribe() {
	stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv5 -i "fw-$1" -q 1 -t "$2" \
		-C 1 -W 30 -v -d >"$work/$1.log" 2>&1 &
	sub_pid=$!
	local _
	for _ in $(seq 1 200); do
		grep -q "received SUBACK" "$work/$1.log" && return 0
		kill -0 "$sub_pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# received NAME TOPIC PAYLOAD: waits for the subscriber; true if it got exactly that
# message at QoS 1.
received() {
	local code=0
	wait "$sub_pid" || code=$?
	sub_pid=""
	[ "$code" -eq 0 ] && grep -qxF "$2 $3" "$work/$1.log" && grep -q "received PUBLISH (d0, q1" "$work/$1.log"
}

rss_kib() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$qemu_pid/status"; }

if start_broker tern-edge.log; then
	pass "tern-edge listens on 127.0.0.1:$port under $(basename "$qemu")"
else
	fail "tern-edge did not listen on 127.0.0.1:$port within 30 s"
	exit 1
fi

# Idle: started, store opened, one probe connection closed, no clients. Let it settle.
sleep 2
idle_rss="$(rss_kib VmRSS)"

# --- drive it with a real MQTT client ---------------------------------------------------

payload="hello from the host $$-$RANDOM"
topic="firmware/qemu/hello"
if subscribe sub 'firmware/qemu/#'; then
	pass "mosquitto_sub (MQTT 5) connected and subscribed to firmware/qemu/# at QoS 1"
else
	fail "mosquitto_sub got no SUBACK"
	exit 1
fi

if mosquitto_pub -h 127.0.0.1 -p "$port" -V mqttv311 -i fw-pub -q 1 -t "$topic" -m "$payload" \
	-d >"$work/pub.log" 2>&1 && grep -q "received PUBACK" "$work/pub.log"; then
	pass "mosquitto_pub (MQTT 3.1.1) published at QoS 1 and got PUBACK"
else
	fail "mosquitto_pub did not get a PUBACK"
	exit 1
fi

if received sub "$topic" "$payload"; then
	pass "the subscriber received the message at QoS 1"
else
	fail "the subscriber did not receive '$topic $payload' at QoS 1"
	exit 1
fi

# A retained message, acknowledged now, must come back after a restart (the store).
retained_topic="firmware/qemu/retained"
retained_payload="kept across a restart $$-$RANDOM"
if ! mosquitto_pub -h 127.0.0.1 -p "$port" -i fw-pub-retained -q 1 -r -t "$retained_topic" \
	-m "$retained_payload" -d >"$work/pub-retained.log" 2>&1 ||
	! grep -q "received PUBACK" "$work/pub-retained.log"; then
	fail "the retained QoS 1 publish got no PUBACK"
	exit 1
fi
after_rss="$(rss_kib VmRSS)"
peak_rss="$(rss_kib VmHWM)"

# --- stop it, start it again ------------------------------------------------------------

if stop_broker; then
	pass "SIGTERM: clean exit (code 0)"
else
	fail "SIGTERM: tern-edge did not exit with code 0 (code $?)"
	exit 1
fi

if start_broker tern-edge-restart.log && subscribe sub-retained "$retained_topic" &&
	received sub-retained "$retained_topic" "$retained_payload"; then
	pass "after a restart the retained message comes back from the store"
else
	fail "after a restart the retained message did not come back"
	exit 1
fi
if ! stop_broker; then
	fail "SIGTERM after the restart: no clean exit"
	exit 1
fi

printf 'firmware: binary %s bytes; RSS of qemu-aarch64 + tern-edge: idle %s KiB, after the exchange %s KiB, peak %s KiB\n' \
	"$size" "$idle_rss" "$after_rss" "$peak_rss"
