#!/usr/bin/env bash
# Soak test: holds N subscribed connections with steady publishes (the
# latency scenario: every subscriber receives its channel's events) and
# presence churn (members joining and leaving) for a given time, sampling the
# server's RSS every 30 s; ends with the RSS series, error counts and the
# load generator's results.
#
#   bash benches/soak.sh                     # 5000 connections, 30 minutes
#   bash benches/soak.sh --n 1000 --minutes 2
#
# The server binds 127.0.0.1 (ports from BENCH_PORT, default 18000) with a
# throw-away data directory and is stopped on exit.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=5000
MINUTES=30
RATE=200
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
SECS=$((MINUTES * 60))
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --quiet --bin pushi || exit 1
LOADGEN=$(cargo build --release --quiet --bench loadgen --message-format=json \
  | grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$LOADGEN" ] || { echo "soak.sh: load generator not built" >&2; exit 1; }

BASE=${BENCH_PORT:-18000}
WS=127.0.0.1:$((BASE + 1)); API=127.0.0.1:$((BASE + 2))
OUT=$(mktemp -d /tmp/pushi-soak.XXXXXX)
env -i PATH="$PATH" SERVER_HOST=127.0.0.1 SERVER_PORT=$((BASE + 1)) APP_HOST=127.0.0.1 APP_PORT=$((BASE + 2)) \
  PUSHI_DATA_DIR="$OUT/data" PUSHI_APP_ID=bench PUSHI_APP_KEY=benchkey PUSHI_APP_SECRET=benchsecret \
  PUSHI_MAX_PRESENCE_MEMBERS=1000 PUSHI_CLIENT_EVENT_RATE=1000 RUST_LOG=warn \
  target/release/pushi >"$OUT/server.out" 2>"$OUT/server.err" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/${WS/:/\/}") 2>/dev/null && break; sleep 0.1; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null; }
echo "soak: $N connections, $RATE publishes/s over 50 channels, presence churn, $MINUTES min; server pid $PID"
echo "t_s rss_kib" >"$OUT/rss.txt"
start=$(date +%s)
timeout -k 10 $((SECS + 120)) "$LOADGEN" latency --ws "$WS" --api "$API" --n "$N" --channels 50 \
  --rate "$RATE" --seconds "$SECS" --pid "$PID" >"$OUT/latency.out" 2>&1 &
LAT=$!
timeout -k 10 $((SECS + 120)) "$LOADGEN" presence --ws "$WS" --members 100 --churners 10 \
  --seconds "$SECS" --pid "$PID" >"$OUT/presence.out" 2>&1 &
PRES=$!
while kill -0 "$LAT" 2>/dev/null; do
  echo "$(( $(date +%s) - start )) $(rss)" >>"$OUT/rss.txt"
  sleep 30
done
wait "$LAT"; lat_rc=$?
wait "$PRES"; pres_rc=$?
echo "$(( $(date +%s) - start )) $(rss)" >>"$OUT/rss.txt"

echo "-- RSS over time (KiB)"; column -t "$OUT/rss.txt"
echo "-- load generator results (exit $lat_rc / $pres_rc)"
grep -h '^RESULT' "$OUT/latency.out" "$OUT/presence.out"
alive=yes; kill -0 "$PID" 2>/dev/null || alive=no
errors=$(grep -c -E ' (ERROR|WARN) ' "$OUT/server.err")
echo "-- server alive: $alive; warnings/errors logged: $errors"
grep -E ' (ERROR|WARN) ' "$OUT/server.err" | head -10
[ "$alive" = yes ] && [ "$lat_rc" = 0 ] && [ "$pres_rc" = 0 ]
