"""Helpers for the paho-mqtt interop suite.

* ``Broker``: starts the real ``tern-edge`` (``--profile dev``) on a free loopback port
  with its own data directory and a captured stderr log, or uses ``TERN_TEST_BROKER``
  (``host:port``) without spawning anything. Stopped with SIGTERM, then SIGKILL.
* ``Client``: a paho-mqtt 2.x client (callback API v2, MQTT 3.1.1 or 5.0) driven by its own
  network thread that never reconnects by itself, with every wait bounded by a timeout:
  messages, SUBACK/UNSUBACK reason codes, CONNACK flags and properties, the DISCONNECT
  reason the broker sent.
* ``Raw``: a plain socket with hand-assembled packets and a tiny packet reader, for what
  paho hides or refuses to send (DUP flags, packet ids, invalid filters, topic-alias-only
  publishes, malformed input, abnormal closes).
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
WAIT = 5.0
QUIET = 0.6
REPO = Path(__file__).resolve().parents[2]

_counter = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test (or run) uses: for client ids and topic prefixes."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


def edge_binary() -> Path:
    if os.environ.get("TERN_EDGE_BIN"):
        return Path(os.environ["TERN_EDGE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "tern-edge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A spawned tern-edge or the external broker named by TERN_TEST_BROKER."""

    def __init__(self, env: dict[str, str] | None = None):
        self.proc: subprocess.Popen | None = None
        self.workdir: tempfile.TemporaryDirectory | None = None
        external = os.environ.get("TERN_TEST_BROKER", "").strip()
        if external:
            host, port = external.rsplit(":", 1)
            self.host, self.port = host, int(port)
            return
        binary = edge_binary()
        if not binary.exists():
            raise RuntimeError(
                f"tern-edge not found at {binary}: build it (cargo build -p tern-edge) "
                "or set TERN_EDGE_BIN / TERN_TEST_BROKER"
            )
        self.workdir = tempfile.TemporaryDirectory(prefix="tern-pytest-")
        data = Path(self.workdir.name) / "data"
        data.mkdir()
        self.log_path = Path(self.workdir.name) / "stderr.log"
        self.host, self.port = "127.0.0.1", free_port()
        # tern-edge reads every TERN_* variable as configuration and rejects unknown keys:
        # keep the harness's own variables away from it.
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("TERN_EDGE_BIN", "TERN_TEST_BROKER")}
        full_env["TERN_LISTENERS__TCP__BIND"] = f"127.0.0.1:{self.port}"
        full_env["TERN_NODE__DATA_DIR"] = str(data)
        full_env.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--profile", "dev"],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tern-edge exited ({self.proc.returncode}):\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tern-edge not accepting on {self.port} within 10 s")
            time.sleep(0.025)

    @property
    def external(self) -> bool:
        return self.proc is None

    def log(self) -> str:
        if self.proc is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None


