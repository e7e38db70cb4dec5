"""The postmortem's asyncio server (issue 15), speaking fdwork's protocol: a handler class
keeps every connection in a class-level set, `_ws_connections`, and its `on_disconnect` does
nothing, so each socket whose client hung up stays open in CLOSE_WAIT, held by the set.
With --fixed, on_disconnect removes the handler from the set and closes the writer. With
--coroutine, no set: each connection's coroutine stays suspended, holding it in its locals.

It also opens files in the scratch directory (its last argument): three kept in a
module-level list, `_cache` (held by it through each text file's buffer and raw file), and two
with os.open, whose descriptors no Python object owns. And it makes two memfds (in no directory),
each wrapped in a buffered file kept in a module-level list, `_spool`, and maps each: every map
keeps a duplicate of its memfd's descriptor, and `_maps` keeps the maps. On "loads", a settings loader that closes
its file only when it parses fails on three files and the caller keeps the exceptions in
`_load_errors`: each exception's traceback holds the loader's frame, whose local `f` is the
open file; "forget" drops them, and with them the files, which CPython closes as it frees them.

Prints "ready" once CLIENTS clients (default 30) have connected and hung up; then answers
"count" with "ok <handlers in the set>" (with --coroutine: coroutines suspended holding one), "files" with "ok <the three fds> <the two fds> <the two memfds>", "loads" with "ok <the fds the loader left open>",
"forget" with "ok", "gap" with "ok <the longest pause, in ms, of a thread ticking every ms since
the last gap>", "continued" with "ok <SIGCONTs received>", and "version" with "ok <the minor version>", "exit" by exiting.
"""
import asyncio
import gc
import json
import mmap
import os
import signal
import socket
import sys
import threading
import time

# Give the tracer time to find this interpreter (its startup is walked once initialized).
time.sleep(1)
FIXED = "--fixed" in sys.argv
# --coroutine: no set; each handler coroutine stays suspended after its client hung up, its
# reader and writer in its locals (what holds the sockets then is the coroutines' frames).
COROUTINE = "--coroutine" in sys.argv
suspended = 0
# Module-level, so the event's waiters keep the tasks alive (a task nothing references is
# collected, and its coroutine with it); the chain from here to a coroutine runs through C
# objects (futures, tasks), so what names the sockets is the coroutines' locals.
forever = None
CLIENTS = int(os.environ.get("CLIENTS", "30"))
SCRATCH = sys.argv[-1]

_cache = [open(os.path.join(SCRATCH, f"cached{i}"), "w") for i in range(3)]
_raw = [os.open(os.path.join(SCRATCH, f"raw{i}"), os.O_CREAT | os.O_RDWR) for i in range(2)]
_spool = [open(os.memfd_create(f"spool{i}"), "wb") for i in range(2)]


def mapped(f):
    """A map of the memfd `f` wraps, which keeps a duplicate of its descriptor
    (Modules/mmapmodule.c: `_Py_dup`)."""
    f.truncate(4096)
    return mmap.mmap(f.fileno(), 4096)


_maps = [mapped(f) for f in _spool]


_load_errors = []
_load_fds = []


def load_settings(path):
    f = open(path)
    _load_fds.append(f.fileno())
    settings = json.load(f)  # raises on a malformed file: f is never closed
    f.close()
    return settings


def load_all(count):
    for i in range(count):
        path = os.path.join(SCRATCH, f"settings{i}.json")
        with open(path, "w") as out:
            out.write("{not json")
        try:
            load_settings(path)
        except ValueError as error:
            _load_errors.append(error)


class UnitTrackingWSHandler:
    _ws_connections = set()

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    def on_connect(self):
        UnitTrackingWSHandler._ws_connections.add(self)

    def on_disconnect(self):
        if FIXED:
            UnitTrackingWSHandler._ws_connections.discard(self)
            self.writer.close()


async def handle(reader, writer):
    global suspended
    if COROUTINE:
        await reader.read()  # until the client hangs up
        suspended += 1
        await forever.wait()  # never set: suspended for good, holding both
    handler = UnitTrackingWSHandler(reader, writer)
    handler.on_connect()
    await reader.read()  # until the client hangs up
    handler.on_disconnect()


_longest_gap = 0.0
_continued = 0


def on_continue(signum, frame):
    global _continued
    _continued += 1


signal.signal(signal.SIGCONT, on_continue)


def tick():
    """A thread that runs every millisecond: the longest time between two of its ticks is how
    long the process stood still (stopped, or not scheduled)."""
    global _longest_gap
    last = time.monotonic()
    while True:
        time.sleep(0.001)
        now = time.monotonic()
        _longest_gap = max(_longest_gap, now - last)
        last = now


def commands():
    global _longest_gap
    # SIGCONT to the main thread only (the ticker inherits this mask): Python runs handlers in
    # the main thread, which a signal taken by another thread would not wake.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCONT})
    threading.Thread(target=tick, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "count":
            held = suspended if COROUTINE else len(UnitTrackingWSHandler._ws_connections)
            print(f"ok {held}", flush=True)
        elif line.strip() == "version":
            print(f"ok {sys.version_info[1]}", flush=True)
        elif line.strip() == "files":
            print("ok", *[f.fileno() for f in _cache], *_raw, *[f.fileno() for f in _spool], flush=True)
        elif line.strip() == "loads":
            load_all(3)
            print("ok", *_load_fds, flush=True)
        elif line.strip() == "continued":
            print(f"ok {_continued}", flush=True)
        elif line.strip() == "gap":
            print(f"ok {int(_longest_gap * 1000)}", flush=True)
            _longest_gap = 0.0
        elif line.strip() == "forget":
            _load_errors.clear()
            gc.collect()
            print("ok", flush=True)
        else:
            os._exit(0)
    os._exit(0)


async def main():
    global forever
    forever = asyncio.Event()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for _ in range(CLIENTS):
        client = socket.create_connection(("127.0.0.1", port))
        await asyncio.sleep(0.01)
        client.close()
    # Until every handler saw its client hang up.
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    threading.Thread(target=commands, daemon=True).start()
    await asyncio.sleep(3600)


asyncio.run(main())
