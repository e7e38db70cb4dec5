"""The holders row of cargo xtask bench: a CPython heap of OBJECTS GC-tracked objects to walk.

    python3 pyheap.py OBJECTS

Builds OBJECTS GC-tracked objects (instances of a class with an instance dict, lists, and
dicts each holding one of the lists — a dict of atoms alone is not tracked — a third each),
all reachable from a module-level list, then waits for a line on stdin (so a tracer can attach
to this pid first), opens this file HELD times into a module-level list (the site a walk names
the holders of: a file, as /dev/null would be a device) and prints "held"; it exits when stdin
closes.
"""
import sys

HELD = 50


class Row:
    def __init__(self, i):
        self.i = i
        self.tags = None


def build(n):
    third = n // 3
    rows = [Row(i) for i in range(third)]
    lists = [[i] for i in range(third)]
    dicts = [{"items": lists[i % third]} for i in range(n - 2 * third)]
    return [rows, lists, dicts]


_heap = build(int(sys.argv[1]))
_files = []
sys.stdin.readline()
_files.extend(open(__file__, "rb") for _ in range(HELD))
print("held", flush=True)
sys.stdin.read()
