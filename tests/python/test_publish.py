"""PUBLISH with paho-mqtt: QoS 0/1/2 both directions (3.1.1 and 5.0), QoS downgrade,
overlapping subscriptions delivered once at the highest QoS, offline queueing, resend with
DUP=1 and the same packet id (raw socket), and the v5 Receive Maximum in-flight window."""

import pytest

from mqttkit import (V5, V311, WAIT, QUIET, PacketTypes, props, puback, subscribe_packet,
                     u32p, unique)
from paho.mqtt.subscribeoptions import SubscribeOptions

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@VERSIONS
def test_qos_0_1_2_roundtrip(client, version):
    base = unique("py-q")
    sub = client(version)
    assert sub.subscribe(f"{base}/#", 2) == [2]
    pub = client(version)
    for q in (0, 1, 2):
        pub.publish(f"{base}/{q}", f"m{q}".encode(), q)
    got = [(m.topic, m.payload, m.qos, m.retain) for m in sub.recv_n(3)]
    assert got == [(f"{base}/{q}", f"m{q}".encode(), q, False) for q in (0, 1, 2)]
    sub.assert_no_message()


@VERSIONS
def test_qos_downgrade(client, version):
    topic = unique("py-down")
    s0, s1 = client(version), client(version)
    s0.subscribe(topic, 0)
    s1.subscribe(topic, 1)
    client(version).publish(topic, b"x", 2)
    assert s0.recv().qos == 0
    assert s1.recv().qos == 1


@VERSIONS
def test_overlapping_subscriptions_once_at_highest_qos(client, version):
    base = unique("py-ovl")
    sub = client(version)
    assert sub.subscribe([(f"{base}/#", 0), (f"{base}/+/c", 2), (f"{base}/b/c", 1)]) == [0, 2, 1]
    client(version).publish(f"{base}/b/c", b"x", 2)
    m = sub.recv()
    assert (m.payload, m.qos) == (b"x", 2)
    sub.assert_no_message()


@VERSIONS
def test_offline_queue_for_persistent_session(client, version):
    cid, topic = unique("py-off"), unique("py-off/t")
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if version == V5 else None
    c = client(version, client_id=cid, clean=False, connect_props=cp)
    c.subscribe(topic, 1)
    c.disconnect()
    pub = client(version)
    for i in range(5):
        pub.publish(topic, f"{i}".encode(), 1)
    c = client(version, client_id=cid, clean=False, connect_props=cp)
    assert c.session_present
    assert [m.payload for m in c.recv_n(5)] == [b"0", b"1", b"2", b"3", b"4"]


@VERSIONS
def test_dup_on_resend(client, raw, version):
    cid, topic = unique("py-dup"), unique("py-dup/t")
    v = 5 if version == V5 else 4
    cprops = u32p(0x11, 60) if v == 5 else b""
    r = raw(version)
    r.connect(cid, clean=(v == 5), props=cprops)
    r.send(subscribe_packet(v, 1, [(topic, 1)]))
    r.expect(9)
    client(version).publish(topic, b"again", 1)
    dup, qos, _, t, pid, _, payload = r.expect(3).publish(v)
    assert (dup, qos, t, payload) == (False, 1, topic, b"again")
    r.close()
    r2 = raw(version)
    ack = r2.connect(cid, clean=False, props=cprops)
    assert ack.body[0] & 1, "session present"
    dup2, qos2, _, t2, pid2, _, payload2 = r2.expect(3).publish(v)
    assert (dup2, qos2, pid2, t2, payload2) == (True, 1, pid, topic, b"again")
    r2.send(puback(pid2))
    assert r2.recv(QUIET) is None


def test_v5_receive_maximum_window(client):
    topic = unique("py-rmax")
    sub = client(V5, manual_ack=True,
                 connect_props=props(PacketTypes.CONNECT, ReceiveMaximum=2))
    sub.subscribe(topic, 1)
    pub = client(V5)
    for i in range(5):
        pub.publish(topic, f"m{i}".encode(), 1)
    a, b = sub.recv_n(2)
    assert (a.payload, b.payload) == (b"m0", b"m1")
    sub.assert_no_message(0.8)
    sub.c.ack(a.mid, 1)
    c = sub.recv()
    assert c.payload == b"m2"
    sub.assert_no_message(0.8)
    sub.c.ack(b.mid, 1)
    sub.c.ack(c.mid, 1)
    rest = sub.recv_n(2)
    assert [m.payload for m in rest] == [b"m3", b"m4"]
    for m in rest:
        sub.c.ack(m.mid, 1)
