# Sourced by bench/progtime.sh, bench/pyshare.sh, bench/ctime.sh and bench/daemoncpu.sh: a program
# held at its first line of stdin, and a helios-trace attached to it. Needs `dir` (a scratch folder).
#
#   traced BINARY [TRACER ARGS...] -- COMMAND...
#
# starts COMMAND (stdout to $dir/loop.out) and BINARY with `--pid` of it (its JSON report to
# $dir/report.json), waits for "attached", and sets `loop` and `tracer` (their pids); `go` lets
# the program run, and waits for it.
traced() {
  local binary=$1 args=()
  shift
  while [ "$1" != "--" ]; do args+=("$1"); shift; done
  shift
  # Their own files: the wait below must not find a previous tracer's "attached".
  rm -f "$dir/go" "$dir/tracer.err"
  mkfifo "$dir/go"
  "$@" < "$dir/go" > "$dir/loop.out" &
  loop=$!
  exec 3> "$dir/go"
  "$binary" --pid "$loop" --reconcile-interval 0 --format json --view quiet "${args[@]}" > "$dir/report.json" 2> "$dir/tracer.err" &
  tracer=$!
  until grep -qs attached "$dir/tracer.err"; do
    kill -0 "$tracer" 2> /dev/null || { cat "$dir/tracer.err" >&2; exit 1; }
    sleep 0.05
  done
}

go() {
  echo >&3
  exec 3>&-
  wait "$loop"
}

# Stop the tracer; its report is in $dir/report.json.
untraced() {
  kill -INT "$tracer"
  wait "$tracer" || true
}
