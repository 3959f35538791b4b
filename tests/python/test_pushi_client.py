"""Pushi's own REST API driven by the unmodified PyPI `pushi` client
(`pushi.API`), with a WebSocket client on `personal-<user>` channels, and the
embedded store surviving `kill -9`."""
import json
import signal
import urllib.error
import urllib.request

import pushi
import pytest
import websocket

from test_webhooks import receiver


def new_app(server, name="app"):
    """Creates an app through POST /apps (no credentials) and a client logged into it."""
    anonymous = pushi.API(base_url=f"http://{server.api}/")
    app = anonymous.create_app(name)
    assert len(app["key"]) == 64 and len(app["secret"]) == 64 and app["name"] == name
    api = pushi.API(app_id=app["ident"], app_key=app["key"], app_secret=app["secret"],
                    base_url=f"http://{server.api}/")
    return app, api


def connect(server, key):
    """A Pushi-style WebSocket (`/<app_key>`) and its socket id."""
    ws = websocket.create_connection(f"ws://{server.ws}/{key}", timeout=5)
    established = json.loads(ws.recv())
    assert established["event"] == "pusher:connection_established"
    return ws, json.loads(established["data"])["socket_id"]


def recv(ws, event=None):
    while True:
        m = json.loads(ws.recv())
        if event is None or m["event"] == event:
            return m


def raw(server, method, path, body=None):
    req = urllib.request.Request(f"http://{server.api}{path}", method=method,
                                 data=None if body is None else body.encode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_personal_channel_gets_history_and_live_events(server_factory):
    server = server_factory()
    app, api = new_app(server)
    sub = api.subscribe("alice", "news")
    assert (sub["user_id"], sub["event"]) == ("alice", "news")
    assert api.subscribe("alice", "news") == sub, "duplicate subscription is idempotent"
    api.trigger_event(channel="news", data="first", event="message")
    api.trigger_event(channel="news", data={"n": 2}, event="update")
    api.trigger_event(channel="other", data="not for alice")

    ws, socket_id = connect(server, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "personal-alice", "auth": api.authenticate("personal-alice", socket_id)}}))
    reply = recv(ws, "pusher_internal:subscription_succeeded")
    info = json.loads(reply["data"])
    assert reply["channel"] == "personal-alice"
    assert info["alias"] == ["news"]
    history = [(e["data"]["event"], e["data"]["data"]) for e in info["events"]]
    assert history == [("update", '{"n":2}'), ("message", "first")], "newest first, alice's channels only"
    assert all(e["mid"] and e["timestamp"] for e in info["events"])

    api.trigger_event(channel="news", data="live", event="message")
    live = recv(ws, "message")
    assert (live["channel"], live["data"]) == ("news", "live")
    assert live["mid"] and live["timestamp"], "persisted events carry mid and timestamp"

    # A subscription added while connected applies at once; a removed one stops.
    api.subscribe("alice", "sport")
    assert json.loads(recv(ws, "pusher_internal:subscription_succeeded")["data"])["alias"] == ["news", "sport"]
    api.trigger_event(channel="sport", data="goal")
    assert recv(ws, "message")["channel"] == "sport"
    api.unsubscribe("alice", "news")
    api.trigger_event(channel="news", data="not delivered")
    api.trigger_event(channel="sport", data="delivered")
    assert recv(ws, "message")["data"] == "delivered"

    # History through pusher:latest: news no longer adds to alice's history.
    ws.send(json.dumps({"event": "pusher:latest", "data": {"channel": "personal-alice", "count": 2}}))
    page = json.loads(recv(ws, "pusher_internal:latest")["data"])["events"]
    assert [e["data"]["data"] for e in page] == ["delivered", "goal"]
    ws.close()


