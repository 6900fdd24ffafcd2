"""The least an aiohttp proxy can do: read the body, post it upstream, return the answer.

No form parsing, routing, limits, metrics or logs, and the body held whole in
memory: what aiohttp's server and client cost per request on their own.
``bench_overhead.py`` measures it beside the proxy, as the floor the proxy's
own work sits on.

    .venv/bin/python scripts/aiohttp_floor.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {"Content-Type": request.headers["Content-Type"], "Authorization": "Bearer sk"}
    session = request.app[SESSION]
    async with session.post(request.app[UPSTREAM], data=body, headers=headers) as response:
        answer = await response.read()
        return web.Response(body=answer, content_type=response.content_type)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as client:
        app[SESSION] = client
        yield


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    app = web.Application(client_max_size=1 << 40)
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/audio/transcriptions", relay)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
