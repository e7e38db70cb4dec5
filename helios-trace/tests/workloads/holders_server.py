"""The postmortem's asyncio server (issue 15), speaking fdwork's protocol: a handler class
keeps every connection in a class-level set, `_ws_connections`, and its `on_disconnect` does
nothing, so each socket whose client hung up stays open in CLOSE_WAIT, held by the set.
With --fixed, on_disconnect removes the handler from the set and closes the writer.

It also opens files in the scratch directory (its last argument): three kept in a
module-level list, `_cache` (held by it through each text file's buffer and raw file), and two
with os.open, whose descriptors no Python object owns.

Prints "ready" once CLIENTS clients (default 30) have connected and hung up; then answers
"count" with "ok <handlers in the set>", "files" with "ok <the three fds> <the two fds>", and
"exit" by exiting.
"""
import asyncio
import os
import socket
import sys
import threading
import time

# Give the tracer time to find this interpreter (its startup is walked once initialized).
time.sleep(1)
FIXED = "--fixed" in sys.argv
CLIENTS = int(os.environ.get("CLIENTS", "30"))
SCRATCH = sys.argv[-1]

_cache = [open(os.path.join(SCRATCH, f"cached{i}"), "w") for i in range(3)]
_raw = [os.open(os.path.join(SCRATCH, f"raw{i}"), os.O_CREAT | os.O_RDWR) for i in range(2)]


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
    handler = UnitTrackingWSHandler(reader, writer)
    handler.on_connect()
    await reader.read()  # until the client hangs up
    handler.on_disconnect()


def commands():
    for line in sys.stdin:
        if line.strip() == "count":
            print(f"ok {len(UnitTrackingWSHandler._ws_connections)}", flush=True)
        elif line.strip() == "files":
            print("ok", *[f.fileno() for f in _cache], *_raw, flush=True)
        else:
            os._exit(0)
    os._exit(0)


async def main():
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
