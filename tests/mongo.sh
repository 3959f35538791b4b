#!/usr/bin/env bash
# A MongoDB-protocol test server: nx-27017 (MongoDB wire protocol on SQLite,
# pinned in tests/python/requirements.txt, installed by tests/setup.sh).
#   tests/mongo.sh start <port> <dir>   start on 127.0.0.1:<port>, data, log and
#                                       pid file in <dir>; returns once it answers
#   tests/mongo.sh stop <dir>           stop the server started with that <dir>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${PUSHI_VENV:-.venv}

usage() {
  echo "usage: $0 start <port> <dir> | stop <dir>" >&2
  exit 2
}

port_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

case "${1:-}" in
  start)
    [ $# -eq 3 ] || usage
    port=$2
    dir=$3
    case $VENV in /*) bin=$VENV/bin/nx-27017 ;; *) bin=$(pwd)/$VENV/bin/nx-27017 ;; esac
    [ -x "$bin" ] || { echo "mongo.sh: $bin missing (run tests/setup.sh)" >&2; exit 1; }
    if port_answers "$port"; then
      echo "mongo.sh: port $port is already in use" >&2
      exit 1
    fi
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    # A server killed with SIGKILL (the fault tests do) leaves its pid file; nx-27017
    # would then refuse to start, believing it is already running.
    # (A killed process not yet reaped by its new parent is a zombie: count it as gone.)
    if [ -f "$dir/nx-27017.daemon.pid" ]; then
      old=$(cat "$dir/nx-27017.daemon.pid")
      if [ ! -e "/proc/$old" ] || grep -qs '^State:[[:space:]]*Z' "/proc/$old/status"; then
        rm -f "$dir/nx-27017.daemon.pid"
      fi
    fi
    # Foreground mode, in the background: $! is the server (exec). It writes
    # --pid-file itself (default /tmp); keep that and --log-file in $dir too.
    (cd "$dir" && exec "$bin" --host 127.0.0.1 -p "$port" --data-dir "$dir/data" \
      --log-file "$dir/nx-27017.log" --pid-file "$dir/nx-27017.daemon.pid" \
      >"$dir/nx-27017.out" 2>&1 </dev/null) &
    echo $! >"$dir/nx-27017.pid"
    for _ in $(seq 1 200); do # 20 s
      if port_answers "$port"; then
        echo "mongo.sh: nx-27017 on 127.0.0.1:$port (pid $(cat "$dir/nx-27017.pid"), data in $dir/data)"
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/nx-27017.pid")" 2>/dev/null; then
        echo "mongo.sh: nx-27017 exited:" >&2
        cat "$dir"/nx-27017.out "$dir"/nx-27017.log >&2 2>/dev/null || true
        exit 1
      fi
      sleep 0.1
    done
    echo "mongo.sh: nx-27017 did not answer on port $port within 20 s:" >&2
    cat "$dir"/nx-27017.out "$dir"/nx-27017.log >&2 2>/dev/null || true
    kill "$(cat "$dir/nx-27017.pid")" 2>/dev/null || true
    exit 1
    ;;
  stop)
    [ $# -eq 2 ] || usage
    pidfile="$2/nx-27017.pid"
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do # 5 s, then SIGKILL
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    ;;
  *)
    usage
    ;;
esac
