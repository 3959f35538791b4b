"""Pusher web hooks from pushi, received by a real HTTP server here and
verified with the PyPI `pusher` SDK's own `validate_webhook`."""
import json
import os
import queue
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pusher
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
    path = os.path.join(tempfile.mkdtemp(), "apps.json")
    with open(path, "w") as f:
        json.dump(apps, f)
    server = server_factory(PUSHI_APPS_FILE=path)
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


def test_numeric_user_ids_stay_numbers_in_hooks(server_factory):
    httpd, got = receiver()
    apps = [{"id": "5", "key": KEY, "secret": SECRET, "webhooks": [f"http://127.0.0.1:{httpd.server_port}/hook"]}]
    path = os.path.join(tempfile.mkdtemp(), "apps.json")
    with open(path, "w") as f:
        json.dump(apps, f)
    server = server_factory(PUSHI_APPS_FILE=path)
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
