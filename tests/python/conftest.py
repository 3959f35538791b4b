"""Starts the real pushi binary on ephemeral ports for the Python client tests."""
import os
import re
import subprocess
import tempfile
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("PUSHI_BIN", os.path.join(ROOT, "target", "release", "pushi"))


class Server:
    def __init__(self, env):
        self.data = tempfile.mkdtemp(prefix="pushi-py-")
        full = {
            "PATH": os.environ.get("PATH", ""),
            "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "0",
            "APP_HOST": "127.0.0.1", "APP_PORT": "0",
            "PUSHI_DATA_DIR": self.data, "RUST_LOG": "info",
            # The operator's token, for the tests that read /health details.
            "PUSHI_ADMIN_TOKEN": "test-admin-token",
        }
        full.update(env)
        self.admin_token = full["PUSHI_ADMIN_TOKEN"]
        self.proc = subprocess.Popen([BINARY], env=full, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.ws = self.api = None
        found = threading.Event()

        def pump():
            for line in self.proc.stderr:
                m = re.search(r"WebSocket listener on wss?://(\S+)", line)
                if m:
                    self.ws = m.group(1)
                m = re.search(r"REST listener on https?://(\S+)", line)
                if m:
                    self.api = m.group(1)
                if self.ws and self.api:
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(20):
            self.stop()
            raise RuntimeError("pushi did not report its listeners")

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def server_factory():
    started = []

    def start(**env):
        s = Server(env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
