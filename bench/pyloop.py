"""The Python row of cargo xtask bench: the cost of open()+close() in CPython.

    python3 pyloop.py OPS GAP_US [THREADS]

Waits for a line on stdin (so a tracer can attach to this pid first), then opens and closes
/dev/null OPS times from a few nested Python frames, timing only the calls, spinning GAP_US
after each (as bench/churn.c, after the same warm-up), and prints the mean ns of one
open+close, how many were left out of it as preempted (over 100 us, as bench/churn.c), and the
mean of every open+close, preempted ones included. With THREADS, that many threads are started
first and wait, idle, until the loop is done: CPython adds each new thread state at the head of
its interpreter's list, so the main thread's is then behind all of theirs, as an event loop's
behind its executor's workers.
"""
import sys
import threading
import time


def open_close():
    with open("/dev/null", "rb", buffering=0):
        pass


SLOW_NS = 100_000


def churn(ops, gap_ns):
    clock = time.perf_counter_ns
    spent = timed = slow = every = 0
    for _ in range(ops):
        start = clock()
        open_close()
        end = clock()
        every += end - start
        if end - start > SLOW_NS:
            slow += 1
        else:
            spent += end - start
            timed += 1
        while clock() < end + gap_ns:
            pass
    return spent // max(timed, 1), slow, every // max(ops, 1)


def main():
    ops, gap_us = int(sys.argv[1]), int(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    done = threading.Event()
    for _ in range(threads):
        threading.Thread(target=done.wait, daemon=True).start()
    sys.stdin.readline()
    churn(max(ops // 10, 500), gap_us * 1000)
    time.sleep(0.3)
    mean, slow, every = churn(ops, gap_us * 1000)
    print(mean, slow, every, flush=True)
    done.set()


if __name__ == "__main__":
    main()
