#!/bin/bash
# What a session's start costs and loses while it reads the baseline (BENCHMARKS.md, "Reading
# /proc"), as root, on a machine with a built helios-trace and bench/fdhold.c built (cargo xtask
# bench builds it into target/bench):
#
#   bench/baseline.sh [BINARY...]
#
# 20 bench/fdhold processes hold 19,900 dup'd eventfds each (398,000 descriptors), and the
# kernel tests' fdwork opens and closes 20,000 files a second (`churn-bg`). Then, twice, for each
# binary in turn (default: target/release/helios-trace), a session traces them all with the
# defaults (`--stacks dwarf`, a 16 MiB ring) for 1 s after it attached: the records it lost
# (`events.lost` of its report) and how long it ran in all.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- "$here/../target/release/helios-trace"
dir=$(mktemp -d)
# shellcheck source=bench/holders.sh
. "$here/holders.sh"
trap 'unhold; kill "${work:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
gcc -O2 -pthread -o "$dir/fdwork" "$here/../helios-trace/tests/workloads/fdwork.c"

hold
mkdir "$dir/scratch"
mkfifo "$dir/work"
"$dir/fdwork" "$dir/scratch" < "$dir/work" > "$dir/work.out" &
work=$!
exec {wfd}> "$dir/work"
echo "churn-bg 20000 0 0" >&"$wfd"
sleep 0.5
pids="$pids --pid $work"

for round in 1 2; do
  for binary in "$@"; do
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    "$binary" $pids --reconcile-interval 0 --duration 1s --format json --view quiet > "$dir/report.json" 2> "$dir/err"
    lost=$(python3 -c "import json; print(json.load(open('$dir/report.json'))['events']['lost'])")
    echo "$binary ($("$binary" --version)): 398,000 descriptors and 20,000 opens a second: $lost records lost; the session ran $((($(date +%s%N) - start) / 1000000)) ms (1 s of it after attaching)"
  done
done
