"""TLS on both listeners (SERVER_SSL / APP_SSL) with a test certificate:
wss:// with websocket-client, https:// with the PyPI `pusher` SDK, garbage on
the TLS port, and certificate reload on SIGHUP."""
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pusher
import websocket

APP = {"PUSHI_APP_ID": "9", "PUSHI_APP_KEY": "tlskey", "PUSHI_APP_SECRET": "tlssecret"}


def make_cert(directory, name):
    cert, key = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def fingerprint(addr, ca):
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def start(server_factory, tmp_path):
    cert, key = make_cert(str(tmp_path), "one")
    live_cert, live_key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    env = dict(APP, SERVER_SSL="1", SERVER_SSL_CER=live_cert, SERVER_SSL_KEY=live_key,
               APP_SSL="1", APP_SSL_CER=live_cert, APP_SSL_KEY=live_key)
    return server_factory(**env), cert, (live_cert, live_key)


def test_wss_and_https_with_real_clients(server_factory, tmp_path):
    server, ca, _ = start(server_factory, tmp_path)
    ws = websocket.create_connection(f"wss://{server.ws}/app/tlskey?protocol=7", timeout=5,
                                     sslopt={"ca_certs": ca})
    established = json.loads(ws.recv())
    assert established["event"] == "pusher:connection_established"
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "secure"}}))
    assert json.loads(ws.recv())["event"] == "pusher_internal:subscription_succeeded"

    host, port = server.api.rsplit(":", 1)
    client = pusher.Pusher(app_id="9", key="tlskey", secret="tlssecret", host=host, port=int(port), ssl=True)
    # The SDK pins its own CA bundle when ssl=True; trust the test CA instead (certificates are still verified).
    client._pusher_client.http.options["verify"] = ca
    client.trigger("secure", "news", {"over": "tls"})
    message = json.loads(ws.recv())
    assert (message["event"], json.loads(message["data"])) == ("news", {"over": "tls"})

    # Plain HTTP and garbage on the TLS port are dropped; the wss client is unharmed.
    h, p = server.ws.rsplit(":", 1)
    for junk in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(300)):
        with socket.create_connection((h, int(p)), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
    ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert json.loads(ws.recv())["event"] == "pusher:pong"
    assert server.proc.poll() is None


def test_sighup_reloads_certificates(server_factory, tmp_path):
    server, ca_one, (live_cert, live_key) = start(server_factory, tmp_path)
    before = fingerprint(server.ws, ca_one)
    ws = websocket.create_connection(f"wss://{server.ws}/app/tlskey?protocol=7", timeout=5,
                                     sslopt={"ca_certs": ca_one})
    ws.recv()

    two_cert, two_key = make_cert(str(tmp_path), "two")
    shutil.copy(two_cert, live_cert)
    shutil.copy(two_key, live_key)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    after = before
    while after == before and time.time() < deadline:
        time.sleep(0.1)
        after = fingerprint(server.ws, two_cert)
    assert after != before, "new connections get the new certificate"
    ws.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert json.loads(ws.recv())["event"] == "pusher:pong", "open connections keep working"

    # A broken certificate file is refused; the server keeps serving the last good one.
    with open(live_cert, "w") as f:
        f.write("not a certificate")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert fingerprint(server.ws, two_cert) == after
    assert server.proc.poll() is None
