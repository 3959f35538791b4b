#!/usr/bin/env bash
# Load benchmark: builds pushi and the load generator (benches/loadgen.rs),
# runs every scenario against pushi, against sockudo when it is installed,
# and the bare-write baseline, then prints one table with ratios.
#
#   bash benches/run.sh              # 10 000 connections (default)
#   bash benches/run.sh --n 50000    # needs ulimit -n above 51 000 (see README)
#   bash benches/run.sh --quick      # 200 connections, a few seconds (CI smoke)
#   bash benches/run.sh --repeat 3   # three rounds, the table shows medians
#   bash benches/run.sh --console    # with a web console open on pushi's app
#   bash benches/run.sh --nodes 2    # pushi and sockudo as 2-node clusters (Redis):
#                                    # every publish enters node A, every subscriber is on B
#
# Options: --n N, --quick, --no-sockudo, --no-pin (let servers use every
# core), --only "connections fanout latency publish presence bare", --keep DIR
# (raw output there), --nice N (servers and load generator at nice N, e.g.
# -10 as root, so other work on the machine disturbs them less), --console
# (a web console feed stays open on pushi's bench app for every scenario,
# read by benches/console_watch.py: compare with a run without), --nodes N
# (pushi as N nodes joined by a redis-server and sharing an nx-27017 store,
# both started here, and sockudo as N nodes with its Redis adapter on the
# same redis-server: the load generator's sockets are on the last node, its
# REST publishes go to the first, so every delivery crosses the bus; the
# figures of the subscribers' node are reported), --repeat R
# (R rounds, each pushi then sockudo then the bare writer; every figure in
# the table is the median of the R rounds). Environment: PUSHI_BIN (measure
# this pushi binary instead of building the tree), SOCKUDO (binary),
# BENCH_PORT (first of five ports, default 17000), LAT_PUB_CONNS (API
# connections of the latency publisher, one request in flight each; default
# 8). Every server binds 127.0.0.1 and is stopped on exit; every load step
# runs under `timeout`. Exit status 1 if a scenario produced no result or a
# server died. Results and how to read them: benches/README.md.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

N=10000
QUICK=0
PIN=1
WITH_SOCKUDO=1
ONLY="connections fanout latency publish presence bare"
KEEP=""
REPEAT=1
NICE=""
CONSOLE=0
NODES=1
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --quick) QUICK=1; N=200; shift ;;
    --no-sockudo) WITH_SOCKUDO=0; shift ;;
    --no-pin) PIN=0; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --nice) NICE="nice -n $2"; shift 2 ;;
    --console) CONSOLE=1; shift ;;
    --nodes) NODES=$2; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# ---------------------------------------------------------------- limits

# Each side holds N descriptors: raise the soft limit to the hard one. Raising
# the hard limit needs root with CAP_SYS_RESOURCE (see README for a VPS).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $((N + 500)) -gt "$NOFILE" ]; then
  NEW=$((NOFILE - 500))
  echo "run.sh: open-file limit is $NOFILE; using $NEW connections instead of $N (see benches/README.md)" >&2
  N=$NEW
fi

if [ "$QUICK" = 1 ]; then
  SETTLE=1; HOLD=1; STEP=1.5; RATES="10,50"; LAT_SECS=2; LAT_WARM=1; LAT_CHANNELS=10; LAT_RATE=200
  PUB_SECS=1; PRES_SECS=1; BARE_SECS=2
else
  SETTLE=3; HOLD=5; STEP=4; RATES="5,10,20,40,80,160,320,640,1280"; LAT_SECS=10; LAT_WARM=2; LAT_CHANNELS=100
  LAT_RATE=1000; PUB_SECS=5; PRES_SECS=5; BARE_SECS=5
fi
PUB_CONNS=32
LAT_PUB_CONNS=${LAT_PUB_CONNS:-8}
MEMBERS=100
CHURNERS=10
PAYLOAD=100

BASE_PORT=${BENCH_PORT:-17000}
PUSHI_WS=$((BASE_PORT + 90)); PUSHI_API=$((BASE_PORT + 80)); SOCKUDO_PORT=$((BASE_PORT + 1))
BARE_PORT=$((BASE_PORT + 99))

