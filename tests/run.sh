#!/usr/bin/env bash
# The whole test suite: Rust unit and end-to-end tests against the real
# binary (the store suite against both SQLite and MongoDB, served by
# nx-27017), the Python and Node client suites (pusher SDKs, pusher-js), then
# the Autobahn conformance run (groups 1-10) against the echo endpoint, and a
# short fuzzing smoke run.
# Installs what it needs on first use (tests/setup.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== setup"
bash tests/setup.sh

echo "== MongoDB test server (nx-27017) for the MongoDB store suite"
MONGO_DIR=$(mktemp -d)
trap 'bash tests/mongo.sh stop "$MONGO_DIR"; rm -rf "$MONGO_DIR"' EXIT
MONGO_PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bash tests/mongo.sh start "$MONGO_PORT" "$MONGO_DIR"
export PUSHI_TEST_MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/pushi_test"

echo "== cargo test (also builds target/release/pushi for the client suites)"
cargo test --release --all-targets

echo "== python clients (pusher SDK)"
.venv/bin/python -m pytest -q tests/python

if [ -f tests/node/run.sh ]; then
  echo "== node clients (pusher-js, pusher SDK)"
  bash tests/node/run.sh
fi

echo "== autobahn (RFC 6455 conformance)"
bash tests/autobahn/run.sh

echo "== fuzz smoke (5 s per target, when a nightly toolchain and cargo-fuzz are installed)"
# Building the instrumented targets takes minutes; a machine without cargo-fuzz
# skips this (the saved fuzz inputs were already replayed by cargo test above).
if rustup toolchain list 2>/dev/null | grep -q nightly && command -v cargo-fuzz >/dev/null; then
  bash fuzz/run.sh 5
else
  echo "skipped: no nightly toolchain or cargo-fuzz (tests/fuzz_regressions.rs replayed the saved inputs)"
fi
