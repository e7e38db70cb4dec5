# Sourced by bench/reconcile.sh and bench/baseline.sh: 20 bench/fdhold processes holding 19,900
# dup'd eventfds each (398,000 descriptors). Needs `here` (bench/) and `dir` (a scratch folder);
# sets `fdhold`, and `pids` (`--pid` arguments for them) once `hold` returns.
fdhold=$here/../target/bench/fdhold
[ -x "$fdhold" ] || { echo "no $fdhold: run cargo xtask bench --quick memory once, or gcc -O2 -o $fdhold $here/fdhold.c" >&2; exit 1; }

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