if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  SERVER_PIN="taskset -c 1"; CLIENT_PIN="taskset -c 0"; CORE=(--server-core 1)
  PIN_TEXT="server pinned to CPU 1, load generator to CPU 0"
else
  SERVER_PIN=""; CLIENT_PIN=""; CORE=(); PIN_TEXT="not pinned"
fi
if [ -n "$NICE" ]; then
  $NICE true 2>/dev/null || { echo "run.sh: $NICE not permitted" >&2; exit 2; }
  SERVER_PIN="$NICE $SERVER_PIN"; CLIENT_PIN="$NICE $CLIENT_PIN"; PIN_TEXT="$PIN_TEXT, at $NICE"
fi
[ "$CONSOLE" = 1 ] && PIN_TEXT="$PIN_TEXT; a web console open on pushi's app (benches/console_watch.py)"
[ "$NODES" -gt 1 ] && PIN_TEXT="$PIN_TEXT; pushi and sockudo as $NODES nodes over Redis (publishes on node 1,\
 subscribers on node $NODES; the other nodes and redis-server on CPU 0)"

OUT=${KEEP:-$(mktemp -d /tmp/pushi-bench.XXXXXX)}
mkdir -p "$OUT"
STARTED=()
cleanup() {
  for p in "${STARTED[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  [ "${CLUSTER_STARTED:-0}" = 1 ] && bash "$ROOT/tests/mongo.sh" stop "$OUT/mongo" >/dev/null 2>&1
  [ -z "$KEEP" ] && rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
FAILED=0

# ---------------------------------------------------------------- build

echo "== building pushi and the load generator" >&2
if [ -n "${PUSHI_BIN:-}" ]; then
  PUSHI=$PUSHI_BIN # a given build (e.g. before a change, to compare in one sitting)
else
  cargo build --release --quiet --bin pushi || exit 1
  PUSHI=$ROOT/target/release/pushi
fi
if grep -q '^name = "loadgen"' Cargo.toml; then
  LOADGEN=$(cargo build --release --quiet --bench loadgen --message-format=json \
    | grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
else
  # Not declared in Cargo.toml yet: a scratch crate with the same lock file.
  SCRATCH=$ROOT/target/loadgen-scratch
  mkdir -p "$SCRATCH"
  cat >"$SCRATCH/Cargo.toml" <<EOF
[package]
name = "loadgen"
version = "0.0.0"
edition = "2021"
publish = false
[[bin]]
name = "loadgen"
path = "$ROOT/benches/loadgen.rs"
[dependencies]
mio = { version = "1", features = ["os-poll", "net"] }
hmac = "0.12"
sha2 = "0.10"
md-5 = "0.10"
[profile.release]
debug = 1
[workspace]
EOF
  cp Cargo.lock "$SCRATCH/Cargo.lock"
  cargo build --release --quiet --manifest-path "$SCRATCH/Cargo.toml" || exit 1
  LOADGEN=$SCRATCH/target/release/loadgen
fi
[ -x "$LOADGEN" ] || { echo "run.sh: load generator not built" >&2; exit 1; }

SOCKUDO=${SOCKUDO:-$(command -v sockudo || echo "$HOME/.cargo/bin/sockudo")}
if [ "$WITH_SOCKUDO" = 1 ] && [ ! -x "$SOCKUDO" ]; then
  echo "run.sh: sockudo not found (apt-get install -y protobuf-compiler && cargo install sockudo --locked); pushi only" >&2
  WITH_SOCKUDO=0
fi
SERVERS="pushi"
[ "$WITH_SOCKUDO" = 1 ] && SERVERS="pushi sockudo"

# ---------------------------------------------------------------- servers

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

num() { [[ "$1" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# sockudo, every node: the app connection cap raised, its rate limiter off,
# in-memory app manager and cache, no queue, metrics off; the adapter is set
# per run (local, or Redis with --nodes).
SOCKUDO_ENV=(HOST=127.0.0.1 METRICS_ENABLED=false DEBUG=false
  SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=benchkey SOCKUDO_DEFAULT_APP_SECRET=benchsecret
  SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=200000 SOCKUDO_MAX_CONNECTIONS=200000
  SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000000
  SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=100000000
  SOCKUDO_DEFAULT_APP_MAX_PRESENCE_MEMBERS_PER_CHANNEL=100 RATE_LIMITER_ENABLED=false
  APP_MANAGER_DRIVER=memory CACHE_DRIVER=memory QUEUE_DRIVER=none RUST_LOG=warn)

SERVER_PID=""
start_server() { # name log
  local name=$1 log=$2
  case "$name" in
    pushi)
      port_free "$PUSHI_WS" && port_free "$PUSHI_API" || { echo "run.sh: port $PUSHI_WS or $PUSHI_API busy" >&2; return 1; }
      local cluster=() first_api=$PUSHI_API
      if [ "$NODES" -gt 1 ]; then
        start_cluster_parts || return 1
        cluster=(PUSHI_CLUSTER_URL="redis://127.0.0.1:$REDIS_PORT/0" PUSHI_CLUSTER_PREFIX="bench$RANDOM"
          PUSHI_MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/pushi_bench_$RANDOM")
        OTHER_PIDS=()
        for i in $(seq 1 $((NODES - 1))); do
          local ws=$((BASE_PORT + 100 + i)) api=$((BASE_PORT + 110 + i))
          [ "$i" = 1 ] && first_api=$api
          env "${cluster[@]}" PUSHI_NODE_ID="bench-$i" SERVER_HOST=127.0.0.1 SERVER_PORT=$ws APP_HOST=127.0.0.1 \
            APP_PORT=$api PUSHI_APP_ID=bench PUSHI_APP_KEY=benchkey PUSHI_APP_SECRET=benchsecret \
            PUSHI_MAX_CONNECTIONS=200000 RUST_LOG=warn $CLIENT_PIN "$PUSHI" >>"$log.node$i" 2>&1 &
          OTHER_PIDS+=($!); STARTED+=($!)
          wait_port "$api" || { echo "run.sh: pushi node $i did not start" >&2; tail -5 "$log.node$i" >&2; return 1; }
        done
        cluster+=(PUSHI_NODE_ID="bench-$NODES")
      fi
      env "${cluster[@]}" SERVER_HOST=127.0.0.1 SERVER_PORT=$PUSHI_WS APP_HOST=127.0.0.1 APP_PORT=$PUSHI_API \
        PUSHI_APP_ID=bench PUSHI_APP_KEY=benchkey PUSHI_APP_SECRET=benchsecret \
        PUSHI_MAX_CONNECTIONS=200000 PUSHI_DATA_DIR="$OUT/pushi-data" RUST_LOG=warn \
        $SERVER_PIN "$PUSHI" >>"$log" 2>&1 &
      SERVER_PID=$!; WS=127.0.0.1:$PUSHI_WS; API=127.0.0.1:$first_api; PORT=$PUSHI_WS ;;
    sockudo)
      port_free "$SOCKUDO_PORT" || { echo "run.sh: port $SOCKUDO_PORT busy" >&2; return 1; }
      mkdir -p "$OUT/sockudo-cwd"
      # --nodes: sockudo's Redis adapter on the same redis-server, no fallback
      # to the local adapter (a node that cannot reach Redis must fail), and
      # idempotency off (sockudo refuses it in a cluster with a node-local cache).
      local adapter=(ADAPTER_DRIVER=local) first=$SOCKUDO_PORT
      if [ "$NODES" -gt 1 ]; then
        start_cluster_parts || return 1
        adapter=(ADAPTER_DRIVER=redis REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" ADAPTER_FALLBACK_TO_LOCAL=false
          IDEMPOTENCY_ENABLED=false)
        OTHER_PIDS=()
        for i in $(seq 1 $((NODES - 1))); do
          local port=$((BASE_PORT + 120 + i))
          port_free "$port" || { echo "run.sh: port $port busy" >&2; return 1; }
          [ "$i" = 1 ] && first=$port
          (cd "$OUT/sockudo-cwd" && exec env "${adapter[@]}" "${SOCKUDO_ENV[@]}" PORT=$port \
            $CLIENT_PIN "$SOCKUDO" >>"$log.node$i" 2>&1) &
          OTHER_PIDS+=($!); STARTED+=($!)
          wait_port "$port" || { echo "run.sh: sockudo node $i did not start" >&2; tail -5 "$log.node$i" >&2; return 1; }
        done
      fi
      (cd "$OUT/sockudo-cwd" && exec env "${adapter[@]}" "${SOCKUDO_ENV[@]}" PORT=$SOCKUDO_PORT \
        $SERVER_PIN "$SOCKUDO" >>"$log" 2>&1) &
      SERVER_PID=$!; WS=127.0.0.1:$SOCKUDO_PORT; API=127.0.0.1:$first; PORT=$SOCKUDO_PORT ;;
  esac
  STARTED+=("$SERVER_PID")
  wait_port "$PORT" || { echo "run.sh: $name did not start (log: $log)" >&2; tail -5 "$log" >&2; return 1; }
  sleep 0.5
  WATCH_PID=""
  if [ "$CONSOLE" = 1 ] && [ "$name" = pushi ]; then
    timeout 900 python3 "$ROOT/benches/console_watch.py" --addr "$API" --app-id bench --secret benchsecret \
      --seconds 900 2>>"$OUT/console.log" &
    WATCH_PID=$!
    STARTED+=("$WATCH_PID")
    sleep 0.5
  fi
}

# --nodes: one redis-server and one nx-27017 for the whole run, started on first use.
REDIS_PORT=$((BASE_PORT + 97)); MONGO_PORT=$((BASE_PORT + 98)); CLUSTER_STARTED=0
start_cluster_parts() {
  [ "$CLUSTER_STARTED" = 1 ] && return 0
  command -v redis-server >/dev/null || { echo "run.sh: --nodes needs redis-server (apt-get install redis-server)" >&2; return 1; }
  [ -x "$ROOT/.venv/bin/nx-27017" ] || bash "$ROOT/tests/setup.sh" >&2 || return 1
  $CLIENT_PIN redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
  STARTED+=($!)
  wait_port "$REDIS_PORT" || { echo "run.sh: redis-server did not start" >&2; return 1; }
  mkdir -p "$OUT/mongo"
  bash "$ROOT/tests/mongo.sh" start "$MONGO_PORT" "$OUT/mongo" >&2 || return 1
  CLUSTER_STARTED=1
}

stop_server() { # name
  for p in "${OTHER_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  OTHER_PIDS=()
  if [ -n "${WATCH_PID:-}" ]; then
    kill "$WATCH_PID" 2>/dev/null
    wait "$WATCH_PID" 2>/dev/null
    WATCH_PID=""
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "run.sh: ANOMALY: $1 exited during the run" >&2
    echo "RESULT scenario=crash server=$1" >>"$OUT/$1.results"
    FAILED=1
  fi
  kill "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}

lg() { # server scenario args.. : run the load generator, keep its RESULT line
  # (plus $LG_TAG, appended to it)
  local server=$1 scenario=$2; shift 2
  echo "-- $server $scenario" >&2
  local line
  line=$(timeout 600 $CLIENT_PIN "$LOADGEN" "$scenario" "$@" 2> >(tee -a "$OUT/$server.log" >&2) | grep '^RESULT' | tail -1)
  if [ -z "$line" ]; then
    echo "run.sh: $server $scenario produced no result" >&2
    FAILED=1
  else
    echo "$line server=$server${LG_TAG:+ $LG_TAG}" >>"$OUT/$server.results"
  fi
}

run_server() { # name
  local s=$1 log=$OUT/$1.server.log
  for scenario in $ONLY; do
    [ "$scenario" = bare ] && continue
    start_server "$s" "$log" || { FAILED=1; return; }
    local common=(--ws "$WS" --api "$API" --pid "$SERVER_PID" "${CORE[@]}" --app-id bench --key benchkey --secret benchsecret)
    case "$scenario" in
      connections) lg "$s" connections "${common[@]}" --n "$N" --settle "$SETTLE" --hold "$HOLD" ;;
      fanout) lg "$s" fanout "${common[@]}" --n "$N" --rates "$RATES" --step "$STEP" --payload "$PAYLOAD" ;;
      latency) lg "$s" latency "${common[@]}" --n "$N" --channels "$LAT_CHANNELS" --rate "$LAT_RATE" \
        --seconds "$LAT_SECS" --warm "$LAT_WARM" --payload "$PAYLOAD" --pub-conns "$LAT_PUB_CONNS" ;;
      publish) lg "$s" publish "${common[@]}" --conns "$PUB_CONNS" --seconds "$PUB_SECS" --payload "$PAYLOAD" ;;
      presence) lg "$s" presence "${common[@]}" --members "$MEMBERS" --churners "$CHURNERS" --seconds "$PRES_SECS" ;;
    esac
    stop_server "$s"
  done
}

