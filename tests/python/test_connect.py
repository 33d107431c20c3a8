"""CONNECT/CONNACK with paho-mqtt: clean session / clean start and session present on
reconnect (3.1.1 and 5.0), the v5 assigned client identifier and CONNACK properties,
keep-alive enforcement at 1.5x (raw socket), and session takeover (v5: DISCONNECT 0x8E)."""

import time

import pytest

from mqttkit import V5, V311, WAIT, PacketTypes, Client, Raw, props, unique

VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@VERSIONS
def test_session_present_on_reconnect(broker, client, version):
    cid = unique("py-sess")
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if version == V5 else None
    c = client(version, client_id=cid, clean=False, connect_props=cp)
    assert not c.session_present
    c.subscribe(unique("py-sess/t"), 1)
    c.disconnect()
    c = client(version, client_id=cid, clean=False, connect_props=cp)
    assert c.session_present, "persistent session resumed"
    c.disconnect()
    c = client(version, client_id=cid, clean=True, connect_props=cp)
    assert not c.session_present, "clean session/start never reports a session"
    c.disconnect()


def test_v5_assigned_client_identifier(broker, client):
    c = client(V5, client_id="")
    assigned = getattr(c.connack_props, "AssignedClientIdentifier", None)
    assert assigned, f"no Assigned Client Identifier in {c.connack_props}"
    d = client(V5, client_id="")
    assert d.connack_props.AssignedClientIdentifier != assigned


def test_v5_connack_properties(broker, client):
    p = client(V5).connack_props
    for name in ("ReceiveMaximum", "MaximumPacketSize", "TopicAliasMaximum",
                 "WildcardSubscriptionAvailable", "SharedSubscriptionAvailable",
                 "SubscriptionIdentifierAvailable"):
        assert hasattr(p, name), f"CONNACK lacks {name}: {p}"
    assert p.ReceiveMaximum > 0 and p.MaximumPacketSize > 0


@VERSIONS
def test_keep_alive_enforced(broker, raw, version):
    r = raw(version)
    r.connect(unique("py-ka"), keepalive=1)
    start = time.monotonic()
    seen = r.wait_closed(4.0)
    elapsed = time.monotonic() - start
    assert elapsed >= 1.0, f"closed after {elapsed:.2f} s, before 1.5 x keep-alive"
    for p in seen:
        assert version == V5 and p.kind == 14 and p.body[:1] == b"\x8d", seen


@VERSIONS
def test_session_takeover(broker, client, version):
    cid = unique("py-takeover")
    first = client(version, client_id=cid)
    second = client(version, client_id=cid)
    assert first.disconnected.wait(WAIT), "first connection not closed"
    if version == V5:
        rc = first.disconnect_rc
        assert rc is not None and rc.value == 0x8E, f"DISCONNECT reason {rc}"
    topic = unique("py-takeover/t")
    second.subscribe(topic, 1)
    second.publish(topic, b"alive", 1)
    assert second.recv().payload == b"alive"
