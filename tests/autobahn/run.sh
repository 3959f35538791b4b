#!/usr/bin/env bash
# Autobahn conformance run (kosoku fuzzing client) against pushi's echo endpoint.
# Usage: tests/autobahn/run.sh [--cases '1.*,2.*,...'] [--url ws://127.0.0.1:PORT/echo] [--server-cmd CMD]
# See tests/autobahn/README.md.
set -euo pipefail

KOSOKU_VERSION=0.1.0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VENV=${PUSHI_VENV:-.venv}
OUT=${AUTOBAHN_OUT:-target/autobahn}
CASES='' URL='' SERVER_CMD=''

while [ $# -gt 0 ]; do
  case "$1" in
    --cases) CASES=$2; shift 2 ;;
    --url) URL=$2; shift 2 ;;
    --server-cmd) SERVER_CMD=$2; shift 2 ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# kosoku, pinned, in a reusable venv.
if [ ! -x "$VENV/bin/python" ]; then timeout 120 "${PYTHON:-python3}" -m venv "$VENV"; fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kosoku"))' 2>/dev/null)" != "$KOSOKU_VERSION" ]; then
  timeout 300 "$VENV/bin/pip" install -q "kosoku==$KOSOKU_VERSION"
fi

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }  # empty once dead (or zombie)

SERVER_PID='' DATA_DIR=''
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do [ -n "$(rss_kb "$SERVER_PID")" ] || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=''
  fi
  if [ -n "$DATA_DIR" ]; then rm -rf "$DATA_DIR"; DATA_DIR=''; fi
}
trap cleanup EXIT

mkdir -p "$OUT"
rm -f "$OUT"/index.json "$OUT"/index.html "$OUT"/*_case_*

if [ -z "$URL" ]; then
  read -r SERVER_PORT APP_PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
  if [ -z "$SERVER_CMD" ]; then
    timeout 1800 cargo build --release
    SERVER_CMD=target/release/pushi
  fi
  DATA_DIR=$(mktemp -d)
  # Autobahn 9.x sends messages up to 16 MiB: raise the limits for the echo run only.
  env PUSHI_ECHO_PATH=/echo PUSHI_MAX_MESSAGE_BYTES=20000000 PUSHI_WRITE_HIGH_WATER=67108864 SERVER_HOST=127.0.0.1 SERVER_PORT="$SERVER_PORT" \
      APP_HOST=127.0.0.1 APP_PORT="$APP_PORT" PUSHI_DATA_DIR="$DATA_DIR" \
      bash -c "exec $SERVER_CMD" >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  URL="ws://127.0.0.1:$SERVER_PORT/echo"
  for i in $(seq 300); do  # 30 s
    if (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null; then break; fi
    if [ -z "$(rss_kb "$SERVER_PID")" ] || [ "$i" = 300 ]; then
      echo "run.sh: server not accepting on port $SERVER_PORT (log: $OUT/server.log)" >&2
      tail -n 20 "$OUT/server.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  RSS_BEFORE=$(rss_kb "$SERVER_PID")
fi

ARGS=()
if [ -n "$CASES" ]; then
  IFS=',' read -ra PATTERNS <<<"$CASES"
  for p in "${PATTERNS[@]}"; do ARGS+=(-i "${p// /}"); done
else
  ARGS+=(-x '12.*' -x '13.*')  # groups 1-10; 12/13 are permessage-deflate
fi

echo "autobahn: kosoku $KOSOKU_VERSION against $URL (${CASES:-groups 1-10}), reports in $OUT"
START=$SECONDS
rc=0
timeout "${AUTOBAHN_TIMEOUT:-900}" "$VENV/bin/kosoku" -m fuzzingclient -o "$OUT" "${ARGS[@]}" "$URL" >"$OUT/kosoku.log" 2>&1 || rc=$?
echo "autobahn: kosoku exited $rc after $((SECONDS - START)) s (log: $OUT/kosoku.log)"

died=0
if [ -n "$SERVER_PID" ]; then
  RSS_AFTER=$(rss_kb "$SERVER_PID")
  if [ -z "$RSS_AFTER" ]; then
    died=1
    echo "run.sh: SERVER DIED during the run (log: $OUT/server.log)" >&2
    tail -n 20 "$OUT/server.log" >&2
  else
    echo "server RSS: before ${RSS_BEFORE} kB, after ${RSS_AFTER} kB"
  fi
  cleanup
fi

if [ ! -f "$OUT/index.json" ]; then
  echo "run.sh: kosoku wrote no report (exit $rc)" >&2
  tail -n 20 "$OUT/kosoku.log" >&2
  exit 1
fi
summary=0
python3 "$ROOT/tests/autobahn/summarize.py" "$OUT/index.json" || summary=$?
if [ "$died" = 1 ]; then exit 1; fi
exit "$summary"