run_bare() { # frames-per-write name: the bare writer, results in $OUT/name.results
  local batch=$1 name=$2
  port_free "$BARE_PORT" || { echo "run.sh: port $BARE_PORT busy" >&2; FAILED=1; return; }
  : >"$OUT/$name.server.log"
  $SERVER_PIN "$LOADGEN" bare-server --listen "127.0.0.1:$BARE_PORT" --n "$N" --payload "$PAYLOAD" --batch "$batch" \
    --seconds $(( ${BARE_SECS%.*} + 30 )) >"$OUT/$name.server.log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  # Not probed with a connection: it would take one of the N accept slots.
  for _ in $(seq 1 100); do grep -q READY "$OUT/$name.server.log" && break; sleep 0.1; done
  LG_TAG="batch=$batch" lg "$name" fanout --bare --ws "127.0.0.1:$BARE_PORT" --n "$N" --pid "$pid" "${CORE[@]}" \
    --seconds "$BARE_SECS"
  # The writer runs well past the client's measurement (a client slowed by
  # other load must not find it gone) and is stopped here.
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

echo "== output in $OUT; $PIN_TEXT; $N connections; open files $NOFILE; $REPEAT round(s)" >&2
for s in $SERVERS bare1 barem; do : >"$OUT/$s.results"; done
for round in $(seq 1 "$REPEAT"); do
  [ "$REPEAT" -gt 1 ] && echo "== round $round of $REPEAT" >&2
  for s in $SERVERS; do run_server "$s"; done
  case " $ONLY " in
    *" bare "*)
      run_bare 1 bare1
      # The matched baseline: as many frames per write() as pushi's broadcast
      # carried at its fanout peak in this round (8 if not measured).
      FPW=$(grep "scenario=fanout " "$OUT/pushi.results" 2>/dev/null | tail -1 | tr ' ' '\n' | grep '^frames_per_write=' | cut -d= -f2)
      K=8
      num "${FPW:-}" && K=$(awk "BEGIN{k=int($FPW+0.5); if (k<1) k=1; if (k>64) k=64; print k}")
      run_bare "$K" barem ;;
  esac
