"""Tornado's WebSocketHandler: each connection opens a tracking file in open(); on_close
forgets it (leaking: the handler stays in a module-level set, its file open) or closes it
(fixed). A websocket client in the same IOLoop connects, sends a message and closes."""
import os

import tornado.ioloop
import tornado.web
import tornado.websocket

from corpus_common import PACE, ROUNDS, args, ready, settle, wait

LEAKING, SCRATCH = args()
_ws_connections = set()


class UnitTrackingWSHandler(tornado.websocket.WebSocketHandler):
    def open(self):
        _ws_connections.add(self)
        self.track = open(os.path.join(SCRATCH, "unit-%d.log" % len(_ws_connections)), "a")

    def on_message(self, message):
        self.track.write(message + "\n")

    def on_close(self):
        if not LEAKING:
            self.track.close()
            _ws_connections.discard(self)


async def main():
    app = tornado.web.Application([(r"/units", UnitTrackingWSHandler)])
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    for _ in range(ROUNDS):
        conn = await tornado.websocket.websocket_connect("ws://127.0.0.1:%d/units" % port)
        await conn.write_message("position 1 2")
        conn.close()
        await tornado.gen.sleep(PACE)
    ready(port)
    await tornado.ioloop.IOLoop.current().run_in_executor(None, wait)


settle()
tornado.ioloop.IOLoop.current().run_sync(main)
