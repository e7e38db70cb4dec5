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
[ $# -gt 0 ] || set -- "$here/../target/release/helios-trace"
dir=$(mktemp -d)
# shellcheck source=bench/holders.sh
. "$here/holders.sh"
trap 'unhold; kill "${serve:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in ticks
tick_ms=$((1000 / $(getconf CLK_TCK)))

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
