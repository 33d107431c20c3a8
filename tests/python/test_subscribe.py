"""SUBSCRIBE/UNSUBSCRIBE with paho-mqtt: per-filter reason codes, invalid filters rejected
(0x80 in 3.1.1, 0x8F in 5.0; raw socket since paho refuses to send them), v5 UNSUBACK codes,
no-local, retain-as-published, retain handling 0/1/2 and subscription identifiers."""

import pytest

from mqttkit import V5, V311, QUIET, PacketTypes, props, subscribe_packet, unique
from paho.mqtt.subscribeoptions import SubscribeOptions


@pytest.mark.parametrize("version,invalid", [(V311, 0x80), (V5, 0x8F)], ids=["v311", "v5"])
def test_suback_per_filter_and_invalid_filters(raw, version, invalid):
    v = 5 if version == V5 else 4
    base = unique("py-suback")
    r = raw(version)
    r.connect(unique("py-suback"))
    r.send(subscribe_packet(v, 3, [(f"{base}/a", 0), (f"{base}/#/b", 1), (f"{base}/b/+", 2),
                                   (f"{base}/a+", 1)]))
    p = r.expect(9)
    assert p.body[:2] == b"\x00\x03"
    codes = list(p.body[3 + p.body[2]:]) if v == 5 else list(p.body[2:])
    assert codes == [0, invalid, 2, invalid]


def test_v5_unsuback_reason_codes(client):
    base = unique("py-unsub")
    c = client(V5)
    c.subscribe(f"{base}/a", 1)
    assert c.unsubscribe([f"{base}/a", f"{base}/never"]) == [0x00, 0x11]
    client(V5).publish(f"{base}/a", b"x", 1)
    c.assert_no_message()


def test_v5_no_local(client):
    base = unique("py-nolocal")
    c = client(V5)
    c.subscribe(f"{base}/l", options=SubscribeOptions(qos=1, noLocal=True))
    c.subscribe(f"{base}/n", 1)
    c.publish(f"{base}/l", b"own-l", 1)
    c.publish(f"{base}/n", b"own-n", 1)
    client(V5).publish(f"{base}/l", b"other-l", 1)
    got = sorted((m.topic, m.payload) for m in c.recv_n(2))
    assert got == [(f"{base}/l", b"other-l"), (f"{base}/n", b"own-n")]
    c.assert_no_message()


def test_v5_retain_as_published(client):
    topic = unique("py-rap")
    rap, plain = client(V5), client(V5)
    rap.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain.subscribe(topic, 1)
    pub = client(V5)
    pub.publish(topic, b"kept", 1, retain=True)
    assert rap.recv().retain is True
    assert plain.recv().retain is False
    pub.publish(topic, b"", 1, retain=True)


@pytest.mark.parametrize("handling,expected", [(0, [1, 1]), (1, [1, 0]), (2, [0, 0])])
def test_v5_retain_handling(client, handling, expected):
    topic = unique("py-rh")
    pub = client(V5)
    pub.publish(topic, b"retained", 1, retain=True)
    c = client(V5)
    counts = []
    for _ in range(2):
        c.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=handling))
        n = 0
        while (m := c.recv(QUIET)) is not None:
            assert (m.payload, m.retain) == (b"retained", True)
            n += 1
        counts.append(n)
    pub.publish(topic, b"", 1, retain=True)
    assert counts == expected


def test_v5_subscription_identifiers(client):
    base = unique("py-subid")
    c = client(V5)
    c.subscribe(f"{base}/#", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=5))
    c.subscribe(f"{base}/x", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9))
    pub = client(V5)
    pub.publish(f"{base}/x", b"both", 1)
    pub.publish(f"{base}/y", b"one", 1)
    m1, m2 = c.recv_n(2)
    assert (m1.payload, sorted(m1.properties.SubscriptionIdentifier)) == (b"both", [5, 9])
    assert (m2.payload, m2.properties.SubscriptionIdentifier) == (b"one", [5])
    c.assert_no_message()
