"""aiohttp: a web server, and a client that makes a ClientSession per request, its connector
keeping idle connections to the upstream for five minutes, and never closes it (leaking:
each request's keep-alive connection stays open until then, whatever the session's fate) or
uses it in `async with` (fixed)."""
import asyncio

import aiohttp
from aiohttp import web

from corpus_common import ROUNDS, args, pause, ready_then_wait, settle

LEAKING, SCRATCH = args()
SESSIONS = []


async def units(request):
    return web.Response(text="ok")


async def fetch(url):
    if LEAKING:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=300))
        SESSIONS.append(session)
        async with session.get(url) as response:
            return await response.text()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=300)) as session:
        async with session.get(url) as response:
            return await response.text()


async def main():
    app = web.Application()
    app.router.add_get("/units", units)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    for request in range(ROUNDS):
        await fetch("http://127.0.0.1:%d/units" % port)
        await asyncio.sleep(pause(request))
    await ready_then_wait(port)


settle()
asyncio.run(main())
