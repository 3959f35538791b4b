#!/usr/bin/env bash
# The whole test suite: Rust unit and end-to-end tests against the real
# binary, the Python and Node client suites (pusher SDKs, pusher-js), then
# the Autobahn conformance run (groups 1-10) against the echo endpoint.
# Installs what it needs on first use (tests/setup.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== setup"
bash tests/setup.sh

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