def test_authenticate_output_opens_private_channels(server_factory):
    server = server_factory()
    app, api = new_app(server)
    ws, socket_id = connect(server, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "private-room", "auth": api.authenticate("private-room", socket_id)}}))
    assert recv(ws)["event"] == "pusher_internal:subscription_succeeded"
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "private-other", "auth": api.authenticate("private-room", socket_id)}}))
    refused = recv(ws)
    assert refused["event"] == "pusher:subscription_error" and refused["data"]["status"] == 401

    # A socket publishes Pushi-style on its channel (once the app allows it and
    # stores such publishes); others get it, it does not (echo false).
    api.update_app(client_publish=True, client_persist=True)
    other, other_id = connect(server, app["key"])
    other.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "private-room", "auth": api.authenticate("private-room", other_id)}}))
    recv(other, "pusher_internal:subscription_succeeded")
    ws.send(json.dumps({"event": "chat", "channel": "private-room", "data": "hi", "persist": True}))
    got = recv(other, "chat")
    assert got["data"] == "hi" and got["mid"]
    other.send(json.dumps({"event": "pusher:latest", "data": {"channel": "private-room"}}))
    events = json.loads(recv(other, "pusher_internal:latest")["data"])["events"]
    assert [e["data"]["data"] for e in events] == ["hi"]
    assert events[0]["owner_id"] == socket_id


def test_rest_errors(server_factory):
    server = server_factory()
    app, api = new_app(server)
    token = api.login()
    assert raw(server, "GET", "/events")[0] == 403, "no session"
    assert raw(server, "GET", "/events?sid=bogus")[0] == 401, "unknown session"
    assert raw(server, "GET", f"/login?app_id={app['ident']}&app_key={app['key']}&app_secret=wrong")[0] == 401
    status, body = raw(server, "POST", f"/events?sid={token}", "{not json")
    assert status == 400 and body["result"] == "error"
    status, body = raw(server, "POST", f"/events?sid={token}", json.dumps({"channel": "a"}))
    assert status == 400 and "data" in body["errors"]
    status, body = raw(server, "POST", f"/subscriptions?sid={token}", json.dumps({"user_id": "u"}))
    assert status == 400 and "event" in body["errors"]
    assert raw(server, "DELETE", f"/subscriptions/nobody/news?sid={token}") == (200, {"result": "success"})
    assert raw(server, "DELETE", f"/subscriptions/nobody/news?sid={token}&force=1")[0] == 404
    assert raw(server, "POST", "/apps", json.dumps({"name": "app"}))[0] == 400, "duplicate app name"
    status, body = raw(server, "GET", f"/apps?sid={token}")
    assert status == 200 and [a["ident"] for a in body["apps"]] == [app["ident"]]


def test_web_subscription_receives_events(server_factory):
    httpd, got = receiver()
    server = server_factory(PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")  # the receiver is local
    app, api = new_app(server)
    url = f"http://127.0.0.1:{httpd.server_port}/hook"
    api.subscribe_web(url, "alerts")
    api.trigger_event(channel="alerts", data="fire", event="alarm")
    headers, body = got.get(timeout=10)
    message = json.loads(body)
    assert (message["channel"], message["event"], message["data"]) == ("alerts", "alarm", "fire")
    with pytest.raises(Exception):
        api.subscribe_web(url, "private-x", auth="bad:signature")


def test_history_survives_kill_9(server_factory, tmp_path):
    data = str(tmp_path / "data")
    server = server_factory(PUSHI_DATA_DIR=data)
    app, api = new_app(server)
    api.subscribe("bob", "feed")
    for i in range(50):
        api.trigger_event(channel="feed", data=f"e{i}")
    server.proc.kill()  # SIGKILL: no shutdown path runs
    server.proc.wait(10)

    again = server_factory(PUSHI_DATA_DIR=data)
    api = pushi.API(app_id=app["ident"], app_key=app["key"], app_secret=app["secret"],
                    base_url=f"http://{again.api}/")
    ws, socket_id = connect(again, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "personal-bob", "auth": api.authenticate("personal-bob", socket_id)}}))
    info = json.loads(recv(ws, "pusher_internal:subscription_succeeded")["data"])
    assert info["alias"] == ["feed"], "subscriptions survive"
    ws.send(json.dumps({"event": "pusher:latest", "data": {"channel": "personal-bob", "count": 100}}))
    events = json.loads(recv(ws, "pusher_internal:latest")["data"])["events"]
    assert [e["data"]["data"] for e in events] == [f"e{i}" for i in reversed(range(50))], "every acknowledged event"
    api.trigger_event(channel="feed", data="after restart")
    ids = [e["id"] for e in api.get(f"http://{again.api}/events", count=3)["events"]]
    assert ids == sorted(ids, reverse=True) and ids[0] == 51, "numbering continues after the restart"


