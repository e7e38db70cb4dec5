#!/bin/bash
# Records a tracer loses at one rate (BENCHMARKS.md, "The reader's position told once a batch"),
# as root:
#
#   bench/lost.sh RATE SECONDS BINARY...
#
# For each binary in turn: bench/rate.c (built here, two threads, as the throughput ladder runs
# it) makes RATE records a second for SECONDS after its warm-up, traced with `--pid`, and the
# report's `events.lost` and `events.wakeups_forced` are printed. One rung of
# `cargo xtask bench throughput`, to alternate binaries over many runs: at rates near what the
# machine can do, losses come and go with its phase.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rate=$1
seconds=$2
shift 2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
gcc -O2 -fomit-frame-pointer -g -pthread -o "$dir/rate" "$here/rate.c"

for binary in "$@"; do
  rm -f "$dir/go" "$dir/tracer.err"
  mkfifo "$dir/go"
  "$dir/rate" "$rate" "$seconds" 2 < "$dir/go" > "$dir/loop.out" &
  loop=$!
  exec 3> "$dir/go"
  "$binary" --pid "$loop" --reconcile-interval 0 --format json --view quiet > "$dir/report.json" 2> "$dir/tracer.err" &
  tracer=$!
  until grep -qs attached "$dir/tracer.err"; do
    kill -0 "$tracer" 2> /dev/null || { cat "$dir/tracer.err" >&2; exit 1; }
    sleep 0.05
  done
  # rate.c's first line starts its warm-up, its second the measured part.
  echo >&3
  until grep -qs warm "$dir/loop.out"; do sleep 0.05; done
  sleep 0.5
  echo >&3
  exec 3>&-
  wait "$loop"
  # What the tracer has not read yet when the loop ends: its emptier looks at most 20 ms apart.
  sleep 0.3
  kill -INT "$tracer"
  wait "$tracer" || true
  python3 - "$binary" "$dir/report.json" <<'PY'
import json, sys
events = json.load(open(sys.argv[2]))["events"]
print(f"{sys.argv[1]}: {events['lost']} lost of {events['received'] + events['lost']}, "
      f"the reader woken {events['wakeups_forced']} times")
PY
done
