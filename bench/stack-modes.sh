#!/bin/bash
# Per-open cost of each --stacks mode, in the traced process (ns per open+close of /dev/null,
# from bench/openloop.c, one open every 20 us) and in helios-trace (its CPU time per open),
# at a shallow stack (main -> churn) and a deep one (64 more frames, ~18 KiB). Needs root and a
# release build (cargo build --release -p helios-trace). Prints the median of REPEATS runs.
#
#   bench/stack-modes.sh [ITERATIONS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-50000}
repeats=${2:-5}
bin=target/release/helios-trace
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -fomit-frame-pointer -g -o "$work/openloop" bench/openloop.c
# CPU time of every thread of a process, in ns (kernel/sched/stats.c: schedstat's first field).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{sum += $1} END {print sum}'; }

# One run: prints "ns_per_open tracer_ns_per_open"; mode "off" runs untraced.
run() {
    local mode=$1 depth=$2 window=${3:-8K}
    rm -f "$work/go"; mkfifo "$work/go"
    "$work/openloop" "$iterations" "$depth" 20 < "$work/go" > "$work/ns" &
    local loop=$!
    exec 3> "$work/go"
    local tracer=""
    if [ "$mode" != off ]; then
        "$bin" --pid "$loop" --stacks "$mode" --stack-window "$window" --reconcile-interval 0 --format json \
            > "$work/report" 2> "$work/err" &
        tracer=$!
        until grep -q attached "$work/err"; do sleep 0.05; done
    fi
    local before=0
    [ -n "$tracer" ] && before=$(cpu_ns "$tracer")
    echo go >&3; exec 3>&-
    wait "$loop"
    local tracer_ns=0
    if [ -n "$tracer" ]; then
        sleep 0.3 # the reader drains what is still in the ring buffer (its idle ticks count too)
        local after; after=$(cpu_ns "$tracer")
        tracer_ns=$(( (after - before) / iterations ))
        kill -INT "$tracer"; wait "$tracer"
        grep -q '"lost": 0,' "$work/report" || echo "warning: events lost in $mode $window" >&2
    fi
    echo "$(cat "$work/ns") $tracer_ns"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-10s %-6s %-7s %14s %18s\n' mode depth window "ns/open (app)" "ns/open (tracer)"
for depth in 0 64; do
    for spec in "off" "none" "fp" "dwarf 8K" "dwarf 16K"; do
        set -- $spec
        mode=$1 window=${2:-8K}
        : > "$work/results"
        for _ in $(seq "$repeats"); do run "$mode" "$depth" "$window" >> "$work/results"; done
        app=$(cut -d' ' -f1 "$work/results" | median)
        tracer=$(cut -d' ' -f2 "$work/results" | median)
        printf '%-10s %-6s %-7s %14s %18s\n' "$mode" "$depth" "${2:--}" "$app" "$tracer"
    done
done
