#!/bin/bash
# Where a CPython loop's time goes under helios-trace (BENCHMARKS.md, "Taught chains"), as root,
# with perf:
#
#   bench/pyshare.sh BINARY [TRACER ARGS...]
#
# bench/pyloop.py's open+close of /dev/null at full speed for 6 s, traced with `--pid`; perf
# records every CPU for 3 s of it, and the shares of the loop's samples under the exit program
# (fd_syscall_exit, or its BTF twin fd_syscall_exit_btf) and under its Python walk
# (python_stack), times the loop's ns per open+close, are printed: ns per open+close spent there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
binary=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/spin.py" <<PY
import sys, time
sys.path.insert(0, "$here")
from pyloop import open_close
sys.stdin.readline()
start = time.time()
end, n = start + float(sys.argv[1]), 0
while time.time() < end:
    for _ in range(1000):
        open_close()
    n += 1000
print(n, time.time() - start)
PY
# shellcheck source=bench/traced.sh
. "$here/traced.sh"
traced "$binary" "$@" -- python3 "$dir/spin.py" 6
echo >&3
sleep 1
perf record -a -g -o "$dir/perf.data" -- sleep 3 > /dev/null 2>&1
exec 3>&-
wait "$loop"
untraced
read -r ops seconds < "$dir/loop.out"
# The loop's own samples only (its pid), in percent of all: the children's share of a symbol.
report() { perf report -i "$dir/perf.data" --pid "$loop" "$@" -g none 2> /dev/null; }
share() { report --children --sort sym | awk -v s="$1" '$0 ~ s"$" {gsub("%", "", $1); print $1; exit}'; }
total=$(report --no-children --sort pid | awk '/%/ {gsub("%", "", $1); s += $1} END {print s + 0}')
exit_share=$(share '_fd_syscall_exit(_btf)?')
walk_share=$(share '_python_stack')
python3 - "$ops" "$seconds" "$total" "${exit_share:-}" "${walk_share:-}" <<'PY'
import sys
ops, seconds, total = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
ns = seconds * 1e9 / ops
def part(share):
    return f"{float(share) / total * ns:.0f} ns" if share and total else "not found"
print(f"{ns:.0f} ns per open+close; fd_syscall_exit {part(sys.argv[4])}, python_stack {part(sys.argv[5])}")
PY
