#!/bin/bash
# The kernel's own time in helios-trace's programs per CPython open+close (BENCHMARKS.md,
# "Taught chains"), as root:
#
#   bench/progtime.sh OPS BINARY... [-- TRACER ARGS...]
#
# With PYLOOP_THREADS=N in the environment the loop runs behind N idle threads (bench/pyloop.py).
#
# For each binary in turn: bench/pyloop.py makes OPS open+close of /dev/null after its warm-up
# of max(OPS/10, 500), traced with `--pid` (and the arguments after --), and the sum of
# `run_time_ns` over the tracer's programs (/proc/PID/fdinfo of its program descriptors,
# counted while kernel.bpf_stats_enabled is 1) is divided by all of them. The programs also run
# (and return at once) for every other syscall of the machine: alternate the binaries over
# several runs, on a machine as quiet as can be.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ops=$1
shift
warmup=$((ops / 10 > 500 ? ops / 10 : 500))
binaries=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do binaries+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
dir=$(mktemp -d)
was=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -q kernel.bpf_stats_enabled="$was"; rm -rf "$dir"' EXIT
sysctl -q kernel.bpf_stats_enabled=1
run_ns() { cat /proc/"$1"/fdinfo/* 2>/dev/null | awk '/^run_time_ns/ {s += $2} END {print s + 0}'; }

# shellcheck source=bench/traced.sh
. "$here/traced.sh"

for binary in "${binaries[@]}"; do
  traced "$binary" "$@" -- python3 "$here/pyloop.py" "$ops" 10 "${PYLOOP_THREADS:-0}"
  before=$(run_ns "$tracer")
  go
  after=$(run_ns "$tracer")
  untraced
  echo "$binary: $(((after - before) / (ops + warmup))) ns per open+close in the kernel's programs"
done
