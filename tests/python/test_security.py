"""paho-mqtt against tern-edge's secure listeners and authentication.

MQTT over TLS (server certificate from a test CA, client certificates accepted from that
CA and refused from another one), MQTT over WebSocket (path /mqtt) and over WebSocket
over TLS, and password logins (good, bad, anonymous). Certificates are generated at test
time with the openssl command-line tool; password files with `tern-edge passwd`.
"""

import queue
import shutil
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttkit import edge_binary, free_port, unique

WAIT = 10

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command to make test certificates")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ca(d: Path, name: str):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d)


def _leaf(d: Path, ca: str, name: str, cn: str, ext: str):
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki():
    with tempfile.TemporaryDirectory(prefix="tern-pki-") as tmp:
        d = Path(tmp)
        _ca(d, "ca")
        _ca(d, "otherca")
        _leaf(d, "ca", "server", "tern-test-server",
              "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        _leaf(d, "ca", "client", "device-1", "extendedKeyUsage=clientAuth\n")
        _leaf(d, "otherca", "rogue", "device-1", "extendedKeyUsage=clientAuth\n")
        yield d


def _tls_env(pki: Path, port: int, **extra) -> dict:
    env = {
        "TERN_LISTENERS__TLS__ENABLED": "true",
        "TERN_LISTENERS__TLS__BIND": f"127.0.0.1:{port}",
        "TERN_LISTENERS__TLS__CERT": str(pki / "server.pem"),
        "TERN_LISTENERS__TLS__KEY": str(pki / "server.key"),
    }
    env.update(extra)
    return env


class Session:
    """A paho client on any transport; records the CONNACK and the messages."""

    def __init__(self, port, version=mqtt.MQTTv5, transport="tcp", tls=None, cert=None,
                 username=None, password=None):
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=unique("sec"), protocol=version, transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if tls is not None:
            self.c.tls_set(ca_certs=str(tls / "ca.pem"),
                           certfile=str(tls / f"{cert}.pem") if cert else None,
                           keyfile=str(tls / f"{cert}.key") if cert else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.rc = None
        self.done = threading.Event()
        self.messages = queue.Queue()
        self.subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_disconnect = lambda *a: self.done.set()
        self.port = port
        self.error = None

    def _on_connect(self, c, u, flags, rc, props=None):
        self.rc = rc
        self.done.set()

    def connect(self):
        """CONNACK reason code, or None if there was none (handshake refused, closed)."""
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            self.error = e
            return None
        self.c.loop_start()
        self.done.wait(WAIT)
        return None if self.rc is None else self.rc.value

    def subscribe(self, topic):
        self.subscribed.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT), "SUBACK"

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


def _round_trip(port_sub, port_pub, **kw):
    sub_kw = kw.pop("sub", {})
    pub_kw = kw.pop("pub", {})
    sub = Session(port_sub, **sub_kw)
    pub = Session(port_pub, **pub_kw)
    try:
        assert sub.connect() == 0, sub.error
        topic = unique("sec/t")
        sub.subscribe(topic)
        assert pub.connect() == 0, pub.error
        pub.c.publish(topic, b"hello", qos=1).wait_for_publish(WAIT)
        m = sub.messages.get(timeout=WAIT)
        assert m.payload == b"hello"
    finally:
        sub.close()
        pub.close()


def test_paho_over_tls(make_broker, pki):
    port = free_port()
    b = make_broker(_tls_env(pki, port), "TLS listener")
    # v5 subscriber over TLS, v3.1.1 publisher over TLS, then a plain TCP publisher.
    _round_trip(port, port, sub={"tls": pki}, pub={"tls": pki, "version": mqtt.MQTTv311})
    _round_trip(port, b.port, sub={"tls": pki}, pub={})


def test_paho_client_certificates(make_broker, pki):
    port = free_port()
    make_broker(_tls_env(pki, port, TERN_LISTENERS__TLS__CLIENT_CA=str(pki / "ca.pem"),
                         TERN_LISTENERS__TLS__REQUIRE_CLIENT_CERT="true"),
                "TLS with client certificates")
    good = Session(port, tls=pki, cert="client")
    try:
        assert good.connect() == 0, good.error
    finally:
        good.close()
    for cert in ("rogue", None):
        bad = Session(port, tls=pki, cert=cert)
        try:
            assert bad.connect() is None, f"{cert} must be refused"
        finally:
            bad.close()


def test_paho_over_websocket(make_broker, pki):
    ws, wss = free_port(), free_port()
    make_broker({
        "TERN_LISTENERS__WS__ENABLED": "true",
        "TERN_LISTENERS__WS__BIND": f"127.0.0.1:{ws}",
        "TERN_LISTENERS__WSS__ENABLED": "true",
        "TERN_LISTENERS__WSS__BIND": f"127.0.0.1:{wss}",
        "TERN_LISTENERS__WSS__CERT": str(pki / "server.pem"),
        "TERN_LISTENERS__WSS__KEY": str(pki / "server.key"),
    }, "WebSocket listeners")
    _round_trip(ws, ws, sub={"transport": "websockets"},
                pub={"transport": "websockets", "version": mqtt.MQTTv311})
    _round_trip(wss, ws, sub={"transport": "websockets", "tls": pki},
                pub={"transport": "websockets"})


def test_paho_password_logins(make_broker):
    with tempfile.TemporaryDirectory(prefix="tern-passwd-") as tmp:
        pw = Path(tmp) / "passwd"
        subprocess.run([str(edge_binary()), "passwd", "add", str(pw), "alice"],
                       input=b"wonderland\n", check=True, stdout=subprocess.DEVNULL)
        b = make_broker({"TERN_AUTH__ALLOW_ANONYMOUS": "false",
                         "TERN_AUTH__PASSWORD_FILE": str(pw),
                         "TERN_AUTH__MAX_LOGIN_FAILURES": "100"}, "password file")
        cases = [
            (mqtt.MQTTv5, "alice", "wonderland", 0),
            (mqtt.MQTTv5, "alice", "wrong", 0x86),
            (mqtt.MQTTv5, None, None, 0x87),
            (mqtt.MQTTv311, "alice", "wonderland", 0),
        ]
        for version, user, password, want in cases:
            s = Session(b.port, version=version, username=user, password=password)
            try:
                assert s.connect() == want, (version, user, password)
            finally:
                s.close()
        assert "wonderland" not in b.log()
        # v3.1.1 return codes: 4 (bad user name or password), 5 (not authorized); paho
        # reports them as its reason codes.
        for user, password, want in [("alice", "wrong", "Bad user name or password"),
                                     (None, None, "Not authorized")]:
            s = Session(b.port, version=mqtt.MQTTv311, username=user, password=password)
            try:
                s.connect()
                assert s.rc is not None and s.rc.getName() == want, s.rc
            finally:
                s.close()
