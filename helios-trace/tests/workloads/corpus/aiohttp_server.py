"""aiohttp's web server: units upload their telemetry; the handler keeps each request in a
class-level list while it waits for the unit's slot before reading the upload. Leaking: it
waits before reading the body, and the body it does not read fills the request's payload
buffer past its high-water mark, so aiohttp stops reading the connection (flow control:
streams.py, StreamReader.feed_data, then pause_reading): a unit that gives up and hangs up is
never noticed, and the server's socket stays in CLOSE_WAIT with the request in the list. Fixed:
it reads the upload first, so the hang-up is read and aiohttp closes the connection."""
import asyncio
import fcntl
import socket
import struct
import termios
import time

from aiohttp import web

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()
# Past the payload buffer's high-water mark (twice the StreamReader's limit: 512 KiB with
# aiohttp 3.14's defaults), and small enough that what the server does not read fits in its
# socket's receive buffer, so the unit's hang-up reaches it.
UPLOAD = 1024 * 1024


class TelemetryUploads:
    pending = []
    slot = asyncio.Event()  # the unit's slot, which never opens in this test

    @classmethod
    async def upload(cls, request):
        cls.pending.append(request)
        if LEAKING:
            await cls.slot.wait()
            body = await request.read()
        else:
            body = await request.read()
            await cls.slot.wait()
        return web.Response(text="%d bytes" % len(body))


def unsent(sock):
    """Bytes of the socket's send queue not yet acknowledged by the peer (SIOCOUTQ, the same
    request number as TIOCOUTQ: linux/sockios.h)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def unit_uploads(port):
    """A unit: posts its telemetry and, once the server's kernel has it all, gives up (its
    socket closed, as a client's timeout does): its hang-up comes after the last byte."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % UPLOAD
    )
    sock.sendall(b"\0" * UPLOAD)
    deadline = time.monotonic() + 10
    while unsent(sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not unsent(sock), "the server's kernel did not take the upload"
    sock.close()


async def main():
    app = web.Application()
    app.router.add_post("/telemetry", TelemetryUploads.upload)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    loop = asyncio.get_running_loop()
    for request in range(ROUNDS):
        await loop.run_in_executor(None, unit_uploads, port)
        await asyncio.sleep(pause(request))
    ready(port)
    await loop.run_in_executor(None, wait)


settle()
asyncio.run(main())