done

# ---------------------------------------------------------------- table

get() { # server scenario key: the median over rounds (numbers) or the last value
  [ -f "$OUT/$1.results" ] || return 0
  local vals
  vals=$(grep "scenario=$2 " "$OUT/$1.results" | tr ' ' '\n' | grep "^$3=" | cut -d= -f2-)
  [ -z "$vals" ] && return 0
  local nums
  nums=$(echo "$vals" | grep -E '^-?[0-9]+(\.[0-9]+)?$')
  if [ -z "$nums" ]; then
    echo "$vals" | tail -1
  else
    echo "$nums" | sort -g | awk '{v[NR]=$1} END{
      if (NR%2) m=v[(NR+1)/2]; else m=(v[NR/2]+v[NR/2+1])/2
      if (m>=100 || m<=-100) { printf "%.0f\n", m; exit }
      t=sprintf("%.3f", m); sub(/0+$/, "", t); sub(/\.$/, "", t); print t }'
  fi
}

all() { # server scenario key: every round's value, for the spread
  [ -f "$OUT/$1.results" ] || return 0
  grep "scenario=$2 " "$OUT/$1.results" | tr ' ' '\n' | grep "^$3=" | cut -d= -f2- | paste -sd/ -
}

ratio() { # a b
  if num "$1" && num "$2" && awk "BEGIN{exit !($2 != 0)}"; then awk "BEGIN{printf \"%.2f\", $1/$2}"; else echo "-"; fi
}

