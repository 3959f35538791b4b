#!/usr/bin/env bash
# The whole test suite: Rust unit and end-to-end tests against the real
# binary, the Python and Node client suites (pusher SDKs, pusher-js), then
# the Autobahn conformance run (groups 1-10) against the echo endpoint, and a
# short fuzzing smoke run.
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

echo "== fuzz smoke (a few seconds per target; skipped without a nightly toolchain)"
if rustup toolchain list 2>/dev/null | grep -q nightly; then
  command -v cargo-fuzz >/dev/null || timeout 900 cargo install cargo-fuzz --locked -q
  bash fuzz/run.sh 5
else
  echo "no nightly toolchain: saved fuzz inputs were replayed by cargo test (tests/fuzz_regressions.rs)"
fi
