#!/bin/bash
# The daemon's own CPU per record (BENCHMARKS.md, "The decoded record made small"), as root:
#
#   bench/daemoncpu.sh RATE SECONDS BINARY...
#
# For each binary in turn: bench/rate.c (built here, one thread, or RATE_THREADS: the throughput
# ladder runs two) makes RATE records a second (open+close of /dev/null, two records a pair) for
# SECONDS after its warm-up, traced with `--pid`, and the CPU time of all the tracer's threads
# over that part (the sum of /proc/PID/task/*/schedstat's first field, ns on a CPU) is divided by
# the records made; the records its report counts lost, and its reader's forced wake-ups, are
# printed after. The throughput ladder (`cargo xtask bench throughput`) measures the same per
# rung; this is one rung, to alternate two binaries over many runs (at rates near what the
# machine can do, losses come and go with its phase).
#
#   bench/daemoncpu.sh pairs SECONDS BINARY...
#
# The same for the calls the kernel matches with their closes itself (helios-trace-ebpf/src/pairs.rs;
# BENCHMARKS.md, "Pairs applied at once"): bench/oloop.c's open+close of /dev/null as fast as it
# goes, each a pair the kernel counts, sending one record for them all when the tracer asks
# (every 100 ms); the CPU from the end of oloop's first second (its "warm" line: the chain
# learned, the tracer started) to 0.3 s after the loop's end, SECONDS later (the last ask for
# what the kernel keeps; the idle tracer's own CPU in those 0.3 s is counted too, the same for
# every binary), is divided by the operations made after the warm line, and the report's
# `calls_paired` (of the whole run) printed after.
#
#   bench/daemoncpu.sh serve-pairs SECONDS BINARY...
#
# The same under `serve --comm oloop --reconcile-interval 0` (the DaemonSet's command, on a
# loopback port of its choosing), its `helios_trace_site_opened_total` and `site_closed_total`
# for the loop's line printed after, to compare with the operations of the whole run.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rate=$1
seconds=$2
shift 2
if [ "$rate" = pairs ] || [ "$rate" = serve-pairs ]; then
  [ "$seconds" -ge 1 ] || { echo "bench/daemoncpu.sh $rate: SECONDS must be 1 or more" >&2; exit 2; }
fi
dir=$(mktemp -d)
tracer='' loop=''
# A tracer or loop left running (an error, ^C) would hold its programs, and `serve` its port.
trap 'kill $tracer $loop 2> /dev/null || true; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
gcc -O2 -fomit-frame-pointer -g -pthread -o "$dir/rate" "$here/rate.c"
gcc -O2 -fomit-frame-pointer -g -o "$dir/oloop" "$here/oloop.c"
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2> /dev/null | awk '{s += $1} END {print s + 0}'; }

# shellcheck source=bench/traced.sh
. "$here/traced.sh"

# Until oloop's "warm" line (its process ended first: what it printed, and out).
warm_up() {
  until grep -qs warm "$dir/loop.out"; do
    kill -0 "$loop" 2> /dev/null || { cat "$dir/loop.out" >&2; exit 1; }
    sleep 0.01
  done
}

if [ "$rate" = serve-pairs ]; then
  for binary in "$@"; do
    # Their own files: the waits below must not find the previous binary's lines.
    rm -f "$dir/go" "$dir/loop.out" "$dir/tracer.err"
    "$binary" serve --comm oloop --reconcile-interval 0 --listen 127.0.0.1:0 2> "$dir/tracer.err" &
    tracer=$!
    until grep -qs attached "$dir/tracer.err"; do
      kill -0 "$tracer" 2> /dev/null || { cat "$dir/tracer.err" >&2; exit 1; }
      sleep 0.05
    done
    until address=$(grep -o 'http://[0-9.:]*/metrics' "$dir/tracer.err"); do
      kill -0 "$tracer" 2> /dev/null || { cat "$dir/tracer.err" >&2; exit 1; }
      sleep 0.05
    done
    "$dir/oloop" $((seconds + 1)) < <(echo) > "$dir/loop.out" &
    loop=$!
    warm_up
    before=$(cpu_ns "$tracer")
    wait "$loop"
    sleep 0.3
    after=$(cpu_ns "$tracer")
    # Its metrics are made at its once-a-second tick.
    sleep 1.2
    counted=$(python3 - "$address" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1]).read().decode()
found = {}
for line in text.splitlines():
    m = re.match(r'helios_trace_site_(opened|closed)_total\{.*comm="oloop".*frame="main \(oloop\.c:.*\} (\S+)$', line)
    if m:
        found[m.group(1)] = int(float(m.group(2)))
print(f"opened {found.get('opened')} closed {found.get('closed')} at the loop's line")
PY
) || counted="no metrics read"

    kill -TERM "$tracer"
    wait "$tracer" || true
    read -r _ warm < <(head -1 "$dir/loop.out")
    read -r operations _ < <(tail -1 "$dir/loop.out")
    echo "$binary serve: $(((after - before) / (operations - warm))) ns of daemon CPU per open+close, $((operations - warm)) measured of $operations; $counted"
  done
  exit 0
fi

if [ "$rate" = pairs ]; then
  for binary in "$@"; do
    traced "$binary" -- "$dir/oloop" $((seconds + 1))
    echo >&3
    exec 3>&-
    warm_up
    before=$(cpu_ns "$tracer")
    wait "$loop"
    # What the kernel keeps is asked for every 100 ms.
    sleep 0.3
    after=$(cpu_ns "$tracer")
    untraced
    read -r _ warm < <(head -1 "$dir/loop.out")
    read -r operations _ < <(tail -1 "$dir/loop.out")
    paired=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["events"]["calls_paired"])' "$dir/report.json" || echo "no report")
    echo "$binary: $(((after - before) / (operations - warm))) ns of daemon CPU per open+close, $((operations - warm)) measured of $operations, $paired matched in the kernel"
  done
  exit 0
fi

for binary in "$@"; do
  traced "$binary" -- "$dir/rate" "$rate" "$seconds" "${RATE_THREADS:-1}"
  # rate.c's first line starts its warm-up, its second the measured part.
  echo >&3
  until grep -qs warm "$dir/loop.out"; do sleep 0.05; done
  sleep 0.5
  before=$(cpu_ns "$tracer")
  go
  # What the tracer has not read yet when the loop ends: its emptier looks at most 20 ms apart.
  sleep 0.3
  after=$(cpu_ns "$tracer")
  untraced
  read -r pairs _ < <(tail -1 "$dir/loop.out")
  echo "$binary: $(((after - before) / (2 * pairs))) ns of daemon CPU per record at $rate records/s"
  # From its report (binaries before 309b4b1 count no forced wake-ups; no report, no counts).
  python3 - "$dir/report.json" <<'PY' || echo "  no report to read the records lost from"
import json, sys
events = json.load(open(sys.argv[1]))["events"]
print(f"  {events['lost']} lost, the reader woken {events.get('wakeups_forced', '?')} times")
PY
done