# check: "ge F" ours >= F*theirs ; "le F" ours <= F*theirs
check() { # ours theirs op factor
  if num "$1" && num "$2"; then
    if [ "$3" = ge ]; then awk "BEGIN{print ($1 >= $4*$2) ? \"yes\" : \"NO\"}"
    else awk "BEGIN{print ($1 <= $4*$2) ? \"yes\" : \"NO\"}"; fi
  else echo "-"; fi
}

row() { # label scenario key target-op factor target-text [absolute-check]
  local label=$1 sc=$2 key=$3 op=${4:-} f=${5:-} text=${6:-}
  local a b r met=""
  a=$(get pushi "$sc" "$key"); b=$(get sockudo "$sc" "$key")
  r=$(ratio "$a" "$b")
  [ -n "$op" ] && [ "$QUICK" = 0 ] && met=$(check "$a" "$b" "$op" "$f")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "${a:--}" "${b:--}" "$r" "${text:-}" "${met:-}"
}

BARE=$(get bare1 bare delivered_per_sec)
BAREM=$(get barem bare delivered_per_sec)
BATCH=$(all barem bare batch)
PEER=""
[ "$WITH_SOCKUDO" = 1 ] && PEER=" vs sockudo $("$SOCKUDO" --version 2>/dev/null | awk '{print $2}')"
echo
echo "pushi $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(no git)')$PEER" \
  "on $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB," \
  "Linux $(uname -r); $PIN_TEXT"
