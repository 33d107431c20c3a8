#!/usr/bin/env bash
# Proves the gateway build runs on ARM: builds tern-edge for aarch64-unknown-linux-musl
# (firmware-targets/build.sh), runs it under qemu-aarch64 (user-mode emulation) with
# the `dev` profile on a free loopback port, and drives it from the host with the
# mosquitto clients: connect, subscribe (MQTT 5), publish at QoS 1 (MQTT 3.1.1),
# receive. Measures the binary's size and the emulated process's idle RSS, then stops
# it with SIGTERM and expects a clean exit (code 0).
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
env "${unset_tern[@]}" -u RUST_LOG TERN_LISTENERS__TCP__BIND="127.0.0.1:$port" \
	TERN_NODE__DATA_DIR="$work/data" "$qemu" "$bin" --profile dev >"$work/tern-edge.log" 2>&1 &
qemu_pid=$!

listening=0
for _ in $(seq 1 300); do
	if ! kill -0 "$qemu_pid" 2>/dev/null; then
		break
	fi
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		listening=1
		break
	fi
	sleep 0.1
done
if [ "$listening" -eq 1 ]; then
	pass "tern-edge listens on 127.0.0.1:$port under $(basename "$qemu")"
else
	fail "tern-edge did not listen on 127.0.0.1:$port within 30 s"
	exit 1
fi

# Idle: started, one probe connection closed, no clients. Let it settle.
sleep 2
rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$qemu_pid/status"; }
idle_rss="$(rss_kib)"

# --- drive it with a real MQTT client ---------------------------------------------------

payload="hello from the host $$-$RANDOM"
topic="firmware/qemu/hello"
# Line-buffered, so that its debug output (SUBACK) shows up while it runs.
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv5 -i fw-sub -q 1 -t 'firmware/qemu/#' \
	-C 1 -W 30 -v -d >"$work/sub.log" 2>&1 &
sub_pid=$!
subscribed=0
for _ in $(seq 1 200); do
	if grep -q "received SUBACK" "$work/sub.log"; then
		subscribed=1
		break
	fi
	kill -0 "$sub_pid" 2>/dev/null || break
	sleep 0.1
done
if [ "$subscribed" -eq 1 ]; then
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

sub_code=0
wait "$sub_pid" || sub_code=$?
sub_pid=""
if [ "$sub_code" -eq 0 ] && grep -qxF "$topic $payload" "$work/sub.log" &&
	grep -q "received PUBLISH (d0, q1" "$work/sub.log"; then
	pass "the subscriber received the message at QoS 1"
else
	fail "the subscriber did not receive '$topic $payload' at QoS 1 (exit $sub_code)"
	exit 1
fi

after_rss="$(rss_kib)"
peak_rss="$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$qemu_pid/status")"

# --- stop it ----------------------------------------------------------------------------

kill -TERM "$qemu_pid"
stopped=0
for _ in $(seq 1 150); do
	if ! kill -0 "$qemu_pid" 2>/dev/null; then
		stopped=1
		break
	fi
	sleep 0.1
done
exit_code=0
if [ "$stopped" -eq 1 ]; then
	wait "$qemu_pid" || exit_code=$?
	qemu_pid=""
fi
if [ "$stopped" -eq 1 ] && [ "$exit_code" -eq 0 ]; then
	pass "SIGTERM: clean exit (code 0)"
else
	fail "SIGTERM: stopped=$stopped exit code $exit_code"
	exit 1
fi

printf 'firmware: binary %s bytes; RSS of qemu-aarch64 + tern-edge: idle %s KiB, after the exchange %s KiB, peak %s KiB\n' \
	"$size" "$idle_rss" "$after_rss" "$peak_rss"
