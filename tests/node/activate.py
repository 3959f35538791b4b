#!/usr/bin/env python3
"""Emulates systemd socket activation for restart.test.js: binds the two
listening sockets once (as systemd does for conf/pushi.socket), then on each
`start` line from stdin runs pushi on them as descriptors 3 and 4 with
LISTEN_FDS=2, LISTEN_FDNAMES=ws:api and LISTEN_PID set to pushi's own pid;
`stop` sends SIGTERM and waits. The sockets stay open in between, so clients
connecting while no pushi runs wait in the backlog. Prints one JSON line with
the ports, then `started <pid>` / `stopped <code>` lines; pushi's log goes to
stderr. Exits (stopping pushi) when stdin closes."""

import json
import os
import signal
import socket
import subprocess
import sys

binary = sys.argv[1]
ws = socket.create_server(("127.0.0.1", 0), backlog=128)
api = socket.create_server(("127.0.0.1", 0), backlog=128)
print(json.dumps({"ws": ws.getsockname()[1], "api": api.getsockname()[1]}), flush=True)

child = None
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "start" and child is None:
        env = {k: v for k, v in os.environ.items() if k.startswith(("PUSHI_", "RUST_", "PATH"))}
        env["LISTEN_FDS"] = "2"
        env["LISTEN_FDNAMES"] = "ws:api"
        # The sockets travel as the shell's stdin/stdout, moved to 3 and 4;
        # the shell's pid becomes pushi's through exec.
        child = subprocess.Popen(
            ["sh", "-c", 'exec 3<&0 4>&1 0</dev/null 1>/dev/null; LISTEN_PID=$$ exec "$0"', binary],
            stdin=ws.fileno(),
            stdout=api.fileno(),
            env=env,
        )
        print(f"started {child.pid}", flush=True)
    elif cmd == "stop" and child is not None:
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=30)
        child = None
        print(f"stopped {code}", flush=True)
if child is not None:
    child.kill()
    child.wait()