def props(packet_type, **values) -> Properties:
    """A paho Properties object: props(PacketTypes.PUBLISH, ContentType="x")."""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class Client:
    """A paho client on its own network thread; no automatic reconnect."""

    def __init__(self, broker: Broker, version=V5, client_id: str | None = None,
                 clean: bool = True, keepalive: int = 30, connect_props: Properties | None = None,
                 manual_ack: bool = False, will: tuple | None = None, connect: bool = True):
        self.broker = broker
        self.version = version
        self.client_id = client_id if client_id is not None else unique("py")
        kwargs = {}
        if version == V311:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=version,
            manual_ack=manual_ack,
            **kwargs,
        )
        self.clean = clean
        self.keepalive = keepalive
        self.connect_props = connect_props
        self.messages: queue.Queue = queue.Queue()
        self.acks: dict[int, list] = {}
        self.ack_event = threading.Condition()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_flags = None
        self.connack_rc = None
        self.connack_props = None
        self.disconnect_rc = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_suback
        self.c.on_unsubscribe = self._on_suback
        self.c.on_disconnect = self._on_disconnect
        if will is not None:
            self.c.will_set(*will)
        if connect:
            self.connect()

    # callbacks (network thread)
    def _on_connect(self, client, userdata, flags, rc, properties):
        self.connack_flags, self.connack_rc, self.connack_props = flags, rc, properties
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_suback(self, client, userdata, mid, rcs, properties):
        with self.ack_event:
            self.acks[mid] = [rc.value for rc in rcs]
            self.ack_event.notify_all()

    def _on_disconnect(self, client, userdata, flags, rc, properties):
        self.disconnect_rc = rc
        self.disconnected.set()

    def _loop(self):
        while not self._stop.is_set():
            rc = self.c.loop(0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self.disconnected.set()
                return

    def connect(self):
        kwargs = {}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = self.connect_props
        self.c.connect(self.broker.host, self.broker.port, self.keepalive, **kwargs)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        assert self.connected.wait(WAIT), "no CONNACK"
        assert self.connack_rc == 0, f"CONNACK {self.connack_rc}"
        return self

    @property
    def session_present(self) -> bool:
        return bool(self.connack_flags.session_present)

    def _wait_ack(self, mid) -> list:
        deadline = time.monotonic() + WAIT
        with self.ack_event:
            while mid not in self.acks:
                left = deadline - time.monotonic()
                assert left > 0, "no SUBACK/UNSUBACK"
                self.ack_event.wait(left)
            return self.acks.pop(mid)

    def subscribe(self, topic, qos=0, options=None, properties=None) -> list:
        """Subscribes (one filter or a list of (filter, qos/options)); returns reason codes."""
        if options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_ack(mid)

    def unsubscribe(self, topics) -> list:
        rc, mid = self.c.unsubscribe(topics)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_ack(mid)

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic} not completed"

    def recv(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def recv_n(self, n, timeout=WAIT) -> list:
        out = []
        for i in range(n):
            m = self.recv(timeout)
            assert m is not None, f"expected {n} messages, got {i}: {[x.payload for x in out]}"
            out.append(m)
        return out

    def assert_no_message(self, quiet=QUIET):
        m = self.recv(quiet)
        assert m is None, f"unexpected message {m.topic} {m.payload!r}"

    def disconnect(self):
        if not self.disconnected.is_set():
            self.c.disconnect()
            self.disconnected.wait(2)
        self.close()

    def close(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        try:
            self.c.socket() and self.c.socket().close()
        except OSError:
            pass


# ---------------------------------------------------------------- raw packets

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x) -> bytes:
    b = x.encode() if isinstance(x, str) else bytes(x)
    return struct.pack(">H", len(b)) + b


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def prop_block(raw_props: bytes = b"") -> bytes:
    return varint(len(raw_props)) + raw_props


def connect_packet(version: int, client_id: str, clean=True, keepalive=60,
                   props: bytes = b"", will: tuple | None = None) -> bytes:
    """will = (topic, payload, qos, retain, will_props)"""
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    body = s("MQTT") + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        body += prop_block(props)
    body += s(client_id)
    if will:
        if version == 5:
            body += prop_block(will[4] if len(will) > 4 else b"")
        body += s(will[0]) + s(will[1])
    return frame(0x10, body)


def publish_packet(version, topic, payload=b"", qos=0, pid=1, retain=False, dup=False,
                   props: bytes = b"") -> bytes:
    body = s(topic)
    if qos:
        body += struct.pack(">H", pid)
    if version == 5:
        body += prop_block(props)
    body += payload
    return frame(0x30 | (dup << 3) | (qos << 1) | int(retain), body)


def subscribe_packet(version, pid, filters, props: bytes = b"") -> bytes:
    body = struct.pack(">H", pid)
    if version == 5:
        body += prop_block(props)
    for f, opts in filters:
        body += s(f) + bytes([opts])
    return frame(0x82, body)


def puback(pid) -> bytes:
    return frame(0x40, struct.pack(">H", pid))


def disconnect_packet(version, reason=0) -> bytes:
    return frame(0xE0, bytes([reason, 0]) if version == 5 else b"")


def u8p(pid, v):
    return bytes([pid, v])


def u16p(pid, v):
    return bytes([pid]) + struct.pack(">H", v)


def u32p(pid, v):
    return bytes([pid]) + struct.pack(">I", v)


class Packet:
    def __init__(self, first: int, body: bytes):
        self.kind, self.flags, self.body = first >> 4, first & 0x0F, body

    def __repr__(self):
        return f"Packet(kind={self.kind}, flags={self.flags:#x}, body={self.body!r})"

    def publish(self, version):
        """(dup, qos, retain, topic, pid, props_bytes, payload)"""
        b = self.body
        n = struct.unpack(">H", b[:2])[0]
        topic = b[2:2 + n].decode()
        pos = 2 + n
        qos = (self.flags >> 1) & 3
        pid = None
        if qos:
            pid = struct.unpack(">H", b[pos:pos + 2])[0]
            pos += 2
        props = b""
        if version == 5:
            plen, used = read_varint(b, pos)
            props = b[pos + used:pos + used + plen]
            pos += used + plen
        return bool(self.flags & 8), qos, bool(self.flags & 1), topic, pid, props, b[pos:]


def read_varint(b: bytes, pos: int):
    n, mult, used = 0, 1, 0
    while True:
        byte = b[pos + used]
        used += 1
        n += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            return n, used


class Raw:
    """A raw MQTT connection."""

    def __init__(self, broker: Broker, version=V5):
        self.version = 5 if version == V5 else 4
        self.sock = socket.create_connection((broker.host, broker.port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def recv(self, timeout=WAIT):
        """A Packet, 'closed' or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            pkt = self._split()
            if pkt is not None:
                return pkt
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError:
                return "closed"
            if not chunk:
                return "closed"
            self.buf += chunk

    def _split(self):
        if len(self.buf) < 2:
            return None
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(self.buf):
                return None
            byte = self.buf[i]
            n += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        if len(self.buf) < i + n:
            return None
        pkt = Packet(self.buf[0], self.buf[i:i + n])
        self.buf = self.buf[i + n:]
        return pkt

    def expect(self, kind: int, timeout=WAIT) -> Packet:
        p = self.recv(timeout)
        assert isinstance(p, Packet) and p.kind == kind, f"expected packet type {kind}, got {p!r}"
        return p

    def connect(self, client_id, clean=True, keepalive=60, props=b"", will=None) -> Packet:
        self.send(connect_packet(self.version, client_id, clean, keepalive, props, will))
        return self.expect(2)

    def wait_closed(self, timeout=WAIT):
        """Packets seen before the close; raises AssertionError if still open at the timeout."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            p = self.recv(max(0.0, deadline - time.monotonic()))
            if p == "closed":
                return seen
            assert p is not None, f"connection still open after {timeout} s (saw {seen})"
            seen.append(p)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


__all__ = [
    "Broker", "Client", "Raw", "Packet", "PacketTypes", "Properties", "V311", "V5", "WAIT",
    "QUIET", "unique", "props", "connect_packet", "publish_packet", "subscribe_packet",
    "puback", "disconnect_packet", "frame", "s", "varint", "u8p", "u16p", "u32p",
]
