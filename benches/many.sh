#!/usr/bin/env bash
# Past one process's descriptor limit: N subscribed connections (default
# 50 000) held by a pushi cluster of K nodes (default 3) on this machine,
# opened by P load generator processes (default 4, each under 20 000
# sockets), then a few REST publishes that must reach every connection.
#
#   bash benches/many.sh                    # 50 000 connections, 3 nodes, 4 load generators
#   bash benches/many.sh --n 20000 --procs 2 --nodes 2
#
# Options: --n N (connections in all), --nodes K, --procs P, --events E
# (REST publishes on node 1, one per second, each must reach every
# connection; default 5), --concurrency C (handshakes in flight per load
# generator, default 40), --repeat R (R runs, fresh servers each), --keep
# DIR (logs there). Environment: PUSHI_BIN (the pushi binary; default: build
# the tree), LOADGEN_BIN (a built benches/loadgen.rs), BENCH_PORT (first
# port, default 18000).
#
# What runs: a redis-server and an nx-27017 store (the tests' venv) shared by
# K pushi nodes, every one on 127.0.0.1; load generator p binds its
# connections to two source addresses of its own (127.0.0.(2+2p),
# 127.0.0.(3+2p)) and spreads them round-robin over the K nodes, so no
# (source, node port) pair needs more than a few thousand ephemeral ports.
# Every connection subscribes to the public channel `many`. Memory is read
# with every connection idle and subscribed: each node's VmRSS
# (/proc/PID/status) against its own idle baseline taken before the first
# connection; the kernel's TCP socket memory (/proc/net/sockstat, pages) and
# slab (/proc/meminfo Slab, plus the caches that grew most in
# /proc/slabinfo when readable). On loopback both ends of every connection
# live in this one kernel: the kernel figures are shown per connection (both
# sockets) and per socket (half). Every process is started here, bound to
# 127.0.0.1 (clients to 127.0.0.x), run under `timeout`, and stopped by its
# pid on exit. Exit status 1 if a connection did not subscribe, an event did
# not reach every connection, or a server died. Results: benches/README.md.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

TOTAL=50000
NODES=3
PROCS=4
EVENTS=5
CONC=40
REPEAT=1
KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --n) TOTAL=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --procs) PROCS=$2; shift 2 ;;
    --events) EVENTS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "many.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
PER_PROC=$(( (TOTAL + PROCS - 1) / PROCS ))
PER_NODE=$(( (TOTAL + NODES - 1) / NODES ))
if [ "$NOFILE" != unlimited ]; then
  [ $((PER_PROC + 200)) -le "$NOFILE" ] || { echo "many.sh: $PER_PROC sockets per load generator > open-file limit $NOFILE: use more --procs" >&2; exit 2; }
  [ $((PER_NODE + 200)) -le "$NOFILE" ] || { echo "many.sh: $PER_NODE connections per node > open-file limit $NOFILE: use more --nodes" >&2; exit 2; }
fi
[ $((2 + 2 * PROCS)) -le 254 ] || { echo "many.sh: too many --procs" >&2; exit 2; }

BASE_PORT=${BENCH_PORT:-18000}
REDIS_PORT=$BASE_PORT; MONGO_PORT=$((BASE_PORT + 1))
ws_port() { echo $((BASE_PORT + 10 + $1)); }
api_port() { echo $((BASE_PORT + 40 + $1)); }

