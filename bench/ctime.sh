#!/bin/bash
# The kernel's own time in helios-trace's programs per C open+close, socket+close, a socket
# held across an open+close (`nest`), a byte's round trip over a datagram socketpair received
# by recvmsg (`recvmsg`; `scm`: with a descriptor passed in it and closed), 16 datagrams a UDP
# socket sends itself and receives by one recvmmsg (`udpbatch`), or per
# operation of bench/churn.c's three phases (BENCHMARKS.md, "The stack copied ahead, as far as the
# shallowest chain reads", "Matching in the kernel, two bounds"), as root:
#
#   bench/ctime.sh SECONDS open|socket|nest|recvmsg|scm|udpbatch BINARY...
#   bench/ctime.sh OPERATIONS spaced BINARY...
#
# For each binary in turn: bench/oloop.c (built here) loops for SECONDS, traced with `--pid`
# (`nest`: a socket held while /dev/null is opened and closed, then its close: one operation),
# and the sum of `run_time_ns` over the tracer's programs (/proc/PID/fdinfo of its program
# descriptors, counted while kernel.bpf_stats_enabled is 1) is divided by the loop's operations.
# `spaced`: bench/churn.c instead, OPERATIONS a phase 10 µs apart as in `cargo xtask bench`'s
# overhead rows: the time is divided by the operations (a call and its close) of its open, socket
# and accept phases, their warm-ups included (a tenth, at least 500; accept's in whole batches, a
# few more), and its phases' own means follow. The program on `sys_exit` runs at every syscall
# of the machine (it filters inside), so what else runs meanwhile is in the time too (the
# tracer's own calls; with `spaced`, churn.c's getppid phase and pipe round trips and its untraced
# client's connects): compare binaries, not the figure alone.
# A new process each run: sp's place in its page changes how much a walk copies, so alternate
# the binaries over many runs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
seconds=$1
mode=$2
shift 2
case "$mode" in
  open) args=() ;;
  socket) args=(socket) ;;
  nest | recvmsg | scm | udpbatch) args=("$mode") ;;
  spaced) ;;
  *) echo "usage: bench/ctime.sh SECONDS open|socket|nest|recvmsg|scm|udpbatch BINARY... or bench/ctime.sh OPERATIONS spaced BINARY..." >&2; exit 2 ;;
esac
dir=$(mktemp -d)
was=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -q kernel.bpf_stats_enabled="$was"; rm -rf "$dir"' EXIT
sysctl -q kernel.bpf_stats_enabled=1
gcc -O2 -fomit-frame-pointer -g -o "$dir/oloop" "$here/oloop.c"
gcc -O2 -fomit-frame-pointer -g -o "$dir/churn" "$here/churn.c"
run_ns() { cat /proc/"$1"/fdinfo/* 2>/dev/null | awk '/^run_time_ns/ {s += $2} END {print s + 0}'; }

# shellcheck source=bench/traced.sh
. "$here/traced.sh"

for binary in "$@"; do
  if [ "$mode" = spaced ]; then
    traced "$binary" -- "$dir/churn" "$seconds" 10
    before=$(run_ns "$tracer")
    go
    after=$(run_ns "$tracer")
    untraced
    # churn.c's three traced phases, each after its untimed warm-up of a tenth (at least 500).
    calls=$((3 * (seconds + (seconds / 10 > 500 ? seconds / 10 : 500))))
    phases=$(awk '$1 != "getppid" {printf " %s %s", $1, $2}' "$dir/loop.out")
    echo "$binary spaced: $(((after - before) / calls)) ns kernel per op;$phases ns/op"
    continue
  fi
  traced "$binary" -- "$dir/oloop" "$seconds" "${args[@]}"
  before=$(run_ns "$tracer")
  go
  after=$(run_ns "$tracer")
  untraced
  read -r ops _ per _ < <(tail -1 "$dir/loop.out")
  echo "$binary $mode: $(((after - before) / ops)) ns kernel per op; loop $per ns/op"
done
