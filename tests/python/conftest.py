"""pytest fixtures for the paho-mqtt interop suite.

``broker`` is one tern-edge for the whole session (or the external broker named by
``TERN_TEST_BROKER=host:port``); every test uses its own client ids and topic prefixes.
``make_broker(env, why)`` starts a dedicated tern-edge with ``TERN_MQTT__*`` overrides and
skips the test under an external broker. ``sys_broker`` runs with ``sys_interval = 1``.
``client(...)`` / ``raw(...)`` create paho clients and raw sockets closed at teardown.
"""

import os

import pytest

from mqttkit import Broker, Client, Raw, V5


@pytest.fixture(scope="session")
def broker():
    b = Broker()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def sys_broker():
    b = Broker({"TERN_MQTT__SYS_INTERVAL": "1"})
    yield b
    b.stop()


@pytest.fixture
def make_broker():
    started = []

    def make(env, why):
        if os.environ.get("TERN_TEST_BROKER", "").strip():
            pytest.skip(f"needs a tern-edge started with {env} ({why})")
        b = Broker(env)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def client(broker):
    made = []

    def make(version=V5, on=None, **kw):
        c = Client(on or broker, version, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw(broker):
    made = []

    def make(version=V5, on=None):
        r = Raw(on or broker, version)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
