"""Pusher web hooks from pushi, received by a real HTTP server here and
verified with the PyPI `pusher` SDK's own `validate_webhook`."""
import json
import os
import queue
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pusher
import pytest
import websocket

KEY, SECRET = "hookkey", "hooksecret"


def receiver():
    got = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.put(({k.lower(): v for k, v in self.headers.items()}, body.decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, got


def events_until(got, wanted, timeout=10):
    """Collects validated web hook events until every (name, channel) in wanted was seen."""
    client = pusher.Pusher(app_id="5", key=KEY, secret=SECRET)
    seen, deadline = [], time.time() + timeout
    while not set(wanted) <= {(e["name"], e["channel"]) for e in seen}:
        headers, body = got.get(timeout=max(0.1, deadline - time.time()))
        assert headers["content-type"] == "application/json"
        assert headers["x-pusher-key"] == KEY
        valid = client.validate_webhook(KEY, headers["x-pusher-signature"], body)
        assert valid is not None, "signature or time_ms rejected by the SDK"
        seen.extend(valid["events"])
    return seen


def test_channel_and_member_hooks(server_factory):
    httpd, got = receiver()
    apps = [{"id": "5", "key": KEY, "secret": SECRET, "webhooks": [f"http://127.0.0.1:{httpd.server_port}/hook"]}]
    server = server_factory(PUSHI_APPS_FILE=write_apps(apps), PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    client = pusher.Pusher(app_id="5", key=KEY, secret=SECRET)

    ws = websocket.create_connection(f"ws://{server.ws}/app/{KEY}?protocol=7", timeout=5)
    socket_id = json.loads(json.loads(ws.recv())["data"])["socket_id"]
    data = {"user_id": "u1", "user_info": {}}
    auth = client.authenticate(channel="presence-hooks", socket_id=socket_id, custom_data=data)
    ws.send(json.dumps({"event": "pusher:subscribe", "data": dict(channel="presence-hooks", **auth)}))
    assert json.loads(ws.recv())["event"] == "pusher_internal:subscription_succeeded"
    ws.send(json.dumps({"event": "client-wave", "channel": "presence-hooks", "data": {"hi": 1}}))
    seen = events_until(got, [("channel_occupied", "presence-hooks"), ("member_added", "presence-hooks"),
                              ("client_event", "presence-hooks")])
    client_event = next(e for e in seen if e["name"] == "client_event")
    assert client_event["event"] == "client-wave" and client_event["socket_id"] == socket_id
    assert client_event["user_id"] == "u1" and json.loads(client_event["data"]) == {"hi": 1}

    ws.close()
    seen = events_until(got, [("member_removed", "presence-hooks"), ("channel_vacated", "presence-hooks")])
    assert next(e for e in seen if e["name"] == "member_removed")["user_id"] == "u1"
    httpd.shutdown()


def write_apps(apps):
    path = os.path.join(tempfile.mkdtemp(), "apps.json")
    with open(path, "w") as f:
        json.dump(apps, f)
    return path


def subscribe(ws, channel):
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}))
    while json.loads(ws.recv())["event"] != "pusher_internal:subscription_succeeded":
        pass


