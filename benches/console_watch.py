#!/usr/bin/env python3
"""Keeps one web console open on a pushi server for a benchmark run.

Signs in to /console with an app's id and secret, opens the console's live
feed (/console/feed?app=ID) and reads it like a browser tab would: every
frame is taken off the socket and every text message parsed as JSON, pings
are answered. Prints what it received when it stops (SIGTERM, or after
--seconds). Used by `benches/run.sh --console`.

    console_watch.py --addr 127.0.0.1:17080 --app-id bench --secret S --seconds 900
"""

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import struct
import sys
import time


def sign_in(host, port, app_id, secret):
    conn = http.client.HTTPConnection(host, port, timeout=5)
    body = json.dumps({"app_id": app_id, "secret": secret})
    conn.request("POST", "/console/session", body=body, headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    reply.read()
    if reply.status != 200:
        sys.exit(f"console_watch: sign-in refused ({reply.status})")
    return reply.getheader("Set-Cookie").split(";")[0]


def open_feed(host, port, app_id, cookie):
    sock = socket.create_connection((host, port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /console/feed?app={app_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit("console_watch: the feed closed during the handshake")
        head += chunk
    status_line, rest = head.split(b"\r\n", 1)[0], head.split(b"\r\n\r\n", 1)[1]
    if b" 101 " not in status_line:
        sys.exit(f"console_watch: feed refused: {status_line.decode(errors='replace')}")
    sock.settimeout(1.0)
    return sock, rest


def masked(opcode, payload):
    mask = os.urandom(4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--seconds", type=float, default=900)
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    cookie = sign_in(host, port, a.app_id, a.secret)
    sock, buf = open_feed(host, port, a.app_id, cookie)
    messages = events = dropped = received = 0
    deadline = time.monotonic() + a.seconds
    while not stop and time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, start = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, start = struct.unpack(">Q", buf[2:10])[0], 10
            if len(buf) < start + n:
                break
            payload, buf = buf[start : start + n], buf[start + n :]
            if opcode == 0x1:
                messages += 1
                msg = json.loads(payload)
                if msg.get("type") == "events":
                    events += len(msg["events"])
                    dropped = msg.get("dropped", dropped)
            elif opcode == 0x9:
                sock.sendall(masked(0xA, payload))
            elif opcode == 0x8:
                stop.append(1)
        try:
            chunk = sock.recv(262144)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += len(chunk)
        buf += chunk
    print(f"console_watch: {messages} messages, {events} events, {dropped} dropped, {received} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
