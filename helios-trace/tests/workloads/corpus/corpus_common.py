"""What every script of the corpus shares (tests/integration/corpus.rs).

A script is started as `python3 SCRIPT.py leaking|fixed SCRATCH`. It sleeps a second, says
"settled" and waits for "go" on stdin (settle), then serves ROUNDS requests of its kind, one
due every PACE seconds from the "go" (pause), driving itself over loopback; then it prints "ready" and what the test needs (e.g. its server's port), and
waits on stdin until it closes or says "exit". The leaking variant keeps what each request
opened; the fixed one closes it.
"""
import sys
import time

# What a script does after "ready" must open nothing: the test compares the report with /proc
# right then. run_in_executor's first call imports concurrent.futures.thread (the package loads
# it lazily, on first use of ThreadPoolExecutor): that import opens and closes its file, and a
# snapshot taken between the two showed a descriptor /proc no longer had.
import concurrent.futures.thread  # noqa: F401

ROUNDS = 30
PACE = 0.5
# When the test said "go" (time.monotonic()).
_go = None


def args():
    if len(sys.argv) != 3 or sys.argv[1] not in ("leaking", "fixed"):
        sys.exit("usage: %s leaking|fixed SCRATCH" % sys.argv[0])
    return sys.argv[1] == "leaking", sys.argv[2]


def settle():
    """Give the tracer a moment to find the interpreter, say "settled", and wait for the test's
    "go": every script then starts its requests at the same moment, so all the leaks are still
    growing when the test takes its one snapshot (a leak that stopped growing long before is,
    rightly, not judged a leak)."""
    time.sleep(1.0)
    print("settled", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "go":
        sys.exit("expected go on stdin, got %r" % line)
    global _go
    _go = time.monotonic()


def pause(request):
    """Seconds until the request after `request` is due: requests are due every PACE seconds
    from the "go", whatever each took, so every script makes its last at about the same moment
    (a loaded machine slows some scripts more than others, and a leak that stopped growing well
    before the test's one snapshot is, rightly, not judged a leak)."""
    return max(0.0, _go + (request + 1) * PACE - time.monotonic())


def ready(*numbers):
    print(" ".join(["ready"] + [str(n) for n in numbers]), flush=True)


async def ready_then_wait(*numbers):
    """ready(), then wait() off the event loop, on an executor made before "ready": the loop
    makes its default one at its first use, and sizing that calls os.cpu_count(), which glibc
    answers by opening /sys/devices/system/cpu/online (3.11 and 3.12; 3.13 on sizes it by
    sched_getaffinity): a file opened and closed while the test compares the report with /proc."""
    import asyncio

    with concurrent.futures.thread.ThreadPoolExecutor(max_workers=1) as pool:
        ready(*numbers)
        await asyncio.get_running_loop().run_in_executor(pool, wait)


def wait():
    for line in sys.stdin:
        if line.strip() == "exit":
            break