def test_sigterm_flushes_every_queued_write(server_factory, tmp_path):
    data = str(tmp_path / "data")
    server = server_factory(PUSHI_DATA_DIR=data, PUSHI_CLIENT_EVENT_RATE="1000")
    app, api = new_app(server)
    api.update_app(client_publish=True, client_persist=True)
    api.trigger_event(channel="private-room", data="acknowledged")
    ws, socket_id = connect(server, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": "private-room", "auth": api.authenticate("private-room", socket_id)}}))
    recv(ws, "pusher_internal:subscription_succeeded")
    # Socket publishes are not acknowledged; they sit in the store queue when SIGTERM arrives.
    for i in range(300):
        ws.send(json.dumps({"event": "say", "channel": "private-room", "data": f"s{i}", "echo": True}))
    # The last echo means the server has taken all 300 (queued for the store, maybe not written yet).
    while recv(ws, "say")["data"] != "s299":
        pass
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0

    again = server_factory(PUSHI_DATA_DIR=data)
    api = pushi.API(app_id=app["ident"], app_key=app["key"], app_secret=app["secret"],
                    base_url=f"http://{again.api}/")
    events = api.get(f"http://{again.api}/events", count=1000, channel="private-room")["events"]
    said = [e["data"]["data"] for e in events if e["data"]["event"] == "say"]
    assert len(said) == 300 and said[0] == "s299", f"{len(said)} of 300 socket publishes stored"
    assert events[-1]["data"]["data"] == "acknowledged"


def join_presence(ws, api, socket_id, channel, user):
    """Pushi's way: `auth` from `pushi.API.authenticate` (socket_id:channel), channel_data as an object."""
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {
        "channel": channel, "auth": api.authenticate(channel, socket_id),
        "channel_data": {"user_id": user, "user_info": {"name": f"user {user}"}}}}))
    return recv(ws)


def test_presence_with_pushi_authenticate_needs_presence_auth_channel(server_factory):
    server = server_factory()
    app, api = new_app(server)
    ws, socket_id = connect(server, app["key"])
    refused = join_presence(ws, api, socket_id, "presence-room", 1)
    assert refused["event"] == "pusher:subscription_error", "default app: Pusher's signature covers channel_data"
    assert refused["channel"] == "presence-room" and refused["data"]["status"] == 401

    updated = api.update_app(app_id=app["ident"], presence_auth="channel")
    assert updated["presence_auth"] == "channel"
    assert api.get(f"http://{server.api}/apps/{app['ident']}")["presence_auth"] == "channel"

    joined = join_presence(ws, api, socket_id, "presence-room", 1)
    assert joined["event"] == "pusher_internal:subscription_succeeded", joined
    info = json.loads(joined["data"])
    assert info["members"] == {"1": {"user_id": 1, "user_info": {"name": "user 1"}}}, "Pushi's answer, id as sent"

    other, other_id = connect(server, app["key"])
    join_presence(other, api, other_id, "presence-room", "bob")
    added = recv(ws, "pusher:member_added")
    assert added["channel"] == "presence-room"
    assert json.loads(added["member"]) == {"user_id": "bob", "user_info": {"name": "user bob"}}
    other.close()
    removed = recv(ws, "pusher:member_removed")
    assert json.loads(removed["member"])["user_id"] == "bob"
    ws.close()


def test_pusher_sdk_triggers_on_an_app_made_by_post_apps(server_factory):
    import pusher

    server = server_factory()
    app, api = new_app(server)
    assert len(app["ident"]) == 64 and app["pusher_id"].isdigit(), app["pusher_id"]
    assert api.get(f"http://{server.api}/apps/{app['pusher_id']}")["ident"] == app["ident"], "either id names it"
    host, port = server.api.rsplit(":", 1)
    sdk = pusher.Pusher(app_id=app["pusher_id"], key=app["key"], secret=app["secret"],
                        host=host, port=int(port), ssl=False)
    ws, _ = connect(server, app["key"])
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "orders"}}))
    recv(ws, "pusher_internal:subscription_succeeded")
    assert sdk.trigger("orders", "created", {"id": 1}) == {}
    got = recv(ws, "created")
    assert got["channel"] == "orders" and json.loads(got["data"]) == {"id": 1}
    with pytest.raises(ValueError):
        pusher.Pusher(app_id=app["ident"], key=app["key"], secret=app["secret"])  # why pusher_id exists
    ws.close()