OUT=${KEEP:-$(mktemp -d /tmp/pushi-many.XXXXXX)}
mkdir -p "$OUT"
STARTED=()
MONGO_DIR=""
stop_all() {
  for p in "${STARTED[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  STARTED=()
  [ -n "$MONGO_DIR" ] && bash "$ROOT/tests/mongo.sh" stop "$MONGO_DIR" >/dev/null 2>&1
  MONGO_DIR=""
}
cleanup() {
  stop_all
  [ -z "$KEEP" ] && rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- build

if [ -n "${PUSHI_BIN:-}" ]; then
  PUSHI=$PUSHI_BIN
else
  echo "== building pushi" >&2
  cargo build --release --quiet --bin pushi || exit 1
  PUSHI=$ROOT/target/release/pushi
fi
if [ -n "${LOADGEN_BIN:-}" ]; then
  LOADGEN=$LOADGEN_BIN
else
  # A crate of its own (as run.sh's fallback): needs nothing of pushi's tree.
  echo "== building the load generator" >&2
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
[ -x "$PUSHI" ] && [ -x "$LOADGEN" ] || { echo "many.sh: $PUSHI or $LOADGEN missing" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "many.sh: needs redis-server" >&2; exit 1; }
[ -x "$ROOT/.venv/bin/nx-27017" ] || bash "$ROOT/tests/setup.sh" >&2 || exit 1

# ---------------------------------------------------------------- helpers

wait_port() {
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
tcp_inuse() { awk '/^TCP:/{print $3}' /proc/net/sockstat; }
tcp_mem_pages() { awk '/^TCP:/{for (i=1;i<NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
slab_kb() { awk '/^Slab:/{print $2}' /proc/meminfo; }
slabinfo() { # name bytes (active objects x object size), when readable
  [ -r /proc/slabinfo ] && awk 'NR>2{print $1, $2*$4}' /proc/slabinfo
}
wait_lines() { # word count seconds files..: until `count` files hold a line starting with word
  local word=$1 count=$2 secs=$3; shift 3
  local t=0
  while [ "$t" -lt $((secs * 10)) ]; do
    [ "$(cat "$@" 2>/dev/null | grep -c "^$word ")" -ge "$count" ] && return 0
    sleep 0.1; t=$((t + 1))
  done
  return 1
}
sum_key() { # key files..: sum of key=value over the RESULT lines
  local key=$1; shift
  grep -h '^RESULT' "$@" 2>/dev/null | tr ' ' '\n' | grep "^$key=" | cut -d= -f2 | awk '{t+=$1} END{print t+0}'
}

# ---------------------------------------------------------------- one run

FAILED=0
run_once() { # round
  local r=$1 dir=$OUT/run$1
  mkdir -p "$dir"
  for p in "$REDIS_PORT" "$MONGO_PORT"; do port_free "$p" || { echo "many.sh: port $p busy" >&2; return 1; }; done
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$dir/redis.log" 2>&1 &
  STARTED+=($!)
  wait_port "$REDIS_PORT" || { echo "many.sh: redis-server did not start" >&2; return 1; }
  MONGO_DIR=$dir/mongo; mkdir -p "$MONGO_DIR"
  bash "$ROOT/tests/mongo.sh" start "$MONGO_PORT" "$MONGO_DIR" >/dev/null || return 1
  local prefix=many$RANDOM db=pushi_many_$RANDOM
  NODE_PIDS=()
  local wslist=""
  for i in $(seq 1 "$NODES"); do
    local ws api
    ws=$(ws_port "$i"); api=$(api_port "$i")
    port_free "$ws" && port_free "$api" || { echo "many.sh: port $ws or $api busy" >&2; return 1; }
    env PUSHI_CLUSTER_URL="redis://127.0.0.1:$REDIS_PORT/0" PUSHI_CLUSTER_PREFIX="$prefix" \
      PUSHI_MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/$db" PUSHI_NODE_ID="many-$i" \
      SERVER_HOST=127.0.0.1 SERVER_PORT="$ws" APP_HOST=127.0.0.1 APP_PORT="$api" \
      PUSHI_APP_ID=bench PUSHI_APP_KEY=benchkey PUSHI_APP_SECRET=benchsecret PUSHI_MAX_CONNECTIONS=200000 \
      RUST_LOG=warn timeout 1800 "$PUSHI" >"$dir/node$i.log" 2>&1 &
    NODE_PIDS+=($!); STARTED+=($!)
    wait_port "$api" && wait_port "$ws" || { echo "many.sh: node $i did not start" >&2; tail -5 "$dir/node$i.log" >&2; return 1; }
    wslist+="${wslist:+,}127.0.0.1:$ws"
  done
  sleep 2
  # Idle baselines. (timeout's child is the server: read the server's pid.)
  local -a SPID RSS0 RSS1 RSS2 FD0 FD1
  for i in $(seq 1 "$NODES"); do
    SPID[$i]=$(pgrep -P "${NODE_PIDS[$((i - 1))]}" | head -1)
    [ -n "${SPID[$i]}" ] || SPID[$i]=${NODE_PIDS[$((i - 1))]}
    RSS0[$i]=$(rss_kb "${SPID[$i]}"); FD0[$i]=$(fds "${SPID[$i]}")
  done
  local inuse0 mem0 slab0
  inuse0=$(tcp_inuse); mem0=$(tcp_mem_pages); slab0=$(slab_kb); slabinfo >"$dir/slab0" 2>/dev/null

  echo "== run $r: $NODES nodes ($wslist), $PROCS load generators x $PER_PROC connections" >&2
  local -a LG_PIDS=() LG_OUT=()
  for p in $(seq 0 $((PROCS - 1))); do
    local n=$PER_PROC
    [ $((p * PER_PROC + n)) -gt "$TOTAL" ] && n=$((TOTAL - p * PER_PROC))
    timeout 900 "$LOADGEN" hold --ws "$wslist" --sources "127.0.0.$((2 + 2 * p)),127.0.0.$((3 + 2 * p))" \
      --n "$n" --channel many --concurrency "$CONC" --expect "$EVENTS" --max-secs 600 --linger 8 \
      --key benchkey --secret benchsecret >"$dir/lg$p.out" 2>"$dir/lg$p.err" &
    LG_PIDS+=($!); STARTED+=($!); LG_OUT+=("$dir/lg$p.out")
  done
  if ! wait_lines READY "$PROCS" 600 "${LG_OUT[@]}"; then
    echo "many.sh: load generators not ready after 600 s" >&2; FAILED=1
  fi
  local open_secs
  open_secs=$(grep -h '^READY' "${LG_OUT[@]}" | tr ' ' '\n' | grep '^open_secs=' | cut -d= -f2 | sort -g | tail -1)
  local subscribed failed
  subscribed=$(grep -h '^READY' "${LG_OUT[@]}" | tr ' ' '\n' | grep '^subscribed=' | cut -d= -f2 | awk '{t+=$1} END{print t+0}')
  failed=$(grep -h '^READY' "${LG_OUT[@]}" | tr ' ' '\n' | grep '^failed=' | cut -d= -f2 | awk '{t+=$1} END{print t+0}')
  echo "   $subscribed of $TOTAL subscribed ($failed failed) in ${open_secs:-?} s" >&2
  sleep 5 # settle: idle, subscribed
  local inuse1 mem1 slab1
  # The kernel first: listing /proc/PID/fd (below) makes a proc inode and a
  # dentry per descriptor, which would count as socket memory.
  inuse1=$(tcp_inuse); mem1=$(tcp_mem_pages); slab1=$(slab_kb); slabinfo >"$dir/slab1" 2>/dev/null
  for i in $(seq 1 "$NODES"); do RSS1[$i]=$(rss_kb "${SPID[$i]}"); FD1[$i]=$(fds "${SPID[$i]}"); done
  local lg_rss=0
  for p in "${LG_PIDS[@]}"; do
    local c; c=$(pgrep -P "$p" | head -1); lg_rss=$((lg_rss + $(rss_kb "${c:-$p}")))
  done

  # Publishes on node 1; every connection must get every one.
  timeout 120 "$LOADGEN" send --api "127.0.0.1:$(api_port 1)" --app-id bench --key benchkey --secret benchsecret \
    --channel many --count "$EVENTS" --interval-ms 1000 >"$dir/send.out" 2>&1
  local sent; sent=$(sum_key ok "$dir/send.out")
  wait_lines DONE "$PROCS" 120 "${LG_OUT[@]}" || echo "many.sh: not every load generator saw all events within 120 s" >&2
  sleep 1
  for i in $(seq 1 "$NODES"); do RSS2[$i]=$(rss_kb "${SPID[$i]}"); done
  local mem2; mem2=$(tcp_mem_pages)
  for p in "${LG_PIDS[@]}"; do wait "$p" 2>/dev/null; done

  local complete delivered closed errors
  complete=$(sum_key complete "${LG_OUT[@]}"); delivered=$(sum_key delivered "${LG_OUT[@]}")
  closed=$(sum_key closed "${LG_OUT[@]}"); errors=$(sum_key errors "${LG_OUT[@]}")
  local dead=0
  for i in $(seq 1 "$NODES"); do kill -0 "${SPID[$i]}" 2>/dev/null || { echo "many.sh: node $i died" >&2; dead=1; }; done
  local rows="" drss=0 conns=$subscribed
  for i in $(seq 1 "$NODES"); do
    local d=$((RSS1[i] - RSS0[i])) c=$((FD1[i] - FD0[i]))
    drss=$((drss + d))
    rows+="| node $i | $c | ${RSS0[$i]} | ${RSS1[$i]} | ${RSS2[$i]} | $(awk "BEGIN{printf \"%.0f\", $d*1024/($c>0?$c:1)}") |"$'\n'
  done
  # The caches a socket descriptor allocates from (the socket and its inode,
  # file, dentry, epoll entry, security blobs); other work on the machine
  # moves the whole-machine Slab figure, less these.
  local sockslab=""
  if [ -s "$dir/slab0" ] && [ -s "$dir/slab1" ]; then
    sockslab=$(awk 'NR==FNR{a[$1]=$2; next} $1 ~ /^(TCP|sock_inode_cache|filp|dentry|eventpoll_epi|eventpoll_pwq|lsm_inode_cache|lsm_file_cache)$/ {t+=$2-a[$1]} END{printf "%.0f", t}' "$dir/slab0" "$dir/slab1")
  fi
  local per_user per_conn_mem per_conn_slab
  per_user=$(awk "BEGIN{printf \"%.0f\", $drss*1024/($conns>0?$conns:1)}")
  per_conn_mem=$(awk "BEGIN{printf \"%.0f\", ($mem1-$mem0)*4096/($conns>0?$conns:1)}")
  per_conn_slab=$(awk "BEGIN{printf \"%.0f\", ($slab1-$slab0)*1024/($conns>0?$conns:1)}")
  {
    echo
    echo "### run $r: $conns subscribed connections over $NODES pushi nodes ($PROCS load generators)"
    echo
    echo "pushi ${PUSHI_BIN:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)}; $(nproc) CPUs," \
      "$(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"
    echo
    echo "| | connections (descriptors added) | VmRSS idle kB | VmRSS subscribed kB | VmRSS after $EVENTS events kB | bytes per connection (RSS delta / connections) |"
    echo "|---|---|---|---|---|---|"
    printf '%s' "$rows"
    echo
    echo "- subscribed (subscription_succeeded): $subscribed of $TOTAL ($failed failed to open); open took ${open_secs:-?} s (slowest load generator)"
    echo "- events: $sent of $EVENTS publishes accepted on node 1; $complete of $subscribed connections got all $EVENTS" \
      "($delivered deliveries, $((subscribed * EVENTS)) expected); lost while held: $closed; client errors: $errors"
    echo "- pushi user space: $drss kB over $conns connections = **$per_user B per connection** (sum of the nodes' RSS deltas)"
    echo "- kernel TCP memory (/proc/net/sockstat mem): $mem0 -> $mem1 pages (after the events: $mem2) =" \
      "$per_conn_mem B per connection, both ends; TCP sockets in use $inuse0 -> $inuse1"
    echo "- kernel slab (/proc/meminfo Slab, whole machine): $slab0 -> $slab1 kB = $per_conn_slab B per connection, both ends" \
      "($((per_conn_slab / 2)) B per socket)"
    if [ -s "$dir/slab0" ] && [ -s "$dir/slab1" ]; then
      echo "- slab caches that grew most (bytes per connection): $(awk -v n="$conns" 'NR==FNR{a[$1]=$2; next}
        {d=$2-a[$1]; if (d>0) print d, $1}' "$dir/slab0" "$dir/slab1" | sort -rn | head -8 |
        awk -v n="$conns" '{printf "%s%s %.0f", (NR>1?", ":""), $2, $1/n}')"
    fi
    echo "- load generators' RSS: $lg_rss kB in all"
    # One 8 GiB server, the clients elsewhere: one socket per connection in
    # its kernel (half the loopback figures), pushi's user space as measured.
    local kslab=$per_conn_slab per_server
    if [ -n "$sockslab" ]; then
      kslab=$(awk "BEGIN{printf \"%.0f\", $sockslab/($conns>0?$conns:1)}")
      echo "- socket caches (TCP, sock_inode_cache, filp, dentry, eventpoll_epi/pwq, lsm_*): $kslab B per connection," \
        "both ends ($((kslab / 2)) B per socket)"
    fi
    [ "$per_conn_mem" -lt 0 ] && per_conn_mem=0 # other sockets on the machine freed buffers meanwhile
    per_server=$(( per_user + (kslab + per_conn_mem) / 2 ))
    echo "- projection, 1 000 000 connections on one server (clients on other machines, idle): pushi" \
      "$(awk "BEGIN{printf \"%.2f\", $per_user*1e6/2^30}") GiB + kernel" \
      "$(awk "BEGIN{printf \"%.2f\", ($kslab+$per_conn_mem)/2*1e6/2^30}") GiB (one socket per connection: socket caches + TCP buffers)" \
      "= $(awk "BEGIN{printf \"%.2f\", $per_server*1e6/2^30}") GiB of 8 GiB"
  } | tee -a "$OUT/report.md"
  [ "$subscribed" = "$TOTAL" ] && [ "$complete" = "$TOTAL" ] && [ "$dead" = 0 ] && [ "$sent" = "$EVENTS" ] || FAILED=1
  stop_all
}

for r in $(seq 1 "$REPEAT"); do
  run_once "$r" || FAILED=1
done
echo "(report: $OUT/report.md)" >&2
exit $FAILED
