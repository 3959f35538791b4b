"""The outbound policy: what a tenant's web hooks, /webs, /messaging and
smtp_url may reach. Real pushi processes, real local receivers; the
receivers are private (127.0.0.1), so they are refused unless
PUSHI_OUTBOUND_ALLOW opens them."""
import json
import queue
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_pushi_client import new_app, raw
from test_webhooks import receiver

# src/outbound.rs UNREACHABLE: the one text of every failed connection.
UNREACHABLE = "the target could not be reached (refused, unreachable, timed out or not allowed)"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hang_up_server():
    """A TCP port that accepts and closes at once (open, but no HTTP)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)

    def serve():
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return lsock


def send_hook(server, sid, url, **extra):
    return raw(server, "POST", f"/messaging/webhook?sid={sid}", json.dumps(dict(url=url, data={"x": 1}, **extra)))


def test_private_targets_refused_by_default(server_factory):
    httpd, got = receiver()
    server = server_factory()
    app, api = new_app(server)
    sid = api.login()
    port = httpd.server_port
    for url in [f"http://127.0.0.1:{port}/hook", f"http://0x7f000001:{port}/hook",
                f"http://[::ffff:127.0.0.1]:{port}/hook", f"http://localhost:{port}/hook",
                "http://169.254.169.254/latest/meta-data/", f"http://127.0.0.1:{closed_port()}/closed"]:
        status, body = send_hook(server, sid, url)
        assert status == 502, (url, body)
        assert body["details"]["failed"] == [{"target": url, "error": UNREACHABLE}], url

    # A tenant's SMTP server (smtp_host override) is checked the same way.
    status, body = raw(server, "POST", f"/messaging/email?sid={sid}", json.dumps(
        {"to": "a@example.com", "subject": "s", "body": "b", "smtp_host": "127.0.0.1",
         "smtp_port": closed_port(), "smtp_sender": "p@example.com"}))
    assert status == 502 and body["details"]["failed"][0]["error"] == UNREACHABLE, body

    # A stored /webs subscription to the local receiver gets nothing either.
    api.subscribe_web(f"http://127.0.0.1:{port}/webs", "alerts")
    api.trigger_event(channel="alerts", data="fire", event="alarm")
    with pytest.raises(queue.Empty):
        got.get(timeout=2)
    httpd.shutdown()


def test_allowed_receiver_and_one_error_text(server_factory):
    httpd, got = receiver()
    hang_up = hang_up_server()
    server = server_factory(PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    app, api = new_app(server)
    sid = api.login()
    status, body = send_hook(server, sid, f"http://127.0.0.1:{httpd.server_port}/hook")
    assert status == 200 and body["success"] is True
    assert json.loads(got.get(timeout=5)[1]) == {"x": 1}
    # Closed port, open non-HTTP port, and still-refused addresses all read the same.
    for url in [f"http://127.0.0.1:{closed_port()}/", f"http://127.0.0.1:{hang_up.getsockname()[1]}/",
                "http://169.254.169.254/", f"http://[::1]:{httpd.server_port}/"]:
        status, body = send_hook(server, sid, url)
        assert status == 502 and body["details"]["failed"][0]["error"] == UNREACHABLE, (url, body)
    hang_up.close()
    httpd.shutdown()


def test_redirects_are_not_followed(server_factory):
    httpd, got = receiver()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{httpd.server_port}/stolen")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    redirect = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirect.serve_forever, daemon=True).start()
    server = server_factory(PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    app, api = new_app(server)
    status, body = send_hook(server, api.login(), f"http://127.0.0.1:{redirect.server_port}/r")
    assert status == 502 and "redirects are not followed" in body["message"]
    with pytest.raises(queue.Empty):
        got.get(timeout=1)
    redirect.shutdown()
    httpd.shutdown()


def test_headers_and_caps(server_factory):
    server = server_factory()
    app, api = new_app(server)
    sid = api.login()
    for name in ["Host", "cookie", "Authorization", "Content-Length", "Transfer-Encoding", "Connection"]:
        status, body = send_hook(server, sid, "https://example.com/h", headers={name: "x"})
        assert status == 400 and "headers" in body["errors"], (name, body)
    status, body = send_hook(server, sid, "https://example.com/h", headers={"X-Ok": "a\r\nHost: evil"})
    assert status == 400 and "headers" in body["errors"]
    urls = [f"https://example.com/{i}" for i in range(101)]
    status, body = raw(server, "POST", f"/messaging/webhook?sid={sid}", json.dumps({"urls": urls, "data": 1}))
    assert status == 400 and body["errors"]["urls"] == ["at most 100 targets per call"]
    to = [f"u{i}@example.com" for i in range(51)]
    status, body = raw(server, "POST", f"/messaging/email?sid={sid}",
                       json.dumps({"to": to, "subject": "s", "body": "b"}))
    assert status == 400 and body["errors"]["to"] == ["at most 50 recipients per call"]


def test_app_webhooks_validated_on_write(server_factory):
    server = server_factory()
    app, api = new_app(server)
    sid = api.login()
    path = f"/apps/{app['ident']}?sid={sid}"
    for hooks in [["file:///etc/passwd"], ["gopher://x/"], [{"url": "ftp://x/"}],
                  [{"url": "https://example.com/h", "event_types": ["nope"]}], "http://example.com/"]:
        status, body = raw(server, "PUT", path, json.dumps({"webhooks": hooks}))
        assert status == 400, (hooks, body)
    hooks = ["https://example.com/all", {"url": "https://example.com/some", "event_types": ["channel_occupied"]}]
    status, body = raw(server, "PUT", path, json.dumps({"webhooks": hooks}))
    assert status == 200, body
    status, body = raw(server, "GET", path)
    assert status == 200 and body["webhooks"] == hooks, body


def test_messaging_deliveries_are_counted(server_factory):
    httpd, got = receiver()
    server = server_factory(PUSHI_OUTBOUND_ALLOW="127.0.0.1/32")
    app, api = new_app(server)
    sid = api.login()
    assert send_hook(server, sid, f"http://127.0.0.1:{httpd.server_port}/hook")[0] == 200
    assert send_hook(server, sid, "http://169.254.169.254/")[0] == 502

    metrics = urllib.request.urlopen(f"http://{server.api}/metrics").read().decode()
    assert 'pushi_handler_sent_total{handler="web"} 1' in metrics
    assert 'pushi_handler_failed_total{handler="web"} 1' in metrics
    assert 'pushi_handler_retried_total{handler="web"} 1' in metrics, "a direct send is retried once"
    # /health/detailed needs an app session (or the operator's token).
    detailed = json.loads(urllib.request.urlopen(f"http://{server.api}/health/detailed?sid={sid}").read())
    web = next(h for h in detailed["checks"]["handlers"]["handlers"] if h["name"] == "web")["stats"]
    assert (web["sent"], web["failed"], web["queued"]) == (1, 1, 0)
    httpd.shutdown()
