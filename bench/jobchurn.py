#!/usr/bin/env python3
"""Short-lived jobs at a steady rate, for the daemon-memory soak (issue 17): the bench's
`soak` section and the suite's soak test both run it.

usage: jobchurn.py SECONDS RATE DIR INTERPRETER...

Waits for a line on stdin (so a tracer can attach to its pid first), then starts RATE jobs a
second for SECONDS, round-robin over INTERPRETER (a Python executable, or `native` for `cat`
reading a file). Each Python job runs a script of its own (DIR/job-N.py, a new file per job,
so its Python frames are new call sites): a few imports, one file and one socket opened and
closed. Prints `jobs N failed M` at the end.
"""
import os
import subprocess
import sys
import time

SCRIPT = '''\
import json, socket, tempfile
def job_{n}():
    with open({path!r}) as f:
        json.loads(f.read() or "0")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.close()
job_{n}()
'''


def main():
    seconds, rate, workdir = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    interpreters = sys.argv[4:]
    os.makedirs(workdir, exist_ok=True)
    sys.stdin.readline()
    data = os.path.join(workdir, "data.json")
    with open(data, "w") as f:
        f.write("{}")
    running, jobs, failed = [], 0, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        interpreter = interpreters[jobs % len(interpreters)]
        if interpreter == "native":
            command = ["cat", data]
        else:
            script = os.path.join(workdir, f"job-{jobs}.py")
            with open(script, "w") as f:
                f.write(SCRIPT.format(n=jobs, path=data))
            command = [interpreter, script]
        running.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), command))
        jobs += 1
        still = []
        for child, command in running:
            if child.poll() is None:
                still.append((child, command))
            else:
                failed += child.returncode != 0
                if command[0] != "cat":
                    os.unlink(command[1])
        running = still
        time.sleep(max(0.0, start + jobs / rate - time.monotonic()))
    for child, command in running:
        failed += child.wait() != 0
        if command[0] != "cat":
            os.unlink(command[1])
    print(f"jobs {jobs} failed {failed}", flush=True)


if __name__ == "__main__":
    main()
