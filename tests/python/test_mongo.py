"""pushi on the MongoDB store (nx-27017, a MongoDB wire-protocol server,
started here): the `pushi` client's flow end to end, and the database killed
and restarted under load — live delivery goes on, acknowledged events are
all stored, /health reports degraded meanwhile."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pushi
import pytest

from test_pushi_client import connect, new_app, recv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Mongo:
    """nx-27017 through tests/mongo.sh, on a fixed port so it can come back."""

    def __init__(self, tmp_path):
        self.dir, self.port = str(tmp_path / "mongo"), free_port()

    def start(self):
        subprocess.run(["bash", os.path.join(ROOT, "tests", "mongo.sh"), "start", str(self.port), self.dir],
                       check=True, capture_output=True, timeout=60)

    def kill(self):
        with open(os.path.join(self.dir, "nx-27017.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        time.sleep(0.3)

    def stop(self):
        subprocess.run(["bash", os.path.join(ROOT, "tests", "mongo.sh"), "stop", self.dir], capture_output=True)

    @property
    def url(self):
        return f"mongodb://127.0.0.1:{self.port}/pushi_e2e"


@pytest.fixture
def mongo(tmp_path):
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "nx-27017")):
        pytest.skip("nx-27017 is not installed (tests/setup.sh installs it)")
    m = Mongo(tmp_path)
    m.start()
    yield m
    m.stop()


def health(server):
    # The store's details are shown to the operator (PUSHI_ADMIN_TOKEN, set by conftest).
    req = urllib.request.Request(f"http://{server.api}/health",
                                 headers={"Authorization": f"Bearer {server.admin_token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_pushi_client_on_mongodb(server_factory, mongo):
    server = server_factory(PUSHI_MONGO_URL=mongo.url)
    assert "MongoDB" in health(server)["store"]["backend"]
    app, api = new_app(server)
    api.subscribe("ann", "news")
    api.trigger_event(channel="news", data="stored in mongo")
    ws, socket_id = connect(server, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "personal-ann", "auth": api.authenticate("personal-ann", socket_id)}}))
    info = json.loads(recv(ws, "pusher_internal:subscription_succeeded")["data"])
    assert info["alias"] == ["news"]
    assert [e["data"]["data"] for e in info["events"]] == ["stored in mongo"]


def test_database_killed_and_restarted_loses_nothing_acknowledged(server_factory, mongo):
    server = server_factory(PUSHI_MONGO_URL=mongo.url, PUSHI_STORE_TIMEOUT="60")
    app, api = new_app(server)
    ws, socket_id = connect(server, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "feed"}}))
    recv(ws, "pusher_internal:subscription_succeeded")
    for i in range(10):
        api.trigger_event(channel="feed", data=f"before{i}")
    for i in range(10):
        assert recv(ws, "message")["data"] == f"before{i}"

    mongo.kill()
    acked, errors = [], []

    def publish(i):
        client = pushi.API(app_id=app["ident"], app_key=app["key"], app_secret=app["secret"],
                           base_url=f"http://{server.api}/")
        try:
            client.trigger_event(channel="feed", data=f"during{i}")
            acked.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    # Live delivery goes on while the database is down.
    live = sorted(recv(ws, "message")["data"] for _ in range(10))
    assert live == sorted(f"during{i}" for i in range(10))
    deadline = time.time() + 15
    while health(server)["status"] != "degraded" and time.time() < deadline:
        time.sleep(0.2)
    assert health(server)["status"] == "degraded", "failing writes show in /health"
    assert not acked, "nothing is acknowledged before it is stored"

    mongo.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(acked) == list(range(10))
    deadline = time.time() + 15
    while health(server)["status"] != "ok" and time.time() < deadline:
        time.sleep(0.2)
    assert health(server)["status"] == "ok", "recovered"
    events = api.get(f"http://{server.api}/events", count=100, channel="feed")["events"]
    stored = sorted(e["data"]["data"] for e in events)
    assert stored == sorted([f"before{i}" for i in range(10)] + [f"during{i}" for i in range(10)])
