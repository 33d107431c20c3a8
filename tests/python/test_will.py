"""Will messages: sent on an abnormal close (raw socket dropped), not sent after DISCONNECT
(3.1.1 and 5.0); v5 Will Delay Interval honoured and cancelled by a reconnect in time."""

import time

import pytest

from mqttkit import V5, V311, WAIT, disconnect_packet, u32p, unique

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@VERSIONS
def test_will_on_abnormal_close(client, raw, version):
    topic = unique("py-will")
    w = client(V311)
    w.subscribe(topic, 1)
    r = raw(version)
    r.connect(unique("py-will"), will=(topic, b"gone", 1, False, b""))
    r.close()
    m = w.recv()
    assert m is not None and (m.topic, m.payload) == (topic, b"gone")


@VERSIONS
def test_no_will_after_disconnect(client, raw, version):
    topic = unique("py-nowill")
    w = client(V311)
    w.subscribe(topic, 1)
    r = raw(version)
    r.connect(unique("py-nowill"), will=(topic, b"gone", 1, False, b""))
    r.send(disconnect_packet(5 if version == V5 else 4))
    r.wait_closed()
    w.assert_no_message(1.2)


def test_v5_will_delay(client, raw):
    topic = unique("py-wdelay")
    w = client(V311)
    w.subscribe(topic, 1)
    r = raw(V5)
    r.connect(unique("py-wdelay"), props=u32p(0x11, 30),
              will=(topic, b"late", 1, False, u32p(0x18, 2)))
    t0 = time.monotonic()
    r.close()
    w.assert_no_message(1.3)
    m = w.recv(WAIT)
    assert m is not None and m.payload == b"late"
    assert 1.5 <= time.monotonic() - t0 <= 5.5


def test_v5_will_delay_cancelled_by_reconnect(client, raw):
    topic, cid = unique("py-wcancel"), unique("py-wcancel")
    w = client(V311)
    w.subscribe(topic, 1)
    r = raw(V5)
    r.connect(cid, props=u32p(0x11, 30), will=(topic, b"no", 1, False, u32p(0x18, 2)))
    r.close()
    time.sleep(0.3)
    r2 = raw(V5)
    ack = r2.connect(cid, clean=False, props=u32p(0x11, 30))
    assert ack.body[0] & 1
    w.assert_no_message(3.0)
