"""A webhook receiver: a real aiohttp server that checks each delivery's Standard Webhooks
signature with the ``standardwebhooks`` package, and answers as a test tells it to."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

#: The secret the tests' proxies sign with.
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes length").decode()


@dataclass
class Received:
    """One delivery as it arrived: verified or not, and its payload."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: dict[str, Any] | None


@dataclass
class WebhookReceiver:
    """Records every delivery; answers ``statuses`` in turn (then 204), after ``delay_s``
    and once ``held`` is set (when there is one)."""

    secret: str = SECRET
    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    server: TestServer | None = None
    held: asyncio.Event | None = None

    @property
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        return app

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload, verified = None, False
        async with self.arrived:
            self.received.append(Received(headers, body, verified, payload))
            self.arrived.notify_all()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.held is not None:
            await self.held.wait()
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """The deliveries once there are ``count`` of them."""
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return self.received
