KEPT = [open(__file__)]  # LEAK:first
"""A CPython workload for tests/integration/python.rs (the startup gap, issue 21): it opens on
its very first line, at module level, while the interpreter is still importing its main module,
then in a function called at module level, then a socket; each line is marked `# LEAK:<name>`.
Speaks fdwork's protocol ("ready", then "ok" and numbers per command on stdin): `fds` answers
the descriptors kept, `lines` the marked lines; with `--exit` (for `helios-trace run`) it
prints its pid and both, waits for the end of its stdin, and exits without closing anything. The last
argument is a scratch directory (unused).
"""
import os
import socket
import sys


def open_in_function():
    return open(__file__)  # LEAK:function


KEPT.append(open_in_function())
KEPT.append(socket.socket())  # LEAK:socket


def marked_lines():
    lines = {}
    with open(__file__) as source:
        for number, text in enumerate(source, 1):
            if "# LEAK:" in text and "LEAK:<" not in text:
                lines[text.split("# LEAK:")[1].split()[0]] = number
    return [lines[k] for k in ("first", "function", "socket")]


FDS = [f.fileno() for f in KEPT]
if "--exit" in sys.argv:
    print("pid", os.getpid(), flush=True)
    print("fds", *FDS, flush=True)
    print("lines", *marked_lines(), flush=True)
    sys.stdin.read()
    os._exit(0)  # no finalization: what is open stays open until the exit
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "fds":
        print("ok", *FDS, flush=True)
    elif words[0] == "lines":
        print("ok", *marked_lines(), flush=True)
    elif words[0] == "version":
        print("ok", sys.version_info.major, sys.version_info.minor, flush=True)
    elif words[0] == "exit":
        break
