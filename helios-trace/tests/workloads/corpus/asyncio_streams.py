"""asyncio streams: a server whose handler registers each connection in a class-level set
and whose on_disconnect does nothing (leaking), or closes the writer (fixed). A client in the
same loop connects, sends a line and hangs up: the leaking server's sockets stay in
CLOSE_WAIT."""
import asyncio

from corpus_common import ROUNDS, args, pause, ready_then_wait, settle

LEAKING, SCRATCH = args()


class UnitHandler:
    connections = set()

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def serve(self):
        UnitHandler.connections.add(self)
        await self.reader.read()  # until the client hangs up
        await self.on_disconnect()

    async def on_disconnect(self):
        if not LEAKING:
            UnitHandler.connections.discard(self)
            self.writer.close()
            await self.writer.wait_closed()


async def handle(reader, writer):
    await UnitHandler(reader, writer).serve()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for request in range(ROUNDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"position 1 2\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(pause(request))
    await ready_then_wait(port)


settle()
asyncio.run(main())
