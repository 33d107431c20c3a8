"""Server limits and bad input: a PUBLISH over the broker's Maximum Packet Size gets v5
DISCONNECT 0x95 (paho sees the reason), malformed packets close the connection (v5:
DISCONNECT 0x81 from tern-edge), garbage and PUBLISH-before-CONNECT close only that
connection while another client keeps working, and tern-edge logs the bad input."""

import os
import random

from mqttkit import (V5, V311, WAIT, PacketTypes, frame, props, publish_packet, s, unique)


def test_v5_publish_over_server_maximum(make_broker, client):
    b = make_broker({"TERN_MQTT__MAX_PACKET_SIZE": "1024"}, "max_packet_size=1024")
    c = client(V5, on=b)
    assert c.connack_props.MaximumPacketSize == 1024
    c.c.publish(unique("py-big"), b"x" * 2000, 1)
    assert c.disconnected.wait(WAIT), "not disconnected"
    assert c.disconnect_rc is not None and c.disconnect_rc.value == 0x95, c.disconnect_rc


def test_v5_malformed_packet(broker, raw):
    r = raw(V5)
    r.connect(unique("py-malformed"))
    r.send(frame(0x30, s("t") + bytes([100]) + b"abc"))  # property length past the end
    seen = r.wait_closed()
    if not broker.external:
        assert [(p.kind, p.body[:1]) for p in seen] == [(14, b"\x81")], seen


def test_bad_input_isolated(broker, client, raw):
    topic = unique("py-abuse")
    watcher = client(V311)
    watcher.subscribe(topic, 1)
    pub = client(V311)
    rng = random.Random(1234)
    abuses = [
        bytes([0x00]) + bytes(rng.getrandbits(8) for _ in range(1000)),   # garbage
        publish_packet(4, topic, b"sneaky"),                               # PUBLISH first
        bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),                       # bad varint
    ]
    for i, bad in enumerate(abuses):
        r = raw(V311)
        try:
            r.send(bad)
        except OSError:
            pass
        r.wait_closed()
        pub.publish(topic, f"{i}".encode(), 1)
    got = [m.payload for m in watcher.recv_n(len(abuses))]
    assert got == [b"0", b"1", b"2"], "only the offending connections were closed"
    watcher.assert_no_message()
    fresh = client(V5)
    fresh.subscribe(topic + "/fresh", 1)
    fresh.publish(topic + "/fresh", b"ok", 1)
    assert fresh.recv().payload == b"ok"
    if not broker.external:
        assert broker.running()
        log = broker.log().lower()
        assert "malformed" in log or "decode" in log, "no log line about the bad input"
