"""The PyPI `pusher` server SDK against pushi: trigger, batch, channel
queries and a wrong secret, with delivery checked by a real WebSocket client."""
import json

import pusher
import pytest
import websocket

APP = {"PUSHI_APP_ID": "77", "PUSHI_APP_KEY": "pykey", "PUSHI_APP_SECRET": "pysecret"}


def sdk(server, secret="pysecret"):
    host, port = server.api.rsplit(":", 1)
    return pusher.Pusher(app_id="77", key="pykey", secret=secret, host=host, port=int(port), ssl=False)


def connect(server):
    ws = websocket.create_connection(f"ws://{server.ws}/app/pykey?protocol=7&client=py&version=1", timeout=5)
    hello = json.loads(ws.recv())
    assert hello["event"] == "pusher:connection_established"
    return ws, json.loads(hello["data"])["socket_id"]


def subscribe(ws, channel, auth=None):
    data = {"channel": channel}
    if auth:
        data.update(auth)
    ws.send(json.dumps({"event": "pusher:subscribe", "data": data}))
    reply = json.loads(ws.recv())
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply
    return reply


def test_trigger_and_batch_reach_subscribers(server_factory):
    server = server_factory(**APP)
    client = sdk(server)
    ws, _ = connect(server)
    subscribe(ws, "orders")
    assert client.trigger("orders", "created", {"id": 1}) == {}
    event = json.loads(ws.recv())
    assert event["event"] == "created" and event["channel"] == "orders"
    assert json.loads(event["data"]) == {"id": 1}
    client.trigger_batch([
        {"channel": "orders", "name": "a", "data": "1"},
        {"channel": "orders", "name": "b", "data": "2"},
    ])
    assert [json.loads(ws.recv())["event"] for _ in range(2)] == ["a", "b"]


def test_private_auth_and_channel_queries(server_factory):
    server = server_factory(**APP)
    client = sdk(server)
    ws, socket_id = connect(server)
    subscribe(ws, "private-room", client.authenticate(channel="private-room", socket_id=socket_id))
    presence = {"user_id": "py-1", "user_info": {"lang": "python"}}
    subscribe(ws, "presence-lobby", client.authenticate(channel="presence-lobby", socket_id=socket_id, custom_data=presence))
    assert client.channels_info(prefix_filter="presence-", attributes=["user_count"]) == {
        "channels": {"presence-lobby": {"user_count": 1}}
    }
    assert client.channel_info("private-room", ["subscription_count"]) == {"occupied": True, "subscription_count": 1}
    assert client.users_info("presence-lobby") == {"users": [{"id": "py-1"}]}


def test_wrong_secret_is_401(server_factory):
    server = server_factory(**APP)
    with pytest.raises(pusher.errors.PusherBadAuth):
        sdk(server, secret="nope").trigger("orders", "created", "x")
