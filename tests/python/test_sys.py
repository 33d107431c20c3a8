"""$SYS topics with paho-mqtt (sys_interval = 1): the broker counters are published and
move with traffic; '#' never matches $SYS topics."""

import time

from mqttkit import V311, Client, unique


def _num(payload: bytes) -> int:
    digits = ""
    for ch in payload.decode().strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits)


def test_sys_counters(sys_broker):
    c = Client(sys_broker, V311)
    try:
        c.subscribe("$SYS/broker/#", 0)
        want = {"$SYS/broker/clients/connected", "$SYS/broker/messages/received",
                "$SYS/broker/messages/sent", "$SYS/broker/uptime"}
        seen = {}
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and not (
                want <= seen.keys() and _num(seen["$SYS/broker/clients/connected"]) >= 1):
            m = c.recv(0.5)
            if m is not None:
                seen[m.topic] = m.payload
        assert want <= seen.keys(), f"missing {want - seen.keys()}"
        for t in want:
            _num(seen[t])
        assert _num(seen["$SYS/broker/clients/connected"]) >= 1
    finally:
        c.close()


def test_hash_does_not_match_sys(sys_broker):
    all_ = Client(sys_broker, V311)
    ctl = Client(sys_broker, V311)
    try:
        all_.subscribe("#", 0)
        ctl.subscribe("$SYS/broker/uptime", 0)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            m = all_.recv(0.1)
            assert m is None or not m.topic.startswith("$"), m.topic
        assert ctl.recv(0.1) is not None, "control saw no $SYS/broker/uptime"
    finally:
        all_.close()
        ctl.close()