[ "$REPEAT" -gt 1 ] && echo "Every figure is the median of $REPEAT rounds."
echo "Parameters: connections: $N, one public channel, settle ${SETTLE}s, hold ${HOLD}s; fanout: $N subscribers" \
  "on one channel, ${PAYLOAD} B payload, publish steps $RATES/s of ${STEP}s each through 8 keep-alive API" \
  "connections; latency: $N subscribers over $LAT_CHANNELS channels, $LAT_RATE publishes/s for ${LAT_SECS}s" \
  "after ${LAT_WARM}s warm-up; publish: $PUB_CONNS keep-alive connections, closed loop, ${PUB_SECS}s;" \
  "presence: $MEMBERS members, $CHURNERS of them unsubscribing+resubscribing, ${PRES_SECS}s; bare: ${BARE_SECS}s."
[ "$QUICK" = 1 ] && echo "(--quick: too small to say anything about the targets; it only checks that every scenario runs)"
echo
echo "| figure | pushi | sockudo | pushi/sockudo | target | met |"
echo "|---|---|---|---|---|---|"
row "connections: subscribed (of $N)" connections subscribed
row "connections: connect+subscribe rate /s" connections connect_rate
row "connections: RSS per idle subscribed connection, bytes" connections bytes_per_conn le 0.25 "≤ 1/4 sockudo"
A=$(get pushi connections bytes_per_conn)
num "$A" && [ "$QUICK" = 0 ] && printf '| connections: pushi bytes/connection ≤ 2048 | %s | | | ≤ 2 KiB | %s |\n' "$A" \
  "$(awk "BEGIN{print ($A <= 2048) ? \"yes\" : \"NO\"}")"
