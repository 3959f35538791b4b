#!/usr/bin/env bash
# Installs what the tests need, idempotently: a Python venv (.venv) with the
# pinned clients of tests/python/requirements.txt, Debian's chromium for the
# web console's browser test (tests/node/console.test.js, driven by
# puppeteer-core), Debian's redis-server and nats-server for the cluster
# tests (tests/node/cluster.test.js). Safe to run again; does nothing when
# everything is current.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${PUSHI_VENV:-.venv}

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.requirements"
if ! cmp -s tests/python/requirements.txt "$stamp"; then
  timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$stamp"
fi

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)          # the console's browser test
command -v redis-server >/dev/null || missing+=(redis-server)  # the cluster tests
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)  # the cluster's NATS bus
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/setup.sh: installing Debian's ${missing[*]}"
  apt-get update -qq && timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages are installed by tests/node/run.sh (npm ci when node_modules differs from the lock).
