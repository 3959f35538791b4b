#!/usr/bin/env bash
# The Node client suite: pusher-js 8 (WebSocket client) and the `pusher` 5
# server SDK against target/release/pushi (build it first with
# `cargo build --release`; PUSHI_BIN overrides the path).
# Runs `npm ci` when node_modules is missing or differs from package-lock.json,
# then node's built-in test runner; exits with the runner's status.
# PUSHI_TEST_DEBUG=1 echoes the server's and pusher-js's logs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi

bin="${PUSHI_BIN:-$root/target/release/pushi}"
if [ ! -x "$bin" ]; then
  echo "tests/node/run.sh: $bin is missing; run \`cargo build --release\` first" >&2
  exit 1
fi

# node_modules matches the lock file when npm's record of what it installed
# (node_modules/.package-lock.json) lists the same packages, versions and hashes.
installed_matches_lock() {
  [ -f node_modules/.package-lock.json ] || return 1
  node -e '
    const fs = require("fs");
    const want = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages || {};
    const have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json", "utf8")).packages || {};
    const keys = Object.keys(want).filter((k) => k !== "");
    const same = keys.length === Object.keys(have).length && keys.every((k) =>
      have[k] && have[k].version === want[k].version && have[k].integrity === want[k].integrity);
    process.exit(same ? 0 : 1);
  '
}

if ! installed_matches_lock; then
  echo "tests/node: npm ci"
  timeout 600 npm ci --no-audit --no-fund
fi

# One file at a time (--test-concurrency exists from Node 20.10; older
# runners do without). Each test carries its own timeout (15 s) and every
# wait inside one is capped at 5 s, so no global per-test timeout is set here.
flags=()
if node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 10) ? 0 : 1)'; then
  flags+=(--test-concurrency=1)
fi

# Whole-suite bound: a wedged run is killed instead of holding CI.
status=0
timeout -k 10 900 node --test "${flags[@]}" ./*.test.js || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "tests/node/run.sh: the suite did not finish within 900 s" >&2
fi
exit "$status"
