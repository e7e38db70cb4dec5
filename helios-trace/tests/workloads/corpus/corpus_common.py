"""What every script of the corpus shares (tests/integration/corpus.rs).

A script is started as `python3 SCRIPT.py leaking|fixed SCRATCH`. It sleeps two seconds (a
tracer may still be finding the interpreter: descriptors opened before then have native frames
only, in sites of their own; one second was seen too short on a loaded machine), then serves ROUNDS requests of its kind, one every PACE seconds, driving itself
over loopback; then it prints "ready" and what the test needs (e.g. its server's port), and
waits on stdin until it closes or says "exit". The leaking variant keeps what each request
opened; the fixed one closes it.
"""
import sys
import time

ROUNDS = 30
PACE = 0.35


def args():
    if len(sys.argv) != 3 or sys.argv[1] not in ("leaking", "fixed"):
        sys.exit("usage: %s leaking|fixed SCRATCH" % sys.argv[0])
    return sys.argv[1] == "leaking", sys.argv[2]


def settle():
    time.sleep(2.0)


def ready(*numbers):
    print(" ".join(["ready"] + [str(n) for n in numbers]), flush=True)


def wait():
    for line in sys.stdin:
        if line.strip() == "exit":
            break
