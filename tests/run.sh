#!/usr/bin/env bash
# The whole test suite: Rust unit and end-to-end tests, then the Autobahn
# conformance run (groups 1-10) against the echo endpoint.
# Installs what it needs (a Python venv with kosoku) on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== cargo test"
cargo test --release --all-targets

echo "== autobahn (RFC 6455 conformance)"
bash tests/autobahn/run.sh
