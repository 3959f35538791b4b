"""Pushi's delivery handlers end to end, driven by the unmodified `pushi`
client: e-mail received by a real SMTP server (aiosmtpd), Web Push received
by a push endpoint that decrypts with `http_ece` and verifies the VAPID JWT
with `cryptography`, APNs requests received by an HTTP/2 (h2c) server built
on `h2`, web hooks for personal aliases, and the direct messaging API."""
import base64
import email
import json
import os
import queue
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h2.config
import h2.connection
import h2.events
import http_ece
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from test_pushi_client import new_app, raw
from test_webhooks import receiver


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- SMTP ---------------------------------------------------------------------------------

class Sink:
    def __init__(self):
        self.got = queue.Queue()

    async def handle_DATA(self, server, session, envelope):
        self.got.put(envelope)
        return "250 OK"


@pytest.fixture
def smtp_server():
    sink = Sink()
    ctrl = Controller(sink, hostname="127.0.0.1", port=free_port())
    ctrl.start()
    yield ctrl, sink.got
    ctrl.stop()


def mail(got, timeout=10):
    envelope = got.get(timeout=timeout)
    msg = email.message_from_bytes(envelope.content)
    return envelope, msg, msg.get_payload(decode=True).decode()


def test_smtp_subscribers_get_events(server_factory, smtp_server):
    ctrl, got = smtp_server
    server = server_factory(SMTP_HOST="127.0.0.1", SMTP_PORT=str(ctrl.port), SMTP_SENDER="pushi@example.com")
    app, api = new_app(server)
    sub = api.create_smtp("alice@example.com", "news")
    assert (sub["email"], sub["event"]) == ("alice@example.com", "news")
    assert api.create_smtp("alice@example.com", "news") == sub, "a duplicate returns the existing record"

    api.trigger_event(channel="news", data="hello", event="update")
    envelope, msg, body = mail(got)
    assert envelope.rcpt_tos == ["alice@example.com"] and envelope.mail_from == "pushi@example.com"
    assert msg["Subject"] == "[Pushi] update"
    assert body.replace("\r\n", "\n").rstrip("\n") == (
        "Event Notification\n==================\n\nChannel: news\nEvent: update\n\nData:\nhello")

    api.trigger_event(channel="news", data="x", event="e", subject="Custom subject", body="Custom body")
    _, msg, body = mail(got)
    assert (msg["Subject"], body.strip()) == ("Custom subject", "Custom body")

    # Personal alias: an address on personal-bob gets bob's channels; once per publish.
    api.create_smtp("bob@example.com", "personal-bob", auth=api.authenticate("personal-bob", "bob@example.com"))
    api.create_smtp("bob@example.com", "sport", unsubscribe=False)
    api.subscribe("bob", "sport")
    api.subscribe("bob", "tennis")
    api.trigger_event(channel=["sport", "tennis"], data="goal", event="score")
    envelope, msg, body = mail(got)
    assert envelope.rcpt_tos == ["bob@example.com"] and "Channel: sport" in body
    with pytest.raises(queue.Empty):
        got.get(timeout=1.5)
    assert len(api.list_smtps(email="bob@example.com")["subscriptions"]) == 2

    # Bad input and signatures.
    token = api.login()
    status, body = raw(server, "POST", f"/smtps?sid={token}", json.dumps({"email": "nope", "event": "news"}))
    assert status == 400 and "email" in body["errors"]
    with pytest.raises(Exception):
        api.create_smtp("carol@example.com", "private-x", auth="bad:signature")

    assert api.delete_smtp("alice@example.com", "news")["email"] == "alice@example.com"
    assert api.delete_smtp("alice@example.com", "news") == {"result": "success"}
    assert raw(server, "DELETE", f"/smtps/alice@example.com/news?sid={token}&force=1")[0] == 404
    assert len(api.delete_smtps("bob@example.com")["subscriptions"]) == 2
    assert api.list_smtps()["subscriptions"] == []


