#!/bin/bash
# What the libuv uprobes cost a Node.js connection (BENCHMARKS.md, "Node.js handles"), in one
# run, as root, on a machine with node and a built helios-trace:
#
#   bench/node-uprobes.sh [ROUNDS] [helios-trace options...]
#
# Three bench/nodeconn.js processes: U, a copy of node, untraced (measured, then gone before the
# tracer starts); A, /usr/bin/node started before the tracer, which attaches its uprobes to that
# file; B, another copy, started after the tracer, which can no longer make uprobes (they need
# CAP_SYS_ADMIN, given up once attached): traced the same but without them. A and B take turns,
# 3,000 connections each, ROUNDS times (8). Prints the mean ns of a connection of each turn, and
# the report's TCP sites of each (A's named by nodeconn.js, B's by node:net).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tracer=${HELIOS_TRACE:-$here/../target/release/helios-trace}
rounds=${1:-8}
shift || true
dir=$(mktemp -d)
trap 'pkill -f "$dir/" || true; kill "${tracer_pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
cp /usr/bin/node "$dir/node-copy"
cp /usr/bin/node "$dir/node-u"
cp "$here/nodeconn.js" "$dir/nodeconn.js"
start() { # BINARY NAME FD
  mkfifo "$dir/$2.in"
  # With the perf map the tests use: the handle's JavaScript frames are named.
  # (V8 writes its isolate-*-v8.log where it runs: in the scratch directory.)
  (cd "$dir" && exec "$1" --perf-basic-prof --interpreted-frames-native-stack "$dir/nodeconn.js" \
    < "$dir/$2.in" > "$dir/$2.out" 2>&1) &
  eval "exec $3> \"$dir/$2.in\""
  until grep -q ready "$dir/$2.out"; do sleep 0.05; done
}
ask() { # FD NAME N: the mean ns of N connections
  local before
  before=$(wc -l < "$dir/$2.out")
  echo "$3" >&"$1"
  while [ "$(wc -l < "$dir/$2.out")" -le "$before" ]; do sleep 0.05; done
  tail -1 "$dir/$2.out"
}
start /usr/bin/node A 3
start "$dir/node-u" U 4
for _ in 1 2 3; do echo "untraced $(ask 4 U 3000)"; done
exec 4>&-
pkill -f "$dir/node-u" || true
"$tracer" "$@" --comm node --comm node-copy --format json -o "$dir/report.json" 2> "$dir/tracer.err" &
tracer_pid=$!
until grep -q attached "$dir/tracer.err"; do sleep 0.1; done
sleep 2
start "$dir/node-copy" B 5
for _ in $(seq "$rounds"); do
  echo "uprobes $(ask 3 A 3000)  none $(ask 5 B 3000)"
done
# Which site each one's connections were at (A's told by nodeconn.js, B's by node:net): the
# report's busiest sites of each process (the copy's frames are not Node's own to the report: its
# module is not named node, so B's site is libuv's, where A's is nodeconn.js's function).
kill -INT "$tracer_pid"
wait "$tracer_pid" || true
python3 - "$dir/report.json" <<'PY'
import json, sys
for process in json.load(open(sys.argv[1]))["processes"]:
    sites = sorted(process["sites"], key=lambda s: -s.get("opened", 0))[:2]
    print(process["comm"], [(s["frame"], s.get("opened")) for s in sites])
PY