class Tarpit:
    """Accepts connections and never answers; counts them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_tarpit_tenant_does_not_delay_another(server_factory):
    """App t's four web hooks accept and never answer; app h's web hook must
    still get its events within a second (per-app share of the workers)."""
    tarpit = Tarpit()
    httpd, got = receiver()
    path = write_apps([
        {"id": "t", "key": "tkey", "secret": "tsecret",
         "webhooks": [f"http://127.0.0.1:{tarpit.port}/{n}" for n in "abcd"]},
        {"id": "h", "key": KEY, "secret": SECRET, "webhooks": [f"http://127.0.0.1:{httpd.server_port}/hook"]},
    ])
    server = server_factory(PUSHI_APPS_FILE=path, PUSHI_OUTBOUND_ALLOW="127.0.0.1/32",
                            PUSHI_HANDLER_WORKERS="4", PUSHI_DELIVERY_APP_WORKERS="2")
    noisy = websocket.create_connection(f"ws://{server.ws}/app/tkey?protocol=7", timeout=5)
    noisy.recv()
    for i in range(20):
        subscribe(noisy, f"noisy-{i}")
    deadline = time.time() + 5
    while len(tarpit.conns) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(tarpit.conns) == 2, "the tarpit app holds its two workers"

    ws = websocket.create_connection(f"ws://{server.ws}/app/{KEY}?protocol=7", timeout=5)
    ws.recv()
    for i in range(3):
        started = time.time()
        subscribe(ws, f"healthy-{i}")
        headers, body = got.get(timeout=5)
        waited = time.time() - started
        assert [e["name"] for e in json.loads(body)["events"]] == ["channel_occupied"]
        assert waited <= 1.0, f"healthy web hook took {waited:.2f} s behind a tarpit tenant"
    assert len(tarpit.conns) == 2, "never more than PUSHI_DELIVERY_APP_WORKERS connections for one app"
    noisy.close()
    ws.close()
    tarpit.close()
    httpd.shutdown()


def test_hooks_in_order_and_filtered(server_factory):
    """200 rapid subscribe/unsubscribe rounds: occupied and vacated arrive
    strictly alternating, and only the event types the web hook asked for."""
    httpd, got = receiver()
    hook = {"url": f"http://127.0.0.1:{httpd.server_port}/hook",
            "event_types": ["channel_occupied", "channel_vacated"]}
    server = server_factory(PUSHI_APPS_FILE=write_apps([{"id": "5", "key": KEY, "secret": SECRET, "webhooks": [hook]}]),
                            PUSHI_OUTBOUND_ALLOW="127.0.0.1/32", PUSHI_CLIENT_EVENT_RATE="100000")
    client = pusher.Pusher(app_id="5", key=KEY, secret=SECRET)
    ws = websocket.create_connection(f"ws://{server.ws}/app/{KEY}?protocol=7", timeout=5)
    socket_id = json.loads(json.loads(ws.recv())["data"])["socket_id"]
    channel = "presence-order"
    data = {"user_id": "u1", "user_info": {}}
    rounds = 200
    for _ in range(rounds):
        auth = client.authenticate(channel=channel, socket_id=socket_id, custom_data=data)
        ws.send(json.dumps({"event": "pusher:subscribe", "data": dict(channel=channel, **auth)}))
        while json.loads(ws.recv())["event"] != "pusher_internal:subscription_succeeded":
            pass
        # member_added, client events and member_removed happen too; the hook did not ask for them.
        ws.send(json.dumps({"event": "client-x", "channel": channel, "data": {}}))
        ws.send(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
    names, deadline = [], time.time() + 30
    while len(names) < 2 * rounds and time.time() < deadline:
        headers, body = got.get(timeout=max(0.1, deadline - time.time()))
        assert client.validate_webhook(KEY, headers["x-pusher-signature"], body) is not None
        names.extend(e["name"] for e in json.loads(body)["events"] if e["channel"] == channel)
    assert names == ["channel_occupied", "channel_vacated"] * rounds
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)
    ws.close()


def test_numeric_user_ids_stay_numbers_in_hooks(server_factory):
    httpd, got = receiver()
    apps = [{"id": "5", "key": KEY, "secret": SECRET, "webhooks": [f"http://127.0.0.1:{httpd.server_port}/hook"]}]
    server = server_factory(PUSHI_APPS_FILE=write_apps(apps), PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    client = pusher.Pusher(app_id="5", key=KEY, secret=SECRET)

    ws = websocket.create_connection(f"ws://{server.ws}/app/{KEY}?protocol=7", timeout=5)
    socket_id = json.loads(json.loads(ws.recv())["data"])["socket_id"]
    auth = client.authenticate(channel="presence-n", socket_id=socket_id, custom_data={"user_id": 42, "user_info": {}})
    ws.send(json.dumps({"event": "pusher:subscribe", "data": dict(channel="presence-n", **auth)}))
    assert json.loads(ws.recv())["event"] == "pusher_internal:subscription_succeeded"
    ws.send(json.dumps({"event": "client-wave", "channel": "presence-n", "data": {}}))
    seen = events_until(got, [("member_added", "presence-n"), ("client_event", "presence-n")])
    assert next(e for e in seen if e["name"] == "member_added")["user_id"] == 42
    assert next(e for e in seen if e["name"] == "client_event")["user_id"] == 42
    ws.close()
    seen = events_until(got, [("member_removed", "presence-n")])
    assert next(e for e in seen if e["name"] == "member_removed")["user_id"] == 42
    httpd.shutdown()
