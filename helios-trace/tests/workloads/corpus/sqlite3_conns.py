"""sqlite3: a connection per request, cached and never closed (leaking) or closed (fixed)."""
import os
import sqlite3
import time

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()
DB = os.path.join(SCRATCH, "units.db")
CACHE = {}


def record(request):
    conn = sqlite3.connect(DB)
    conn.execute("INSERT INTO positions VALUES (?, 1, 2)", (request,))
    conn.commit()
    if LEAKING:
        CACHE[request] = conn
    else:
        conn.close()


def main():
    with sqlite3.connect(DB) as setup:
        setup.execute("CREATE TABLE positions (unit, x, y)")
    setup.close()
    for request in range(ROUNDS):
        record(request)
        time.sleep(pause(request))
    ready()
    wait()


settle()
main()
