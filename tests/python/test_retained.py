"""Retained messages with paho-mqtt (3.1.1 and 5.0): set, replace, clear with an empty
payload, delivered on subscribe with the retain flag, live forwards without it."""

import pytest

from mqttkit import V5, V311, unique

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@VERSIONS
def test_retained_set_replace_clear(client, version):
    topic = unique("py-ret")
    pub = client(version)
    pub.publish(topic, b"first", 1, retain=True)
    s1 = client(version)
    s1.subscribe(topic, 1)
    m = s1.recv()
    assert (m.payload, m.retain) == (b"first", True)
    pub.publish(topic, b"second", 1, retain=True)
    m = s1.recv()
    assert (m.payload, m.retain) == (b"second", False), "live forward has retain=0"
    s2 = client(version)
    s2.subscribe(topic, 1)
    m = s2.recv()
    assert (m.payload, m.retain) == (b"second", True)
    s2.assert_no_message()
    pub.publish(topic, b"", 1, retain=True)
    s3 = client(version)
    s3.subscribe(topic, 1)
    s3.assert_no_message()


@VERSIONS
def test_retained_wildcard(client, version):
    base = unique("py-retw")
    pub = client(version)
    topics = [f"{base}/a", f"{base}/b/c", f"{base}/b/d"]
    for t in topics:
        pub.publish(t, t.encode(), 1, retain=True)
    s = client(version)
    s.subscribe(f"{base}/#", 1)
    got = sorted(m.topic for m in s.recv_n(3))
    assert got == sorted(topics)
    s.assert_no_message()
    for t in topics:
        pub.publish(t, b"", 1, retain=True)
