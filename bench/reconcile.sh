#!/bin/bash
# What reading /proc costs helios-trace (BENCHMARKS.md, "Reading /proc"), as root, on a machine
# with a built helios-trace and bench/fdhold.c built (cargo xtask bench builds it into
# target/bench):
#
#   bench/reconcile.sh [BINARY...]
#
# For each binary (default: target/release/helios-trace), in turn: 20 bench/fdhold processes
# holding 19,900 dup'd eventfds each (398,000 descriptors) before it starts, then
#   - the time from its start to "attached" (`serve --reconcile-interval 0`: the baseline reads
#     every descriptor, with its close-on-exec flag);
#   - the CPU of one reconciliation pass (`serve --reconcile-interval 40s`): its CPU from 40 s to
#     80 s after attaching (one pass, at 40 s) less the idle CPU of 37 s before it, scaled to 40 s.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fdhold=$here/../target/bench/fdhold
[ -x "$fdhold" ] || { echo "no $fdhold: run cargo xtask bench --quick memory once, or gcc -O2 -o $fdhold $here/fdhold.c" >&2; exit 1; }
[ $# -gt 0 ] || set -- "$here/../target/release/helios-trace"
dir=$(mktemp -d)
trap 'pkill -f "$fdhold 19900" || true; kill "${serve:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in ticks
tick_ms=$((1000 / $(getconf CLK_TCK)))

hold() {
  for i in $(seq 20); do
    mkfifo "$dir/in$i"
    ("$fdhold" 19900 600000 < "$dir/in$i" > "$dir/out$i") &
    exec {fd}> "$dir/in$i"
    echo go >&"$fd"
  done
  until [ "$(cat "$dir"/out* | grep -c held)" = 20 ]; do sleep 0.1; done
  pids=$(pgrep -f "$fdhold 19900" | sed 's/^/--pid /' | tr '\n' ' ')
}

unhold() {
  pkill -f "$fdhold 19900" || true
  rm -f "$dir"/in* "$dir"/out*
  sleep 0.5
}

for binary in "$@"; do
  hold
  start=$(date +%s%N)
  # shellcheck disable=SC2086
  "$binary" serve --listen 127.0.0.1:0 --reconcile-interval 0 $pids > "$dir/serve.out" 2>&1 &
  serve=$!
  until grep -q attached "$dir/serve.out"; do sleep 0.05; done
  attach_ms=$((($(date +%s%N) - start) / 1000000))
  kill -INT "$serve"
  wait "$serve" || true

  # shellcheck disable=SC2086
  "$binary" serve --listen 127.0.0.1:0 --reconcile-interval 40s $pids > "$dir/serve.out" 2>&1 &
  serve=$!
  until grep -q attached "$dir/serve.out"; do sleep 0.05; done
  sleep 1
  c0=$(cpu "$serve")
  sleep 37
  c1=$(cpu "$serve")
  sleep 40
  c2=$(cpu "$serve")
  kill -INT "$serve"
  wait "$serve" || true
  idle=$(((c1 - c0) * tick_ms * 40 / 37))
  pass=$(((c2 - c1) * tick_ms - idle))
  echo "$binary ($("$binary" --version)): 398,000 descriptors: attached after $attach_ms ms; one reconciliation pass $pass ms of CPU ($((pass * 1000 / 398000)) µs a descriptor; idle CPU $idle ms per 40 s left out)"
  unhold
done
