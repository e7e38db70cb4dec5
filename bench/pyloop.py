"""The Python row of cargo xtask bench: the cost of open()+close() in CPython.

    python3 pyloop.py OPS GAP_US

Waits for a line on stdin (so a tracer can attach to this pid first), then opens and closes
/dev/null OPS times from a few nested Python frames, timing only the calls, spinning GAP_US
after each (as bench/churn.c, after the same warm-up), and prints the mean ns of one open+close.
"""
import sys
import time


def open_close():
    with open("/dev/null", "rb", buffering=0):
        pass


def churn(ops, gap_ns):
    clock = time.perf_counter_ns
    spent = 0
    for _ in range(ops):
        start = clock()
        open_close()
        end = clock()
        spent += end - start
        while clock() < end + gap_ns:
            pass
    return spent // max(ops, 1)


def main():
    ops, gap_us = int(sys.argv[1]), int(sys.argv[2])
    sys.stdin.readline()
    churn(max(ops // 10, 500), gap_us * 1000)
    time.sleep(0.3)
    print(churn(ops, gap_us * 1000), flush=True)


if __name__ == "__main__":
    main()