def test_app_smtp_url_wins(server_factory, smtp_server):
    ctrl, got = smtp_server
    server = server_factory(SMTP_HOST="127.0.0.1", SMTP_PORT="1", SMTP_SENDER="server@example.com",
                            PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")  # the app's smtp_url is local
    app, api = new_app(server)
    api.update_app(smtp_url=f"smtp://127.0.0.1:{ctrl.port}?sender=app@example.com")
    api.create_smtp("dan@example.com", "news")
    api.trigger_event(channel="news", data="via app", event="e")
    envelope, _, body = mail(got)
    assert envelope.mail_from == "app@example.com" and "via app" in body


# --- Web Push -----------------------------------------------------------------------------

class Browser:
    """A browser's push subscription keys."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.p256dh = b64(self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        self.auth_secret = os.urandom(16)
        self.auth = b64(self.auth_secret)

    def decrypt(self, body):
        return http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth_secret, version="aes128gcm")


def push_service():
    """A push endpoint: answers 201, or 410 on paths containing 'gone'."""
    got = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(410 if "gone" in self.path else 201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, got


def verify_es256(jwt, public_point):
    head, claims, sig = jwt.split(".")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_point)
    raw_sig = unb64(sig)
    der = encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))
    key.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises when wrong
    return json.loads(unb64(head)), json.loads(unb64(claims))


def check_push(got, browser, vapid_public, origin):
    path, headers, body = got.get(timeout=10)
    assert headers["content-encoding"] == "aes128gcm"
    scheme, params = headers["authorization"].split(" ", 1)
    assert scheme == "vapid"
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    assert fields["k"] == vapid_public
    header, claims = verify_es256(fields["t"], unb64(vapid_public))
    assert header["alg"] == "ES256" and claims["aud"] == origin and claims["exp"] > time.time()
    assert claims["sub"].startswith("mailto:")
    return path, headers, browser.decrypt(body)


def wait_until(predicate, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_web_push_delivery_and_expiry(server_factory):
    httpd, got = push_service()
    origin = f"http://127.0.0.1:{httpd.server_port}"
    server = server_factory(WEB_PUSH_TTL="60", PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    app, api = new_app(server)
    vapid_public = api.get_vapid_public_key()["vapid_public_key"]
    assert len(unb64(vapid_public)) == 65
    assert api.get_vapid_public_key()["vapid_public_key"] == vapid_public, "the key is kept"

    browser = Browser()
    endpoint = f"{origin}/push/abc"
    sub = api.create_web_push(endpoint, browser.p256dh, browser.auth, "news")
    assert (sub["endpoint"], sub["p256dh"], sub["auth"], sub["event"]) == (endpoint, browser.p256dh, browser.auth, "news")
    api.trigger_event(channel="news", data={"title": "Hi"}, event="update")
    path, headers, plain = check_push(got, browser, vapid_public, origin)
    assert path == "/push/abc" and headers["ttl"] == "60"
    assert json.loads(plain) == {"title": "Hi"}, "data (JSON text) is the payload"
    api.trigger_event(channel="news", data="d", event="update", web_push="explicit")
    assert check_push(got, browser, vapid_public, origin)[2] == b"explicit", "web_push wins over data"

    # A 410 from the push service removes the subscription.
    doomed = Browser()
    gone = f"{origin}/push/gone"
    api.create_web_push(gone, doomed.p256dh, doomed.auth, "news")
    assert len(api.list_web_pushes(endpoint=gone)["subscriptions"]) == 1
    api.trigger_event(channel="news", data="last", event="update")
    seen = {got.get(timeout=10)[0] for _ in range(2)}
    assert seen == {"/push/abc", "/push/gone"}
    assert wait_until(lambda: api.list_web_pushes(endpoint=gone)["subscriptions"] == []), "410 removed it"
    assert len(api.list_web_pushes()["subscriptions"]) == 1

    token = api.login()
    status, body = raw(server, "POST", f"/web_pushes?sid={token}",
                       json.dumps({"endpoint": endpoint, "p256dh": "AAAA", "auth": browser.auth, "event": "x"}))
    assert status == 400 and "p256dh" in body["errors"]
    # DELETE with the endpoint percent-encoded (slashes and all), one event.
    assert api.delete_web_push(endpoint, event="news")["endpoint"] == endpoint
    assert api.list_web_pushes()["subscriptions"] == []
    metrics = urllib.request.urlopen(f"http://{server.api}/metrics").read().decode()
    assert 'pushi_handler_gone_total{handler="web_push"} 1' in metrics
    assert 'pushi_handler_sent_total{handler="web_push"} 3' in metrics


# --- APNs ---------------------------------------------------------------------------------

def apns_server():
    """An HTTP/2 server without TLS (prior knowledge); 410 for tokens starting with 'dead'."""
    got = queue.Queue()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve(conn):
        c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        c.initiate_connection()
        conn.sendall(c.data_to_send())
        streams = {}
        while True:
            data = conn.recv(65535)
            if not data:
                return
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = [dict(ev.headers), b""]
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id][1] += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    headers, body = streams.pop(ev.stream_id)
                    got.put((headers, body))
                    dead = headers[":path"].startswith("/3/device/dead")
                    reply = json.dumps({"reason": "Unregistered"}).encode() if dead else b""
                    c.send_headers(ev.stream_id, [(":status", "410" if dead else "200"), ("apns-id", "1"),
                                                  ("content-length", str(len(reply)))], end_stream=not reply)
                    if reply:
                        c.send_data(ev.stream_id, reply, end_stream=True)
            conn.sendall(c.data_to_send())

    def accept():
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return sock.getsockname()[1], got


def apn_app(server):
    app, api = new_app(server)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    api.update_app(apn_key=pem, apn_key_id="KEY1234567", apn_team_id="TEAM123456", apn_topic="com.example.app")
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return app, api, point


def check_apn(got, point, token):
    headers, body = got.get(timeout=10)
    assert headers[":method"] == "POST" and headers[":path"] == f"/3/device/{token}"
    assert headers["apns-topic"] == "com.example.app" and headers["apns-push-type"] == "alert"
    scheme, jwt = headers["authorization"].split(" ")
    assert scheme == "bearer"
    header, claims = verify_es256(jwt, point)
    assert header == {"alg": "ES256", "kid": "KEY1234567"} and claims["iss"] == "TEAM123456"
    return json.loads(body)


def test_apns_over_http2(server_factory):
    port, got = apns_server()
    server = server_factory(PUSHI_APNS_URL=f"http://127.0.0.1:{port}")
    app, api, point = apn_app(server)
    token = "ab" * 32
    assert api.create_apn(token, "alerts")["token"] == token
    api.trigger_event(channel="alerts", data="fire", event="alarm")
    assert check_apn(got, point, token) == {"aps": {"alert": "fire", "sound": "default", "badge": 0}}
    api.trigger_event(channel="alerts", data="d", event="alarm", apn="From the apn field")
    assert check_apn(got, point, token)["aps"]["alert"] == "From the apn field"

    dead = "dead" + "00" * 30
    api.create_apn(dead, "alerts")
    api.trigger_event(channel="alerts", data="again", event="alarm")
    paths = {got.get(timeout=10)[0][":path"] for _ in range(2)}
    assert paths == {f"/3/device/{token}", f"/3/device/{dead}"}
    assert wait_until(lambda: api.list_apns(token=dead)["subscriptions"] == []), "410 removed the token"
    with pytest.raises(Exception):
        api.create_apn("not-hex", "alerts")
    assert api.delete_apns(token)["subscriptions"][0]["token"] == token

    def stats():
        req = urllib.request.Request(f"http://{server.api}/health/detailed",
                                     headers={"Authorization": f"Bearer {server.admin_token}"})
        detailed = json.loads(urllib.request.urlopen(req).read())
        return {h["name"]: h["stats"] for h in detailed["checks"]["handlers"]["handlers"]}
    assert set(stats()) == {"apn", "smtp", "web", "web_push"}
    assert wait_until(lambda: stats()["apn"]["sent"] == 3), stats()
    assert stats()["apn"]["gone"] == 1 and stats()["apn"]["subscription_count"] == 0


# --- Web hooks on personal aliases --------------------------------------------------------

def test_web_hooks_for_personal_aliases(server_factory):
    httpd, got = receiver()
    server = server_factory(PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    app, api = new_app(server)
    url = f"http://127.0.0.1:{httpd.server_port}/carol"
    api.create_web(url, "personal-carol", auth=api.authenticate("personal-carol", url))
    api.subscribe("carol", "room")
    api.trigger_event(channel="room", data="hi carol", event="say")
    message = json.loads(got.get(timeout=10)[1])
    assert (message["channel"], message["event"], message["data"]) == ("room", "say", "hi carol")
    assert message["mid"] and message["timestamp"]


# --- Direct messaging ---------------------------------------------------------------------

def test_direct_messaging(server_factory, smtp_server):
    ctrl, mails = smtp_server
    apns_port, apns = apns_server()
    pushes_httpd, pushes = push_service()
    hooks_httpd, hooks = receiver()
    server = server_factory(SMTP_HOST="127.0.0.1", SMTP_PORT=str(ctrl.port), SMTP_SENDER="pushi@example.com",
                            PUSHI_APNS_URL=f"http://127.0.0.1:{apns_port}", PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    app, api, point = apn_app(server)
    vapid_public = api.get_vapid_public_key()["vapid_public_key"]
    browser = Browser()
    origin = f"http://127.0.0.1:{pushes_httpd.server_port}"
    hook = f"http://127.0.0.1:{hooks_httpd.server_port}/hook"
    token = "cd" * 32

    result = api.send_messaging(
        ["email", "web", "webpush", "apn", "fax"], data={"hello": "world"},
        email_to=["erin@example.com"], email_subject="Direct",
        webhook_urls=[hook, "http://127.0.0.1:1/refused"],
        web_push_subscriptions=[{"endpoint": f"{origin}/push/1", "p256dh": browser.p256dh, "auth": browser.auth}],
        apn_tokens=[token], apn_message="Direct alert")
    assert result["email"] == {"success": True, "recipients": ["erin@example.com"]}
    assert result["apn"] == {"success": True, "tokens": [token]}
    assert result["web_push"] == {"success": True, "endpoints": [f"{origin}/push/1"]}
    assert result["webhook"]["success"] is False and result["webhook"]["urls"] == [hook]
    assert result["webhook"]["method"] == "POST"
    assert [f["target"] for f in result["webhook"]["failed"]] == ["http://127.0.0.1:1/refused"]
    assert result["fax"] == {"success": False, "error": "Unknown adapter: fax"}
    _, msg, body = mail(mails)
    assert msg["Subject"] == "Direct" and json.loads(body) == {"hello": "world"}
    assert json.loads(hooks.get(timeout=5)[1]) == {"hello": "world"}
    assert json.loads(check_push(pushes, browser, vapid_public, origin)[2]) == {"hello": "world"}
    assert check_apn(apns, point, token)["aps"]["alert"] == "Direct alert"

    # Single adapters; sending to the same targets again is not skipped (Pushi's bug 32).
    for _ in range(2):
        assert api.send_messaging_email("erin@example.com", "Again", "Body")["recipients"] == ["erin@example.com"]
        assert mail(mails)[1]["Subject"] == "Again"
    assert api.send_messaging_webhook(hook, {"n": 1}, method="post")["urls"] == [hook]
    assert json.loads(hooks.get(timeout=5)[1]) == {"n": 1}
    r = api.send_messaging_web_push("plain text", endpoint=f"{origin}/push/2", p256dh=browser.p256dh,
                                    auth=browser.auth)
    assert r == {"success": True, "endpoints": [f"{origin}/push/2"]}
    assert check_push(pushes, browser, vapid_public, origin)[2] == b"plain text"
    assert api.send_messaging_apn([token], "One more")["tokens"] == [token]
    assert check_apn(apns, point, token)["aps"]["alert"] == "One more"

    # Validation (400 with the field) and total failure (502).
    sid = api.login()
    cases = [
        ("/messaging/send", {"data": 1}, "adapters", "No adapters specified"),
        ("/messaging/email", {"to": "a@b.co", "body": "b"}, "subject", "No subject specified"),
        ("/messaging/email", {"to": "not-an-address", "subject": "s", "body": "b"}, "to", None),
        ("/messaging/apn", {"message": "m"}, "tokens", "No device tokens specified"),
        ("/messaging/webhook", {"urls": [hook]}, "data", "No data specified"),
        ("/messaging/webhook", {"urls": ["ftp://x"], "data": 1}, "urls", None),
        ("/messaging/web_push", {"message": "m"}, "endpoint", "No endpoint specified"),
        ("/messaging/web_push", {"endpoint": f"{origin}/p", "p256dh": browser.p256dh}, "auth", "No auth secret specified"),
    ]
    for path, payload, field, message in cases:
        status, body = raw(server, "POST", f"{path}?sid={sid}", json.dumps(payload))
        assert status == 400 and field in body["errors"], (path, payload, body)
        if message:
            assert body["errors"][field] == [message]
    status, body = raw(server, "POST", f"/messaging/webhook?sid={sid}",
                       json.dumps({"url": "http://127.0.0.1:1/x", "data": "d"}))
    assert status == 502 and body["details"]["failed"][0]["target"] == "http://127.0.0.1:1/x"


# --- Faults -------------------------------------------------------------------------------

def test_unreachable_targets_are_retried_counted_and_bounded(server_factory):
    server = server_factory(SMTP_HOST="127.0.0.1", SMTP_PORT=str(free_port()), SMTP_SENDER="p@example.com",
                            PUSHI_HANDLER_QUEUE="3")
    app, api = new_app(server)
    api.create_smtp("x@example.com", "news")
    for i in range(10):
        api.trigger_event(channel="news", data=f"e{i}", persist=False)

    def metric(name):
        text = urllib.request.urlopen(f"http://{server.api}/metrics").read().decode()
        line = next(l for l in text.splitlines() if l.startswith(f'pushi_{name}{{handler="smtp"}}'))
        return int(line.split()[-1])

    started = time.time()
    urllib.request.urlopen(f"http://{server.api}/health").read()
    assert time.time() - started < 0.5, "the reactor answers while deliveries fail and wait to retry"
    assert metric("handler_dropped_total") == 7, "3 deliveries wait (queue of 3); the others are dropped"
    assert wait_until(lambda: metric("handler_retried_total") >= 3)
    assert wait_until(lambda: metric("handler_failed_total") == 3 and metric("handler_queue") == 0, timeout=15)
    assert metric("handler_retried_total") == 9, "3 retries each, then given up"
