"""MQTT 5 features with paho-mqtt: session expiry, message expiry (expired queued message
dropped, remaining interval forwarded), PUBLISH properties passed through (user properties,
payload format indicator, content type, response topic, correlation data), topic aliases
from client to broker, and the client's Maximum Packet Size respected."""

import time

from mqttkit import (V5, WAIT, PacketTypes, props, publish_packet, u16p, unique)


def test_session_expiry(client):
    cid = unique("py-sexp")
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=1)
    c = client(V5, client_id=cid, connect_props=cp)
    c.subscribe(unique("py-sexp/t"), 1)
    c.disconnect()
    time.sleep(2.2)
    c = client(V5, client_id=cid, clean=False, connect_props=cp)
    assert not c.session_present, "session with expiry 1 s must be gone after 2.2 s"


def test_message_expiry(client):
    cid, topic = unique("py-mexp"), unique("py-mexp/t")
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    c = client(V5, client_id=cid, connect_props=cp)
    c.subscribe(topic, 1)
    c.disconnect()
    pub = client(V5)
    pub.publish(topic, b"expires", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish(topic, b"lasts", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=30))
    time.sleep(2.2)
    c = client(V5, client_id=cid, clean=False, connect_props=cp)
    m = c.recv()
    assert m is not None and m.payload == b"lasts"
    assert 25 <= m.properties.MessageExpiryInterval < 30
    c.assert_no_message()


def test_publish_properties_pass_through(client):
    topic = unique("py-props")
    sub = client(V5)
    sub.subscribe(topic, 1)
    p = props(PacketTypes.PUBLISH, PayloadFormatIndicator=1, ContentType="application/json",
              ResponseTopic=f"{topic}/reply", CorrelationData=b"\x00corr",
              UserProperty=[("a", "1"), ("b", "2"), ("a", "3")])
    client(V5).publish(topic, b"{}", 1, properties=p)
    m = sub.recv()
    mp = m.properties
    assert mp.PayloadFormatIndicator == 1
    assert mp.ContentType == "application/json"
    assert mp.ResponseTopic == f"{topic}/reply"
    assert mp.CorrelationData == b"\x00corr"
    assert mp.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]


def test_topic_alias_client_to_broker(client, raw):
    base = unique("py-alias")
    sub = client(V5)
    sub.subscribe(f"{base}/#", 0)
    pub = client(V5)
    pub.publish(f"{base}/x", b"p1", 0, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    r = raw(V5)
    r.connect(unique("py-alias-raw"))
    r.send(publish_packet(5, f"{base}/y", b"r1", props=u16p(0x23, 1)))
    r.send(publish_packet(5, "", b"r2", props=u16p(0x23, 1)))
    got = [(m.topic, m.payload) for m in sub.recv_n(3)]
    assert got == [(f"{base}/x", b"p1"), (f"{base}/y", b"r1"), (f"{base}/y", b"r2")]


def test_client_maximum_packet_size(client):
    topic = unique("py-cmax")
    sub = client(V5, connect_props=props(PacketTypes.CONNECT, MaximumPacketSize=256))
    sub.subscribe(topic, 1)
    pub = client(V5)
    pub.publish(topic, b"small-1", 1)
    pub.publish(topic, b"x" * 1000, 1)
    pub.publish(topic, b"small-2", 1)
    assert [m.payload for m in sub.recv_n(2)] == [b"small-1", b"small-2"]
    sub.assert_no_message()
