"""Tornado's WebSocketHandler: each unit connects, subscribes to its commands, and the handler
keeps itself in a module-level set. Leaking: on_message acknowledges, then awaits the unit's first command before
returning, and Tornado reads no further frame until it returns ("if on_message is a coroutine,
the next message is not read until it completes"): a unit that sends another message and then
drops off the network (its socket closed without a close frame) is never noticed, on_close
never runs, and the server's socket stays in CLOSE_WAIT with the handler in the set. Fixed:
on_message hands the wait to a task of its own and returns, the read loop sees the hang-up,
on_close forgets the handler and the stream is closed."""
import asyncio
import base64
import os
import socket
import struct

import tornado.ioloop
import tornado.web
import tornado.websocket

from corpus_common import ROUNDS, args, pause, ready, settle, wait

LEAKING, SCRATCH = args()
_ws_connections = set()


class UnitTrackingWSHandler(tornado.websocket.WebSocketHandler):
    def open(self):
        _ws_connections.add(self)
        self.command = asyncio.get_running_loop().create_future()

    async def on_message(self, message):
        if not message.startswith("subscribe"):
            self.position = message
            return
        self.write_message("subscribed")
        if LEAKING:
            await self.relay_commands()
        else:
            self.relay = asyncio.create_task(self.relay_commands())

    async def relay_commands(self):
        # The unit's command, which never comes in this test.
        self.write_message(await self.command)

    def on_close(self):
        _ws_connections.discard(self)
        self.command.cancel()


def frame(text):
    """A client's text frame (masked, RFC 6455 5.3)."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("BB", 0x81, 0x80 | len(payload)) + mask + masked


def unit_connects(port):
    """A unit: the WebSocket handshake, its subscription, the server's acknowledgement, then
    its first position; its socket is returned, to be closed a while later without a close
    frame, as when its process dies or its network goes."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /units HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (port, key)
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    sock.sendall(frame("subscribe unit"))
    # The server's "subscribed" (an unmasked text frame): it read the subscription.
    acknowledged = b""
    while len(acknowledged) < 2 + len(b"subscribed"):
        chunk = sock.recv(4096)
        assert chunk, "the server hung up"
        acknowledged += chunk
    assert acknowledged[2:].startswith(b"subscribed"), acknowledged
    # While the leaking handler is stuck on the subscription, its stream reads this frame into
    # its buffer and, holding unread data, stops listening to the socket, so the hang-up later
    # is never read (tornado/iostream.py: _handle_events listens for a close only while its
    # buffer is empty). Were the frame and the hang-up read at once, the stream would see the
    # end of the connection and close it, without on_close: hence the hang-up a round later.
    sock.sendall(frame("position 1 2"))
    return sock


async def main():
    app = tornado.web.Application([(r"/units", UnitTrackingWSHandler)])
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    loop = asyncio.get_running_loop()
    for request in range(ROUNDS):
        unit = await loop.run_in_executor(None, unit_connects, port)
        await asyncio.sleep(pause(request))
        unit.close()
    if not LEAKING:
        # The server closes its end once its loop reads the unit's hang-up, a little after
        # close() here: the last one too before saying ready, or the test's snapshot may see
        # it open and /proc, read after, closed.
        for _ in range(500):
            if not _ws_connections:
                break
            await asyncio.sleep(0.01)
    ready(port)
    await loop.run_in_executor(None, wait)


settle()
tornado.ioloop.IOLoop.current().run_sync(main)