row "connections: errors / lost while idle" connections errors
row "fanout: peak deliveries/s ($N subscribers, ${PAYLOAD} B)" fanout peak_delivered_per_sec ge 2 "≥ 2× sockudo"
# write() calls are counted from /proc/PID/io (syscw), which sees write/writev
# but not sendmsg or io_uring: shown for pushi only.
printf '| fanout: pushi frames per write() call at peak | %s | | | | |\n' "$(get pushi fanout frames_per_write)"
A=$(get pushi fanout peak_delivered_per_sec)
if num "$A" && num "$BAREM"; then
  met=""; [ "$QUICK" = 0 ] && met=$(awk "BEGIN{print ($A >= 0.6*$BAREM) ? \"yes\" : \"NO\"}")
  printf '| fanout: bare write deliveries/s, same sockets, %s frames per write() (pushi peak) | %s | | %s of bare | ≥ 60%% of bare | %s |\n' \
    "$BATCH" "$BAREM" "$(awk "BEGIN{printf \"%.0f%%\", 100*$A/$BAREM}")" "$met"
fi
num "$A" && num "$BARE" && printf '| fanout: bare write deliveries/s, 1 frame per write() | %s | | %s of it | | |\n' "$BARE" \
  "$(awk "BEGIN{printf \"%.0f%%\", 100*$A/$BARE}")"
row "fanout: publishes/s at peak" fanout peak_pub_rate
row "fanout: server process CPU % at peak" fanout server_cpu
row "fanout: server core busy % at peak (incl. softirq)" fanout core_busy
row "fanout: load generator CPU % at peak" fanout client_cpu
row "fanout: missing deliveries / lost connections" fanout missing
row "latency: p50 ms ($N subs, $LAT_CHANNELS channels, $LAT_RATE pub/s)" latency p50_ms
row "latency: publishes/s achieved" latency pub_rate
row "latency: p99 ms" latency p99_ms le 1 "≤ sockudo"
row "latency: p99.9 ms" latency p999_ms
row "latency: server process CPU %" latency server_cpu
row "latency: server core busy %" latency core_busy
row "publish: HTTP API requests/s ($PUB_CONNS connections)" publish req_per_sec ge 1.5 "≥ 1.5× sockudo"
row "publish: p99 request ms" publish p99_ms
row "publish: server process CPU %" publish server_cpu
row "publish: load generator CPU %" publish client_cpu
row "publish: API connections closed by server" publish api_reconnects
row "presence: unsubscribe+subscribe cycles/s ($MEMBERS members, $CHURNERS churning)" presence cycles_per_sec
row "presence: member events delivered/s" presence member_events_per_sec
row "presence: server process CPU %" presence server_cpu
if [ "$REPEAT" -gt 1 ]; then
  echo
  echo "Per round (pushi | sockudo | bare):"
  for f in "connections bytes_per_conn" "fanout peak_delivered_per_sec" "latency p99_ms" "latency pub_rate" \
    "publish req_per_sec" "presence cycles_per_sec"; do
    set -- $f
    echo "  $1 $2: $(all pushi "$1" "$2") | $(all sockudo "$1" "$2")"
  done
  echo "  bare deliveries/s, 1 frame per write: $(all bare1 bare delivered_per_sec); matched: $(all barem bare delivered_per_sec)"
fi
echo
for s in $SERVERS; do
  errs=$(grep -o ' errors=[0-9]*' "$OUT/$s.results" 2>/dev/null | cut -d= -f2 | awk '{t+=$1} END{print t+0}')
  kinds=$(for sc in connections fanout latency publish presence; do
    k=$(get "$s" "$sc" error_kinds); [ -n "$k" ] && [ "$k" != "none" ] && [ "$k" != "none|none" ] && echo "$sc: $k"; done)
  warn=$(grep -c -i -E 'warn|error|panic' "$OUT/$s.server.log" 2>/dev/null || true)
  echo "$s: client-side errors $errs; server log lines with warn/error/panic: ${warn:-0}"
  [ -n "$kinds" ] && echo "$kinds" | sed 's/^/  /'
  grep -q "scenario=crash" "$OUT/$s.results" 2>/dev/null && echo "  $s EXITED during the run"
  # The smoke run fails on any client-side error or lost connection of pushi.
  if [ "$QUICK" = 1 ] && [ "$s" = pushi ] && [ "$errs" != 0 ]; then FAILED=1; fi
done
exit $FAILED
