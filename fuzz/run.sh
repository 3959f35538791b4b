#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while (needs the nightly toolchain and
# `cargo install cargo-fuzz`):
#
#   bash fuzz/run.sh 600            # every target, 10 minutes each
#   bash fuzz/run.sh 30 ws_frame    # one target
#
# Prints libFuzzer's last status line per target (executions/s, coverage).
# A crash stops that target and leaves its input in fuzz/artifacts/<target>/:
# copy it to fuzz/regressions/<target>/ so `cargo test` replays it forever
# (tests/fuzz_regressions.rs), then fix the bug.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs=${1:-60}
shift || true
targets=${*:-http_request ws_frame protocol_message}
if ! rustup toolchain list 2>/dev/null | grep -q nightly || ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs a nightly toolchain and cargo-fuzz; skipped" >&2
  exit 0
fi
# Build first (instrumented, a few minutes the first time), outside the run timeout.
if ! timeout 1800 cargo +nightly fuzz build --release >/dev/null 2>fuzz-build.log; then
  tail -20 fuzz-build.log >&2
  exit 1
fi
rm -f fuzz-build.log
status=0
for t in $targets; do
  mkdir -p "corpus/$t"
  # Seed the corpus with the saved regressions (and anything found before).
  [ -d "regressions/$t" ] && cp -n regressions/"$t"/* "corpus/$t/" 2>/dev/null
  log=$(mktemp)
  timeout -k 10 $((secs + 120)) cargo +nightly fuzz run --release "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "$t: exit $rc, ${execs:-?} runs in ${secs}s; last: ${last:-none}"
  if [ "$rc" -ne 0 ]; then
    status=1
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20
  fi
  rm -f "$log"
done
exit "$status"
